"""Between nD label layers and 3D propagation (plain numpy, no napari): seeds out, results in.

The stack is walked along one slider axis of a :class:`~napari_edgesam.interactive.planes.Plane`
(its other slider positions stay fixed); slice ``z`` is ``plane.at(axis, z)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from .planes import Plane


def object_ids(labels: np.ndarray, plane: Plane, axis: int) -> list[int]:
    """Non-zero ids present in the stack of ``plane`` along ``axis``."""
    found: set[int] = set()
    for z in range(plane.shape[axis]):
        found.update(int(v) for v in np.unique(plane.at(axis, z).read_labels(labels)) if v != 0)
    return sorted(found)


def seeds_from_labels(
    labels: np.ndarray,
    plane: Plane,
    axis: int,
    ids: Iterable[int],
    only_slices: Iterable[int] | None = None,
    rename: Mapping[int, int] | None = None,
) -> dict[int, dict[int, np.ndarray]]:
    """Seeds for ``propagate_objects``: ``{object id: {z: rows x cols bool}}``.

    Args:
        labels: nD labels with the plane's shape.
        ids: which label values to follow.
        only_slices: restrict an object's seeds to these slices when it is present on at
            least one of them (e.g. the slices the user prompted), else use all its slices.
        rename: label value -> object id in the result (default: the value itself).
    """
    ids = [int(i) for i in ids]
    rename = dict(rename or {})
    all_seeds: dict[int, dict[int, np.ndarray]] = {i: {} for i in ids}
    for z in range(plane.shape[axis]):
        lab = plane.at(axis, z).read_labels(labels)
        for i in ids:
            mask = lab == i
            if mask.any():
                all_seeds[i][z] = mask
    chosen = set(only_slices) if only_slices is not None else set()
    out = {}
    for i, seeds in all_seeds.items():
        if not seeds:
            continue
        preferred = {z: m for z, m in seeds.items() if z in chosen}
        out[rename.get(i, i)] = preferred or seeds
    return out


def write_object(labels: np.ndarray, plane: Plane, axis: int, obj: int, z: int, mask: np.ndarray) -> None:
    """Replace object ``obj`` on slice ``z`` of ``labels`` by ``mask`` (in place; other objects
    keep their pixels except where ``mask`` covers them)."""
    target = plane.at(axis, z)
    lab = target.read_labels(labels).copy()
    lab[lab == obj] = 0
    lab[np.asarray(mask, bool)] = obj
    target.write(labels, lab)


def summarise(results: Mapping[int, object], max_slices: int = 40) -> str:
    """A few lines describing ``{obj: PropagationResult}``: slice range, weakest slice, the
    stability of each slice (``z:score``, at most ``max_slices`` shown) and why each
    direction stopped."""
    lines = []
    for obj in sorted(results):
        res = results[obj]
        zs = sorted(res.masks)
        if not zs:
            lines.append(f"object {obj}: no slices")
            continue
        found = {z: s for z, s in res.scores.items() if z not in set(res.seeded)}
        head = f"object {obj}: slices {zs[0]}-{zs[-1]} ({len(zs)}, {len(res.seeded)} annotated)"
        if found:
            weakest = min(found, key=found.get)
            head += f", lowest stability {found[weakest]:.2f} at z={weakest}"
        lines.append(head)
        per_slice = [f"{z}:{'seed' if z in res.seeded else format(res.scores.get(z, float('nan')), '.2f')}" for z in zs]
        if len(per_slice) > max_slices:
            per_slice = per_slice[: max_slices // 2] + ["..."] + per_slice[-max_slices // 2 :]
        lines.append("  per slice: " + " ".join(per_slice))
        if res.stopped:
            lines.append("  stopped: " + "; ".join(f"{d}: {r}" for d, r in sorted(res.stopped.items())))
    return "\n".join(lines)


def score_table(results: Mapping[int, object]) -> dict[str, dict[str, float]]:
    """``{"obj": {"z": score}}`` (string keys, for layer metadata)."""
    return {str(obj): {str(z): round(float(s), 4) for z, s in sorted(res.scores.items())}
            for obj, res in results.items()}
