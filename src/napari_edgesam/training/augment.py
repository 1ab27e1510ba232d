"""Training augmentation of an image and its instance labels (numpy/scipy/PIL, no torch).

Every function takes the image as ``H x W x 3`` uint8 (what :func:`~napari_edgesam.inference.
preprocess.to_rgb_uint8` gives) and the labels as an ``H x W`` integer map (0 background, ids
> 0), both in the same pixel grid, and returns them in one new grid: geometric operations move
both exactly alike (the image bilinear, the labels nearest neighbour, both with the pixel-centre
convention ``source = (i + 0.5) * in / out - 0.5`` of the predictor's resize), so a labelled
pixel keeps its place on the object. Randomness comes only from the ``np.random.Generator``
passed in, so a seeded generator gives the same output on any machine.

Pieces:
  - :func:`scale_crop` / :func:`random_scale_crop`: rescale so that objects span a chosen size
    in the model frame (default 6 to 400 px of a 1024 frame), crop at most a frame around an
    object; the result is at most ``frame x frame`` and is padded by the predictor's own rule
    (bottom/right, :func:`~napari_edgesam.inference.core.preprocess.normalize_and_pad`).
  - :func:`fill_frame`: what the predictor does with a whole image (longest side to the frame).
  - :func:`random_flip_rot`: flips and 90-degree rotations.
  - :func:`intensity_augment`: gamma, contrast/offset, uneven background, dimmed objects, blur,
    Poisson (shot) and Gaussian (read) noise, optional percentile re-stretch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from ..inference.core.preprocess import resized_shape

#: Object diameters (px in a 1024 frame) that random scaling aims at, log-uniformly.
DEFAULT_OBJECT_PX = (6.0, 400.0)
GEOMETRIC = ("hflip", "vflip", "rot90")


def _check(rgb: np.ndarray, labels: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"image must be H x W x 3 uint8, got {rgb.shape} {rgb.dtype}")
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not match the image {rgb.shape[:2]}")


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each of ``n_out`` output pixels: ``floor((i + 0.5) * n_in / n_out)``."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def resize_pair(rgb: np.ndarray, labels: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize the image (bilinear, antialiased like the predictor's) and labels (nearest) to
    ``out_hw = (h, w)``."""
    _check(rgb, labels)
    h, w = int(out_hw[0]), int(out_hw[1])
    if (h, w) == rgb.shape[:2]:
        return rgb, labels
    img = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((w, h), Image.BILINEAR))
    lab = labels[nearest_indices(labels.shape[0], h)[:, None], nearest_indices(labels.shape[1], w)[None, :]]
    return img, lab


