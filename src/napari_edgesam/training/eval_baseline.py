"""The Otsu baseline that gives the evaluation numbers meaning (for :mod:`.evaluate`): Otsu's
threshold inside the box (largest component), and for a point the Otsu component of the whole
image that contains it. Images are ``H x W`` (or ``H x W x C``, averaged to grey)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of a 1-D array of intensities."""
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0 or v.min() == v.max():
        return float(v.min()) if v.size else 0.0
    hist, edges = np.histogram(v, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between))])


def to_grey(image: np.ndarray) -> np.ndarray:
    """``H x W`` float32: the image, or the mean of its channels."""
    img = np.asarray(image, np.float32)
    return img.mean(-1) if img.ndim == 3 else img


def otsu_box(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Baseline for a box: Otsu inside the box, its largest connected component."""
    grey = to_grey(image)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    crop = grey[y0 : y1 + 1, x0 : x1 + 1]
    fg = crop > otsu_threshold(crop)
    lab, n = ndi.label(fg)
    out = np.zeros(grey.shape, bool)
    if n:
        sizes = ndi.sum_labels(fg, lab, index=np.arange(1, n + 1))
        out[y0 : y1 + 1, x0 : x1 + 1] = lab == (1 + int(np.argmax(sizes)))
    return out


def otsu_point(image: np.ndarray, point: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Baseline for a point: the component of the image's Otsu foreground under the point."""
    grey = to_grey(image)
    fg = grey > (otsu_threshold(grey) if threshold is None else threshold)
    lab, _ = ndi.label(fg)
    x, y = int(round(point[0])), int(round(point[1]))
    k = lab[y, x]
    return lab == k if k else np.zeros(grey.shape, bool)
