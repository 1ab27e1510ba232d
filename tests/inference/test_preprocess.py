"""Intensity normalisation and layouts of microscopy images."""

from __future__ import annotations

import numpy as np
import pytest

from napari_edgesam.inference.core.postprocess import (
    bilinear_matrix,
    stability_score,
    upscale_logits,
)
from napari_edgesam.inference.core.preprocess import (
    normalize_and_pad,
    resized_shape,
    scale_coords,
    to_rgb_uint8,
)


def test_uint8_rgb_passes_through():
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(img), img)


def test_uint16_percentile_stretch():
    img = np.linspace(0, 4000, 100 * 100).reshape(100, 100).astype(np.uint16)
    out = to_rgb_uint8(img, percentiles=(0, 100))
    assert out.shape == (100, 100, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert (out[..., 0] == out[..., 2]).all()


def test_contrast_limits_and_gamma():
    img = np.array([[0, 100, 200, 300]], np.float32)
    out = to_rgb_uint8(img, contrast_limits=(100, 200))[..., 0]
    np.testing.assert_array_equal(out, [[0, 0, 255, 255]])
    mid = to_rgb_uint8(np.array([[150.0]]), contrast_limits=(100, 200), gamma=2.0)[0, 0, 0]
    assert mid == round(0.25 * 255)
    with pytest.raises(ValueError, match="low <= high"):
        to_rgb_uint8(img, contrast_limits=(200, 100))


def test_nan_and_constant_images():
    img = np.full((10, 10), np.nan, np.float32)
    img[5, 5] = 3.0
    out = to_rgb_uint8(img)
    assert np.isfinite(out).all() and out.dtype == np.uint8
    assert to_rgb_uint8(np.ones((4, 4), np.float64)).max() == 0


def test_channels():
    rng = np.random.default_rng(1)
    cyx = rng.random((2, 16, 16)).astype(np.float32)
    comp = to_rgb_uint8(cyx, channel_axis=0)
    assert comp.shape == (16, 16, 3)
    ch1 = to_rgb_uint8(cyx, channel_axis=0, channel=1, percentiles=(0, 100))
    ref = to_rgb_uint8(cyx[1], percentiles=(0, 100))
    np.testing.assert_array_equal(ch1, ref)
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(rgba), rgba[..., :3])
    with pytest.raises(ValueError, match="channel 5 does not exist"):
        to_rgb_uint8(cyx, channel_axis=0, channel=5)


def test_resize_and_coords():
    assert resized_shape((300, 400)) == (768, 1024)
    assert resized_shape((1000, 10)) == (1024, 10)
    c = scale_coords(np.array([[400.0, 300.0]]), (300, 400), (768, 1024))
    np.testing.assert_allclose(c, [[1024, 768]])
    x = normalize_and_pad(np.zeros((768, 1024, 3), np.uint8))
    assert x.shape == (1, 3, 1024, 1024) and (x[0, :, 768:] == 0).all() and (x[0, 0, :768] < 0).all()


def test_bilinear_matrix_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    low = rng.standard_normal((2, 256, 256)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(low)[None], (1024, 1024), mode="bilinear", align_corners=False)
    ref = torch.nn.functional.interpolate(ref[..., :500, :1024], (123, 250), mode="bilinear", align_corners=False)[0].numpy()
    out = upscale_logits(low, (500, 1024), (123, 250))
    np.testing.assert_allclose(out, ref, atol=1e-4)
    assert np.allclose(bilinear_matrix(7, 3).sum(1), 1.0)


def test_stability_score():
    logits = np.full((2, 4, 4), -5.0, np.float32)
    logits[0, :2] = 2.0  # 8 px > 1, 8 px > -1
    logits[1, :2] = 0.5  # 0 px > 1, 8 px > -1
    np.testing.assert_allclose(stability_score(logits), [1.0, 0.0])
    assert stability_score(np.full((3, 3), -5.0)) == 0.0
