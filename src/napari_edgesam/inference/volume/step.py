"""One slice of 3D propagation: decode the carried prompts of every sweep that needs the
slice, against that slice's embedding (stateless ``predictor.decode``/``decode_batch``: the
predictor is never changed) or through AutoZoom crops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.postprocess import clip_to_box, keep_prompted_pieces
from ..core.postprocess import fill_holes as _fill_holes
from ..core.predictor import ImageEmbedding
from .overlaps import split_overlaps
from .prompts import BOX_EXTENSION, prompt_from_mask
from .sweeps import Sweep

#: One decoded prompt: (``H x W`` bool mask, stability score, ``256 x 256`` low-res logits).
Decoded = tuple[np.ndarray, float, np.ndarray]


@dataclass(frozen=True)
class SliceDecoder:
    """How every slice is decoded (the settings of one propagation).

    Attributes:
        predictor: an ``EdgeSamPredictor`` (``decode``, ``decode_batch``; its state is not used).
        get_embedding: slice index -> its :class:`ImageEmbedding` (not called with ``zoom_for``).
        use_mask_input: pass each sweep's previous low-res logits as mask input.
        box_extension: relative margin of the prompt box.
        batch_size: at most this many objects per ``decode_batch`` call.
        fill_holes: fill the interior holes of every predicted mask.
        zoom_for: slice index -> an AutoZoom of that slice, or None (whole-slice embeddings).
        one_piece: keep only the piece of each predicted mask under the object's prompt point
            (or nearest to it): a neighbour's fragment does not ride along to the next slice.
        clip_box: each predicted mask ends at its prompt box (the previous slice's mask's box,
            widened by ``box_extension``; :func:`~napari_edgesam.inference.core.postprocess.clip_to_box`):
            a leak into a touching neighbour cannot grow from slice to slice.
        exclusive: objects do not share pixels (see ``__call__``).
        protected: slice index -> ``H x W`` bool pixels no predicted mask may take (objects that
            are not propagated), or None.
    """

    predictor: object
    get_embedding: Callable[[int], ImageEmbedding]
    use_mask_input: bool = True
    box_extension: float = BOX_EXTENSION
    batch_size: int = 16
    fill_holes: bool = True
    zoom_for: Callable[[int], object] | None = None
    one_piece: bool = True
    clip_box: bool = True
    exclusive: bool = True
    protected: Callable[[int], np.ndarray | None] | None = None

    def __call__(self, z: int, group: list[Sweep]) -> list[Decoded]:
        """The predictions of ``group`` on slice ``z``, in the order of ``group``: cut at their
        boxes, holes filled, the ``protected`` pixels left out, and only the prompted piece kept
        (as set). Objects may still share pixels here: see :meth:`split`."""
        # each object's box + point, once: they prompt the decoder, then cut and pick the piece
        prompts = [prompt_from_mask(s.mask, self.box_extension) for s in group]
        if self.zoom_for is not None:
            decoded = decode_zoomed(self.zoom_for(z), group, prompts, self.clip_box)
        else:
            emb = self.get_embedding(z)
            check_sizes(emb, z, group)
            decoded = decode_group(self.predictor, emb, group, prompts, self.use_mask_input, self.batch_size)
        if self.clip_box and self.zoom_for is None:  # AutoZoom's segment cuts at the box itself
            decoded = [(clip_to_box(m, box), score, logits) for (box, _), (m, score, logits) in zip(prompts, decoded)]
        if self.fill_holes:
            decoded = [(_fill_holes(m), score, logits) for m, score, logits in decoded]
        keep_out = None if self.protected is None else self.protected(z)
        if keep_out is not None:
            keep_out = np.asarray(keep_out, bool)
            if keep_out.shape != group[0].mask.shape:
                raise ValueError(f"the protected pixels of slice {z} have shape {keep_out.shape}, "
                                 f"the masks {group[0].mask.shape}")
            decoded = [(m & ~keep_out, score, logits) for m, score, logits in decoded]
        if self.one_piece:
            decoded = [(keep_prompted_pieces(m, point), score, logits)
                       for (_, point), (m, score, logits) in zip(prompts, decoded)]
        return decoded

    def split(self, group: list[Sweep], decoded: list[Decoded], accepted: Sequence[bool],
              settled: Sequence[tuple[int, np.ndarray]] = (),
              seeds: Sequence[tuple[int, np.ndarray]] = ()) -> list[Decoded]:
        """The ``accepted`` predictions of ``group`` (those the stop rules kept) without shared
        pixels: a pixel contested by two of them, or by one of them and another object's earlier
        prediction ``settled`` ``(object, mask)`` on this slice, goes to the mask it lies deeper
        inside; other objects' ``seeds`` keep all of theirs
        (:func:`~napari_edgesam.inference.volume.overlaps.split_overlaps`). Rejected predictions
        do not compete and come back as they are; a mask that lost pixels keeps only its
        prompted piece again (as set)."""
        idx = [i for i, ok in enumerate(accepted) if ok]
        if not self.exclusive or not idx or (len(idx) == 1 and not settled and not seeds):
            return list(decoded)
        masks = split_overlaps([decoded[i][0] for i in idx], [group[i].obj for i in idx], settled, seeds)
        out = list(decoded)
        for i, mask in zip(idx, masks, strict=True):
            m, score, logits = decoded[i]
            if mask is not m:
                if self.one_piece and mask.any():
                    mask = keep_prompted_pieces(mask, prompt_from_mask(group[i].mask, self.box_extension)[1])
                out[i] = (mask, score, logits)
        return out


def check_sizes(emb: ImageEmbedding, z: int, group: list[Sweep]) -> None:
    """ValueError unless slice ``z``'s embedding is of an image the size of the masks."""
    for s in group:
        if tuple(emb.original_size) != s.mask.shape:
            raise ValueError(
                f"the embedding of slice {z} is of an image of size {tuple(emb.original_size)}, "
                f"but the seed masks of object {s.obj} are {s.mask.shape}"
            )


