"""Sample data for napari's File > Open Sample menu (deterministic, generated offline).

Each function returns napari ``LayerData`` tuples: ``[(data, {"name": ...}, "image")]``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Seed of every generated sample.
SEED = 2024


def _nuclei_centres(rng: np.random.Generator, shape: tuple[int, ...], count: int, min_dist: float):
    """Up to ``count`` random centres at least ``min_dist`` apart (rejection sampling)."""
    centres: list[np.ndarray] = []
    margin = np.array([min(12, s // 4) for s in shape], float)
    for _ in range(count * 20):
        c = rng.uniform(margin, np.array(shape) - margin)
        if all(np.linalg.norm(c - o) >= min_dist for o in centres):
            centres.append(c)
            if len(centres) == count:
                break
    return centres


def _finish(signal: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Blur, add background, Poisson-like and read noise, as uint16."""
    img = ndimage.gaussian_filter(signal, sigma)
    img = 200.0 + img
    img = rng.poisson(img).astype(np.float64) + rng.normal(0.0, 15.0, img.shape)
    return np.clip(img, 0, 65535).astype(np.uint16)


def make_nuclei_2d(shape: tuple[int, int] = (384, 512), count: int = 40, seed: int = SEED) -> np.ndarray:
    """A fluorescence-like image of nuclei: elliptical blobs of varied size and brightness,
    textured, blurred, on a noisy background. ``H x W`` uint16."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    signal = np.zeros(shape)
    for cy, cx in _nuclei_centres(rng, shape, count, 30.0):
        ry, rx = rng.uniform(7, 18), rng.uniform(7, 18)
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / rx
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ry
        inside = (u**2 + v**2) <= 1.0
        signal[inside] = np.maximum(signal[inside], rng.uniform(800, 2500))
    texture = ndimage.gaussian_filter(rng.normal(1.0, 0.25, shape), 2.0)
    return _finish(signal * np.clip(texture, 0.5, 1.5), rng, 1.5)


def make_nuclei_3d(shape: tuple[int, int, int] = (24, 192, 192), count: int = 20, seed: int = SEED) -> np.ndarray:
    """A stack of ellipsoid nuclei, ``Z x Y x X`` uint16 (nuclei span several slices)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]].astype(np.float32)
    signal = np.zeros(shape, np.float32)
    for cz, cy, cx in _nuclei_centres(rng, shape, count, 26.0):
        rz, ry, rx = rng.uniform(3, 6), rng.uniform(8, 16), rng.uniform(8, 16)
        inside = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        signal[inside] = np.maximum(signal[inside], rng.uniform(800, 2500))
    return _finish(signal, rng, 1.2)


def nuclei_2d() -> list[tuple]:
    """Synthetic 2D nuclei (uint16)."""
    return [(make_nuclei_2d(), {"name": "nuclei 2D"}, "image")]


def nuclei_3d() -> list[tuple]:
    """Synthetic 3D nuclei stack (Z x Y x X, uint16)."""
    return [(make_nuclei_3d(), {"name": "nuclei 3D", "scale": (2.0, 1.0, 1.0)}, "image")]


def cell() -> list[tuple]:
    """scikit-image's ``cell`` (a phase-contrast image, 660 x 550 uint8)."""
    try:
        from skimage import data
    except ImportError as err:  # scikit-image is optional for the plugin
        raise ImportError("the 'cell' sample needs scikit-image: pip install scikit-image") from err
    return [(data.cell(), {"name": "cell"}, "image")]
