"""The rewritten decoder (`model.fast_decoder`) computes what `MaskDecoder.predict_masks` computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_edgesam.inference.backends.torch_backend import TorchBackend
from napari_edgesam.model import build_edge_sam
from napari_edgesam.model.fast_decoder import (
    UPSCALE_CHUNK,
    ImageTokens,
    _upscaled_masks,
    _upscaled_masks_chunked,
    decode_one,
    predict_masks_fast,
    to_tokens,
)


@pytest.fixture(scope="module")
def model(golden_state_dict):
    return build_edge_sam(golden_state_dict)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(
    ("batch", "n_points", "mask", "shared_dense"),
    [(1, 2, False, False), (1, 2, False, True), (3, 4, False, True), (3, 1, True, False), (2, 3, False, False)],
)
def test_fast_decoder_matches_reference(model, batch, n_points, mask, shared_dense):
    gen = torch.Generator().manual_seed(batch * 10 + n_points)
    pe = model.prompt_encoder
    emb = torch.randn(1, 256, 64, 64, generator=gen)
    coords = torch.rand(batch, n_points, 2, generator=gen) * 1024
    labels = torch.randint(-1, 4, (batch, n_points), generator=gen)
    with torch.inference_mode():
        sparse = pe.embed_points(coords, labels, pad=False)
        if mask:
            dense = pe.embed_masks(torch.randn(batch, 1, 256, 256, generator=gen) * 5)
        else:
            dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, 64, 64)
        ref_masks, ref_iou = model.mask_decoder.predict_masks(emb, pe.get_dense_pe(), sparse, dense)
        if shared_dense:
            dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        masks, iou = predict_masks_fast(model.mask_decoder, emb, pe.get_dense_pe(), sparse, dense)
    assert masks.shape == ref_masks.shape == (batch, 4, 256, 256)
    assert iou.shape == ref_iou.shape == (batch, 4)
    assert _rel(masks, ref_masks) < 1e-5
    assert _rel(iou, ref_iou) < 1e-5
    # the same binary masks, apart from pixels within rounding of the threshold
    differ = (masks > 0) != (ref_masks > 0)
    assert np.all(ref_masks.abs()[differ].numpy() < 1e-4)


def test_upscaling_layout_matches_transposed_convolutions(model):
    """The cell-major matrix form of the two ConvTranspose2d layers puts every logit at the
    pixel the convolutions put it (a wrong permutation would still give the right values)."""
    dec = model.mask_decoder
    gen = torch.Generator().manual_seed(3)
    keys = torch.randn(2, 64 * 64, 256, generator=gen)
    hyper = torch.randn(2, 4, 32, generator=gen)
    with torch.inference_mode():
        grid = keys.transpose(1, 2).reshape(2, 256, 64, 64)
        up = dec.output_upscaling(grid)
        ref = (hyper @ up.reshape(2, 32, -1)).reshape(2, 4, 256, 256)
        out = _upscaled_masks(dec, keys, hyper, 64, 64)
    assert _rel(out, ref) < 1e-5
    assert 64 * 64 % UPSCALE_CHUNK == 0 or UPSCALE_CHUNK > 64 * 64


def test_backend_fast_and_reference_paths_agree(golden_state_dict, golden_cases):
    fast = TorchBackend(build_edge_sam(golden_state_dict), "cpu", jit=False)
    ref = TorchBackend(build_edge_sam(golden_state_dict), "cpu", jit=False, fast_decoder=False)
    rng = np.random.default_rng(0)
    embs = [rng.standard_normal((1, 256, 64, 64)).astype(np.float32) for _ in range(2)]
    embs.append(embs[0].astype(np.float16))  # cached embeddings are fp16
    coords = np.array([[[300.0, 200.0], [700.0, 650.0]], [[20.0, 1000.0], [0.0, 0.0]]], np.float32)
    labels = np.array([[1, 0], [1, -1]], np.float32)
    mask = rng.standard_normal((2, 1, 256, 256)).astype(np.float32) * 4
    # alternate between embeddings: the backend's token cache must follow the array passed
    for emb in embs + embs[::-1]:
        for m in (None, mask):
            got, want = fast.decode(emb, coords, labels, m), ref.decode(emb, coords, labels, m)
            for g, w in zip(got, want):
                assert g.shape == w.shape
                assert np.abs(g - w).max() / np.abs(w).max() < 1e-5


@pytest.mark.parametrize(("n_points", "mask", "chunk", "tokens"),
                         [(2, False, 512, slice(None)), (1, False, 300, slice(0, 1)), (3, True, 1024, slice(1, 4)),
                          (5, False, 4096, slice(2, 3))])
def test_single_prompt_path_matches_reference(model, n_points, mask, chunk, tokens):
    """decode_one (cached first block, fused chunked passes, chosen masks only) computes what
    the module-by-module decoder computes, for chunk sizes that do not divide the 4096 tokens."""
    gen = torch.Generator().manual_seed(n_points + chunk)
    pe = model.prompt_encoder
    emb = torch.randn(1, 256, 64, 64, generator=gen)
    coords = torch.rand(1, n_points, 2, generator=gen) * 1024
    labels = torch.randint(-1, 4, (1, n_points), generator=gen)
    with torch.inference_mode():
        sparse = pe.embed_points(coords, labels, pad=False)
        if mask:
            dense = pe.embed_masks(torch.randn(1, 1, 256, 256, generator=gen) * 5)
        else:
            dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 64, 64)
        ref_masks, ref_iou = model.mask_decoder.predict_masks(emb, pe.get_dense_pe(), sparse, dense)
        image = ImageTokens(model.mask_decoder, to_tokens(emb + dense), to_tokens(pe.get_dense_pe()), shared=not mask)
        masks, iou = decode_one(model.mask_decoder, image, sparse, (64, 64), mask_tokens=tokens, chunk=chunk)
    want = ref_masks[:, tokens]
    assert masks.shape == want.shape and iou.shape == ref_iou.shape == (1, 4)
    assert _rel(masks, want) < 1e-5
    assert _rel(iou, ref_iou) < 1e-5
    differ = (masks > 0) != (want > 0)
    assert np.all(want.abs()[differ].numpy() < 1e-4)


@pytest.mark.parametrize("tokens", [slice(0, 1), slice(1, 4), slice(None), slice(2, 3)])
def test_single_prompt_path_without_iou_scores(model, tokens):
    """Without the IoU scores the final attention runs only for the chosen mask tokens: same
    masks, bit for bit up to BLAS summation order, and no scores."""
    gen = torch.Generator().manual_seed(7)
    pe = model.prompt_encoder
    emb = torch.randn(1, 256, 64, 64, generator=gen)
    coords, labels = torch.rand(1, 2, 2, generator=gen) * 1024, torch.tensor([[1, 0]])
    with torch.inference_mode():
        sparse = pe.embed_points(coords, labels, pad=False)
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 64, 64)
        ref_masks, _ = model.mask_decoder.predict_masks(emb, pe.get_dense_pe(), sparse, dense)
        image = ImageTokens(model.mask_decoder, to_tokens(emb + dense), to_tokens(pe.get_dense_pe()))
        full, iou = decode_one(model.mask_decoder, image, sparse, (64, 64), mask_tokens=tokens)
        masks, none = decode_one(model.mask_decoder, image, sparse, (64, 64), mask_tokens=tokens, need_iou=False)
    assert none is None and iou.shape == (1, 4)
    assert masks.shape == full.shape == ref_masks[:, tokens].shape
    assert _rel(masks, full) < 1e-6
    assert _rel(masks, ref_masks[:, tokens]) < 1e-5


def test_backend_without_iou_scores(golden_state_dict):
    """``need_iou=False`` (masks ranked by stability): NaN scores, the same masks; the predictor
    asks for it only when it ranks by stability, so ``segment`` is unchanged."""
    from napari_edgesam.inference.core.predictor import EdgeSamPredictor

    backend = TorchBackend(build_edge_sam(golden_state_dict), "cpu")
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((1, 256, 64, 64)).astype(np.float32)
    coords, labels = np.array([[[300.0, 200.0], [0.0, 0.0]]], np.float32), np.array([[1.0, -1.0]], np.float32)
    full, iou = backend.decode(emb, coords, labels)
    masks, nan = backend.decode(emb, coords, labels, need_iou=False)
    assert np.isnan(nan).all() and nan.shape == iou.shape and np.isfinite(iou).all()
    assert np.abs(masks - full).max() <= 1e-5 * np.abs(full).max()
    pred = EdgeSamPredictor(backend, "golden")
    image = (rng.random((300, 400)) * 255).astype(np.uint8)
    pred.set_image(image)
    m1, s1, low1 = pred.predict(np.array([[120.0, 80.0]]), np.ones(1), num_multimask_outputs=4)
    m2, s2, low2 = pred.predict(np.array([[120.0, 80.0]]), np.ones(1), num_multimask_outputs=4, use_stability_score=True)
    assert np.isfinite(s1).all() and np.isfinite(s2).all()
    assert np.abs(low1 - low2).max() <= 1e-5 * np.abs(low1).max()


@pytest.mark.parametrize("rows", [1, 5, 8, 64])
def test_chunked_upscaling_layout(model, rows):
    """The gather that puts chunked cell-major logits in image order matches the convolutions
    (5 rows per chunk is rounded down to a divisor of 64)."""
    dec = model.mask_decoder
    gen = torch.Generator().manual_seed(rows)
    keys = torch.randn(64 * 64, 256, generator=gen)
    hyper = torch.randn(3, 32, generator=gen)
    with torch.inference_mode():
        up = dec.output_upscaling(keys.T.reshape(1, 256, 64, 64))
        ref = (hyper @ up.reshape(32, -1)).reshape(3, 256, 256)
        out = _upscaled_masks_chunked(dec, keys, hyper, 64, 64, rows)
    assert _rel(out, ref) < 1e-5


def test_backend_without_iou_scores_with_every_hint(golden_state_dict):
    """``need_iou=False`` together with the other hints (chosen tokens, ``needed_at`` skips,
    windows) and with mask inputs: the same masks as with the scores, the same prompts
    skipped, NaN scores for every prompt (skipped ones included)."""
    from napari_edgesam.constants import SKIPPED_LOGIT

    backend = TorchBackend(build_edge_sam(golden_state_dict), "cpu")
    rng = np.random.default_rng(5)
    emb = rng.standard_normal((1, 256, 64, 64)).astype(np.float32)
    coords = rng.uniform(0, 1024, (5, 1, 2)).astype(np.float32)
    labels = np.ones((5, 1), np.float32)
    at = rng.integers(0, 256, (5, 2))
    windows = np.array([[0, 256, 0, 256], [10, 90, 30, 200], [100, 101, 5, 9], [0, 40, 0, 40], [200, 256, 0, 256]])
    masks_in = rng.standard_normal((5, 1, 256, 256)).astype(np.float32)
    seen = set()
    for tokens in (slice(0, 1), slice(1, 4)):
        for extra in ({"needed_at": at}, {"windows": windows}, {"needed_at": at, "windows": windows}):
            for mask_input in (None, masks_in):
                full, iou = backend.decode(emb, coords, labels, mask_input, mask_tokens=tokens, **extra)
                masks, nan = backend.decode(emb, coords, labels, mask_input, mask_tokens=tokens, need_iou=False, **extra)
                assert masks.shape == full.shape == (5, len(range(4)[tokens]), 256, 256)
                assert np.isnan(nan).all() and nan.shape == iou.shape == (5, 4) and np.isfinite(iou).all()
                skipped = (full == SKIPPED_LOGIT).all(axis=(1, 2, 3))
                assert ((masks == SKIPPED_LOGIT).all(axis=(1, 2, 3)) == skipped).all()
                seen.add((tokens.start, "needed_at" in extra, bool(skipped.any()), bool((~skipped).any())))
                scale = max(1.0, float(np.abs(np.where(full == SKIPPED_LOGIT, 0, full)).max()))
                assert np.abs(masks - full).max() <= 1e-5 * scale
    # with needed_at some prompts were skipped and some decoded (both paths ran)
    assert {(t, hinted) for t, hinted, some_skipped, some_kept in seen if some_skipped and some_kept} == {
        (0, True), (1, True)}
