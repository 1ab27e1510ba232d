"""Prompt sampling for training: boxes and points from masks, and refinement points.

Conventions (the same as the predictor's):
- masks are indexed ``[row, col]`` = ``[y, x]``;
- a point is ``(x, y)`` in pixel indices of its frame (the prompt encoder adds 0.5 to reach the
  pixel centre);
- a box is ``(x0, y0, x1, y1)`` with ``x0, y0`` the first and ``x1, y1`` the last foreground
  column/row (inclusive pixel indices), like SAM's boxes from masks.
The dataset samples initial prompts in the model-input frame (``img_size``); refinement points
are found on the low-res ``img_size/4`` grid and mapped to the input frame with
:func:`low_res_to_input` (the centre of the 4x4 block: ``x_in = 4 x + 1.5``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..constants import LABEL_IGNORE, LABEL_NEGATIVE, LABEL_POSITIVE

# -- numpy (dataset side) ---------------------------------------------------------------------


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """``H x W`` bool -> ``(x0, y0, x1, y1)`` float32 (inclusive pixel indices).

    Raises:
        ValueError: the mask is empty.
    """
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("cannot compute the box of an empty mask")
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)


def sample_point_in_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One foreground pixel of ``mask`` (``H x W`` bool) drawn uniformly -> ``(x, y)`` float32.

    Raises:
        ValueError: the mask is empty.
    """
    ys, xs = np.nonzero(np.asarray(mask, dtype=bool))
    if ys.size == 0:
        raise ValueError("cannot sample a point in an empty mask")
    i = int(rng.integers(ys.size))
    return np.array([xs[i], ys[i]], dtype=np.float32)


def random_point_prompt(valid_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A uniform random pixel ``(x, y)`` inside the valid (un-padded) ``h x w`` region."""
    h, w = valid_hw
    return np.array([rng.integers(w), rng.integers(h)], dtype=np.float32)


def random_box_around(
    point: np.ndarray,
    valid_hw: tuple[int, int],
    rng: np.random.Generator,
    min_frac: float = 0.05,
    max_frac: float = 0.5,
) -> np.ndarray:
    """A random box ``(x0, y0, x1, y1)`` containing ``point``, each side ``min_frac..max_frac``
    of the valid region's longest side, clipped to the valid ``h x w`` region.

    Used as a box prompt for unlabelled images in distillation (the teacher's answer is the target).
    """
    h, w = valid_hw
    side = max(h, w)
    bw, bh = (rng.uniform(min_frac, max_frac, size=2) * side).tolist()
    fx, fy = rng.uniform(0.0, 1.0, size=2).tolist()
    x0 = np.clip(point[0] - fx * bw, 0, w - 1)
    y0 = np.clip(point[1] - fy * bh, 0, h - 1)
    x1 = np.clip(point[0] + (1 - fx) * bw, 0, w - 1)
    y1 = np.clip(point[1] + (1 - fy) * bh, 0, h - 1)
    return np.array([x0, y0, x1, y1], dtype=np.float32)


# -- torch (training-loop side) ---------------------------------------------------------------


def low_res_to_input(points: torch.Tensor, scale: float) -> torch.Tensor:
    """``... x 2`` (x, y) pixel indices of the low-res grid -> the input frame (block centre).

    ``scale`` = input size / low-res size (4 for EdgeSAM): ``x_in = (x + 0.5) * scale - 0.5``.
    """
    return (points + 0.5) * scale - 0.5


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``N x H x W`` bool -> ``N x 4`` (x0, y0, x1, y1) inclusive indices; empty masks give zeros."""
    n, h, w = masks.shape
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ar_h, -1).amax(dim=1)
    y0 = torch.where(rows, ar_h, h).amin(dim=1)
    x1 = torch.where(cols, ar_w, -1).amax(dim=1)
    x0 = torch.where(cols, ar_w, w).amin(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    empty = ~rows.any(dim=1)
    return torch.where(empty[:, None], torch.zeros_like(boxes), boxes)


def sample_refinement_points(
    prediction: torch.Tensor,
    target: torch.Tensor,
    generator: torch.Generator | None = None,
    min_error_pixels: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EdgeSAM's refinement point: one pixel drawn uniformly from ``FP u FN``.

    Args:
        prediction: ``N x H x W`` bool, the binarised prediction (the student's).
        target: ``N x H x W`` bool, the binarised target (the teacher's or the ground truth).
        generator: random source (on the masks' device) for reproducible draws.
        min_error_pixels: with fewer disagreeing pixels the point is ignored.

    Returns:
        points ``N x 2`` float (x, y) in pixel indices of the ``H x W`` grid, and labels ``N``
        (int64): 0 (negative) for a false positive (prediction 1, target 0), 1 (positive) for a
        false negative, -2 (ignore, point at (0, 0)) when ``|FP u FN| < min_error_pixels``.
    """
    if prediction.shape != target.shape or prediction.ndim != 3:
        raise ValueError(
            f"prediction and target must both be N x H x W, got {tuple(prediction.shape)} and {tuple(target.shape)}"
        )
    prediction, target = prediction.bool(), target.bool()
    n, h, w = prediction.shape
    fn = (~prediction & target).flatten(1)
    error = (prediction ^ target).flatten(1)
    counts = error.sum(dim=1)
    u = torch.rand(n, generator=generator, device=prediction.device, dtype=torch.float64)
    k = torch.minimum((u * counts).long(), (counts - 1).clamp(min=0))
    # Index of the (k+1)-th error pixel: the number of positions whose running count is <= k.
    running = error.cumsum(dim=1)
    idx = (running <= k[:, None]).sum(dim=1).clamp(max=h * w - 1)
    points = torch.stack([idx % w, idx // w], dim=1).float()
    is_fn = fn.gather(1, idx[:, None]).squeeze(1)
    labels = torch.where(is_fn, LABEL_POSITIVE, LABEL_NEGATIVE).long()
    ignore = counts < max(int(min_error_pixels), 1)
    labels = torch.where(ignore, torch.full_like(labels, LABEL_IGNORE), labels)
    points = torch.where(ignore[:, None], torch.zeros_like(points), points)
    return points, labels
