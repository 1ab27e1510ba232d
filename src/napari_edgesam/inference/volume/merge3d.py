"""Link per-slice 2D instance labels into 3D instances by their overlap in consecutive slices."""

from __future__ import annotations

import numpy as np

from ..embeddings.tiling import UnionFind, overlap_pairs


def merge_slices(
    slice_labels: np.ndarray,
    iou_threshold: float = 0.3,
    overlap_threshold: float = 0.8,
    min_slices: int = 1,
) -> np.ndarray:
    """Join 2D labels of a stack into 3D objects.

    Objects in slices ``z - 1`` and ``z`` are matched one-to-one, greedily by descending IoU,
    when their IoU is at least ``iou_threshold`` or the smaller of the two lies at least
    ``overlap_threshold`` inside the other (the tapering cap of a round object); matched chains
    become one 3D object.

    Args:
        slice_labels: ``Z x H x W`` integer labels, numbered independently per slice (0 is
            background).
        iou_threshold: minimum IoU (0-1] of two objects in neighbouring slices to be joined.
        overlap_threshold: alternatively, the minimum fraction of the smaller object covered by
            the other (0-1]; 1 disables all but complete containment.
        min_slices: drop 3D objects present in fewer slices.
    Returns:
        ``Z x H x W`` uint32 labels, numbered 1..N in order of first appearance (z, then
        label order within the slice).
    """
    lab = np.asarray(slice_labels)
    if lab.ndim != 3:
        raise ValueError(f"slice_labels must be Z x H x W; got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"slice_labels must be integer labels, got dtype {lab.dtype}")
    for name, value in (("iou_threshold", iou_threshold), ("overlap_threshold", overlap_threshold)):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {value}")
    if lab.size and lab.min() < 0:
        raise ValueError("slice_labels must not be negative")
    z_count = lab.shape[0]
    offsets = np.zeros(z_count + 1, np.int64)
    for z in range(z_count):
        offsets[z + 1] = offsets[z] + (int(lab[z].max()) if lab[z].size else 0)
    glob = np.where(lab > 0, lab.astype(np.int64) + offsets[:-1, None, None], 0)
    uf = UnionFind(int(offsets[-1]) + 1)
    for z in range(1, z_count):
        la, lb, n, area_a, area_b = overlap_pairs(glob[z - 1], glob[z])
        if not la.size:
            continue
        iou = n / (area_a + area_b - n)
        ok = (iou >= iou_threshold) | (n / np.minimum(area_a, area_b) >= overlap_threshold)
        used_a, used_b = set(), set()
        for k in np.argsort(-iou, kind="stable"):
            if not ok[k]:
                continue
            a, b = int(la[k]), int(lb[k])
            if a in used_a or b in used_b:
                continue
            used_a.add(a)
            used_b.add(b)
            uf.union(a, b)
    roots = uf.roots()[glob]
    uniq, first, inv = np.unique(roots.ravel(), return_index=True, return_inverse=True)
    # number objects by first appearance in (z, y, x) order
    if min_slices > 1:
        present = np.zeros(len(uniq), np.int64)
        for z in range(z_count):
            present[np.unique(inv.reshape(roots.shape)[z])] += 1
        valid = (uniq > 0) & (present >= min_slices)
    else:
        valid = uniq > 0
    order = np.argsort(np.where(valid, first, np.iinfo(np.int64).max), kind="stable")
    lut = np.zeros(len(uniq), np.uint32)
    n_valid = int(valid.sum())
    lut[order[:n_valid]] = np.arange(1, n_valid + 1, dtype=np.uint32)
    return lut[inv].reshape(lab.shape)
