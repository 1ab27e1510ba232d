"""3D propagation of objects through the slices of a stack.

The user annotates one object on one or more slices (the *seeds*). From each end of the
seeded range the object is followed slice by slice: the prompt for slice ``z +- 1`` is built
from the mask at ``z`` (its bounding box, a positive point at its interior-most pixel and,
optionally, its low-res logits as mask input) and decoded against that slice's embedding.
A direction stops when the mask vanishes (area < ``min_area``), its stability score drops
below ``min_stability``, its IoU with the previous slice's mask drops below
``min_overlap``, the stack ends, or on cancel; the rejected prediction is not kept.

Between two seeds (a *fill*), propagation runs from both seeds toward each other; each slice
keeps the prediction from the nearer seed (at equal distance: the more stable one). A fill
direction stops when it reaches the other seed, or when the next slice was already reached
from the other, nearer seed ("met other direction"). Seeded slices keep their seed mask.

Several objects are propagated slice-major (:func:`propagate_objects`): two sweep lines, one
moving up and one moving down the stack, take turns; at each slice the embedding is fetched
once and every object that needs that slice is decoded there, in one batch. The predictor is
only asked to decode (``decode``/``decode_batch`` with the slice's embedding): its state is
never read or changed.

The parts live beside this module: the carried prompts
(:mod:`~napari_edgesam.inference.volume.prompts`), the sweeps and stop rules
(:mod:`~napari_edgesam.inference.volume.sweeps`), the per-slice step
(:mod:`~napari_edgesam.inference.volume.step`) and the results
(:mod:`~napari_edgesam.inference.volume.result`); their public names are re-exported here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np

from ..core.predictor import ImageEmbedding
from .prompts import BOX_EXTENSION, mask_to_low_res_logits, prompt_from_mask
from .result import (
    DIRECTIONS,
    SEED_SCORE,
    STOP_ANNOTATED,
    STOP_CANCELLED,
    STOP_END,
    STOP_LOW_OVERLAP,
    STOP_LOW_STABILITY,
    STOP_MET,
    STOP_REASONS,
    STOP_VANISHED,
    PropagationResult,
    results_to_labels,
)
from .step import SliceDecoder
from .sweeps import StopRules, Sweeps

__all__ = [
    "DIRECTIONS", "SEED_SCORE", "STOP_ANNOTATED", "STOP_CANCELLED", "STOP_END", "STOP_LOW_OVERLAP",
    "STOP_LOW_STABILITY", "STOP_MET", "STOP_REASONS", "STOP_VANISHED", "PropagationResult", "StopRules",
    "mask_to_low_res_logits", "prompt_from_mask", "propagate_object", "propagate_objects", "results_to_labels",
]

logger = logging.getLogger(__name__)


def propagate_objects(
    predictor,
    get_embedding: Callable[[int], ImageEmbedding],
    seeds: dict[int, dict[int, np.ndarray]],
    n_slices: int,
    *,
    direction: str = "both",
    fill: bool = True,
    min_stability: float = 0.6,
    min_overlap: float = 0.2,
    min_area: int = 10,
    use_mask_input: bool = True,
    box_extension: float = BOX_EXTENSION,
    batch_size: int = 16,
    cancel: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_result: Callable[[int, int, np.ndarray, float], None] | None = None,
    fill_holes: bool = True,
    zoom_for: Callable[[int], object] | None = None,
    one_piece: bool = True,
    clip_box: bool = True,
    exclusive: bool = True,
    protected: Callable[[int], np.ndarray | None] | None = None,
) -> dict[int, PropagationResult]:
    """Propagate several objects through a stack in one pass, sharing each slice's embedding.

    Args:
        predictor: an ``EdgeSamPredictor`` (only ``decode`` and ``decode_batch`` are called).
        get_embedding: slice index -> its :class:`ImageEmbedding` (e.g. a cached
            :meth:`SliceEmbedder.embed <napari_edgesam.inference.embeddings.slices.SliceEmbedder.embed>`);
            called once per visited slice.
        seeds: object id -> {slice z -> ``H x W`` bool mask} (the annotated slices).
        n_slices: number of slices in the stack.
        direction: ``"both"``, ``"forward"`` (increasing z) or ``"backward"``: which way to go
            beyond the seeded range.
        fill: also fill the gaps between seeded slices.
        min_stability, min_overlap, min_area: stop criteria (see the module docstring).
        use_mask_input: pass the previous slice's low-res logits as mask input (ignored with a
            backend that has no mask input).
        box_extension: relative margin of the prompt box (lets the object grow between slices).
        batch_size: at most this many objects are decoded in one ``decode_batch`` call.
        cancel: set it to stop; the results so far are returned, active directions stopped
            with ``"cancelled"``.
        progress: ``progress(done, total)``; ``total`` counts the slices the directions may reach.
        on_result: ``on_result(object_id, z, mask, score)`` for every accepted prediction, as
            soon as it exists (in a fill at equal distance a later call may win for that slice).
        fill_holes: fill the interior holes of every predicted mask (False keeps them).
        zoom_for: slice index -> an :class:`~napari_edgesam.inference.core.autozoom.AutoZoom` of that
            slice: each object is then decoded with AutoZoom (a crop where it has the model's
            preferred size, as its size changes from slice to slice) from the same box + point
            prompt, without mask input; ``get_embedding`` is not called then. Opt-in: with the
            shipped v2 on the plugin's 3D sample it loses to whole-slice embeddings with mask input
            (mean 3D IoU 0.50 against 0.77; ``benchmarks/bench_autozoom_3d.py --propagate``).
        one_piece: keep only the piece of each predicted mask under the object's prompt point
            (False keeps every piece).
        clip_box: each predicted mask ends at its prompt box, the previous mask's box widened
            by ``box_extension`` (False keeps what the decoder gives outside it).
        exclusive: objects do not share pixels: among the predictions of a slice that the stop
            rules keep (and other objects' earlier ones there), a contested pixel goes to the
            object it lies deeper inside
            (:func:`~napari_edgesam.inference.volume.overlaps.split_overlaps`), so that a mask
            bleeding into a followed neighbour is cut back before it is carried on; the masks are
            then judged again. Predictions settled on a slice before a neighbour's arrived there
            give up their contested pixels in the returned results (``on_result`` saw them before
            that); one the split would leave with fewer than ``min_area`` pixels keeps its pixels
            if the others can give them up, or else is dropped (it lay on another object). Seeds
            never change.
        protected: slice index -> ``H x W`` bool pixels of objects that are not propagated
            (e.g. labels committed earlier), or None: predicted masks never take them, so an
            object cannot drift into an annotated neighbour either.
    Returns:
        object id -> :class:`PropagationResult`. Errors of the predictor propagate.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if int(n_slices) < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    rules = StopRules(min_stability, min_overlap, min_area)
    if not seeds:
        raise ValueError("give at least one object to propagate (seeds is empty)")
    if use_mask_input and not getattr(getattr(predictor, "backend", None), "supports_mask_input", True):
        logger.info("the predictor's backend has no mask input; propagating with box + point only")
        use_mask_input = False
    decoder = SliceDecoder(predictor, get_embedding, use_mask_input, box_extension, max(1, int(batch_size)),
                           fill_holes, zoom_for, one_piece, clip_box, exclusive, protected)
    sweeps = Sweeps(seeds, int(n_slices), direction, fill)
    cancelled = _sweep(sweeps, decoder, rules, cancel, progress, on_result)
    if progress is not None and not cancelled:
        progress(sweeps.total, sweeps.total)
    return sweeps.finish(exclusive=exclusive, min_area=rules.min_area, one_piece=one_piece)


def _sweep(sweeps: Sweeps, decoder: SliceDecoder, rules: StopRules, cancel: threading.Event | None,
           progress: Callable[[int, int], None] | None,
           on_result: Callable[[int, int, np.ndarray, float], None] | None) -> bool:
    """Run ``sweeps`` to their ends, one slice at a time; True if cancelled."""
    while sweeps.active:
        if cancel is not None and cancel.is_set():
            logger.info("propagation cancelled; %d directions stopped", sweeps.stop_all(STOP_CANCELLED))
            return True
        z, group = sweeps.next_slice()
        if not group:
            continue
        decoded = decoder(z, group)
        reasons = [rules.reason(mask, score, s.mask) for s, (mask, score, _) in zip(group, decoded, strict=True)]
        if decoder.exclusive:  # only the predictions the rules keep compete for pixels, then are judged again
            settled, seeds = sweeps.settled(z, {s.obj for s in group})
            split = decoder.split(group, decoded, [r is None for r in reasons], settled, seeds)
            reasons = [r if r is not None or new is old else rules.reason(new[0], new[1], s.mask)
                       for s, r, new, old in zip(group, reasons, split, decoded, strict=True)]
            decoded = split
        for s, (mask, score, logits), reason in zip(group, decoded, reasons, strict=True):
            sweeps.done += 1
            if reason is None:
                if sweeps.accept(s, z, mask, score, logits) and on_result is not None:
                    on_result(s.obj, z, mask, score)
                if s.next_z == s.limit:
                    reason = s.limit_reason
            if reason is not None:
                sweeps.stop(s, reason)
                logger.debug("object %s %s stopped at slice %d: %s", s.obj, s.name, z, reason)
        if progress is not None:
            progress(min(sweeps.done, sweeps.total), sweeps.total)
    return False


def propagate_object(
    predictor,
    get_embedding: Callable[[int], ImageEmbedding],
    seeds: dict[int, np.ndarray],
    n_slices: int,
    *,
    direction: str = "both",
    min_stability: float = 0.6,
    min_overlap: float = 0.2,
    min_area: int = 10,
    use_mask_input: bool = True,
    cancel: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_result: Callable[[int, np.ndarray, float], None] | None = None,
    **kwargs,
) -> PropagationResult:
    """Propagate one object from its seeded slices (``z -> H x W`` bool masks).

    Same rules and arguments as :func:`propagate_objects` (``on_result(z, mask, score)``).
    """
    callback = None if on_result is None else (lambda _obj, z, mask, score: on_result(z, mask, score))
    return propagate_objects(
        predictor, get_embedding, {1: seeds}, n_slices, direction=direction,
        min_stability=min_stability, min_overlap=min_overlap, min_area=min_area,
        use_mask_input=use_mask_input, cancel=cancel, progress=progress, on_result=callback, **kwargs,
    )[1]
