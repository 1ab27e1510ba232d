"""ONNX export and the onnxruntime backend, checked against the golden EdgeSAM outputs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from napari_edgesam.export import onnx_export  # noqa: E402
from napari_edgesam.inference.backends import Backend  # noqa: E402
from napari_edgesam.inference.backends.onnx_backend import OnnxBackend  # noqa: E402
from napari_edgesam.inference.core.postprocess import stability_score  # noqa: E402
from napari_edgesam.inference.core.predictor import EdgeSamPredictor  # noqa: E402
from napari_edgesam.inference.core.preprocess import prepare_input  # noqa: E402
from napari_edgesam.model import build_edge_sam  # noqa: E402

REL_TOL = 1e-4  # max|diff| / max|ref|, the golden README's float32 agreement
SCORE_TOL = 1e-4
# Stability scores count pixels with logits beyond +-1: a logit within float noise of the
# threshold may flip, moving a score by 1/(pixels in the loose mask) ~ 1e-5 each.
STABILITY_TOL = 1e-3


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def golden_model(golden_state_dict):
    return build_edge_sam(golden_state_dict)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory, golden_model) -> dict:
    out = tmp_path_factory.mktemp("onnx")
    enc, dec = onnx_export.export_onnx(golden_model, out, "golden")
    official = onnx_export.export_decoder(golden_model, out / "official_decoder.onnx", official_interface=True)
    return {"encoder": enc, "decoder": dec, "decoder_official": official}


@pytest.fixture(scope="module")
def bilinear_encoder(tmp_path_factory, golden_model):
    path = tmp_path_factory.mktemp("onnx_bilinear") / "bilinear_encoder.onnx"
    return onnx_export.export_encoder(golden_model, path, upsample_mode="bilinear")


@pytest.fixture(scope="module")
def golden_input(edge_golden) -> np.ndarray:
    x, input_size = prepare_input(edge_golden["image"])
    assert tuple(input_size) == tuple(edge_golden["input_size"])
    return x


@pytest.fixture(scope="module")
def ext_predictor(onnx_files, edge_golden) -> EdgeSamPredictor:
    p = EdgeSamPredictor(OnnxBackend(onnx_files["encoder"], onnx_files["decoder"]), "golden")
    p.set_image(edge_golden["image"])
    return p


@pytest.fixture(scope="module")
def official_predictor(onnx_files, ext_predictor) -> EdgeSamPredictor:
    p = EdgeSamPredictor(OnnxBackend(onnx_files["encoder"], onnx_files["decoder_official"]), "golden")
    p.set_embedding(ext_predictor.embedding)
    return p


# -- export --------------------------------------------------------------------------------
def test_export_writes_single_files_without_leftovers(onnx_files):
    import onnx

    folder = onnx_files["encoder"].parent
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(p.name for p in onnx_files.values())  # no temp or external-data files
    model = onnx.load(onnx_files["decoder"], load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert [i.name for i in model.graph.input] == list(onnx_export.EXTENDED_DECODER_INPUTS)
    assert [o.name for o in model.graph.output] == list(onnx_export.EXTENDED_DECODER_OUTPUTS)


def test_failed_export_leaves_nothing(tmp_path, golden_model, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("export failed")

    monkeypatch.setattr(torch.onnx, "export", boom)
    with pytest.raises(RuntimeError, match="export failed"):
        onnx_export.export_decoder(golden_model, tmp_path / "d.onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_rejects_bad_arguments(tmp_path, golden_model):
    with pytest.raises(ValueError, match="upsample_mode"):
        onnx_export.export_encoder(golden_model, tmp_path / "e.onnx", upsample_mode="nearest")
    with pytest.raises(TypeError, match="EdgeSam"):
        onnx_export.export_decoder(golden_model.mask_decoder, tmp_path / "d.onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_leaves_model_unchanged(golden_model):
    # The exporter works on copies: the model stays unfused and bicubic.
    assert golden_model.image_encoder.upsample_mode == "bicubic"
    assert any("bn" in name for name, _ in golden_model.image_encoder.named_modules())


# -- encoder -------------------------------------------------------------------------------
def test_encoder_matches_golden(ext_predictor, edge_golden):
    emb = ext_predictor.embedding  # set_image on the golden image, through the ONNX encoder
    assert emb.features.shape == (1, 256, 64, 64) and emb.features.dtype == np.float32
    assert emb.original_size == tuple(edge_golden["original_size"])
    assert emb.input_size == tuple(edge_golden["input_size"])
    assert rel_err(emb.features, edge_golden["image_embeddings"]) < REL_TOL


@pytest.mark.slow
def test_bilinear_encoder_matches_torch_bilinear(
    bilinear_encoder, onnx_files, golden_input, golden_state_dict, edge_golden
):
    model = build_edge_sam(golden_state_dict, upsample_mode="bilinear")
    with torch.inference_mode():
        ref = model.image_encoder(torch.from_numpy(golden_input)).numpy()
    backend = OnnxBackend(bilinear_encoder, onnx_files["decoder"])
    emb = backend.encode(golden_input)
    assert rel_err(emb, ref) < REL_TOL
    # ... and it really is the other upsampling (far from the bicubic golden).
    assert rel_err(emb, edge_golden["image_embeddings"]) > 100 * REL_TOL


# -- decoder through the predictor -----------------------------------------------------------
def _prompts(case: dict) -> dict:
    return {"point_coords": case.get("point_coords"), "point_labels": case.get("point_labels"),
            "box": case.get("box")}


CASES = ("box", "point1", "points3", "box_point")


@pytest.mark.parametrize("n", [1, 3, 4])
@pytest.mark.parametrize("case", CASES)
def test_extended_decoder_reproduces_golden(ext_predictor, golden_cases, edge_golden, case, n):
    assert ext_predictor.backend.provides_iou_scores and ext_predictor.backend.supports_mask_input
    masks, scores, low = ext_predictor.predict(**_prompts(golden_cases[case]), num_multimask_outputs=n)
    assert low.shape == (n, 256, 256) and masks.shape == (n, 300, 400) and masks.dtype == bool
    np.testing.assert_allclose(scores, edge_golden[f"{case}_n{n}_scores"], rtol=0, atol=SCORE_TOL)
    key = f"{case}_n{n}_low_res_logits"
    if key in edge_golden:
        assert rel_err(low, edge_golden[key]) < REL_TOL
    if n == 4:
        stab = stability_score(low)
        np.testing.assert_allclose(stab, edge_golden[f"{case}_n4_stability_scores"], rtol=0, atol=STABILITY_TOL)


@pytest.mark.parametrize("key", ["box_n1", "points3_n3", "point1_n4"])
def test_full_size_logits_match_golden(ext_predictor, golden_cases, edge_golden, key):
    case, n = key.rsplit("_n", 1)
    logits, _, _ = ext_predictor.predict(
        **_prompts(golden_cases[case]), num_multimask_outputs=int(n), return_logits=True
    )
    assert rel_err(logits, edge_golden[f"{key}_masks_logits"]) < REL_TOL


def test_mask_input_reproduces_golden(ext_predictor, golden_cases, edge_golden):
    _, scores, low = ext_predictor.predict(
        **_prompts(golden_cases["point1"]), mask_input=edge_golden["point1_n1_low_res_logits"]
    )
    assert rel_err(low, edge_golden["point1_maskin_low_res_logits"]) < REL_TOL
    np.testing.assert_allclose(scores, edge_golden["point1_maskin_scores"], rtol=0, atol=SCORE_TOL)
    # The mask input changes the result (has_mask_input is honoured).
    assert rel_err(low, edge_golden["point1_n1_low_res_logits"]) > 100 * REL_TOL


@pytest.mark.parametrize("case", CASES)
def test_official_decoder_reproduces_golden(official_predictor, golden_cases, edge_golden, case):
    backend = official_predictor.backend
    assert not backend.provides_iou_scores and not backend.supports_mask_input
    _, scores, low = official_predictor.predict(**_prompts(golden_cases[case]), num_multimask_outputs=4)
    assert rel_err(low, edge_golden[f"{case}_n4_low_res_logits"]) < REL_TOL
    # Without IoU scores the predictor returns stability scores.
    np.testing.assert_allclose(scores, edge_golden[f"{case}_n4_stability_scores"], rtol=0, atol=STABILITY_TOL)


def test_official_graph_scores_are_stability_and_no_padding_is_added(official_predictor, ext_predictor):
    sess = official_predictor.backend.decoder
    emb = ext_predictor.embedding.features
    point = np.float32([[[512.0, 384.0]]])
    feed = {"image_embeddings": emb, "point_coords": point, "point_labels": np.float32([[1.0]])}
    scores, masks = sess.run(["scores", "masks"], feed)
    assert scores.shape == (1, 4) and masks.shape == (1, 4, 256, 256)
    np.testing.assert_allclose(scores, stability_score(masks), rtol=0, atol=1e-6)
    # Appending the padding point by hand changes the result: the graph does not add it.
    padded = {**feed, "point_coords": np.float32([[[512.0, 384.0], [0.0, 0.0]]]),
              "point_labels": np.float32([[1.0, -1.0]])}
    (masks_padded,) = sess.run(["masks"], padded)
    assert rel_err(masks, masks_padded) > 1e-3


def test_official_decoder_rejects_mask_input(official_predictor, golden_cases, edge_golden):
    with pytest.raises(ValueError, match="mask input"):
        official_predictor.predict(
            **_prompts(golden_cases["point1"]), mask_input=edge_golden["point1_n1_low_res_logits"]
        )
    with pytest.raises(ValueError, match="mask input"):
        official_predictor.backend.decode(
            official_predictor.embedding.features, np.zeros((1, 1, 2), np.float32),
            np.ones((1, 1), np.float32), np.zeros((1, 1, 256, 256), np.float32),
        )


@pytest.mark.parametrize("which", ["ext", "official"])
def test_batch_equals_single_calls(which, ext_predictor, official_predictor, edge_golden):
    predictor = ext_predictor if which == "ext" else official_predictor
    coords = np.float32([[[200, 150], [100, 75]], [[325, 250], [50, 40]], [[80, 200], [300, 100]]])
    labels = np.float32([[1, 0], [1, 1], [1, 0]])
    boxes = np.float32([[60, 45, 260, 205], [150, 100, 380, 290], [10, 10, 120, 90]])
    mask_in = None
    if which == "ext":
        rng = np.random.default_rng(3)
        mask_in = (edge_golden["point1_n1_low_res_logits"][None] * rng.uniform(0.5, 1.5, (3, 1, 1, 1)))
    batch = predictor.predict_batch(coords, labels, boxes, mask_in, num_multimask_outputs=4)
    assert batch.low_res_logits.shape == (3, 4, 256, 256) and batch.masks.shape == (3, 4, 300, 400)
    for i in range(3):
        _, scores, low = predictor.predict(
            coords[i], labels[i], boxes[i], None if mask_in is None else mask_in[i], num_multimask_outputs=4
        )
        assert rel_err(batch.low_res_logits[i], low) < 1e-5
        np.testing.assert_allclose(batch.scores[i], scores, rtol=0, atol=1e-5)
    # The prompts differ, so the batch entries must too.
    assert rel_err(batch.low_res_logits[0], batch.low_res_logits[1]) > 1e-2


def test_label_rules_match_torch(ext_predictor, golden_predictor):
    """Every label (-2 ignore, -1 pad, 0, 1, 2, 3) gives the torch backend's logits."""
    emb = ext_predictor.embedding.features
    coords = np.float32([[[100, 200], [700, 300], [420, 610], [250, 100], [600, 500], [0, 0]]])
    labels = np.float32([[1, 0, -2, 2, 3, -1]])
    low, iou = ext_predictor.backend.decode(emb, coords, labels)
    ref_low, ref_iou = golden_predictor.backend.decode(emb, coords, labels)
    assert rel_err(low, ref_low) < REL_TOL
    np.testing.assert_allclose(iou, ref_iou, rtol=0, atol=SCORE_TOL)
    # An ignored point has a zero embedding: its position does not matter.
    moved = coords.copy()
    moved[0, 2] = (30, 950)
    low_moved, _ = ext_predictor.backend.decode(emb, moved, labels)
    np.testing.assert_array_equal(low_moved, low)
    # ... while moving a real point does.
    moved[0, 0] = (900, 40)
    low_moved, _ = ext_predictor.backend.decode(emb, moved, labels)
    assert rel_err(low_moved, low) > 1e-3


