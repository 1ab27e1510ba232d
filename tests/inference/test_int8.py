"""The shipped model's int8 encoder: its accuracy gate on held-out nuclei, and a broken
quantization that the gate must catch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_edgesam.export.int8_gate import (
    MIN_MEAN_IOU,
    GateResult,
    measure,
    object_boxes,
    run_gate,
)
from napari_edgesam.inference.loading import weights

HELDOUT = Path(__file__).parents[1] / "data" / "nuclei_heldout" / "dsb_right_half.npz"


def _runtime() -> str:
    from napari_edgesam.inference.backends.openvino_backend import openvino_available

    return "openvino" if openvino_available() else "onnxruntime"


@pytest.fixture(scope="module")
def heldout():
    """The held-out right half (57 nuclei): two encoder passes and 114 box decodes, a few seconds."""
    with np.load(HELDOUT) as z:
        return [(z["image"], z["labels"])]


@pytest.fixture(scope="module")
def shipped():
    spec = weights.MODEL_REGISTRY["edgesam-nuclei"]
    assert "onnx_encoder_int8" in spec.files, "the shipped int8 encoder is registered only while its gate holds"
    return {k: spec.files[k].local_path for k in ("onnx_encoder", "onnx_encoder_int8", "onnx_decoder")}


def test_shipped_int8_encoder_passes_its_gate(shipped, heldout):
    from napari_edgesam.models import PACKAGED

    recorded = PACKAGED["edgesam-nuclei"]["int8_gate"]
    assert recorded["mean_iou"] >= MIN_MEAN_IOU and recorded["n_objects"] == 57
    result = run_gate(shipped["onnx_encoder_int8"], shipped["onnx_encoder"], shipped["onnx_decoder"],
                      heldout, backend=_runtime(), num_threads=1)
    assert result.n_objects == 57
    # measured 0.979 on OpenVINO (Xeon, AVX-512/VNNI); a broken quantization falls far below (0.84)
    assert result.passed and result.mean_iou >= MIN_MEAN_IOU, result.line()
    assert 7_500_000 > shipped["onnx_encoder_int8"].stat().st_size  # checked-in size


def test_broken_quantization_fails_the_gate(shipped, heldout, tmp_path):
    """Activation steps 8x coarser than calibrated (about 5 bits instead of 8): the gate fails."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(shipped["onnx_encoder_int8"]))
    scales = {n.input[1] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    for init in model.graph.initializer:
        if init.name in scales:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(8), init.name))
    broken = tmp_path / "broken_encoder_int8.onnx"
    onnx.save(model, str(broken))
    result = run_gate(broken, shipped["onnx_encoder"], shipped["onnx_decoder"], heldout,
                      backend=_runtime(), num_threads=1)
    assert not result.passed and result.mean_iou < MIN_MEAN_IOU, result.line()
    assert "FAILED" in result.line()


def test_gate_result_and_boxes():
    labels = np.zeros((10, 12), np.uint16)
    labels[2:5, 3:9] = 1
    labels[6:8, 0:2] = 3
    np.testing.assert_array_equal(object_boxes(labels), [[3, 2, 9, 5], [0, 6, 2, 8]])
    assert not GateResult(0.0, 0.0, 0).passed  # nothing measured is no pass
    assert GateResult(0.97, 0.5, 3).passed and not GateResult(0.969, 0.9, 3).passed

    class Same:  # an "int8" model identical to the float32 one: IoU 1
        def encode(self, image):
            return image

        def segment(self, box, embedding, box_centre=True):
            assert not box_centre, "the gate decodes each box alone"
            mask = np.zeros(embedding.shape, bool)
            x0, y0, x1, y1 = box.astype(int)
            mask[y0:y1, x0:x1] = True
            return mask, None, None

    result = measure(Same(), Same(), [(np.zeros((10, 12)), labels)])
    assert result.n_objects == 2 and result.mean_iou == 1.0 and result.passed


def test_int8_is_the_openvino_default_and_opt_in_elsewhere():
    pytest.importorskip("openvino")
    from napari_edgesam import load_model

    ov = load_model("edgesam-nuclei", backend="openvino", num_threads=1, cache=False)
    assert ov.backend.encoder_path.name == "edge_sam_nuclei_encoder_int8.onnx"
    assert ov.model_name == "edgesam-nuclei-int8"  # int8 embeddings are cached apart from float32 ones
    assert ov.source_path.name == "edge_sam_nuclei_encoder.onnx"  # its prior is found beside it
    fp32 = load_model("edgesam-nuclei", backend="openvino", int8=False, num_threads=1, cache=False)
    assert fp32.backend.encoder_path.name == "edge_sam_nuclei_encoder.onnx" and fp32.model_name == "edgesam-nuclei"
    ort = load_model("edgesam-nuclei", backend="onnxruntime", num_threads=1)
    assert ort.backend.encoder_path.name == "edge_sam_nuclei_encoder.onnx"
    ort8 = load_model("edgesam-nuclei", backend="onnxruntime", int8=True, num_threads=1)
    assert ort8.backend.encoder_path.name == "edge_sam_nuclei_encoder_int8.onnx"
    with pytest.raises(ValueError, match="int8 runs on the ONNX backends, not torch: load 'edgesam-nuclei' with"):
        load_model("edgesam-nuclei", backend="torch", int8=True)


def test_gate_failing_record_keeps_the_int8_file_unregistered(tmp_path):
    from napari_edgesam.inference.loading.weights import _packaged_spec
    from napari_edgesam.models import PACKAGED, PACKAGED_DIR

    entry = dict(PACKAGED["edgesam-nuclei"])
    assert "onnx_encoder_int8" in _packaged_spec("x", entry, PACKAGED_DIR).files
    entry["int8_gate"] = {**entry["int8_gate"], "mean_iou": 0.95}
    assert "onnx_encoder_int8" not in _packaged_spec("x", entry, PACKAGED_DIR).files
    del entry["int8_gate"]
    assert "onnx_encoder_int8" not in _packaged_spec("x", entry, PACKAGED_DIR).files
