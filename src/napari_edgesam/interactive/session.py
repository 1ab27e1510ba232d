"""The interactive segmentation session as a plain model (no Qt, no napari).

It turns the prompts of one plane into preview masks with EdgeSAM's rules, remembers what
it needs to refine them (the previous low-res logits, the chosen candidate), and commits
preview labels into target labels with an exact undo.

Prompts per plane: without boxes all points form one object; with boxes every box is one
object together with the points inside it (points in no box are ignored).
Coordinates are ``(x, y)`` pixels of the plane, boxes ``(x0, y0, x1, y1)``.

With the box proposals of a granularity prior, a single positive click (the ambiguous case,
:func:`is_single_click`) takes the whole object by EdgeSAM's rule
(:func:`~napari_edgesam.inference.prior.click_box`, run once per click, its box then
joins the point); more points, negative points or a box refine as usual. The predictor is used
statelessly (``segment(..., embedding=)``, ``decode_batch(embedding, ...)``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..constants import MASK_THRESHOLD
from ..inference.core.postprocess import (
    fill_holes,
    keep_prompted_pieces,
    stability_in_image,
    upscale_logits,
)
from ..inference.prior import ProposalSet, click_box
from ..inference.volume.propagation import mask_to_low_res_logits

logger = logging.getLogger(__name__)

#: What :meth:`Session.cycle_candidate` returns when it goes back to the prior's whole object.
PRIOR_CHOICE = -1


@dataclass(frozen=True)
class ObjectPrompt:
    """The prompts of one object on one plane.

    Attributes:
        points: ``N x 2`` (x, y) float32. labels: ``N`` (1 positive, 0 negative).
        box: ``(x0, y0, x1, y1)`` or None.
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        return len(self.points) + (self.box is not None)

    @property
    def signature(self) -> tuple:
        """All prompts of the object, rounded: equal signatures ask the same question."""
        box = None if self.box is None else tuple(np.round(self.box, 3).tolist())
        return (box, tuple(map(tuple, np.round(self.points, 3).tolist())), tuple(int(v) for v in self.labels))

    @property
    def anchor(self) -> tuple:
        """What identifies the object while it is refined: its box, else its first point."""
        if self.box is not None:
            return ("box", *np.round(self.box, 3).tolist())
        return ("point", *np.round(self.points[0], 3).tolist(), int(self.labels[0]))


def group_prompts(
    points: np.ndarray, labels: np.ndarray, boxes: list[np.ndarray]
) -> tuple[list[ObjectPrompt], int]:
    """Objects of one plane from its points (``N x 2`` (x, y)), labels (``N``) and boxes.

    Returns the objects and how many points were ignored (outside every box).
    """
    points = np.asarray(points, np.float32).reshape(-1, 2)
    labels = np.asarray(labels, np.int64).reshape(-1)
    if len(points) != len(labels):
        raise ValueError(f"{len(points)} points but {len(labels)} labels")
    if not boxes:
        return ([ObjectPrompt(points, labels)] if len(points) else []), 0
    owner = np.full(len(points), -1)
    for i in range(len(boxes) - 1, -1, -1):  # the first box containing a point owns it
        x0, y0, x1, y1 = boxes[i]
        inside = (points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)
        owner[inside] = i
    objects = [
        ObjectPrompt(points[owner == i], labels[owner == i], np.asarray(box, np.float32))
        for i, box in enumerate(boxes)
    ]
    return objects, int(np.count_nonzero(owner < 0))


def is_single_click(objects: list[ObjectPrompt]) -> bool:
    """Whether the prompts of a plane are exactly one positive point and no box: the case
    the granularity prior disambiguates."""
    return (len(objects) == 1 and objects[0].box is None and len(objects[0].points) == 1
            and int(objects[0].labels[0]) == 1)


@dataclass
class ObjectResult:
    """The decoded mask of one object (``H x W`` bool), its stability score, the low-res
    logits (``256 x 256``), for point-only objects which of the 4 candidates it is, and for
    a click the granularity prior took, the proposal box ``(x0, y0, x1, y1)`` joined to it
    (``note`` says why a single click fell back to the plain candidates)."""

    mask: np.ndarray
    score: float
    low_res: np.ndarray
    candidate: int | None
    prior_box: np.ndarray | None = None
    #: Why a single click did not take the whole object although the prior was on ("" otherwise).
    note: str = ""


