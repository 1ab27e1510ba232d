"""What 3D propagation returns: one :class:`PropagationResult` per object, why each
direction stopped, and :func:`results_to_labels` to write them into a label volume."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STOP_END = "end of stack"
STOP_VANISHED = "mask vanished"
STOP_LOW_STABILITY = "low stability"
STOP_LOW_OVERLAP = "low overlap"
STOP_CANCELLED = "cancelled"
STOP_ANNOTATED = "reached annotated slice"
STOP_MET = "met other direction"
#: Every reason that can appear in :attr:`PropagationResult.stopped`.
STOP_REASONS = (
    STOP_END, STOP_VANISHED, STOP_LOW_STABILITY, STOP_LOW_OVERLAP, STOP_CANCELLED, STOP_ANNOTATED, STOP_MET,
)
DIRECTIONS = ("both", "forward", "backward")
#: Score given to seeded slices in :attr:`PropagationResult.scores`.
SEED_SCORE = 1.0


@dataclass
class PropagationResult:
    """Propagation of one object.

    Attributes:
        masks: slice index ``z`` -> ``H x W`` bool mask (seeded slices included, unchanged).
        scores: ``z`` -> stability score of the prediction (``SEED_SCORE`` on seeded slices).
        stopped: direction -> reason it stopped (one of :data:`STOP_REASONS`). Directions:
            ``"forward"`` (increasing z after the last seed), ``"backward"`` (decreasing z before
            the first seed), ``"fill a->b"`` (from seed ``a`` toward seed ``b``).
        seeded: the seeded slice indices, sorted.
    """

    masks: dict[int, np.ndarray] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    stopped: dict[str, str] = field(default_factory=dict)
    seeded: tuple[int, ...] = ()

    @property
    def slices(self) -> list[int]:
        """Sorted slice indices that have a mask."""
        return sorted(self.masks)


def results_to_labels(
    results: dict[int, PropagationResult],
    shape: tuple[int, int, int],
    existing: np.ndarray | None = None,
    overwrite: bool = False,
    dtype: np.dtype | type = np.uint32,
) -> np.ndarray:
    """Write propagated objects into a ``Z x H x W`` label volume (a new array).

    On every slice where an object has a mask, that object's old pixels are cleared first
    (the object is re-segmented there), then its mask is written: over everything with
    ``overwrite=True``; otherwise only where the pixel is background (other existing labels,
    and objects with a smaller id in ``results``, are preserved).

    Args:
        results: object id (> 0) -> result.
        shape: ``(Z, H, W)``.
        existing: labels to start from (copied, its dtype kept); zeros of ``dtype`` if None.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must be (Z, H, W), got {shape}")
    if existing is None:
        out = np.zeros(shape, dtype)
    else:
        out = np.array(existing, copy=True)
        if out.shape != shape:
            raise ValueError(f"existing labels have shape {out.shape}, expected {shape}")
    info = np.iinfo(out.dtype) if np.issubdtype(out.dtype, np.integer) else None
    for obj in sorted(results):
        if int(obj) <= 0 or (info is not None and int(obj) > info.max):
            raise ValueError(f"object id {obj} must be > 0 and fit the label dtype {out.dtype}")
        for z, mask in sorted(results[obj].masks.items()):
            if not 0 <= z < shape[0] or np.shape(mask) != shape[1:]:
                raise ValueError(f"object {obj}: mask of slice {z} does not fit a volume of shape {shape}")
            plane = out[z]
            plane[plane == obj] = 0
            plane[mask if overwrite else (mask & (plane == 0))] = obj
    return out
