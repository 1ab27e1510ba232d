"""Validation of user prompts and their conversion to decoder inputs (numpy, no torch).

The one validation of prompts: the predictor (API), the CLI, tiled images and the batch engine
all call :func:`validate_points` / :func:`validate_box` (or :func:`validate_prompt`, both), so a
prompt outside the image, with NaN/inf or complex coordinates, a label other than 0/1 or an
inverted box is an error everywhere, never clamped or dropped.
"""

from __future__ import annotations

import re

import numpy as np

from ...constants import (
    LABEL_BOX_BOTTOM_RIGHT,
    LABEL_BOX_TOP_LEFT,
    LABEL_PAD,
    LOW_RES_SIZE,
)
from .preprocess import scale_coords

#: A number as written in a prompt file or on the command line: decimal, optional exponent.
#: (Python's float() would also take "1_0" as 10, "0x1F" no, "nan"/"inf" yes: none of these.)
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def parse_number(text: str) -> float:
    """``text`` (surrounding blanks allowed) as a float; ValueError unless it is a plain decimal
    number such as ``12``, ``-3.5`` or ``1e3`` (no ``1_0``, ``nan``, ``inf``, ``0x1F``, ``30,5``)."""
    t = str(text).strip()
    try:
        value = float(t)
    except ValueError:
        value = None
    if value is not None and not np.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    if value is None or not _NUMBER.fullmatch(t):
        raise ValueError(f"{text!r} is not a number")
    return value


#: How far outside the image (in pixels) a prompt may lie and still be accepted.
EDGE_TOLERANCE = 0.5


def _inside(coords: np.ndarray, size: tuple[int, int], what: str) -> None:
    h, w = size
    x, y = coords[..., 0], coords[..., 1]
    bad = (x < -EDGE_TOLERANCE) | (x > w + EDGE_TOLERANCE) | (y < -EDGE_TOLERANCE) | (y > h + EDGE_TOLERANCE)
    if bad.any():
        first = coords[bad][0] if coords.ndim > 1 else coords
        raise ValueError(
            f"{what} ({float(first[0]):g}, {float(first[1]):g}) lies outside the image "
            f"(width {w}, height {h}); coordinates are (x, y) in pixels"
        )


def _real(values: object, what: str) -> np.ndarray:
    """``values`` as float64; ValueError for complex or non-numeric input (never drops parts)
    and for ragged nested sequences."""
    try:
        raw = np.asarray(values)
    except ValueError:  # ragged nesting: numpy's "inhomogeneous shape" message
        raise ValueError(f"{what} must be a regular array of numbers (all rows of the same length)") from None
    if np.iscomplexobj(raw):
        raise ValueError(f"{what} must be real numbers; got complex values")
    if raw.dtype.kind not in "biuf":
        try:
            return raw.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be numbers; got {raw.dtype} values") from None
    return raw.astype(np.float64)


