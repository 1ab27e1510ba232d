"""Held-out measurement: box and click mIoU of a predictor on committed objects.

Every object is prompted twice through the predictor's public API, as a user would: its
bounding box (``segment(box=...)``, token 0) and one click at its most interior pixel
(``segment_click``: with the granularity prior's proposals on the embedding, EdgeSAM's rule
joins a box to the click). IoU is computed at full resolution against the committed mask.
No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi

from .objects import AdaptObject


def interior_point(mask: np.ndarray) -> np.ndarray:
    """The pixel farthest from the background (first in row-major order among ties) as
    ``(x, y)`` float32: where a user clicks an object."""
    d = ndi.distance_transform_edt(np.pad(np.asarray(mask, bool), 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(d)), d.shape)
    return np.array([x, y], np.float32)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """``(x0, y0, x1, y1)`` float32 of a non-empty mask (inclusive pixel indices, as the
    training prompts' boxes)."""
    rows = np.flatnonzero(np.asarray(mask, bool).any(axis=1))
    cols = np.flatnonzero(np.asarray(mask, bool).any(axis=0))
    if rows.size == 0:
        raise ValueError("cannot compute the box of an empty mask")
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks (1.0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b)) / union


def object_ious(predictor, obj: AdaptObject, embedding) -> tuple[float, float]:
    """``(box IoU, click IoU)`` of ``predictor`` on one object of ``embedding``'s plane."""
    box_mask, _, _ = predictor.segment(box=mask_box(obj.mask), embedding=embedding)
    click_mask, _, _ = predictor.segment_click(interior_point(obj.mask), embedding=embedding)
    return iou(np.asarray(box_mask, bool), obj.mask), iou(np.asarray(click_mask, bool), obj.mask)


def measure(predictor, objects: Sequence[AdaptObject], embeddings: Mapping[str, object]) -> dict:
    """``{"box": mIoU, "click": mIoU, "mean": (box + click) / 2, "n": objects}`` of
    ``predictor`` on ``objects`` (each decoded in ``embeddings[obj.image_key]``); NaN for none."""
    if not objects:
        return {"box": float("nan"), "click": float("nan"), "mean": float("nan"), "n": 0}
    pairs = np.array([object_ious(predictor, o, embeddings[o.image_key]) for o in objects], np.float64)
    box, click = (float(v) for v in pairs.mean(axis=0))
    return {"box": round(box, 4), "click": round(click, 4), "mean": round((box + click) / 2, 4), "n": len(objects)}