# -- backend construction --------------------------------------------------------------------
def test_backend_satisfies_protocol(ext_predictor):
    assert isinstance(ext_predictor.backend, Backend)
    assert ext_predictor.backend.name == "onnxruntime"


def test_not_an_onnx_file(tmp_path, onnx_files):
    fake = tmp_path / "model_encoder.onnx"
    fake.write_text("this is not a model\n")
    with pytest.raises(ValueError, match="model_encoder.onnx") as err:
        OnnxBackend(fake, onnx_files["decoder"])
    assert "ONNX" in str(err.value)


def test_decoder_passed_as_encoder(onnx_files):
    with pytest.raises(ValueError, match="not an EdgeSAM image encoder") as err:
        OnnxBackend(onnx_files["decoder"], onnx_files["decoder"])
    assert onnx_files["decoder"].name in str(err.value)


def test_encoder_passed_as_decoder(onnx_files):
    with pytest.raises(ValueError, match="not an EdgeSAM prompt decoder") as err:
        OnnxBackend(onnx_files["encoder"], onnx_files["encoder"])
    assert onnx_files["encoder"].name in str(err.value)


def test_missing_file(tmp_path, onnx_files):
    with pytest.raises(FileNotFoundError, match="nowhere_decoder.onnx"):
        OnnxBackend(onnx_files["encoder"], tmp_path / "nowhere_decoder.onnx")


