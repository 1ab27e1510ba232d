"""One 3D propagation of the interactive session as a plain, immutable job (no Qt, no napari).

The controller builds a :class:`PropagationJob` from what is on screen (:func:`choose_seeds`
picks the objects), a runner calls :meth:`PropagationJob.run` in a worker, and the controller
writes what comes back into the preview (:meth:`PropagationJob.write_slice`,
:meth:`PropagationJob.write_results`) if the job is still current (same ``generation``).
The job only asks the predictor to decode (``propagate_objects`` uses the stateless
``decode``/``decode_batch``): running it never changes the predictor.

Which objects: every object in the preview (seeds: the slices the user prompted if the object
is there, else every slice it is on); with an empty preview, the target's selected label
(committed earlier), followed as object 1 and committed back under its own id (``keep_ids``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from ..inference.core.predictor import ImageEmbedding
from ..inference.volume.propagation import DIRECTIONS, PropagationResult, propagate_objects
from . import stack
from .planes import Plane

#: ``propagate(predictor, get_embedding, seeds, n_slices, *, direction, cancel, progress,
#: on_result, **options)``: :func:`~napari_edgesam.inference.volume.propagation.propagate_objects` or
#: a stand-in with its signature (tests).
PropagateFn = Callable[..., dict[int, PropagationResult]]


def choose_seeds(
    preview: np.ndarray,
    plane: Plane,
    axis: int,
    prompted: Callable[[], Iterable[int]],
    target: np.ndarray | None = None,
    selected_label: int = 0,
) -> tuple[dict[int, dict[int, np.ndarray]], dict[int, int]]:
    """The objects to propagate along ``axis`` of ``plane``'s stack, and the ids they keep.

    Args:
        preview: nD preview labels (the plane's shape).
        prompted: the positions along ``axis`` holding prompts (called only when the preview
            has objects).
        target: nD target labels, used when the preview is empty.
        selected_label: the target's selected label.
    Returns:
        seeds ``{object id: {z: rows x cols bool}}`` (empty: nothing to propagate) and
        ``keep_ids`` ``{preview id: target id}`` (``{1: selected_label}`` for a target label).
    """
    ids = stack.object_ids(preview, plane, axis)
    if ids:
        return stack.seeds_from_labels(preview, plane, axis, ids, only_slices=prompted()), {}
    label = int(selected_label)
    if label > 0 and target is not None and target.shape == preview.shape:
        seeds = stack.seeds_from_labels(target, plane, axis, [label], rename={label: 1})
        if seeds:
            return seeds, {1: label}
    return {}, {}


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class PropagationJob:
    """Everything one propagation needs, fixed when it starts.

    Attributes:
        plane: the plane the user was on; slice ``z`` of the stack is ``plane.at(axis, z)``.
        axis: the slider axis walked (``plane.stack_axis``).
        seeds: object id -> {z -> ``rows x cols`` bool mask} (the annotated slices).
        embedding_for: z -> that slice's :class:`ImageEmbedding` (called in the worker).
        direction: ``"both"``, ``"forward"`` or ``"backward"``.
        generation: the controller's generation when the job was built (results of an older
            generation are dropped).
        keep_ids: preview id -> target id for objects taken from the target labels.
        options: further keyword arguments of ``propagate_objects`` (stop rules, ...).
        preview: where the results go (the preview layer, opaque here).
        protected: nD labels (the plane's shape) of objects committed earlier, or None: the
            propagated masks never take their pixels (the target labels when existing labels
            are not to be overwritten), except those of the targets in :attr:`keep_ids` (the
            objects being propagated). Read slice by slice in the worker.
    """

    plane: Plane
    axis: int
    seeds: Mapping[int, Mapping[int, np.ndarray]]
    embedding_for: Callable[[int], ImageEmbedding]
    direction: str = "both"
    generation: int = 0
    keep_ids: Mapping[int, int] = field(default_factory=dict)
    options: Mapping[str, object] = field(default_factory=dict)
    preview: object = None
    protected: np.ndarray | None = None
    #: ``(object, z)`` written by :meth:`write_slice` (cleared again by :meth:`write_results`
    #: where the final results have no mask)
    painted: set = field(default_factory=set, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if not 0 <= self.axis < self.plane.ndim or self.axis in self.plane.displayed \
                or self.axis == self.plane.channel_axis:
            raise ValueError(f"axis {self.axis} is not a slider axis of a {self.plane.ndim}D plane "
                             f"displayed on axes {self.plane.displayed}")
        if not self.seeds:
            raise ValueError("nothing to propagate: give at least one object's seeds")
        object.__setattr__(self, "seeds", _frozen({int(o): _frozen(s) for o, s in self.seeds.items()}))
        object.__setattr__(self, "keep_ids", _frozen(self.keep_ids))
        object.__setattr__(self, "options", _frozen(self.options))

    @property
    def n_slices(self) -> int:
        """Slices of the stack along :attr:`axis`."""
        return int(self.plane.shape[self.axis])

    def seeded(self, obj: int) -> frozenset[int]:
        """The annotated slices of object ``obj`` (never overwritten by its results)."""
        return frozenset(self.seeds.get(obj, ()))

    def run(
        self,
        predictor,
        *,
        propagate: PropagateFn = propagate_objects,
        cancel: threading.Event | None = None,
        progress: Callable[[int, int], None] | None = None,
        on_slice: Callable[[int, int, np.ndarray], None] | None = None,
    ) -> dict[int, PropagationResult]:
        """Propagate every object (blocking: call it in a worker).

        Args:
            predictor: decodes the slices (only ``decode``/``decode_batch`` are called).
            propagate: the algorithm (default ``propagate_objects``).
            cancel: set it to stop after the current slice.
            progress: ``progress(done, total)``.
            on_slice: ``on_slice(object id, z, mask)`` for each accepted prediction, as it comes.
        Returns:
            object id -> :class:`~napari_edgesam.inference.volume.propagation.PropagationResult`.
        """
        seeds = {obj: dict(s) for obj, s in self.seeds.items()}
        on_result = None if on_slice is None else (lambda obj, z, mask, score: on_slice(obj, z, mask))
        options = dict(self.options)
        if self.protected is not None and self.protected.shape == tuple(self.plane.shape):
            options.setdefault("protected", self.protected_pixels)
        return propagate(predictor, self.embedding_for, seeds, self.n_slices, direction=self.direction,
                         cancel=cancel, progress=progress, on_result=on_result, **options)

    def protected_pixels(self, z: int) -> np.ndarray | None:
        """``rows x cols`` bool: the pixels of slice ``z`` that belong to committed objects
        other than those being propagated (None without :attr:`protected`)."""
        if self.protected is None:
            return None
        lab = self.plane.at(self.axis, z).read_labels(self.protected)
        own = [int(v) for v in self.keep_ids.values()]
        return (lab != 0) & ~np.isin(lab, own) if own else lab != 0

    def write_slice(self, labels: np.ndarray, obj: int, z: int, mask: np.ndarray) -> bool:
        """Put object ``obj``'s ``mask`` on slice ``z`` of the nD ``labels`` (in place) unless
        the slice is one of its seeds; True if written."""
        if z in self.seeded(obj):
            return False
        stack.write_object(labels, self.plane, self.axis, obj, z, mask)
        self.painted.add((int(obj), int(z)))
        return True

    def write_results(self, labels: np.ndarray, results: Mapping[int, PropagationResult]) -> None:
        """Put every propagated (non-seed) slice of ``results`` into ``labels`` (in place), and
        take objects off the slices written while the job ran that the results no longer have
        (a prediction dropped when objects were made exclusive)."""
        for obj, z in sorted(self.painted):
            res = results.get(obj)
            if res is not None and z not in res.masks and z not in self.seeded(obj):
                empty = np.zeros(self.plane.at(self.axis, z).read_labels(labels).shape, bool)
                stack.write_object(labels, self.plane, self.axis, obj, z, empty)
        for obj, res in results.items():
            for z, mask in res.masks.items():
                self.write_slice(labels, obj, z, mask)