def validate_points(
    point_coords: object, point_labels: object, image_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Check ``N x 2`` (x, y) pixel coordinates and ``N`` labels in {0, 1}."""
    coords = _real(point_coords, "point_coords")
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"point_coords must have shape (N, 2) as (x, y); got {coords.shape}")
    if point_labels is None:
        raise ValueError("point_labels are required with point_coords (1 positive, 0 negative)")
    labels = np.asarray(point_labels)
    if np.iscomplexobj(labels):
        raise ValueError("point_labels must be 0 (negative) or 1 (positive); got complex values")
    if labels.ndim != 1 or labels.shape[0] != coords.shape[0]:
        raise ValueError(
            f"point_labels must have shape ({coords.shape[0]},) to match point_coords; got {labels.shape}"
        )
    if not np.isfinite(coords).all():
        raise ValueError("point_coords contain NaN or inf")
    if labels.dtype.kind not in "biuf" or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"point_labels must be 0 (negative) or 1 (positive); got {np.unique(labels)}")
    _inside(coords, image_size, "point")
    return coords.astype(np.float32), labels.astype(np.float32)


def validate_box(box: object, image_size: tuple[int, int]) -> np.ndarray:
    """Check one box ``(x0, y0, x1, y1)`` in pixels; returns shape ``(4,)``."""
    arr = _real(box, "box")
    if arr.shape not in ((4,), (1, 4)):
        raise ValueError(f"box must be (x0, y0, x1, y1) with shape (4,); got shape {arr.shape}")
    arr = arr.reshape(4)
    if not np.isfinite(arr).all():
        raise ValueError("box contains NaN or inf")
    x0, y0, x1, y1 = arr
    if x0 > x1 or y0 > y1:
        raise ValueError(f"box must satisfy x0 <= x1 and y0 <= y1; got {tuple(arr.tolist())}")
    _inside(arr.reshape(2, 2), image_size, "box corner")
    return arr.astype(np.float32)


def validate_click(point: object, image_size: tuple[int, int]) -> np.ndarray:
    """Check one click ``(x, y)`` in pixels (a ``1 x 2`` array is accepted too); returns
    float32 shape ``(1, 2)``."""
    arr = _real(point, "point")
    if arr.shape not in ((2,), (1, 2)):
        raise ValueError(f"point must be one (x, y) pair; got shape {arr.shape}")
    arr = arr.reshape(1, 2)
    if not np.isfinite(arr).all():
        raise ValueError("point contains NaN or inf")
    _inside(arr, image_size, "point")
    return arr.astype(np.float32)


def check_k_nearest(k_nearest: object) -> int:
    """``k_nearest`` of the click rule as an int; ValueError unless it is an integer >= 1."""
    if isinstance(k_nearest, bool) or not isinstance(k_nearest, (int, np.integer)) or k_nearest < 1:
        raise ValueError(f"k_nearest must be a positive integer, got {k_nearest!r}")
    return int(k_nearest)


def check_candidate(candidate: object) -> int | None:
    """A forced candidate token for point prompts: None, or an integer 0-3 (no wrap-around)."""
    if candidate is None:
        return None
    if isinstance(candidate, (bool, np.bool_)) or not isinstance(candidate, (int, np.integer)) \
            or not 0 <= candidate <= 3:
        raise ValueError(f"candidate must be None or one of 0, 1, 2, 3 (the 4 mask tokens), got {candidate!r}")
    return int(candidate)


def validate_prompt(
    point_coords: object | None, point_labels: object | None, box: object | None, image_size: tuple[int, int]
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Check the prompts of one object in an image of ``image_size`` ``(h, w)``: points ``N x 2``
    (x, y) with labels ``N`` (0/1) and/or a box ``(x0, y0, x1, y1)``, pixels. Returns float32
    ``(coords | None, labels | None, box | None)``; ValueError saying what is wrong otherwise."""
    coords = labels = checked_box = None
    if point_coords is not None or point_labels is not None:
        if point_coords is None:
            raise ValueError("point_labels were given without point_coords")
        coords, labels = validate_points(point_coords, point_labels, image_size)
        if coords.shape[0] == 0:
            coords = labels = None
    if box is not None:
        checked_box = validate_box(box, image_size)
    if coords is None and checked_box is None:
        raise ValueError("give at least one point (point_coords + point_labels) or a box")
    return coords, labels, checked_box


def validate_batch_prompts(
    point_coords: object | None, point_labels: object | None, boxes: object | None, image_size: tuple[int, int]
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Check ``B`` prompts of one image of ``image_size`` ``(h, w)`` (one object each): points
    ``B x N x 2`` (x, y) with labels ``B x N`` and/or boxes ``B x 4`` ``(x0, y0, x1, y1)``, pixels,
    each prompt as :func:`validate_points` / :func:`validate_box` check it. Returns float32
    ``(coords | None, labels | None, boxes | None)``; ValueError saying what is wrong otherwise."""
    coords = labels = None
    if point_coords is not None:
        pc = _real(point_coords, "point_coords")  # complex or ragged input is an error, not truncated
        if pc.ndim != 3 or pc.shape[-1] != 2:
            raise ValueError(f"point_coords must have shape (B, N, 2); got {pc.shape}")
        try:
            pl = np.asarray(point_labels) if point_labels is not None else None
        except ValueError:
            pl = None
        if pl is None or pl.shape != pc.shape[:2]:
            raise ValueError(f"point_labels must have shape {pc.shape[:2]}")
        if pc.shape[0] == 0:
            raise ValueError("the batch of prompts is empty: point_coords has shape (0, N, 2); give B >= 1")
        if pc.shape[1] == 0 and boxes is None:
            raise ValueError(f"point_coords has shape {pc.shape}: no points and no boxes; give N >= 1 points "
                             "per prompt or boxes")
        checked = [validate_points(c, lab, image_size) for c, lab in zip(pc, pl)]
        coords = np.stack([c for c, _ in checked])
        labels = np.stack([lab for _, lab in checked])
        if coords.shape[1] == 0:  # boxes only (an empty point list, as predict allows)
            coords = labels = None
    if boxes is not None:
        b = _real(boxes, "boxes")
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes must have shape (B, 4); got {b.shape}")
        if b.shape[0] == 0:
            raise ValueError("the batch of prompts is empty: boxes has shape (0, 4); give B >= 1")
        boxes = np.stack([validate_box(x, image_size) for x in b])
        if coords is not None and boxes.shape[0] != coords.shape[0]:
            raise ValueError("boxes and point_coords must have the same batch size")
    if coords is None and boxes is None:
        raise ValueError("give point_coords + point_labels and/or boxes")
    if (coords.shape[0] if coords is not None else boxes.shape[0]) == 0:
        raise ValueError("the batch of prompts is empty")
    return coords, labels, boxes


def validate_mask_input(mask_input: object, batch: int = 1) -> np.ndarray:
    """Accept ``256 x 256``, ``1 x 256 x 256`` or ``B x 1 x 256 x 256`` low-res logits."""
    arr = _real(mask_input, "mask_input").astype(np.float32)
    s = LOW_RES_SIZE
    if arr.shape == (s, s):
        arr = arr[None, None]
    elif arr.ndim == 3 and arr.shape[1:] == (s, s):
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1:] != (1, s, s) or arr.shape[0] not in (1, batch):
        raise ValueError(
            f"mask_input must be low-res logits of shape ({s}, {s}) or ({batch}, 1, {s}, {s}); got {np.shape(mask_input)}"
        )
    if not np.isfinite(arr).all():
        raise ValueError("mask_input contains NaN or inf")
    return np.ascontiguousarray(np.broadcast_to(arr, (batch, 1, s, s)))


def to_decoder_prompts(
    coords: np.ndarray | None,
    labels: np.ndarray | None,
    boxes: np.ndarray | None,
    original_size: tuple[int, int],
    input_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Build decoder inputs for ``B`` prompts.

    Args:
        coords: ``B x N x 2`` (x, y) in original pixels, or None.
        labels: ``B x N`` (0/1), or None.
        boxes: ``B x 4`` (x0, y0, x1, y1) in original pixels, or None.
    Returns:
        ``B x M x 2`` coordinates in the 1024 frame and ``B x M`` labels: points first, then the
        box corners (labels 2, 3); without a box a ``(0, 0)`` padding point (label -1) is
        appended, exactly as SAM's prompt encoder does.
    """
    parts_c, parts_l = [], []
    batch = coords.shape[0] if coords is not None else boxes.shape[0]
    if coords is not None:
        parts_c.append(scale_coords(coords, original_size, input_size))
        parts_l.append(labels.astype(np.float32))
    if boxes is not None:
        parts_c.append(scale_coords(boxes.reshape(batch, 2, 2), original_size, input_size))
        parts_l.append(np.tile(np.float32([LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT]), (batch, 1)))
    else:
        parts_c.append(np.zeros((batch, 1, 2), np.float32))
        parts_l.append(np.full((batch, 1), LABEL_PAD, np.float32))
    return np.concatenate(parts_c, 1).astype(np.float32), np.concatenate(parts_l, 1).astype(np.float32)
