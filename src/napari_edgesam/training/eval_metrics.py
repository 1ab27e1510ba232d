"""Evaluation metrics and the prompts derived from a true mask (for :mod:`.evaluate`).

IoU, micro-sam's segmentation accuracy (SA at IoU thresholds :data:`IOU_THRESHOLDS`; mSA is its
mean) for an instance segmentation and for per-object prompted predictions, and the points a
protocol clicks: the instance's box and centre (the pixel farthest from its boundary), the
paper's refinement point and micro-sam's corrective point. Masks are ``H x W`` bool; points
are ``(x, y)``; boxes ``(x0, y0, x1, y1)`` inclusive pixel coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

#: IoU thresholds of mSA: 0.50, 0.55, ..., 0.95.
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
_EPS = 1e-9


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Bounding box ``(x0, y0, x1, y1)`` of a boolean ``H x W`` mask, in pixel coordinates
    (x1, y1 are the last pixel's coordinates, like SAM's evaluation boxes)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("mask is empty")
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)


def interior_point(mask: np.ndarray) -> np.ndarray:
    """``(x, y)`` of the pixel of ``mask`` farthest from its boundary."""
    if not mask.any():
        raise ValueError("mask is empty")
    dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([x, y], np.float32)


def refinement_point(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, int] | None:
    """Next click from the error of ``pred`` against ``gt``: ``((x, y), label)`` or None if
    the prediction is perfect. Positive in the larger false-negative region, negative in the
    larger false-positive region (whichever error region is larger)."""
    fn = gt & ~pred
    fp = pred & ~gt
    if not fn.any() and not fp.any():
        return None
    fn_d = ndi.distance_transform_edt(np.pad(fn, 1))[1:-1, 1:-1]
    fp_d = ndi.distance_transform_edt(np.pad(fp, 1))[1:-1, 1:-1]
    positive = fn_d.max() >= fp_d.max()
    dist = fn_d if positive else fp_d
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([x, y], np.float32), int(positive)


def segmentation_accuracy(
    pred: np.ndarray, gt: np.ndarray, thresholds: Sequence[float] = IOU_THRESHOLDS
) -> np.ndarray:
    """``SA(t) = TP / (TP + FP + FN)`` of an instance segmentation for each threshold.

    Args:
        pred, gt: ``H x W`` integer label images (0 background).
    Returns:
        float array, one SA per threshold (1.0 where both have no objects).
    """
    from scipy.optimize import linear_sum_assignment

    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    g_ids, g_inv = np.unique(gt, return_inverse=True)
    n_p, n_g = len(p_ids), len(g_ids)
    inter = np.bincount(p_inv.ravel() * n_g + g_inv.ravel(), minlength=n_p * n_g).reshape(n_p, n_g)
    p_keep, g_keep = p_ids != 0, g_ids != 0
    inter = inter[p_keep][:, g_keep].astype(np.float64)
    p_area, g_area = np.bincount(p_inv.ravel())[p_keep], np.bincount(g_inv.ravel())[g_keep]
    ious = inter / np.maximum(p_area[:, None] + g_area[None, :] - inter, 1)
    out = []
    for t in thresholds:
        ok = ious >= t - _EPS
        tp = 0
        if ok.any():
            rows, cols = linear_sum_assignment(-ok.astype(np.float64))
            tp = int(ok[rows, cols].sum())
        denom = tp + (len(p_area) - tp) + (len(g_area) - tp)
        out.append(1.0 if denom == 0 else tp / denom)
    return np.array(out)


def matched_segmentation_accuracy(
    ious: Sequence[float], nonempty: Sequence[bool], thresholds: Sequence[float] = IOU_THRESHOLDS
) -> np.ndarray:
    """SA per threshold of per-object prompted predictions (the matched-object definition of
    the module doc): ``ious[i]`` is the IoU of object ``i``'s prediction with object ``i``,
    ``nonempty[i]`` whether that prediction has any pixel."""
    v = np.asarray(ious, np.float64)
    ne = np.asarray(nonempty, bool)
    if v.shape != ne.shape:
        raise ValueError("ious and nonempty must have the same length")
    out = []
    for t in thresholds:
        hit = v >= t - _EPS
        tp = int(hit.sum())
        fn = int((~hit).sum())
        fp = int((~hit & ne).sum())
        out.append(1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn))
    return np.array(out)


def corrective_point(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, int] | None:
    """micro-sam's next click: ``((x, y), label)`` at the pixel farthest from the boundary of the
    largest (by area, 4-connected) error region; label 1 in a false-negative region, 0 in a
    false-positive one (ties: false negative). None when ``pred == gt``."""
    best = None
    for region, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        comp, n = ndi.label(region)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        k = int(np.argmax(sizes))
        if best is None or sizes[k] > best[0]:
            best = (int(sizes[k]), comp == k + 1, label)
    if best is None:
        return None
    dist = ndi.distance_transform_edt(np.pad(best[1], 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([x, y], np.float32), best[2]
