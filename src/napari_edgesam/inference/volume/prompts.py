"""The prompts 3D propagation carries from one slice to the next, built from a mask.

For slice ``z +- 1`` the mask accepted on slice ``z`` gives its bounding box (a little
extended, so the object may grow), a positive point at its interior-most pixel and,
optionally, its low-res logits as the decoder's mask input. Plain numpy/scipy, no model.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from ...constants import IMG_SIZE, LOW_RES_SIZE
from ..core.postprocess import matmul


@lru_cache(maxsize=16)
def _area_matrix(n_out: int, n_in: int, cell: float) -> np.ndarray:
    """``n_out x n_in`` averaging weights: output cell ``i`` covers source ``[i*cell, (i+1)*cell)``
    (only its part inside ``[0, n_in)`` counts); cells fully outside get zero weights."""
    start = np.arange(n_out, dtype=np.float64)[:, None] * cell
    px = np.arange(n_in, dtype=np.float64)[None, :]
    w = np.clip(np.minimum(start + cell, px + 1.0) - np.maximum(start, px), 0.0, None)
    covered = w.sum(1, keepdims=True)
    return (w / np.where(covered > 0, covered, 1.0)).astype(np.float32)


def mask_to_low_res_logits(
    mask: np.ndarray,
    input_size: tuple[int, int],
    original_size: tuple[int, int] | None = None,
    strength: float = 10.0,
) -> np.ndarray:
    """A mask as the decoder's ``256 x 256`` mask-input logits.

    The mask is placed like the image: resized by the longest-side factor into the top-left
    ``input_size`` of the 1024 frame, whose 4x4-pixel cells form the 256 grid. Each cell gets
    ``strength * (2 * f - 1)`` where ``f`` is the fraction of the cell the mask covers
    (area average); cells outside the image get ``-strength``.

    Args:
        mask: ``H x W`` bool.
        input_size: ``(h, w)`` of the image after the resize (``ImageEmbedding.input_size``).
        original_size: ``(H, W)``; defaults to ``mask.shape``.
    Returns:
        ``256 x 256`` float32.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {mask.shape}")
    original_size = tuple(mask.shape) if original_size is None else tuple(original_size)
    if tuple(mask.shape) != original_size:
        raise ValueError(f"mask shape {mask.shape} differs from original_size {original_size}")
    frame_per_cell = IMG_SIZE / LOW_RES_SIZE
    rows = _area_matrix(LOW_RES_SIZE, original_size[0], frame_per_cell * original_size[0] / input_size[0])
    cols = _area_matrix(LOW_RES_SIZE, original_size[1], frame_per_cell * original_size[1] / input_size[1])
    frac = matmul(matmul(rows, mask.astype(np.float32)), cols.T)
    return (strength * (2.0 * frac - 1.0)).astype(np.float32)


#: How much the box carried to the next slice is widened (fraction of its size per side). Each
#: mask is also clipped to its box (plus a pixel and 2%), so this bounds how fast a leak into a
#: touching neighbour can creep from slice to slice. On the plugin's 3D sample (shipped model)
#: mean 3D IoU was 0.809 / 0.841 / 0.858 at 0.1 / 0.05 / 0, seeded at each nucleus's largest
#: slice; 0.769 / 0.800 / 0.818 seeded where it has half that area (the object grows); 0.858 /
#: 0.872 / 0.882 with every third slice. 0.05 keeps room for objects that grow faster than these.
BOX_EXTENSION = 0.05


def prompt_from_mask(mask: np.ndarray, box_extension: float = BOX_EXTENSION) -> tuple[np.ndarray, np.ndarray]:
    """The box and interior point that ask for ``mask`` again on a neighbouring slice.

    Args:
        mask: ``H x W`` bool, not empty.
        box_extension: grow the box by this fraction of its size on each side (at least one
            pixel when > 0), clipped to the image.
    Returns:
        box ``(x0, y0, x1, y1)`` float32 and point ``1 x 2`` ``(x, y)``: the mask pixel
        farthest from the background (maximum of the distance transform).
    """
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise ValueError("cannot build a prompt from an empty mask")
    y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
    crop = np.pad(mask[y0 : y1 + 1, x0 : x1 + 1], 1)
    dist = ndimage.distance_transform_edt(crop)
    py, px = np.unravel_index(int(np.argmax(dist)), dist.shape)
    point = np.array([[x0 + px - 1, y0 + py - 1]], np.float32)
    h, w = mask.shape
    mx = max(1.0, box_extension * (x1 - x0 + 1)) if box_extension > 0 else 0.0
    my = max(1.0, box_extension * (y1 - y0 + 1)) if box_extension > 0 else 0.0
    box = np.array(
        [max(0.0, x0 - mx), max(0.0, y0 - my), min(w - 1.0, x1 + mx), min(h - 1.0, y1 + my)], np.float32
    )
    return box, point
