"""The OpenVINO backend on the project's ONNX exports, checked against the golden EdgeSAM outputs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("torch")

from napari_edgesam.export import onnx_export  # noqa: E402
from napari_edgesam.inference.backends import Backend  # noqa: E402
from napari_edgesam.inference.backends.openvino_backend import OpenVinoBackend  # noqa: E402
from napari_edgesam.inference.core.predictor import EdgeSamPredictor  # noqa: E402
from napari_edgesam.inference.core.preprocess import prepare_input  # noqa: E402
from napari_edgesam.model import build_edge_sam  # noqa: E402

REL_TOL = 1e-4  # max|diff| / max|ref|, the golden README's float32 agreement ("about 1e-4")
# OpenVINO picks its convolution kernels per instruction set (AVX2, AVX-512, AMX; Winograd for
# some 3x3 layers), which reorders the float sums of ~40 encoder layers: measured 1.3e-4 on an
# AVX-512 Xeon. Still 100x below the smallest real model difference (bilinear vs bicubic neck).
ENCODER_TOL = 5e-4
SCORE_TOL = 1e-4


def rel_err(a, ref) -> float:
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def ov_files(tmp_path_factory, golden_state_dict):
    out = tmp_path_factory.mktemp("openvino")
    model = build_edge_sam(golden_state_dict)
    enc, dec = onnx_export.export_onnx(model, out, "golden")
    official = onnx_export.export_decoder(model, out / "official_decoder.onnx", official_interface=True)
    return enc, dec, official


@pytest.fixture(scope="module")
def ov_predictor(ov_files, edge_golden, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("NAPARI_EDGESAM_CACHE", str(tmp_path_factory.mktemp("ov_cache")))
    backend = OpenVinoBackend(ov_files[0], ov_files[1], num_threads=1)
    predictor = EdgeSamPredictor(backend, "golden")
    predictor.set_image(edge_golden["image"])
    # the decoder tests start from the golden embedding, so they measure the decoder alone
    emb = predictor.embedding
    predictor.set_embedding(type(emb)(np.asarray(edge_golden["image_embeddings"], np.float32),
                                      emb.original_size, emb.input_size))
    return predictor


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_encoder_reproduces_golden(ov_predictor, edge_golden):
    assert isinstance(ov_predictor.backend, Backend)
    x, _ = prepare_input(edge_golden["image"])
    assert rel_err(ov_predictor.backend.encode(x), edge_golden["image_embeddings"]) < ENCODER_TOL


@pytest.mark.parametrize("case", ["box", "point1", "points3", "box_point"])
def test_decoder_reproduces_golden(ov_predictor, golden_cases, edge_golden, case):
    c = golden_cases[case]
    masks, scores, low = ov_predictor.predict(c.get("point_coords"), c.get("point_labels"), c.get("box"),
                                              num_multimask_outputs=4)
    assert masks.shape == (4, 300, 400) and low.shape == (4, 256, 256)
    np.testing.assert_allclose(scores, edge_golden[f"{case}_n4_scores"], rtol=0, atol=SCORE_TOL)
    if f"{case}_n4_low_res_logits" in edge_golden:
        assert rel_err(low, edge_golden[f"{case}_n4_low_res_logits"]) < REL_TOL


def test_mask_input_batches_and_official_decoder(ov_predictor, ov_files, golden_cases, edge_golden):
    c = golden_cases["point1"]
    _, _, low = ov_predictor.predict(c["point_coords"], c["point_labels"])
    _, scores, _ = ov_predictor.predict(c["point_coords"], c["point_labels"], mask_input=low)
    np.testing.assert_allclose(scores, edge_golden["point1_maskin_scores"], rtol=0, atol=SCORE_TOL)
    # a batch equals the prompts one by one
    boxes = np.float32([[60, 45, 260, 205], [10, 10, 120, 90], [200, 100, 390, 290]])
    batch = ov_predictor.predict_batch(boxes=boxes)
    for i, box in enumerate(boxes):
        _, s, lo = ov_predictor.predict(box=box)
        assert rel_err(batch.low_res_logits[i], lo) < 1e-5
    official = OpenVinoBackend(ov_files[0], ov_files[2], num_threads=1, cache=False)
    assert not official.supports_mask_input and not official.provides_iou_scores
    with pytest.raises(ValueError, match="no mask input"):
        official.decode(ov_predictor.embedding.features, np.zeros((1, 2, 2), np.float32),
                        np.float32([[1, -1]]), mask_input=np.zeros((1, 1, 256, 256), np.float32))


def test_bad_files_and_devices(tmp_path, ov_files):
    with pytest.raises(FileNotFoundError, match="not found"):
        OpenVinoBackend(tmp_path / "missing_encoder.onnx", ov_files[1])
    junk = tmp_path / "junk_encoder.onnx"
    junk.write_bytes(b"not an onnx file")
    with pytest.raises(ValueError, match="could not be loaded"):
        OpenVinoBackend(junk, ov_files[1], cache=False)
    with pytest.raises(ValueError, match="swapped|not an EdgeSAM image encoder"):
        OpenVinoBackend(ov_files[1], ov_files[0], cache=False)
    with pytest.raises(ValueError, match="CPU"):
        OpenVinoBackend(ov_files[0], ov_files[1], device="cuda")


def test_load_model_picks_openvino_by_name():
    from napari_edgesam import load_model

    predictor = load_model("edgesam-nuclei", backend="openvino", num_threads=1, cache=False)
    assert predictor.backend.name == "openvino" and predictor.backend.supports_mask_input


def test_compiled_models_are_cached_under_the_project_cache(ov_files, tmp_path, monkeypatch, edge_golden):
    monkeypatch.setenv("NAPARI_EDGESAM_CACHE", str(tmp_path))
    first = OpenVinoBackend(ov_files[0], ov_files[1], num_threads=1)
    blobs = sorted((tmp_path / "openvino").glob("*.blob"))
    assert len(blobs) >= 2  # encoder and decoder (at least), compiled for this CPU
    x, _ = prepare_input(edge_golden["image"])
    second = OpenVinoBackend(ov_files[0], ov_files[1], num_threads=1)  # loaded from the cache
    assert sorted((tmp_path / "openvino").glob("*.blob")) == blobs
    np.testing.assert_array_equal(first.encode(x), second.encode(x))
    OpenVinoBackend(ov_files[0], ov_files[1], num_threads=1, cache=False)
    assert sorted((tmp_path / "openvino").glob("*.blob")) == blobs


def test_prior_runs_in_openvino_and_agrees_with_onnxruntime():
    from napari_edgesam.datasets import synthetic_nuclei_2d
    from napari_edgesam.inference.core.preprocess import to_rgb_uint8
    from napari_edgesam.inference.prior import load_prior
    from napari_edgesam.inference.prior.onnx_prior import OnnxBoxPrior
    from napari_edgesam.models import PACKAGED_DIR

    path = PACKAGED_DIR / "edgesam_nuclei" / "edge_sam_nuclei.prior.onnx"
    ov = OnnxBoxPrior(path, runtime="openvino", num_threads=1, cache=False)
    ort = OnnxBoxPrior(path, num_threads=1)
    assert ov.name == "openvino" and ort.name == "onnxruntime" and ov.settings == ort.settings
    x, size = prepare_input(to_rgb_uint8(synthetic_nuclei_2d(seed=5)[0]))
    (b1, s1), (b2, s2) = ov.propose(x, size), ort.propose(x, size)
    assert len(b1) == len(b2) >= 10
    np.testing.assert_allclose(b1, b2, atol=0.5)  # pixels of the 1024 frame
    np.testing.assert_allclose(s1, s2, atol=1e-3)
    # load_prior gives an OpenVINO predictor an OpenVINO prior
    from napari_edgesam import load_model

    predictor = load_model("edgesam-nuclei", backend="openvino", num_threads=1, cache=False)
    assert load_prior(path, predictor).name == "openvino"
    with pytest.raises(ValueError, match="runtime must be"):
        OnnxBoxPrior(path, runtime="tensorrt")
