"""Mask candidates of the automatic modes: low-res logits -> cropped full-size masks -> labels.

Both automatic modes (the point grid, :mod:`.grid`, and the prior's boxes,
:mod:`.boxes`) turn accepted ``256 x 256`` logit maps into :class:`MaskCandidate`
crops with :func:`candidate_from_logits` (upscaled only inside the mask's bounding box, islands
removed, small holes filled), drop duplicates with :func:`nms` and paint the survivors into a
label image with :func:`masks_to_labels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from ...constants import IMG_SIZE, LOW_RES_SIZE, MASK_THRESHOLD
from ..core.postprocess import bilinear_matrix, clip_to_box, fill_holes, matmul
from ..core.predictor import ImageEmbedding


@dataclass(frozen=True, eq=False)
class MaskCandidate:
    """One accepted mask, stored as a crop: ``mask[r, c]`` is pixel ``(y0 + r, x0 + c)``.

    ``point`` is the prompt (x, y) in pixels (a box prompt's centre); ``score`` the ranking
    score (stability, combined with the IoU head or the proposal score where used).
    """

    y0: int
    x0: int
    mask: np.ndarray
    score: float
    stability: float
    point: tuple[float, float]

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)``, end-exclusive."""
        return self.x0, self.y0, self.x0 + self.mask.shape[1], self.y0 + self.mask.shape[0]


# -- low-res -> full-res, inside a box --------------------------------------------------------
@lru_cache(maxsize=16)
def _axis_matrix(original: int, resized: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``original x 256`` interpolation matrix of one axis, and the first/last low-res index
    each output pixel depends on."""
    m = bilinear_matrix(original, resized) @ bilinear_matrix(IMG_SIZE, LOW_RES_SIZE)[:resized]
    nz = m > 0
    first = nz.argmax(1)
    last = m.shape[1] - 1 - nz[:, ::-1].argmax(1)
    return m.astype(np.float32), first, last


def _tight(mask: np.ndarray) -> tuple[int, int, np.ndarray] | None:
    """``(row offset, column offset, mask cropped to its bounding box)``, or None if empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def upscale_in_box(low: np.ndarray, emb: ImageEmbedding) -> tuple[int, int, np.ndarray] | None:
    """Full-size mask of one ``256 x 256`` logit map, computed only where it can be positive
    (exactly equal to the official full-size upscaling there).

    Returns ``(y0, x0, mask crop)`` in pixels of ``emb.original_size`` with the crop tight
    around the mask, or None if the mask is empty.
    """
    pos = low > MASK_THRESHOLD
    rows, cols = np.flatnonzero(pos.any(1)), np.flatnonzero(pos.any(0))
    if rows.size == 0:
        return None
    r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
    (H, W), (h, w) = emb.original_size, emb.input_size
    mr, fr, lr = _axis_matrix(H, h)
    mc, fc, lc = _axis_matrix(W, w)
    ys = np.flatnonzero((lr >= r0) & (fr <= r1))
    xs = np.flatnonzero((lc >= c0) & (fc <= c1))
    if ys.size == 0 or xs.size == 0:
        return None
    y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
    a0, a1 = fr[y0], lr[y1 - 1] + 1
    b0, b1 = fc[x0], lc[x1 - 1] + 1
    crop = matmul(matmul(mr[y0:y1, a0:a1], low[a0:a1, b0:b1].astype(np.float32)), mc[x0:x1, b0:b1].T) > MASK_THRESHOLD
    tight = _tight(crop)
    if tight is None:
        return None
    dy, dx, crop = tight
    return int(y0) + dy, int(x0) + dx, crop


def clean_mask(mask: np.ndarray, min_area: int, hole_area: int | None) -> np.ndarray:
    """Remove islands smaller than ``min_area`` and fill holes smaller than ``hole_area``
    (None: fill every hole; see :func:`~napari_edgesam.inference.core.postprocess.fill_holes`)."""
    out = mask
    if min_area > 0:
        lab, n = ndimage.label(out)
        if n > 1 or (n == 1 and out.sum() < min_area):
            sizes = np.bincount(lab.ravel(), minlength=n + 1)
            keep = sizes >= min_area
            keep[0] = False
            out = keep[lab]
    if (hole_area is None or hole_area > 0) and out.any():
        out = fill_holes(out, hole_area)
    return out


def candidate_from_logits(
    low: np.ndarray,
    emb: ImageEmbedding,
    *,
    min_area: int,
    hole_area: int | None,
    score: float,
    stability: float,
    point: tuple[float, float],
    clip: tuple[np.ndarray, float] | None = None,
) -> MaskCandidate | None:
    """The cleaned full-size mask of one ``256 x 256`` logit map as a tight crop, or None when
    nothing of at least ``max(min_area, 1)`` pixels is left (see :func:`clean_mask`). ``clip``:
    ``(box, margin_fraction)``, the mask ends at that ``(x0, y0, x1, y1)`` pixel box widened by a
    pixel and ``margin_fraction`` of its side (:func:`~napari_edgesam.inference.core.postprocess.clip_to_box`)."""
    up = upscale_in_box(low, emb)
    if up is None:
        return None
    y0, x0, crop = up
    if clip is not None:
        box, margin = clip
        crop = clip_to_box(crop, np.asarray(box, np.float64) - (x0, y0, x0, y0), margin_fraction=margin)
    crop = clean_mask(crop, min_area, hole_area)
    if crop.sum() < max(min_area, 1):
        return None
    dy, dx, crop = _tight(crop)
    return MaskCandidate(y0 + dy, x0 + dx, crop, float(score), float(stability),
                         (float(point[0]), float(point[1])))


# -- duplicates and painting ------------------------------------------------------------------
def nms(candidates: Sequence[MaskCandidate], iou_thresh: float) -> list[MaskCandidate]:
    """Greedy box NMS: keep masks by descending score, dropping any whose box overlaps a kept
    one with IoU > ``iou_thresh``. Ties are broken by larger area, then input order.
    Memory is linear in the number of candidates (one IoU row per kept mask)."""
    if not candidates:
        return []
    order = sorted(range(len(candidates)), key=lambda i: (-candidates[i].score, -candidates[i].area, i))
    b = np.array([candidates[i].box for i in order], np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    alive = np.ones(len(order), bool)
    kept = []
    for k in range(len(order)):
        if not alive[k]:
            continue
        kept.append(candidates[order[k]])
        iw = np.clip(np.minimum(b[k, 2], b[:, 2]) - np.maximum(b[k, 0], b[:, 0]), 0, None)
        ih = np.clip(np.minimum(b[k, 3], b[:, 3]) - np.maximum(b[k, 1], b[:, 1]), 0, None)
        inter = iw * ih
        alive &= inter / np.maximum(area[k] + area - inter, 1e-9) <= iou_thresh
    return kept


def masks_to_labels(
    masks: Sequence[MaskCandidate], shape: tuple[int, int], min_area: int = 0,
    min_visible_fraction: float = 0.0,
) -> np.ndarray:
    """Paint masks into an ``H x W`` uint32 label image, largest first (smaller, nested objects
    stay on top), then drop labels with fewer than ``min_area`` visible pixels or less than
    ``min_visible_fraction`` of their mask visible. Labels are 1..N by descending area."""
    labels = np.zeros(shape, np.uint32)
    order = sorted(masks, key=lambda m: -m.area)
    for i, m in enumerate(order, start=1):
        region = labels[m.y0 : m.y0 + m.mask.shape[0], m.x0 : m.x0 + m.mask.shape[1]]
        region[m.mask[: region.shape[0], : region.shape[1]]] = i
    if not order:
        return labels
    visible = np.bincount(labels.ravel(), minlength=len(order) + 1)
    areas = np.array([0] + [m.area for m in order])
    keep = (visible >= max(min_area, 1)) & (visible >= min_visible_fraction * areas)
    keep[0] = False
    lut = np.zeros(len(order) + 1, np.uint32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return lut[labels]