@pytest.mark.parametrize("device", ["mps", "gpu", "cuda:x"])
def test_unknown_device(onnx_files, device):
    with pytest.raises(ValueError, match="device"):
        OnnxBackend(onnx_files["encoder"], onnx_files["decoder"], device=device)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA present")
def test_cuda_unavailable(onnx_files):
    with pytest.raises(ValueError, match="CUDAExecutionProvider"):
        OnnxBackend(onnx_files["encoder"], onnx_files["decoder"], device="cuda")


def test_num_threads_and_bad_input_shapes(onnx_files):
    backend = OnnxBackend(onnx_files["encoder"], onnx_files["decoder"], num_threads=1)
    with pytest.raises(ValueError, match="encoder input"):
        backend.encode(np.zeros((3, 1024, 1024), np.float32))
    emb = np.zeros((1, 256, 64, 64), np.float32)
    with pytest.raises(ValueError, match="mask_input"):
        backend.decode(emb, np.zeros((2, 1, 2), np.float32), np.ones((2, 1), np.float32),
                       np.zeros((3, 1, 256, 256), np.float32))
    with pytest.raises(ValueError, match="num_threads"):
        OnnxBackend(onnx_files["encoder"], onnx_files["decoder"], num_threads=0)


# -- CLI -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_export_official_bilinear(tmp_path, golden_checkpoint, onnx_files, bilinear_encoder):
    from napari_edgesam.cli import main

    out = tmp_path / "out"
    rc = main(["export", str(golden_checkpoint), "-o", str(out), "--official-decoder", "--bilinear"])
    assert rc == 0
    enc, dec = out / "edge_sam_encoder.onnx", out / "edge_sam_decoder.onnx"
    backend = OnnxBackend(enc, dec)
    assert not backend.supports_mask_input
    ref = OnnxBackend(bilinear_encoder, onnx_files["decoder_official"])
    x = np.random.default_rng(0).standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    emb = backend.encode(x)
    assert rel_err(emb, ref.encode(x)) < 1e-6


def test_cli_export_rejects_bad_model(tmp_path, capsys):
    from napari_edgesam.cli import main

    assert main(["export", str(tmp_path / "model.onnx"), "-o", str(tmp_path)]) == 1
    assert "registered name" in capsys.readouterr().err


def test_cli_resolves_registered_names(monkeypatch, golden_checkpoint):
    from napari_edgesam.cli import export as cli_export
    from napari_edgesam.inference.loading import weights

    calls = []

    def fake_fetch(name, kind, **kwargs):
        calls.append((name, kind))
        return golden_checkpoint

    monkeypatch.setattr(weights, "fetch_weight", fake_fetch)
    assert cli_export._checkpoint("edgesam") == golden_checkpoint
    assert calls == [("edgesam", "pth")]
    assert cli_export._checkpoint(str(golden_checkpoint)) == golden_checkpoint
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        cli_export._checkpoint(str(golden_checkpoint.parent / "missing.pth"))
