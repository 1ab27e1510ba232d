"""Automatic segmentation prompted by the granularity prior's boxes instead of a point grid.

Pipeline for one 2D image (or tile):

1. One encoder pass gives the embedding and the box proposals
   (:meth:`EdgeSamPredictor.encode_rgb(rgb, prior=prior) <napari_edgesam.inference.core.predictor.EdgeSamPredictor.encode_rgb>`).
2. Proposals below ``score_thresh`` are dropped, the rest go through box NMS and at most
   ``max_proposals`` are kept.
3. Chunks of ``boxes_per_batch`` boxes are decoded with ONE decoder call each
   (``decode_batch(embedding, boxes=..., num_multimask_outputs=1, upscale=False)``: a box prompt uses
   token 0, one mask per box). With ``skip_covered`` a box that lies mostly
   (``covered_fraction``) inside masks already accepted from better-scored boxes is not decoded:
   a duplicate of a found object, or a box around several of them.
4. Masks are computed only inside a window around their box (:func:`box_windows`: where a
   mask can be and still agree with its box), filtered on their 256 x 256 logits (stability
   score), upscaled only inside their bounding box, cleaned (islands, holes), and must agree
   with their prompt box (IoU of the mask's bounding box with the box >= ``min_box_iou``).
5. Mask-box NMS, then painting into a label image largest-first.

Small objects: the model segments objects best at a radius of ~32 px of its 1024 input frame
(:data:`~napari_edgesam.inference.core.autozoom.DEFAULT_TARGET_RADIUS`, what AutoZoom zooms
prompted objects to). With ``zoom`` the proposals of the image's own pass give the typical
object size; when it is below ``target_radius / zoom_band`` in the frame, the image is
segmented again in tiles small enough that the objects reach ``target_radius`` (at most
``max_zoom`` times larger), each tile embedded on its own and the tiles stitched as for large
images. Objects the size of a whole 1024 frame tile cost one pass; a field of small nuclei
costs one pass per tile.

Steps 4-5 (:mod:`.masks`), regions and tiles (:mod:`.common`) are shared with the
point-grid mode (:mod:`.grid`); stacks (per slice, merged in 3D) go through
:func:`~napari_edgesam.inference.automatic.modes.segment_automatic_any` with ``stack=True``.

Tens of boxes with one mask each replace ~1000 points with 4 masks each, so decoding costs a
few decoder calls instead of tens.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...constants import MASK_THRESHOLD
from ..core.autozoom import DEFAULT_TARGET_RADIUS
from ..core.postprocess import BOX_MARGIN_FRACTION, BOX_MARGIN_PX, stability_score
from ..core.predictor import ImageEmbedding, box_centre_point
from ..prior import ProposalSet, box_iou, nms_boxes
from .common import MaskSettings, ProgressFn, accepts_keyword, check_cancel, segment_image
from .masks import MaskCandidate, candidate_from_logits, masks_to_labels, nms

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoxAutomaticConfig(MaskSettings):
    """Parameters of box-prompted automatic segmentation.

    Attributes (besides those of :class:`~napari_edgesam.inference.automatic.common.MaskSettings`:
    stability, NMS, areas, tiling; here ``stability_thresh`` defaults to 0.85):
        score_thresh: minimum proposal score.
        box_nms_thresh: IoU above which the lower-scoring proposal is not decoded.
        max_proposals: at most this many boxes are decoded (best first).
        boxes_per_batch: box prompts per decoder call (on backends that decode prompt by
            prompt anyway, :data:`ONE_BY_ONE_BOXES_PER_BATCH`, so that ``skip_covered`` sees the
            masks found so far).
        min_box_iou: minimum IoU of a mask's bounding box with its prompt box (0 disables).
        skip_covered: do not decode boxes whose area lies at least ``covered_fraction`` inside
            masks already accepted (decoded from boxes of higher score).
        covered_fraction: see ``skip_covered``.
        zoom: segment images whose objects are small in the 1024 frame again in zoomed tiles
            (see the module docstring).
        target_radius: object radius (pixels of the 1024 frame) zoomed tiles aim at.
        zoom_band: zoom only when the typical radius is below ``target_radius / zoom_band``.
        max_zoom: the largest zoom factor.
        box_margin: each mask ends at its prompt box widened on every side by this fraction of
            the box's side plus a pixel, as a prompted box's mask does (``segment``'s
            ``clip_box``); None: it may reach as far as ``min_box_iou`` allows. On crowded
            nuclei the decoder's box masks run into touching neighbours, and the box check
            then drops them: with the cut, prior-box F1 of the shipped model went 0.49 -> 0.86
            on the stardist train half and 0.89 / 0.95 / 0.89 -> 0.95 / 0.99 / 0.95 on three
            synthetic images (margins 0 and 0.05 within 0.03 of 0.02).
        box_centre: decode a box again with its centre as a positive point when its first mask
            holds the centre but falls short of the box (as a prompted box does by default:
            :func:`~napari_edgesam.inference.core.predictor.box_centre_point`). Off by default:
            it re-decodes most prior boxes (~1.4x the time) for F1 gains on development images
            (stardist train half 0.859 -> 0.877, three synthetic 512 images 0.961 / 0.949 / 0.987
            -> 0.974 / 0.987 / 0.987) that did not carry over to the held-out half (0.838 -> 0.830).
    """

    stability_thresh: float = 0.85
    score_thresh: float = 0.3
    box_nms_thresh: float = 0.6
    max_proposals: int = 500
    boxes_per_batch: int = 64
    min_box_iou: float = 0.5
    skip_covered: bool = True
    covered_fraction: float = 0.5
    zoom: bool = True
    target_radius: float = DEFAULT_TARGET_RADIUS
    zoom_band: float = 1.5
    max_zoom: float = 4.0
    box_margin: float | None = BOX_MARGIN_FRACTION
    box_centre: bool = False

    def _rules(self) -> list[tuple[bool, str, str]]:
        return [
            (0.0 <= self.score_thresh <= 1.0, "score_thresh", "in [0, 1]"),
            (0.0 < self.box_nms_thresh <= 1.0, "box_nms_thresh", "in (0, 1]"),
            (int(self.max_proposals) >= 1, "max_proposals", ">= 1"),
            (int(self.boxes_per_batch) >= 1, "boxes_per_batch", ">= 1"),
            (0.0 <= self.min_box_iou <= 1.0, "min_box_iou", "in [0, 1]"),
            (0.0 < self.covered_fraction <= 1.0, "covered_fraction", "in (0, 1]"),
            (4.0 <= self.target_radius <= 256.0, "target_radius", "in [4, 256] frame pixels"),
            (self.zoom_band >= 1.0, "zoom_band", ">= 1"),
            (1.0 <= self.max_zoom <= 16.0, "max_zoom", "in [1, 16]"),
            (self.box_margin is None or 0.0 <= self.box_margin <= 1.0, "box_margin", "None or in [0, 1]"),
            *super()._rules(),
        ]


def prompt_boxes(proposals: ProposalSet, cfg: BoxAutomaticConfig) -> tuple[np.ndarray, np.ndarray]:
    """The boxes to decode: above ``score_thresh``, after NMS, at most ``max_proposals``
    (``K x 4`` pixels, ``K`` scores, by descending score)."""
    props = proposals.above(cfg.score_thresh)
    keep = nms_boxes(props.boxes, props.scores, cfg.box_nms_thresh)[: cfg.max_proposals]
    return props.boxes[keep], props.scores[keep]


def box_windows(boxes: np.ndarray, emb: ImageEmbedding, min_box_iou: float,
                margin: float | None = None) -> np.ndarray | None:
    """Low-res ``(r0, r1, c0, c1)`` windows (end-exclusive), one per ``K x 4`` pixel box, outside
    which mask logits are not computed (``SKIPPED_LOGIT``).

    With ``margin`` (a fraction of the box's side, plus one pixel) the window is the box widened
    by it and one low-res pixel (so that the bilinear upscaling does not pull the skipped logits
    into the margin); the upscaled mask is then cut exactly there (:func:`_chunk_candidates`).
    Otherwise it is where a mask can lie and still pass the box
    check: a mask whose bounding box has IoU >= ``t`` (``min_box_iou``) with the box sticks out
    of it by at most ``(1 - t) / t`` of the box's height (width) on either side, plus 2 low-res
    pixels for the bilinear upscaling. None when there is neither (``t`` 0, no margin)."""
    clip = margin is not None
    if (min_box_iou <= 0 and not clip) or not len(boxes):
        return None
    b = np.asarray(boxes, np.float64)
    h, w = b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]
    if clip:
        bh, bw, pad = h * margin + BOX_MARGIN_PX, w * margin + BOX_MARGIN_PX, 1
    else:
        ext = (1.0 - min_box_iou) / min_box_iou
        bh, bw, pad = h * ext, w * ext, 2
    sy = emb.input_size[0] / emb.original_size[0] / 4
    sx = emb.input_size[1] / emb.original_size[1] / 4
    lh, lw = -(-emb.input_size[0] // 4), -(-emb.input_size[1] // 4)
    r0 = np.clip(np.floor((b[:, 1] - bh) * sy) - pad, 0, lh)
    r1 = np.clip(np.ceil((b[:, 3] + bh) * sy) + pad, 0, lh)
    c0 = np.clip(np.floor((b[:, 0] - bw) * sx) - pad, 0, lw)
    c1 = np.clip(np.ceil((b[:, 2] + bw) * sx) + pad, 0, lw)
    return np.stack([r0, r1, c0, c1], axis=1).astype(np.int64)


#: Zoom decisions need at least this many boxes to measure the typical object size.
MIN_SIZE_BOXES = 5
#: Boxes per decoder call with ``skip_covered`` on backends that decode prompt by prompt (the
#: torch CPU path): each call's accepted masks can spare the boxes of the next.
ONE_BY_ONE_BOXES_PER_BATCH = 4


def _covered_fraction(covered: np.ndarray, box: np.ndarray) -> float:
    """The fraction of pixel box ``(x0, y0, x1, y1)`` (clipped to the image) that is ``covered``."""
    h, w = covered.shape
    x0, y0 = int(np.clip(np.floor(box[0]), 0, w)), int(np.clip(np.floor(box[1]), 0, h))
    x1, y1 = int(np.clip(np.ceil(box[2]), 0, w)), int(np.clip(np.ceil(box[3]), 0, h))
    area = (x1 - x0) * (y1 - y0)
    return float(covered[y0:y1, x0:x1].sum()) / area if area > 0 else 1.0


def _chunk_candidates(boxes, box_scores, pred, emb: ImageEmbedding, cfg: BoxAutomaticConfig) -> list[MaskCandidate]:
    ih, iw = emb.input_size
    low = pred.low_res_logits[:, 0]
    valid = low[:, : -(-ih // 4), : -(-iw // 4)]
    stab = stability_score(valid, MASK_THRESHOLD, cfg.stability_offset)
    out = []
    for b in np.flatnonzero(stab >= cfg.stability_thresh):
        centre = (float(boxes[b, 0] + boxes[b, 2]) / 2, float(boxes[b, 1] + boxes[b, 3]) / 2)
        cand = candidate_from_logits(low[b], emb, min_area=cfg.min_area,
                                     hole_area=None if cfg.fill_holes else cfg.hole_area, score=stab[b] * box_scores[b],
                                     stability=stab[b], point=centre,
                                     clip=None if cfg.box_margin is None else (boxes[b], cfg.box_margin))
        if cand is None:
            continue
        if cfg.min_box_iou > 0 and box_iou(np.float32(cand.box), boxes[b])[0, 0] < cfg.min_box_iou:
            continue
        out.append(cand)
    return out


def generate_masks_from_boxes(
    predictor,
    embedding: ImageEmbedding,
    proposals: ProposalSet,
    config: BoxAutomaticConfig = BoxAutomaticConfig(),
    *,
    progress: ProgressFn | None = None,
    cancel=None,
) -> list[MaskCandidate]:
    """Decode the proposals of one embedded image and return the masks kept by NMS.

    Args:
        predictor: an :class:`EdgeSamPredictor` (``decode_batch(embedding, ...)``); its state
            (current image) is neither used nor changed.
        embedding: the image's embedding.
        proposals: the prior's boxes for the same image.
        progress: ``progress(done_boxes, total_boxes)`` after each decoder call.
        cancel: an object with ``is_set()``; raises :class:`Cancelled`.
    Returns:
        masks (score = stability x proposal score) by descending score, in pixels of the image.
    """
    if tuple(proposals.original_size) != tuple(embedding.original_size):
        raise ValueError(f"proposals are of a {proposals.original_size} image, the embedding of {embedding.original_size}")
    boxes, scores = prompt_boxes(proposals, config)
    candidates: list[MaskCandidate] = []
    n = config.boxes_per_batch
    if config.skip_covered and getattr(getattr(predictor, "backend", None), "decodes_prompt_by_prompt", False):
        n = min(n, ONE_BY_ONE_BOXES_PER_BATCH)  # small calls cost nothing there, and prune more
    windowed = accepts_keyword(predictor.decode_batch, "windows")
    covered = np.zeros(tuple(embedding.original_size), bool) if config.skip_covered else None
    todo, done, decoded, reported = list(range(len(boxes))), 0, 0, 0
    while todo:
        check_cancel(cancel)
        take: list[int] = []
        while todo and len(take) < n:
            i = todo.pop(0)
            done += 1
            if covered is None or _covered_fraction(covered, boxes[i]) < config.covered_fraction:
                take.append(i)
        if not take:
            break
        chunk = boxes[take]
        # only inside the widened box, or where a mask can pass the box check (SKIPPED_LOGIT elsewhere)
        windows = box_windows(chunk, embedding, config.min_box_iou, config.box_margin) if windowed else None
        pred = predictor.decode_batch(embedding, boxes=chunk, num_multimask_outputs=1, use_stability_score=True,
                                      upscale=False, **({} if windows is None else {"windows": windows}))
        if config.box_centre:
            pred = _with_centre_points(predictor, embedding, chunk, pred, windows)
        decoded += len(take)
        found = _chunk_candidates(chunk, scores[take], pred, embedding, config)
        if covered is not None:
            for cand in found:
                h, w = cand.mask.shape
                covered[cand.y0 : cand.y0 + h, cand.x0 : cand.x0 + w] |= cand.mask
        candidates += found
        if progress is not None:
            progress(done, len(boxes))
            reported = done
    if progress is not None and reported < len(boxes):  # the last boxes were all skipped
        progress(len(boxes), len(boxes))
    kept = nms(candidates, config.nms_thresh)
    if config.box_margin is not None:
        kept = drop_parts(kept, tuple(embedding.original_size), config.covered_fraction)
    logger.debug("box automatic: %d proposals, %d prompted, %d decoded, %d candidates, %d after NMS",
                 len(proposals), len(boxes), decoded, len(candidates), len(kept))
    return kept


def _with_centre_points(predictor, embedding: ImageEmbedding, boxes: np.ndarray, pred, windows):
    """``pred`` (one mask per box of ``boxes`` ``B x 4``) with the boxes whose first mask falls
    short of the box (:func:`~napari_edgesam.inference.core.predictor.box_centre_point`, judged on
    the low-res logits) decoded again with their centre as a positive point."""
    sy = embedding.input_size[0] / embedding.original_size[0] / 4
    sx = embedding.input_size[1] / embedding.original_size[1] / 4
    low = pred.low_res_logits
    redo, centres = [], []
    for b, box in enumerate(boxes):
        point = box_centre_point(low[b, 0] > MASK_THRESHOLD, box * np.float32([sx, sy, sx, sy]),
                                 pixel_size=1.0 / sx)
        if point is not None:
            redo.append(b)
            centres.append(point[0] / np.float32([sx, sy]))
    if not redo:
        return pred
    again = predictor.decode_batch(
        embedding, point_coords=np.float32(centres)[:, None], point_labels=np.ones((len(redo), 1), np.float32),
        boxes=boxes[redo], num_multimask_outputs=1, use_stability_score=True, upscale=False,
        **({} if windows is None else {"windows": windows[redo]}))
    low = np.array(low)
    scores = np.array(pred.scores)
    low[redo], scores[redo] = again.low_res_logits, again.scores
    return dataclasses.replace(pred, low_res_logits=low, scores=scores)


def drop_parts(candidates: list[MaskCandidate], shape: tuple[int, int], fraction: float) -> list[MaskCandidate]:
    """Masks by descending score, without those lying at least ``fraction`` inside better ones:
    a box around part of an object gives, cut at that box, a part of the object's mask, which
    box NMS keeps (its box differs) and painting would lay over the whole."""
    covered = np.zeros(shape, bool)
    out = []
    for cand in sorted(candidates, key=lambda c: -c.score):
        h, w = cand.mask.shape
        region = covered[cand.y0 : cand.y0 + h, cand.x0 : cand.x0 + w]
        if cand.area and (region & cand.mask).sum() >= fraction * cand.area:
            continue
        region |= cand.mask
        out.append(cand)
    return out


def segment_automatic_boxes(
    predictor,
    prior,
    image: np.ndarray,
    config: BoxAutomaticConfig = BoxAutomaticConfig(),
    *,
    region: Sequence[float] | None = None,
    normalisation: dict | None = None,
    progress: ProgressFn | None = None,
    cancel=None,
) -> np.ndarray:
    """Automatic instance segmentation of a 2D image from the prior's boxes.

    Args:
        prior: a :class:`~napari_edgesam.inference.prior.TorchBoxPrior` or ``OnnxBoxPrior``.
        image: ``H x W`` or ``H x W x C`` (see :func:`~napari_edgesam.inference.core.preprocess.to_rgb_uint8`).
        region: ``(x0, y0, x1, y1)`` pixels: segment only there (embedded on its own).
        normalisation: keyword arguments of ``to_rgb_uint8``.
        progress: ``progress(done, total)``: boxes of the image, or tiles when tiled.
    Returns:
        ``H x W`` uint32 labels (0 background).
    """

    def plain_tile(rgb: np.ndarray, report: ProgressFn | None, _whole: bool, emb: ImageEmbedding | None = None) -> np.ndarray:
        if emb is None:
            emb = predictor.encode_rgb(rgb, prior=prior)  # one encoder pass when the prior shares it
        masks = generate_masks_from_boxes(predictor, emb, emb.proposals, config, progress=report, cancel=cancel)
        return masks_to_labels(masks, rgb.shape[:2], config.min_area, config.min_visible_fraction)

    def segment_tile(rgb: np.ndarray, report: ProgressFn | None, whole: bool) -> np.ndarray:
        emb = predictor.encode_rgb(rgb, prior=prior)
        plan = zoom_plan(emb, config) if config.zoom else None
        if plan is None:
            return plain_tile(rgb, report, whole, emb)
        tile, overlap = plan
        logger.info("box automatic: objects are small in the frame; segmenting in zoomed tiles of %d px", tile)
        zoomed = dataclasses.replace(config, tile_size=tile, tile_overlap=overlap)
        return segment_image(rgb, plain_tile, zoomed, progress=report, cancel=cancel)

    return segment_image(image, segment_tile, config, region=region, normalisation=normalisation,
                         progress=progress, cancel=cancel)


def typical_radius(proposals: ProposalSet, cfg: BoxAutomaticConfig) -> float | None:
    """The median radius (pixels of the image, ``sqrt(w h) / 2`` of a box) of the boxes that
    would be decoded, or None with fewer than :data:`MIN_SIZE_BOXES` of them. Boxes of no area
    (proposals outside the image, clipped to its edge) say nothing of the objects' size and
    are not counted."""
    boxes, _ = prompt_boxes(proposals, cfg)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    sized = (w > 0) & (h > 0)
    if int(sized.sum()) < MIN_SIZE_BOXES:
        return None
    return float(np.median(np.sqrt(w[sized] * h[sized]) / 2))


def zoom_plan(emb: ImageEmbedding, cfg: BoxAutomaticConfig) -> tuple[int, int] | None:
    """``(tile_size, tile_overlap)`` in image pixels for segmenting ``emb``'s image again
    zoomed (its objects small in the frame), or None to keep the whole-image pass.

    The zoom ``z = target_radius / r`` (``r``: :func:`typical_radius` in frame pixels), applied
    only when ``z > zoom_band`` and at most ``max_zoom``; tiles of ``longest side / z`` pixels
    are embedded at the full 1024 frame. Neighbouring tiles overlap by 4 typical radii (at least
    1/8 of a tile), so that an object lies whole in some tile."""
    if emb.proposals is None:
        return None
    radius = typical_radius(emb.proposals, cfg)
    if radius is None or radius <= 0:
        return None
    frame = max(emb.input_size) / max(emb.original_size)  # frame pixels per image pixel
    zoom = cfg.target_radius / (radius * frame)
    if zoom <= cfg.zoom_band:
        return None
    zoom = min(zoom, cfg.max_zoom)
    tile = max(64, int(round(max(emb.original_size) / zoom)))
    if tile >= max(emb.original_size):
        return None
    overlap = int(min(tile // 2 - 1, max(tile // 8, math.ceil(4 * radius))))
    return tile, overlap
