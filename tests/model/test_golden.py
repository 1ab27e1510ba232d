"""The model and predictor reproduce the official EdgeSAM outputs (golden fixture).

Tolerances follow tests/data/golden/README.md: relative max error ~1e-4 for embeddings and
logits, 1e-4 absolute for scores, identical thresholded masks except near-zero logits.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_edgesam.inference.backends.torch_backend import TorchBackend  # noqa: E402
from napari_edgesam.inference.core.predictor import EdgeSamPredictor  # noqa: E402
from napari_edgesam.model import build_edge_sam  # noqa: E402

EMB_RTOL = 3e-4  # measured ~1e-5; oneDNN's reduction order varies a little with machine load
LOGIT_RTOL = 1e-4
SCORE_ATOL = 1e-4
CASES = ("box", "point1", "points3", "box_point")


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max())


def assert_masks_match(mask: np.ndarray, ref_logits: np.ndarray, margin: float = 1e-3) -> None:
    differ = mask != (ref_logits > 0)
    assert not (differ & (np.abs(ref_logits) > margin)).any(), "masks differ away from the boundary"


@pytest.fixture(scope="module", params=["unfused", "default"])
def predictor(request, golden_state_dict, edge_golden):
    model = build_edge_sam(golden_state_dict)
    if request.param == "unfused":
        backend = TorchBackend(model, "cpu", fuse=False, channels_last=False)
    else:
        backend = TorchBackend(model, "cpu")
    p = EdgeSamPredictor(backend)
    p.set_image(edge_golden["image"])
    return p


def test_model_parameter_counts(golden_state_dict):
    model = build_edge_sam(golden_state_dict)
    count = lambda m: sum(p.numel() for p in m.parameters()) + sum(b.numel() for b in m.buffers() if b.dtype.is_floating_point and b.ndim == 2)  # noqa: E731
    assert sum(p.numel() for p in model.image_encoder.parameters()) == 5_517_552
    assert sum(p.numel() for p in model.mask_decoder.parameters()) == 4_058_340
    assert count(model.prompt_encoder) == 6_476  # incl. the random-Fourier matrix buffer
    assert len(model.state_dict()) == 821


def test_preprocessing_matches(edge_golden):
    from napari_edgesam.inference.core.preprocess import resize_longest_side, resized_shape

    resized = resize_longest_side(edge_golden["image"])
    np.testing.assert_array_equal(resized, edge_golden["resized_image"])
    assert resized_shape(tuple(edge_golden["original_size"])) == tuple(edge_golden["input_size"])


def test_embeddings(predictor, edge_golden):
    emb = predictor.embedding
    assert emb.features.shape == (1, 256, 64, 64)
    assert emb.original_size == tuple(edge_golden["original_size"])
    assert emb.input_size == tuple(edge_golden["input_size"])
    assert rel_err(emb.features, edge_golden["image_embeddings"]) < EMB_RTOL


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("n", [1, 3, 4])
def test_decoder_cases(predictor, edge_golden, golden_cases, case, n):
    c = golden_cases[case]
    masks, scores, low = predictor.predict(
        c.get("point_coords"), c.get("point_labels"), c.get("box"), num_multimask_outputs=n
    )
    assert masks.shape == (n, 300, 400) and masks.dtype == bool
    np.testing.assert_allclose(scores, edge_golden[f"{case}_n{n}_scores"], atol=SCORE_ATOL)
    key = f"{case}_n{n}_low_res_logits"
    if key in edge_golden:
        assert rel_err(low, edge_golden[key]) < LOGIT_RTOL * 3
    if n == 4:
        _, stab, _ = predictor.predict(
            c.get("point_coords"), c.get("point_labels"), c.get("box"),
            num_multimask_outputs=4, use_stability_score=True,
        )
        np.testing.assert_allclose(stab, edge_golden[f"{case}_n4_stability_scores"], atol=SCORE_ATOL)


@pytest.mark.parametrize(
    "case,n,key", [("box", 1, "box_n1"), ("points3", 3, "points3_n3"), ("point1", 4, "point1_n4")]
)
def test_full_resolution_logits_and_masks(predictor, edge_golden, golden_cases, case, n, key):
    c = golden_cases[case]
    logits, _, _ = predictor.predict(
        c.get("point_coords"), c.get("point_labels"), c.get("box"),
        num_multimask_outputs=n, return_logits=True,
    )
    ref = edge_golden[f"{key}_masks_logits"]
    assert logits.shape == ref.shape
    assert rel_err(logits, ref) < LOGIT_RTOL * 3
    masks, _, _ = predictor.predict(
        c.get("point_coords"), c.get("point_labels"), c.get("box"), num_multimask_outputs=n
    )
    assert_masks_match(masks, ref)


def test_mask_input_refinement(predictor, edge_golden, golden_cases):
    c = golden_cases["point1"]
    _, _, low = predictor.predict(c["point_coords"], c["point_labels"], num_multimask_outputs=1)
    _, scores, low2 = predictor.predict(
        c["point_coords"], c["point_labels"], mask_input=low, num_multimask_outputs=1
    )
    assert rel_err(low2, edge_golden["point1_maskin_low_res_logits"]) < LOGIT_RTOL * 3
    np.testing.assert_allclose(scores, edge_golden["point1_maskin_scores"], atol=SCORE_ATOL)


def test_layout_error_is_caught(golden_state_dict, edge_golden, golden_cases):
    """A transposed weight (same shape) must break agreement: the tests can fail."""
    sd = dict(golden_state_dict)
    key = "mask_decoder.transformer.layers.0.self_attn.q_proj.weight"
    sd[key] = sd[key].t().contiguous()
    p = EdgeSamPredictor(TorchBackend(build_edge_sam(sd), "cpu"))
    p.set_embedding(
        __import__("napari_edgesam.inference.core.predictor", fromlist=["ImageEmbedding"]).ImageEmbedding(
            edge_golden["image_embeddings"], (300, 400), (768, 1024)
        )
    )
    c = golden_cases["box"]
    _, _, low = p.predict(box=c["box"])
    assert rel_err(low, edge_golden["box_n1_low_res_logits"]) > 1e-2


def test_preprocessing_off_by_one_is_caught(golden_predictor, edge_golden):
    """Embedding a one-pixel-shifted image moves the embedding well beyond tolerance."""
    shifted = np.roll(edge_golden["image"], 1, axis=1)
    emb = golden_predictor.encode(shifted)
    assert rel_err(emb.features, edge_golden["image_embeddings"]) > 10 * EMB_RTOL
