"""Preprocessing under attack: memory of the conversion, any channel count, degenerate shapes,
bad gamma and dtypes (issue 12, items 4, 5 and 9)."""

from __future__ import annotations

import inspect
import tracemalloc
from collections.abc import Sequence

import numpy as np
import pytest

from napari_edgesam.inference.core import preprocess
from napari_edgesam.inference.core.predictor import ImageEmbedding
from napari_edgesam.inference.core.preprocess import prepare_input, resized_shape, to_rgb_uint8


# -- the unchunked conversion as it was before (one float64 pass over the whole image) ---------
def _ref_stretch(x, limits, percentiles, gamma):
    x = x.astype(np.float32, copy=False)
    finite = np.isfinite(x)
    if limits is None:
        if not finite.any():
            return np.zeros(x.shape, np.float32)
        lo, hi = np.percentile(x[finite], percentiles)
    else:
        lo, hi = float(limits[0]), float(limits[1])
    scale = 1.0 / (hi - lo) if hi > lo else 0.0
    y = np.clip((np.where(finite, x, lo) - lo) * scale, 0.0, 1.0)
    return y**gamma if gamma != 1.0 else y


def _ref_to_rgb(image, *, channel_axis=None, contrast_limits=None, gamma=1.0,
                percentiles: Sequence[float] = (0.5, 99.5)):
    arr = np.asarray(image)
    arr = arr[..., None] if arr.ndim == 2 else np.moveaxis(arr, -1 if channel_axis is None else channel_axis, -1)
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.dtype == np.uint8 and contrast_limits is None and gamma == 1.0 and arr.shape[-1] in (1, 3):
        out = arr
    elif arr.shape[-1] in (1, 3):
        out = _ref_stretch(arr, contrast_limits, percentiles, gamma)
    else:
        out = np.mean([_ref_stretch(arr[..., c], contrast_limits, percentiles, gamma)
                       for c in range(arr.shape[-1])], axis=0)[..., None]
    if out.dtype != np.uint8:
        out = np.round(out * 255.0).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out)


def _images():
    rng = np.random.default_rng(0)
    nan_float = (rng.random((150, 130)) * 1e4).astype(np.float32)
    nan_float[::7] = np.nan
    nan_float[3, 3] = np.inf
    return [
        rng.integers(0, 4000, (301, 257), dtype=np.uint16),
        nan_float,
        rng.standard_normal((123, 77, 3)),
        rng.integers(-5, 2**30, (50, 60), dtype=np.int64),
        rng.integers(0, 65535, (64, 40, 4), dtype=np.uint16),
        rng.integers(0, 256, (90, 70), dtype=np.uint8),
        (rng.random((40, 50, 2)) * 300).astype(np.float32),  # a float composite worked before
    ]


@pytest.mark.parametrize("kwargs", [{}, {"gamma": 0.7}, {"contrast_limits": (10, 3000)}, {"percentiles": (2, 98)}])
@pytest.mark.parametrize("chunk_bytes", [1 << 10, 64 << 20])
def test_chunked_conversion_equals_the_unchunked_one(monkeypatch, kwargs, chunk_bytes):
    monkeypatch.setattr(preprocess, "CHUNK_BYTES", chunk_bytes)
    for img in _images():
        expected = _ref_to_rgb(img, **kwargs)
        got = to_rgb_uint8(img, **kwargs)
        assert got.shape == expected.shape and got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected, err_msg=f"{img.dtype} {img.shape} {kwargs}")


def test_peak_memory_of_a_uint16_conversion_is_a_small_multiple_of_the_input():
    """It was ~12x (float64 copies of the whole image); now: a float32 copy of the values for the
    percentiles (2x for uint16) or the uint8 output (1.5x) plus a few MiB of scratch."""
    img = np.random.default_rng(1).integers(0, 4000, (4000, 4000), dtype=np.uint16)  # 32 MB
    tracemalloc.start()
    try:
        out = to_rgb_uint8(img)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (4000, 4000, 3)
    assert peak / img.nbytes < 3.0, f"peak {peak / 1e6:.0f} MB for a {img.nbytes / 1e6:.0f} MB image"


def test_percentiles_are_those_of_the_whole_image():
    img = np.zeros((1000, 40), np.uint16)
    img[-10:] = 1000  # only the last rows are bright: every chunk must count
    out = to_rgb_uint8(img, percentiles=(0, 100))
    assert out[0, 0, 0] == 0 and out[-1, 0, 0] == 255


# -- any number of channels ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("n_channels", [2, 5, 6])
def test_composite_of_any_channel_count(dtype, n_channels):
    rng = np.random.default_rng(n_channels)
    hwc = rng.integers(0, 200, (48, 64, n_channels)).astype(dtype)
    out = to_rgb_uint8(hwc)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    np.testing.assert_array_equal(to_rgb_uint8(np.moveaxis(hwc, -1, 0), channel_axis=0), out)
    if dtype == np.uint8:  # used as is: the composite is the mean of the channels
        diff = out[..., 0].astype(np.float64) - hwc.mean(-1, dtype=np.float64)
        assert np.abs(diff).max() <= 0.5 + 1e-6


