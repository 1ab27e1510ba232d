"""Objects propagated together do not share pixels: where the masks of different objects
overlap on a slice, each pixel goes to the object it lies deeper inside.

Touching nuclei are where propagation fails: one object's mask bleeds into its neighbour, the
next slice's prompt (box and interior point, built from that mask) is then partly on the
neighbour, and within a few slices the object is following the neighbour. When both are being
followed, the bleed overlaps the neighbour's own mask, deep inside the neighbour but at the
edge of the bleeding mask; giving each contested pixel to the mask in which it is farther from
the background (Euclidean distance transform) cuts the bleed off along the middle of the
overlap, before it is carried on. Plain numpy/scipy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def split_overlaps(masks: Sequence[np.ndarray], owners: Sequence[int],
                   settled: Sequence[tuple[int, np.ndarray]] = (),
                   fixed: Sequence[tuple[int, np.ndarray]] = ()) -> list[np.ndarray]:
    """Give every pixel claimed by masks of two or more different ``owners`` to the one mask it
    lies deepest inside (ties: the earlier mask).

    Args:
        masks: ``H x W`` bool masks of one slice.
        owners: the object of each mask; masks of the same object never compete (their overlap
            is left as it is).
        settled: ``(owner, H x W mask)`` of other objects' earlier predictions on this slice:
            they compete for pixels the same way but are not changed (nor returned).
        fixed: ``(owner, H x W mask)`` of annotated masks (seeds): they keep every pixel; the
            masks of other owners lose every pixel they share with them.
    Returns:
        the new ``masks`` (the inputs are not changed; masks without contested pixels are
        returned as they are).
    """
    n = len(masks)
    if n != len(owners):
        raise ValueError(f"{n} masks but {len(owners)} owners")
    masks = [np.asarray(m, bool) for m in masks]
    shapes = {m.shape for m in masks} | {np.shape(m) for _, m in settled} | {np.shape(m) for _, m in fixed}
    if len(shapes) > 1 or any(len(sh) != 2 for sh in shapes):
        raise ValueError(f"split_overlaps needs H x W masks of one shape, got shapes {sorted(shapes)}")
    out = _split_by_depth(masks + [np.asarray(m, bool) for _, m in settled], list(owners) + [o for o, _ in settled], n)
    for owner, seed in fixed:
        seed = np.asarray(seed, bool)
        sb = _box(seed)
        for i in range(n):
            ov = _meet(_box(out[i]), sb) if owners[i] != owner else None
            if ov is not None and (out[i][ov] & seed[ov]).any():
                if out[i] is masks[i]:
                    out[i] = masks[i].copy()
                out[i][ov] &= ~seed[ov]
    return out


def _meet(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int] | None) -> tuple[slice, slice] | None:
    """The intersection of two boxes ``(r0, r1, c0, c1)`` as slices, None if they do not meet."""
    if a is None or b is None:
        return None
    r0, r1, c0, c1 = max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3])
    return (slice(r0, r1), slice(c0, c1)) if r0 < r1 and c0 < c1 else None


def _split_by_depth(masks: list[np.ndarray], owners: list[int], n: int) -> list[np.ndarray]:
    """The first ``n`` of ``masks`` after the depth rule (the others compete, unchanged). Work
    stays inside the boxes of the masks that meet (images may be large, objects small)."""
    if len(set(owners)) < 2:
        return list(masks[:n])
    boxes = [_box(m) for m in masks]
    depth: dict[int, np.ndarray] = {}

    def depth_in(i: int, ov: tuple[slice, slice]) -> np.ndarray:
        """Distance to the background inside mask ``i`` (0 outside it), over ``ov``."""
        if i not in depth:
            r0, r1, c0, c1 = boxes[i]
            depth[i] = ndimage.distance_transform_edt(np.pad(masks[i][r0:r1, c0:c1], 1))[1:-1, 1:-1]
        r0, _, c0, _ = boxes[i]
        return depth[i][ov[0].start - r0 : ov[0].stop - r0, ov[1].start - c0 : ov[1].stop - c0]

    out = list(masks[:n])
    for i in range(n):
        for j in range(len(masks)):
            if j == i or owners[i] == owners[j]:
                continue
            ov = _meet(boxes[i], boxes[j])
            if ov is None:
                continue
            both = masks[i][ov] & masks[j][ov]
            if not both.any():
                continue
            di, dj = depth_in(i, ov), depth_in(j, ov)
            lose = both & ((dj > di) | ((dj == di) & (j < i)))
            if lose.any():
                if out[i] is masks[i]:
                    out[i] = masks[i].copy()
                out[i][ov] &= ~lose
    return out