def fill_frame(rgb: np.ndarray, labels: np.ndarray, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """The predictor's view of a whole image: longest side resized to ``frame``."""
    return resize_pair(rgb, labels, resized_shape(rgb.shape[:2], frame))


def equivalent_diameters(labels: np.ndarray, min_area: int = 4) -> np.ndarray:
    """``2 sqrt(area / pi)`` of every object with at least ``min_area`` pixels."""
    areas = np.bincount(labels.ravel().astype(np.int64))[1:]
    areas = areas[areas >= min_area]
    return 2.0 * np.sqrt(areas / math.pi)


def scale_crop(
    rgb: np.ndarray, labels: np.ndarray, factor: float, origin: tuple[int, int], frame: int
) -> tuple[np.ndarray, np.ndarray]:
    """Crop the source window at ``origin = (y0, x0)`` that covers at most ``frame`` output
    pixels per side at scale ``factor`` and resize it by ``factor``.

    The window is ``min(H, ceil(frame / factor))`` x ``min(W, ...)`` source pixels (clipped to
    the image); the output is ``min(frame, round(window * factor))`` per side (so a window that
    covers the frame fills it exactly; the scale then differs from ``factor`` by < 1 px).
    """
    _check(rgb, labels)
    if not factor > 0:
        raise ValueError(f"scale factor must be > 0, got {factor}")
    H, W = labels.shape
    sh = min(H, max(1, math.ceil(frame / factor - 1e-6)))
    sw = min(W, max(1, math.ceil(frame / factor - 1e-6)))
    y0 = int(np.clip(origin[0], 0, H - sh))
    x0 = int(np.clip(origin[1], 0, W - sw))
    out_h = int(np.clip(round(sh * factor), 1, frame))
    out_w = int(np.clip(round(sw * factor), 1, frame))
    return resize_pair(rgb[y0 : y0 + sh, x0 : x0 + sw], labels[y0 : y0 + sh, x0 : x0 + sw], (out_h, out_w))


def random_scale_crop(
    rgb: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    frame: int,
    object_px: Sequence[float] = DEFAULT_OBJECT_PX,
    reference: int = 1024,
    canvas_probability: float = 0.25,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Rescale so the median object diameter becomes a log-uniform draw from ``object_px``
    (px of a ``reference`` frame, scaled to ``frame``), and crop at most ``frame x frame``
    around a random object (jittered). Without objects the zoom is 0.5-2x of filling the frame.

    A draw that would shrink the whole image below the frame (objects smaller than this image
    can show while filling it) is kept only with ``canvas_probability`` (a small image in a
    padded canvas, as a crop embedded at a chosen scale looks); otherwise the zoom is raised so
    the image fills the frame, as the predictor shows a whole image.

    Returns ``(image h x w x 3 uint8, labels h x w, factor)`` with ``h, w <= frame``.
    """
    _check(rgb, labels)
    lo, hi = (float(v) * frame / reference for v in object_px)
    if not 0 < lo <= hi:
        raise ValueError(f"object_px must be [low, high] with 0 < low <= high, got {list(object_px)}")
    H, W = labels.shape
    diam = equivalent_diameters(labels)
    if diam.size:
        target = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        factor = target / float(np.median(diam))
    else:
        factor = frame / max(H, W) * math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    fill = frame / max(H, W)
    if factor < fill and rng.random() >= canvas_probability:
        factor = fill
    sh = min(H, max(1, math.ceil(frame / factor - 1e-6)))
    sw = min(W, max(1, math.ceil(frame / factor - 1e-6)))
    slices = [s for s in ndi.find_objects(labels.astype(np.int64, copy=False)) if s is not None] if diam.size else []
    if slices:
        s = slices[int(rng.integers(len(slices)))]
        cy, cx = (s[0].start + s[0].stop) / 2, (s[1].start + s[1].stop) / 2
        y0 = cy - sh / 2 + rng.uniform(-0.4, 0.4) * sh
        x0 = cx - sw / 2 + rng.uniform(-0.4, 0.4) * sw
    else:
        y0, x0 = rng.uniform(0, H - sh + 1), rng.uniform(0, W - sw + 1)
    img, lab = scale_crop(rgb, labels, factor, (int(y0), int(x0)), frame)
    return img, lab, factor


def flip_rot(rgb: np.ndarray, labels: np.ndarray, hflip: bool, vflip: bool, k90: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply a horizontal flip, a vertical flip, then ``k90`` counter-clockwise quarter turns."""
    if hflip:
        rgb, labels = rgb[:, ::-1], labels[:, ::-1]
    if vflip:
        rgb, labels = rgb[::-1], labels[::-1]
    if k90 % 4:
        rgb, labels = np.rot90(rgb, k90, axes=(0, 1)), np.rot90(labels, k90, axes=(0, 1))
    return np.ascontiguousarray(rgb), np.ascontiguousarray(labels)


def random_flip_rot(
    rgb: np.ndarray, labels: np.ndarray, rng: np.random.Generator, ops: Sequence[str] = GEOMETRIC
) -> tuple[np.ndarray, np.ndarray]:
    """Each of ``ops`` ("hflip", "vflip": p = 0.5; "rot90": 0-3 quarter turns) at random."""
    unknown = set(ops) - set(GEOMETRIC)
    if unknown:
        raise ValueError(f"unknown geometric augmentation(s) {sorted(unknown)}; allowed: {list(GEOMETRIC)}")
    h = "hflip" in ops and rng.random() < 0.5
    v = "vflip" in ops and rng.random() < 0.5
    k = int(rng.integers(4)) if "rot90" in ops else 0
    return flip_rot(rgb, labels, h, v, k)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int = 4) -> np.ndarray:
    """A smooth random field in [0, 1] (bilinear upsampling of a ``cells x cells`` grid)."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    field = ndi.zoom(grid, (shape[0] / (cells + 1), shape[1] / (cells + 1)), order=1, grid_mode=True, mode="nearest")
    field = field[: shape[0], : shape[1]]
    if field.shape != tuple(shape):  # zoom rounding
        field = np.pad(field, [(0, shape[0] - field.shape[0]), (0, shape[1] - field.shape[1])], mode="edge")
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / (hi - lo) if hi > lo else np.zeros(shape, np.float32)


def intensity_augment(
    rgb: np.ndarray, labels: np.ndarray | None, rng: np.random.Generator, strength: float = 1.0
) -> np.ndarray:
    """Fluorescence-like intensity changes of an ``H x W x 3`` uint8 image (labels unchanged).

    Each step happens with its own probability: dimmed objects (p 0.3: a third of the objects
    at 20-60% of their signal above background), uneven background (0.5: a smooth field up to
    0.3), gamma (0.5: 0.5-2, log-uniform), contrast/offset (0.5: x0.35-1, +0-0.3), blur (0.3:
    sigma 0.5-2 px), shot noise (0.5: Poisson at 10-300 photons full scale), read noise (0.5:
    Gaussian sigma 0.5-5% of full scale), then (p 0.5) a 0.5/99.5 percentile re-stretch as
    the predictor applies to non-uint8 images. Grey images (equal channels) stay grey.
    ``strength`` scales every probability (0: unchanged image).
    """
    if labels is not None:
        _check(rgb, labels)
    p = lambda q: rng.random() < q * strength  # noqa: E731
    grey = bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))
    v = rgb[..., :1].astype(np.float32) / 255.0 if grey else rgb.astype(np.float32) / 255.0
    shape = v.shape[:2]
    if p(0.3) and labels is not None and labels.max() > 0:
        ids = np.unique(labels[labels > 0])
        chosen = ids[rng.random(ids.size) < 1 / 3]
        if chosen.size:
            lut = np.ones(int(labels.max()) + 1, np.float32)
            lut[chosen] = rng.uniform(0.2, 0.6, chosen.size)
            gain = ndi.gaussian_filter(lut[labels], 1.5)[..., None]
            bg = np.percentile(v, 10, axis=(0, 1), keepdims=True)
            v = bg + (v - bg) * gain
    if p(0.5):
        v = v + rng.uniform(0.05, 0.3) * smooth_field(rng, shape, int(rng.integers(2, 6)))[..., None]
    v = np.clip(v, 0.0, 1.0)
    if p(0.5):
        v = v ** math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    if p(0.5):
        v = v * rng.uniform(0.35, 1.0) + rng.uniform(0.0, 0.3)
    if p(0.3):
        sigma = rng.uniform(0.5, 2.0)
        v = ndi.gaussian_filter(v, (sigma, sigma, 0))
    v = np.clip(v, 0.0, 1.0)
    if p(0.5):
        photons = math.exp(rng.uniform(math.log(10.0), math.log(300.0)))
        v = rng.poisson(v * photons).astype(np.float32) / photons
    if p(0.5):
        v = v + rng.normal(0.0, rng.uniform(0.005, 0.05), v.shape).astype(np.float32)
    if p(0.5):
        lo, hi = np.percentile(v, (0.5, 99.5))
        v = (v - lo) / (hi - lo) if hi > lo else v
    out = np.round(np.clip(v, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(out, 3, axis=-1) if grey else out)