def test_composite_normalises_each_channel():
    """A dim and a bright channel of the same pattern weigh the same."""
    ramp = np.tile(np.arange(64, dtype=np.uint16), (32, 1))
    two = np.stack([ramp, ramp * 100], axis=-1)
    np.testing.assert_array_equal(to_rgb_uint8(two, percentiles=(0, 100)), to_rgb_uint8(ramp, percentiles=(0, 100)))
    # 6 channels, one of them the pattern and five empty: the composite is the pattern / 6
    six = np.zeros((32, 64, 6), np.uint8)
    six[..., 2] = np.clip(ramp * 4, 0, 255)
    diff = to_rgb_uint8(six)[..., 0] - six[..., 2] / 6.0
    assert np.abs(diff).max() <= 0.5 + 1e-6


def test_a_six_slice_stack_is_not_taken_for_channels():
    with pytest.raises(ValueError, match="3D volume"):
        to_rgb_uint8(np.zeros((6, 40, 50), np.uint16))


def test_composite_image_embeds(golden_predictor):
    img = np.random.default_rng(3).integers(0, 255, (60, 80, 6), dtype=np.uint8)
    emb = golden_predictor.encode(img)
    assert emb.original_size == (60, 80) and np.isfinite(emb.features).all()


# -- degenerate shapes ---------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 5000), (5000, 1), (1, 1), (1, 3000, 3)])
def test_one_pixel_wide_images(shape):
    img = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    rgb = to_rgb_uint8(img)
    assert rgb.shape == (*shape[:2], 3)
    x, input_size = prepare_input(rgb)
    assert x.shape == (1, 3, 1024, 1024) and tuple(input_size) == resized_shape(shape[:2])
    assert max(input_size) == 1024 and min(input_size) == (1024 if shape[:2] == (1, 1) else 1)


def test_one_pixel_wide_image_segments(golden_predictor):
    img = (np.sin(np.arange(3000) / 50.0) * 1000 + 2000).astype(np.uint16)[None]
    golden_predictor.set_image(img)
    assert golden_predictor.embedding.input_size == (1, 1024)
    mask, score, low = golden_predictor.segment([[1500, 0]], [1])
    assert mask.shape == (1, 3000) and low.shape == (256, 256) and 0.0 <= score <= 1.0
    golden_predictor.reset_image()


# -- bad parameters and dtypes -------------------------------------------------------------
@pytest.mark.parametrize("gamma", [float("nan"), float("inf"), -float("inf"), 0.0, -1.0, "x", None])
def test_bad_gamma(gamma):
    img = np.arange(12, dtype=np.uint16).reshape(3, 4)
    with pytest.raises(ValueError, match="gamma must be a finite number > 0"):
        to_rgb_uint8(img, gamma=gamma)
    with pytest.raises(ValueError, match="gamma"):  # also for uint8, where gamma 1 means "as is"
        to_rgb_uint8(img.astype(np.uint8), gamma=gamma)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_images_are_refused(golden_predictor, dtype):
    img = np.ones((10, 10), dtype)
    with pytest.raises(TypeError, match="complex values.*np.abs"):
        to_rgb_uint8(img)
    with pytest.raises(TypeError, match="complex"):
        golden_predictor.encode(img)


def test_empty_predict_batch_says_so(golden_predictor, edge_golden):
    golden_predictor.set_embedding(ImageEmbedding(edge_golden["image_embeddings"], (300, 400), (768, 1024)))
    with pytest.raises(ValueError, match="batch of prompts is empty"):
        golden_predictor.predict_batch(boxes=np.zeros((0, 4)))
    with pytest.raises(ValueError, match="batch of prompts is empty"):
        golden_predictor.predict_batch(point_coords=np.zeros((0, 1, 2)), point_labels=np.zeros((0, 1)))
    golden_predictor.reset_image()


def test_segment_upscales_only_the_chosen_candidate(golden_predictor, edge_golden, golden_cases, monkeypatch):
    from napari_edgesam.inference.core import predictor as predictor_module

    golden_predictor.set_embedding(ImageEmbedding(edge_golden["image_embeddings"], (300, 400), (768, 1024)))
    c = golden_cases["point1"]
    m4, _, low4 = golden_predictor.predict(c["point_coords"], c["point_labels"], num_multimask_outputs=4)
    seen = []
    real = predictor_module.upscale_logits

    def spy(low, input_size, original_size):
        seen.append(low.shape)
        return real(low, input_size, original_size)

    monkeypatch.setattr(predictor_module, "upscale_logits", spy)
    # the decoder's own mask (segment may fill holes by default where that option exists)
    params = inspect.signature(golden_predictor.segment).parameters
    raw = {k: False for k in ("fill_holes", "one_piece") if k in params}
    for k in range(4):
        mask, _, low = golden_predictor.segment(c["point_coords"], c["point_labels"], candidate=k, **raw)
        np.testing.assert_array_equal(mask, m4[k])
        np.testing.assert_array_equal(low, low4[k])
    assert seen == [(1, 256, 256)] * 4
    golden_predictor.reset_image()
