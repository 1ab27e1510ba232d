"""The shipped model's ONNX files: float16 weight storage, and agreement with its checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from _helpers import one_thread  # noqa: F401
from napari_edgesam.datasets import synthetic_nuclei_2d

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fp16_storage_halves_the_file_and_keeps_the_outputs(tmp_path, golden_state_dict):
    pytest.importorskip("torch")
    import onnx

    from napari_edgesam.export.fp16_storage import store_weights_fp16
    from napari_edgesam.export.onnx_export import export_onnx
    from napari_edgesam.inference.backends.onnx_backend import OnnxBackend
    from napari_edgesam.model import build_edge_sam

    enc, dec = export_onnx(build_edge_sam(golden_state_dict), tmp_path / "fp32", "golden")
    half_dir = tmp_path / "fp16"
    half_dir.mkdir()
    enc16 = store_weights_fp16(enc, half_dir / enc.name)
    dec16 = store_weights_fp16(dec, half_dir / dec.name)
    for a, b in ((enc, enc16), (dec, dec16)):
        assert b.stat().st_size < 0.6 * a.stat().st_size
        ga, gb = onnx.load(str(a)).graph, onnx.load(str(b)).graph
        assert [i.name for i in ga.input] == [i.name for i in gb.input]
        assert [o.name for o in ga.output] == [o.name for o in gb.output]
    x = np.random.default_rng(0).standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    full, half = OnnxBackend(enc, dec, num_threads=1), OnnxBackend(enc16, dec16, num_threads=1)
    e32, e16 = full.encode(x), half.encode(x)
    # weights rounded to float16 (relative 2**-11) through ~20 layers: a small relative error
    assert np.abs(e16 - e32).max() / np.abs(e32).max() < 2e-2
    coords, labels = np.float32([[[400, 300], [0, 0]]]), np.float32([[1, -1]])
    m32, _ = full.decode(e32, coords, labels)
    m16, _ = half.decode(e32, coords, labels)
    assert ((m32 > 0) == (m16 > 0)).mean() > 0.99
    # idempotent: a second pass finds nothing left to convert
    again = store_weights_fp16(enc16, half_dir / "again.onnx")
    assert abs(again.stat().st_size - enc16.stat().st_size) < 1024


def test_shipped_onnx_agrees_with_the_shipped_checkpoint():
    pytest.importorskip("torch")
    from napari_edgesam import load_model

    ort = load_model("edgesam-nuclei", backend="onnxruntime", num_threads=1)
    pt = load_model("edgesam-nuclei", backend="torch")
    assert ort.backend.name == "onnxruntime" and ort.backend.supports_mask_input
    image, labels = synthetic_nuclei_2d(seed=3)
    ort.set_image(image)
    pt.set_image(image)
    ious, differ = [], []
    for sl in ndi.find_objects(labels)[:15]:
        box = np.float32([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
        a, b = ort.segment(box=box)[0], pt.segment(box=box)[0]
        ious.append((a & b).sum() / max((a | b).sum(), 1))
        differ.append(((a ^ b).sum(), (a | b).sum()))
    # float16 rounding of the folded weights moves the logits of border pixels a little:
    # measured mean IoU 0.998, a few pixels per object (0.967 on a ~100-pixel nucleus)
    assert np.mean(ious) > 0.99, ious
    assert all(d <= 0.05 * union + 4 for d, union in differ), differ