def decode_group(predictor, emb: ImageEmbedding, group: list[Sweep], prompts: list[tuple[np.ndarray, np.ndarray]],
                 use_mask_input: bool, batch_size: int) -> list[Decoded]:
    """Decode the prompts of ``group`` (``prompts``: each sweep's box and point from
    :func:`prompt_from_mask`) on ``emb``: one ``decode`` for a single sweep, else
    ``decode_batch`` calls of at most ``batch_size`` prompts."""
    if len(group) == 1:
        box, point = prompts[0]
        masks, scores, low = predictor.decode(
            emb, point_coords=point, point_labels=np.ones(1, np.float32), box=box,
            mask_input=group[0].logits[None] if use_mask_input else None,
            num_multimask_outputs=1, use_stability_score=True,
        )
        return [(np.asarray(masks[0], bool), float(scores[0]), np.asarray(low[0], np.float32))]
    out = []
    for i in range(0, len(group), batch_size):
        part = group[i : i + batch_size]
        boxes = np.stack([p[0] for p in prompts[i : i + batch_size]])
        points = np.stack([p[1] for p in prompts[i : i + batch_size]])
        pred = predictor.decode_batch(
            emb, point_coords=points, point_labels=np.ones(points.shape[:2], np.float32), boxes=boxes,
            mask_input=np.stack([s.logits[None] for s in part]) if use_mask_input else None,
            num_multimask_outputs=1, use_stability_score=True,
        )
        out += [
            (np.asarray(pred.masks[j, 0], bool), float(pred.scores[j, 0]), np.asarray(pred.low_res_logits[j, 0], np.float32))
            for j in range(len(part))
        ]
    return out


def decode_zoomed(zoom, group: list[Sweep], prompts: list[tuple[np.ndarray, np.ndarray]],
                  clip_box: bool = True) -> list[Decoded]:
    """Like :func:`decode_group`, one object at a time through AutoZoom (no mask input: the
    previous logits are in another frame). The logits kept are the crop's."""
    out = []
    for s, (box, point) in zip(group, prompts, strict=True):
        if tuple(zoom.shape) != s.mask.shape:
            raise ValueError(f"the slice is of size {tuple(zoom.shape)}, but the masks of object {s.obj} are {s.mask.shape}")
        r = zoom.segment(point, np.ones(1, np.float32), box, fill_holes=False, clip_box=clip_box)
        out.append((np.asarray(r.mask, bool), float(r.score), np.asarray(r.low_res, np.float32)))
    return out
