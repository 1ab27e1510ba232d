"""Mask post-processing in numpy: low-res logits -> full-size logits, stability scores."""

from __future__ import annotations

import sys
from functools import lru_cache

import numpy as np

from ...constants import IMG_SIZE, MASK_THRESHOLD, STABILITY_OFFSET


@lru_cache(maxsize=32)
def bilinear_matrix(out_len: int, in_len: int) -> np.ndarray:
    """``out_len x in_len`` matrix of 1-D bilinear interpolation with ``align_corners=False``
    (the half-pixel convention of ``torch.nn.functional.interpolate``)."""
    scale = in_len / out_len
    src = np.maximum((np.arange(out_len, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_len - 1)
    i1 = np.minimum(i0 + 1, in_len - 1)
    frac = src - i0
    m = np.zeros((out_len, in_len), np.float64)
    rows = np.arange(out_len)
    np.add.at(m, (rows, i0), 1.0 - frac)
    np.add.at(m, (rows, i1), frac)
    return m


@lru_cache(maxsize=32)
def _upscale_matrices(
    low_res: tuple[int, int], input_size: tuple[int, int], original_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    rows = bilinear_matrix(original_size[0], input_size[0]) @ bilinear_matrix(IMG_SIZE, low_res[0])[: input_size[0]]
    cols = bilinear_matrix(original_size[1], input_size[1]) @ bilinear_matrix(IMG_SIZE, low_res[1])[: input_size[1]]
    return rows.astype(np.float32), np.ascontiguousarray(cols.T.astype(np.float32))


def upscale_logits(
    low_res: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int]
) -> np.ndarray:
    """Official mask post-processing as two matrix products.

    Equivalent to: bilinear ``256 -> 1024``, crop to ``input_size``, bilinear to
    ``original_size`` (both ``align_corners=False``).

    Args:
        low_res: ``... x 256 x 256`` logits.
        input_size: ``(h, w)`` of the resized image inside the 1024 frame.
        original_size: ``(h, w)`` of the original image.
    Returns:
        ``... x H x W`` float32 logits.
    """
    rows, cols_t = _upscale_matrices(tuple(low_res.shape[-2:]), tuple(input_size), tuple(original_size))
    return matmul(matmul(rows, low_res.astype(np.float32, copy=False)), cols_t)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` in float32 (numpy broadcasting rules), through torch's thread pool when torch
    is loaded.

    numpy's OpenBLAS threads busy-wait for a while after each product; on a few cores they
    then slow down the next torch operation (measured here: a decoder call after a numpy
    upscale took 2.5x longer). It runs on torch's compute thread
    (:mod:`~napari_edgesam.inference.backends.compute_thread`). Without torch (onnxruntime
    installs) numpy does it.
    """
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    torch = sys.modules.get("torch")
    if torch is None:
        return np.matmul(a, b)
    from ..backends import compute_thread

    ta = torch.from_numpy(a if a.flags.writeable else a.copy())
    tb = torch.from_numpy(b if b.flags.writeable else b.copy())
    return compute_thread.run(lambda: torch.matmul(ta, tb).numpy())


def stability_score(
    logits: np.ndarray, threshold: float = MASK_THRESHOLD, offset: float = STABILITY_OFFSET
) -> np.ndarray:
    """IoU of ``logits > threshold + offset`` and ``logits > threshold - offset`` over the
    last two axes (``... x H x W -> ...``); 0 where the loose mask is empty."""
    inter = (logits > threshold + offset).sum((-1, -2), dtype=np.int64)
    union = (logits > threshold - offset).sum((-1, -2), dtype=np.int64)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float32)


def stability_in_image(low_res: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """:func:`stability_score` of ``... x 256 x 256`` low-res logits (EdgeSAM's score, over the
    whole 1024 frame as the official predictor computes it), but 0 for a mask with no pixel over
    the image: the logits also cover the frame's padding (beyond the first ``ceil(h / 4)`` rows
    and ``ceil(w / 4)`` columns for a resized image of ``input_size`` ``(h, w)``), where a
    candidate can be stable without a single pixel in the image."""
    scale = IMG_SIZE / low_res.shape[-1]
    rows = max(1, int(np.ceil(input_size[0] / scale)))
    cols = max(1, int(np.ceil(input_size[1] / scale)))
    inside = (low_res[..., :rows, :cols] > MASK_THRESHOLD).any((-1, -2))
    return np.where(inside, stability_score(low_res), 0.0).astype(np.float32)


def fill_holes(mask: np.ndarray, max_area: int | None = None) -> np.ndarray:
    """Fill the interior holes of one object's ``H x W`` boolean mask.

    A hole is a background region (4-connected, as :func:`scipy.ndimage.binary_fill_holes`)
    that does not reach the mask's bounding box edge. ``max_area=None`` fills every hole (the
    default of interactive, CLI and batch masks); an integer fills only holes smaller than
    that many pixels (the automatic modes' ``hole_area``; 0 fills nothing). Works inside the
    mask's bounding box only, so the cost follows the object, not the image. Returns a new
    array (``mask`` is not changed); an empty mask comes back empty.
    """
    mask = np.asarray(mask, bool)
    out = mask.copy()
    if max_area is not None and max_area <= 0:
        return out
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return out
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    from scipy import ndimage

    if max_area is None:  # every hole: boolean propagation, no label image (memory ~2 bytes/pixel)
        out[r0:r1, c0:c1] = ndimage.binary_fill_holes(mask[r0:r1, c0:c1])
        return out
    inv = np.pad(~mask[r0:r1, c0:c1], 1, constant_values=True)
    lab, n = ndimage.label(inv)
    if n <= 1:
        return out
    fill = np.arange(n + 1) != lab[0, 0]
    fill[0] = False
    if max_area is not None:
        fill &= np.bincount(lab.ravel(), minlength=n + 1) < max_area
    out[r0:r1, c0:c1] |= fill[lab][1:-1, 1:-1]
    return out


#: :func:`clip_to_box`'s tolerance around a box: this many pixels plus this fraction of its side
#: (a box drawn a pixel or two inside the object's edge keeps the edge).
BOX_MARGIN_PX = 1.0
BOX_MARGIN_FRACTION = 0.02


#: A box side shorter than this many pixels (a line drawn as a box) does not cut along it.
MIN_CLIP_SIDE = 2.0


def clip_to_box(mask: np.ndarray, box: np.ndarray, margin_px: float = BOX_MARGIN_PX,
                margin_fraction: float = BOX_MARGIN_FRACTION,
                points: np.ndarray | None = None) -> np.ndarray:
    """The part of one object's ``H x W`` boolean mask inside its prompt box.

    A box prompt says where the object is; on crowded nuclei the decoder's mask often runs out
    of it into touching neighbours and background (box masks 2-5x the object's area). ``box``
    is ``(x0, y0, x1, y1)`` in pixel coordinates (pixel ``(r, c)`` covers ``[c, c + 1) x
    [r, r + 1)``), widened on every side by ``margin_px + margin_fraction * side``; pixels
    overlapping the widened box are kept. ``points``: ``N x 2`` ``(x, y)`` positive points of
    the same prompt; the box is first grown to include them (a positive click outside the box
    says "this too"). A side shorter than :data:`MIN_CLIP_SIDE` (a line drawn as a box) does
    not cut along it. Returns a new array (``mask`` is not changed).
    """
    mask = np.asarray(mask, bool)
    x0, y0, x1, y1 = np.asarray(box, np.float64).reshape(4)
    if points is not None and len(points):
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        x0, y0 = min(x0, pts[:, 0].min()), min(y0, pts[:, 1].min())
        x1, y1 = max(x1, pts[:, 0].max() + 1), max(y1, pts[:, 1].max() + 1)
    mx = margin_px + margin_fraction * max(x1 - x0, 0.0)
    my = margin_px + margin_fraction * max(y1 - y0, 0.0)
    h, w = mask.shape[-2:]
    c0, c1 = max(int(np.floor(x0 - mx)), 0), min(int(np.ceil(x1 + mx)), w)
    r0, r1 = max(int(np.floor(y0 - my)), 0), min(int(np.ceil(y1 + my)), h)
    if x1 - x0 < MIN_CLIP_SIDE:
        c0, c1 = 0, w
    if y1 - y0 < MIN_CLIP_SIDE:
        r0, r1 = 0, h
    out = np.zeros_like(mask)
    if r1 > r0 and c1 > c0:
        out[..., r0:r1, c0:c1] = mask[..., r0:r1, c0:c1]
    return out


#: 8-connectivity: pixels touching at a corner belong to one piece.
_EIGHT = np.ones((3, 3), bool)


def keep_prompted_pieces(mask: np.ndarray, point_coords: np.ndarray | None = None,
                         point_labels: np.ndarray | None = None, box: np.ndarray | None = None) -> np.ndarray:
    """One object, one piece: drop the parts of ``mask`` that are not connected to the prompt.

    ``mask`` is one object's ``H x W`` boolean mask; ``point_coords`` ``N x 2`` are (x, y) pixels
    with ``point_labels`` ``N`` (1 positive, 0 negative), ``box`` is ``(x0, y0, x1, y1)``.
    Pieces are 8-connected. Kept: the piece under each positive point (a point that misses the
    mask keeps the piece nearest to it) and, for a box, the piece with the most pixels inside
    it; with neither prompt, the largest piece. Negative points keep nothing. A mask in one
    piece (or empty) comes back unchanged. Works inside the mask's bounding box only. Returns
    a new array (``mask`` is not changed).
    """
    mask = np.asarray(mask, bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return mask.copy()
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    from scipy import ndimage

    pieces, n = ndimage.label(mask[r0:r1, c0:c1], _EIGHT)
    if n <= 1:
        return mask.copy()
    keep = np.zeros(n + 1, bool)
    if point_coords is not None and len(point_coords):
        pts = np.asarray(point_coords, np.float64).reshape(-1, 2)
        labels = np.ones(len(pts)) if point_labels is None else np.asarray(point_labels).reshape(-1)
        for (x, y), label in zip(pts, labels):
            if label == 1:
                keep[_piece_at(pieces, x - c0, y - r0)] = True
    if box is not None or not keep.any():
        area = np.bincount(pieces.ravel(), minlength=n + 1)
        if box is not None:
            x0, y0, x1, y1 = np.asarray(box, np.float64).reshape(4)
            inside = pieces[max(int(np.floor(y0)) - r0, 0) : max(int(np.ceil(y1)) - r0, 0),
                            max(int(np.floor(x0)) - c0, 0) : max(int(np.ceil(x1)) - c0, 0)]
            if inside.any():
                area = np.bincount(inside.ravel(), minlength=n + 1)
        area[0] = 0
        keep[int(np.argmax(area))] = True
    keep[0] = False
    out = np.zeros_like(mask)
    out[r0:r1, c0:c1] = keep[pieces]
    return out


def _piece_at(pieces: np.ndarray, x: float, y: float) -> int:
    """The label of the piece under (x, y) (crop pixels), else of the piece nearest to it."""
    r, c = int(np.floor(y)), int(np.floor(x))
    if 0 <= r < pieces.shape[0] and 0 <= c < pieces.shape[1] and pieces[r, c]:
        return int(pieces[r, c])
    rr, cc = np.nonzero(pieces)
    nearest = int(np.argmin((rr + 0.5 - y) ** 2 + (cc + 0.5 - x) ** 2))
    return int(pieces[rr[nearest], cc[nearest]])