@dataclass
class PlaneResult:
    """All objects of one plane: ``labels`` is ``H x W`` uint16 with ids 1..k."""

    plane_key: Hashable
    labels: np.ndarray
    objects: list[ObjectResult]
    ignored_points: int = 0


@dataclass
class _Memory:
    prompt: ObjectPrompt
    mask_input: np.ndarray | None  # what the decode used
    result: ObjectResult
    prior_box: np.ndarray | None = None  # what the prior's rule picks (shown or not)


@dataclass
class CommitRecord:
    """What a commit changed, to undo it exactly.

    Attributes:
        target: the caller's handle of the target (e.g. the napari layer).
        region: tuple of slices, the bounding box of the written objects.
        before: the target's values in ``region`` before the commit.
        ids: preview id -> id written into the target.
    """

    target: object
    region: tuple[slice, ...]
    before: np.ndarray
    ids: dict[int, int] = field(default_factory=dict)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        out.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(out)


class Session:
    """State of one interactive session: refinement memory per plane and the commit history.

    Args:
        max_undo: how many commits can be undone.
        fill_holes: fill the interior holes of every object's mask (preview and commit); False
            keeps them. May be changed between decodes.
        one_piece: keep only the piece of each object's mask that its prompts point at (the user's
            points and box; :func:`~napari_edgesam.inference.core.postprocess.keep_prompted_pieces`);
            False keeps every piece. May be changed between decodes.
    """

    def __init__(self, max_undo: int = 20, fill_holes: bool = True, one_piece: bool = True) -> None:
        self.max_undo = int(max_undo)
        self.fill_holes = bool(fill_holes)
        self.one_piece = bool(one_piece)
        self._memory: dict[Hashable, list[_Memory]] = {}
        self._forced_candidate: dict[Hashable, int] = {}
        self._history: list[CommitRecord] = []
        self._lock = threading.Lock()

    # -- decoding ----------------------------------------------------------------------------
    def mask_input_for(self, plane_key: Hashable, index: int, obj: ObjectPrompt) -> np.ndarray | None:
        """The mask input for decoding ``obj`` (object ``index`` of the plane):

        - the same prompts as last time: the same mask input as last time (same answer);
        - the same object (same anchor) with more prompts: the previous low-res logits;
        - otherwise (a new object, a prompt removed or moved): None.
        """
        with self._lock:
            mem = self._memory.get(plane_key, [])
            prev = mem[index] if index < len(mem) else None
        if prev is None:
            return None
        if prev.prompt.signature == obj.signature:
            return prev.mask_input
        if prev.prompt.anchor == obj.anchor and obj.n_items > prev.prompt.n_items:
            return prev.result.low_res[None]
        return None

    def decode(self, predictor, embedding, plane_key: Hashable, objects: list[ObjectPrompt],
               ignored_points: int = 0, proposals: ProposalSet | None = None,
               k_nearest: int = 5, zoom=None) -> PlaneResult:
        """Segment ``objects`` on the plane whose embedding is ``embedding``.

        Box objects use ``predictor.segment`` (token 0); point-only objects the most stable of
        the 4 masks, or the candidate chosen with :meth:`cycle_candidate`. With ``proposals``
        (the prior's boxes for this plane) a single positive click (:func:`is_single_click`)
        takes the whole object: the proposal EdgeSAM's rule picks (``k_nearest``) joins the
        point, as ``predictor.segment_click``; with no proposal around the point, or after
        :meth:`cycle_candidate`, it falls back to the 4 candidates. Asking the same question
        twice gives the same answer. The predictor's state (current image) is neither used nor
        changed.

        ``zoom``: an :class:`~napari_edgesam.inference.core.autozoom.AutoZoom` of this plane (made
        with this ``embedding`` and ``proposals``): objects with a box are then segmented with AutoZoom
        (no mask input; a candidate chosen with :meth:`cycle_candidate` still decodes on the
        whole plane). Their ``low_res`` is the mask in this embedding's low-res frame.
        """
        forced = self._forced_candidate.get(plane_key)
        with self._lock:
            previous = self._memory.get(plane_key, [])
        if forced is not None and (not objects or not previous or previous[0].prompt.anchor != objects[0].anchor):
            forced = None  # a new object: back to the most stable candidate
            self._forced_candidate.pop(plane_key, None)
        h, w = embedding.original_size
        labels = np.zeros((h, w), np.uint16)
        results, memory = [], []
        single = proposals is not None and is_single_click(objects)
        for i, obj in enumerate(objects):
            mask_input = self.mask_input_for(plane_key, i, obj) if getattr(
                predictor, "refine_with_mask_input", True) else None
            prior_box = shown_box = None
            if single:  # the rule, once per click: its box is what the decoder gets below
                prior_box = click_box(proposals, obj.points[0], embedding.original_size, k_nearest)
            if zoom is not None and forced is None and obj.box is not None:
                points = obj.points if len(obj.points) else None
                zoomed = zoom.segment(points, obj.labels if points is not None else None, obj.box,
                                      fill_holes=self.fill_holes, one_piece=self.one_piece)
                mask, score, chosen, shown_box = zoomed.mask, zoomed.score, None, None
                low = zoomed.low_res if zoomed.window is None else mask_to_low_res_logits(
                    np.asarray(mask, bool), embedding.input_size, embedding.original_size)
            elif prior_box is not None and forced is None:  # as predictor.segment_click
                mask, score, low = predictor.segment(obj.points[:1], np.ones(1, np.float32), prior_box,
                                                     fill_holes=self.fill_holes, one_piece=self.one_piece, embedding=embedding)
                chosen, shown_box = None, prior_box
            elif obj.box is None:
                mask, score, low, chosen = _segment_points(predictor, embedding, obj, mask_input, forced)
            else:
                points = obj.points if len(obj.points) else None
                mask, score, low = predictor.segment(
                    points, obj.labels if points is not None else None, obj.box, mask_input,
                    fill_holes=self.fill_holes, one_piece=self.one_piece, embedding=embedding,
                )
                chosen = None
            mask = np.asarray(mask, bool)
            if self.fill_holes:  # one rule for every prompt kind (idempotent where already filled)
                mask = fill_holes(mask)
            if self.one_piece:  # the user's prompts, not the prior's box: the piece they point at
                mask = keep_prompted_pieces(mask, obj.points if len(obj.points) else None,
                                            obj.labels if len(obj.points) else None, obj.box)
            note = ""
            if single and prior_box is None:
                note = (f"no box of the granularity prior contains the click (of {len(proposals.boxes)} "
                        "proposed): plain candidates")
            result = ObjectResult(mask, float(score), np.asarray(low, np.float32), chosen, shown_box, note)
            results.append(result)
            memory.append(_Memory(obj, None if shown_box is not None else mask_input, result, prior_box))
            labels[mask & (labels == 0)] = i + 1
        with self._lock:
            self._memory[plane_key] = memory
        return PlaneResult(plane_key, labels, results, ignored_points)

    def forced_candidate(self, plane_key: Hashable) -> int | None:
        """The candidate chosen with :meth:`cycle_candidate` for ``plane_key`` (or None)."""
        return self._forced_candidate.get(plane_key)

    def cycle_candidate(self, plane_key: Hashable) -> int | None:
        """Choose the next of the 4 candidates for the point-only object of ``plane_key``;
        returns it, or None if that plane has no point-only object. Decode again to see it.

        A click the granularity prior took cycles ``prior -> 0 -> 1 -> 2 -> 3 -> prior``
        (returning :data:`PRIOR_CHOICE` for the way back); other clicks start from the most
        stable candidate and wrap around the 4."""
        with self._lock:
            mem = next((m for m in self._memory.get(plane_key, [])
                        if m.result.candidate is not None or m.result.prior_box is not None), None)
            if mem is None:
                return None
            current = mem.result.candidate
            if current is None:  # the prior's whole object is shown
                nxt = 0
            elif current == 3 and mem.prior_box is not None:
                self._forced_candidate.pop(plane_key, None)
                return PRIOR_CHOICE
            else:
                nxt = (current + 1) % 4
            self._forced_candidate[plane_key] = nxt
            return nxt

    def forget(self, plane_key: Hashable | None = None) -> None:
        """Drop the refinement memory of one plane (or of all)."""
        with self._lock:
            if plane_key is None:
                self._memory.clear()
                self._forced_candidate.clear()
            else:
                self._memory.pop(plane_key, None)
                self._forced_candidate.pop(plane_key, None)

    # -- commits -----------------------------------------------------------------------------
    @property
    def can_undo(self) -> bool:
        return bool(self._history)

    def commit(self, preview: np.ndarray, target: np.ndarray, handle: object = None,
               overwrite: bool = False, keep_ids: Mapping[int, int] | None = None) -> CommitRecord | None:
        """Write every object of ``preview`` into ``target`` (same shape, modified in place).

        Each preview id gets a new id ``max(target) + 1, + 2 ...`` unless ``keep_ids`` maps it
        to an existing target id. Existing labels are preserved unless ``overwrite``.
        Returns the record (also pushed on the undo stack), or None if the preview is empty.
        """
        if preview.shape != target.shape:
            raise ValueError(f"the preview has shape {preview.shape} but the target labels have {target.shape}")
        if not np.issubdtype(target.dtype, np.integer):
            raise TypeError(f"target labels must be integers, got dtype {target.dtype}")
        present = preview != 0
        if not present.any():
            return None
        region = _bounding_box(present)
        before = np.array(target[region], copy=True)
        block, src = before.copy(), np.asarray(preview[region])
        keep_ids = dict(keep_ids or {})
        next_id = int(np.max(target)) + 1 if target.size else 1
        limit = np.iinfo(block.dtype).max
        ids: dict[int, int] = {}
        for pid in (int(v) for v in np.unique(src) if v != 0):
            if pid in keep_ids:
                ids[pid] = int(keep_ids[pid])
            else:
                ids[pid], next_id = next_id, next_id + 1
            if ids[pid] > limit:
                raise ValueError(f"label id {ids[pid]} does not fit the target's dtype {block.dtype}; "
                                 "convert the labels layer to a wider integer type")
            where = src == pid
            if not overwrite:
                where &= (block == 0) | (block == ids[pid])
            block[where] = ids[pid]
        target[region] = block
        record = CommitRecord(handle, region, before, ids)
        with self._lock:
            self._history.append(record)
            del self._history[: -self.max_undo]
        return record

    def undo(self, resolve: Callable[[object], np.ndarray | None]) -> CommitRecord:
        """Restore the target of the last commit. ``resolve(handle)`` returns the target array
        (None if it is gone). Raises RuntimeError when there is nothing to undo."""
        with self._lock:
            if not self._history:
                raise RuntimeError("nothing to undo: commit an object first")
            record = self._history.pop()
        target = resolve(record.target)
        if target is None:
            raise RuntimeError("the labels layer of the last commit no longer exists")
        target[record.region] = record.before
        return record


def _segment_points(predictor, emb, obj: ObjectPrompt, mask_input, candidate: int | None):
    """``predictor.segment`` for a point-only prompt in ``emb``'s image, also telling which of
    the 4 candidates it is (the most stable one, or ``candidate``). One decoder call; only the
    chosen mask is upscaled to full size."""
    pred = predictor.decode_batch(
        emb, obj.points[None], obj.labels[None], None, None if mask_input is None else mask_input[None],
        num_multimask_outputs=4, upscale=False,
    )
    low = pred.low_res_logits[0]
    stability = stability_in_image(low, emb.input_size)  # as predictor.segment
    i = int(candidate) % 4 if candidate is not None else int(np.argmax(stability))
    mask = upscale_logits(low[i : i + 1], emb.input_size, emb.original_size)[0] > MASK_THRESHOLD
    return mask, float(stability[i]), low[i], i
