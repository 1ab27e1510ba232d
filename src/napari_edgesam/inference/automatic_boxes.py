"""Automatic segmentation prompted by the granularity prior's boxes instead of a point grid.

Pipeline for one 2D image (or tile):

1. One encoder pass gives the embedding and the box proposals
   (:func:`~napari_edgesam.inference.prior.embed_rgb_with_proposals`).
2. Proposals below ``score_thresh`` are dropped, the rest go through box NMS and at most
   ``max_proposals`` are kept.
3. Chunks of ``boxes_per_batch`` boxes are decoded with ONE decoder call each
   (``predict_batch(boxes=..., num_multimask_outputs=1, upscale=False)``: a box prompt uses
   token 0, one mask per box).
4. Masks are filtered on their 256 x 256 logits (stability score), upscaled only inside their
   bounding box, cleaned (islands, holes), and must agree with their prompt box (IoU of the
   mask's bounding box with the box >= ``min_box_iou``).
5. Mask-box NMS, then painting into a label image largest-first (shared with the point-grid
   mode, :mod:`napari_edgesam.inference.automatic`).

Tens of boxes with one mask each replace ~1000 points with 4 masks each, so decoding costs a
few decoder calls instead of tens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..constants import MASK_THRESHOLD
from .automatic import (
    Cancelled,
    MaskCandidate,
    ProgressFn,
    _upscale_in_box,
    clean_mask,
    masks_to_labels,
    nms,
)
from .postprocess import stability_score
from .predictor import ImageEmbedding
from .preprocess import to_rgb_uint8
from .prior import ProposalSet, box_iou, embed_rgb_with_proposals, nms_boxes
from .tiling import stitch_tiles, tile_grid

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoxAutomaticConfig:
    """Parameters of box-prompted automatic segmentation.

    Attributes:
        score_thresh: minimum proposal score.
        box_nms_thresh: IoU above which the lower-scoring proposal is not decoded.
        max_proposals: at most this many boxes are decoded (best first).
        boxes_per_batch: box prompts per decoder call.
        stability_thresh: minimum stability score of a mask.
        stability_offset: the logit offset of the stability score.
        min_box_iou: minimum IoU of a mask's bounding box with its prompt box (0 disables).
        nms_thresh: box IoU above which the lower-scoring mask is dropped.
        min_area: masks, islands and final labels smaller than this (pixels) are removed.
        hole_area: holes smaller than this (pixels) are filled.
        min_visible_fraction: labels showing less of their mask than this are dropped.
        tile_size: images with a side longer than this are tiled (0 disables tiling).
        tile_overlap: overlap of neighbouring tiles in pixels.
    """

    score_thresh: float = 0.3
    box_nms_thresh: float = 0.6
    max_proposals: int = 500
    boxes_per_batch: int = 64
    stability_thresh: float = 0.85
    stability_offset: float = 1.0
    min_box_iou: float = 0.5
    nms_thresh: float = 0.7
    min_area: int = 25
    hole_area: int = 25
    min_visible_fraction: float = 0.25
    tile_size: int = 1024
    tile_overlap: int = 128

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: must be {allowed}")

        need(0.0 <= self.score_thresh <= 1.0, "score_thresh", "in [0, 1]")
        need(0.0 < self.box_nms_thresh <= 1.0, "box_nms_thresh", "in (0, 1]")
        need(int(self.max_proposals) >= 1, "max_proposals", ">= 1")
        need(int(self.boxes_per_batch) >= 1, "boxes_per_batch", ">= 1")
        need(0.0 <= self.stability_thresh <= 1.0, "stability_thresh", "in [0, 1]")
        need(self.stability_offset > 0, "stability_offset", "> 0")
        need(0.0 <= self.min_box_iou <= 1.0, "min_box_iou", "in [0, 1]")
        need(0.0 < self.nms_thresh <= 1.0, "nms_thresh", "in (0, 1]")
        need(self.min_area >= 0, "min_area", ">= 0")
        need(self.hole_area >= 0, "hole_area", ">= 0")
        need(0.0 <= self.min_visible_fraction <= 1.0, "min_visible_fraction", "in [0, 1]")
        need(self.tile_size == 0 or self.tile_size >= 64, "tile_size", "0 (no tiling) or >= 64")
        need(self.tile_size == 0 or 0 <= self.tile_overlap < self.tile_size // 2,
             "tile_overlap", ">= 0 and less than half of tile_size")

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_boxes(proposals: ProposalSet, cfg: BoxAutomaticConfig) -> tuple[np.ndarray, np.ndarray]:
    """The boxes to decode: above ``score_thresh``, after NMS, at most ``max_proposals``
    (``K x 4`` pixels, ``K`` scores, by descending score)."""
    props = proposals.above(cfg.score_thresh)
    keep = nms_boxes(props.boxes, props.scores, cfg.box_nms_thresh)[: cfg.max_proposals]
    return props.boxes[keep], props.scores[keep]


def _chunk_candidates(boxes, box_scores, pred, emb: ImageEmbedding, cfg: BoxAutomaticConfig) -> list[MaskCandidate]:
    ih, iw = emb.input_size
    low = pred.low_res_logits[:, 0]
    valid = low[:, : -(-ih // 4), : -(-iw // 4)]
    stab = stability_score(valid, MASK_THRESHOLD, cfg.stability_offset)
    out = []
    for b in np.flatnonzero(stab >= cfg.stability_thresh):
        up = _upscale_in_box(low[b], emb)
        if up is None:
            continue
        y0, x0, crop = up
        crop = clean_mask(crop, cfg.min_area, cfg.hole_area)
        if crop.sum() < max(cfg.min_area, 1):
            continue
        rr, cc = np.flatnonzero(crop.any(1)), np.flatnonzero(crop.any(0))
        crop = crop[rr[0] : rr[-1] + 1, cc[0] : cc[-1] + 1]
        y0, x0 = y0 + int(rr[0]), x0 + int(cc[0])
        mask_box = np.array([x0, y0, x0 + crop.shape[1], y0 + crop.shape[0]], np.float32)
        if cfg.min_box_iou > 0 and box_iou(mask_box, boxes[b])[0, 0] < cfg.min_box_iou:
            continue
        centre = (float(boxes[b, 0] + boxes[b, 2]) / 2, float(boxes[b, 1] + boxes[b, 3]) / 2)
        out.append(MaskCandidate(y0, x0, crop, float(stab[b] * box_scores[b]), float(stab[b]), centre))
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
        predictor: an :class:`EdgeSamPredictor` (``predict_batch``, ``set_embedding``, ...).
        embedding: the image's embedding; the predictor's current image is restored afterwards.
        proposals: the prior's boxes for the same image.
        progress: ``progress(done_boxes, total_boxes)`` after each decoder call.
        cancel: an object with ``is_set()``; raises :class:`Cancelled`.
    Returns:
        masks (score = stability x proposal score) by descending score, in pixels of the image.
    """
    if tuple(proposals.original_size) != tuple(embedding.original_size):
        raise ValueError(f"proposals are of a {proposals.original_size} image, the embedding of {embedding.original_size}")
    boxes, scores = prompt_boxes(proposals, config)
    previous = predictor.embedding if predictor.is_image_set else None
    predictor.set_embedding(embedding)
    try:
        candidates: list[MaskCandidate] = []
        n = config.boxes_per_batch
        for start in range(0, len(boxes), n):
            if cancel is not None and cancel.is_set():
                raise Cancelled("automatic segmentation was cancelled")
            chunk = boxes[start : start + n]
            pred = predictor.predict_batch(boxes=chunk, num_multimask_outputs=1, use_stability_score=True,
                                           upscale=False)
            candidates += _chunk_candidates(chunk, scores[start : start + n], pred, embedding, config)
            if progress is not None:
                progress(min(start + n, len(boxes)), len(boxes))
    finally:
        if previous is not None:
            predictor.set_embedding(previous)
        else:
            predictor.reset_image()
    kept = nms(candidates, config.nms_thresh)
    logger.debug("box automatic: %d proposals, %d decoded, %d candidates, %d after NMS",
                 len(proposals), len(boxes), len(candidates), len(kept))
    return kept


def _region(region, shape) -> tuple[int, int, int, int]:
    h, w = shape
    if region is None:
        return 0, 0, w, h
    try:
        x0, y0, x1, y1 = (int(round(float(v))) for v in region)
    except (TypeError, ValueError):
        raise ValueError(f"region must be (x0, y0, x1, y1) in pixels, got {region!r}") from None
    x0, x1 = max(0, min(x0, x1)), min(w, max(x0, x1))
    y0, y1 = max(0, min(y0, y1)), min(h, max(y0, y1))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError(f"region {tuple(region)} does not overlap the {w} x {h} image")
    return x0, y0, x1, y1


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
        image: ``H x W`` or ``H x W x C`` (see :func:`to_rgb_uint8`).
        region: ``(x0, y0, x1, y1)`` pixels: segment only there (embedded on its own).
        normalisation: keyword arguments of :func:`to_rgb_uint8`.
        progress: ``progress(done, total)``: boxes of the current tile, or tiles when tiled.
    Returns:
        ``H x W`` uint32 labels (0 background).
    """
    rgb = to_rgb_uint8(image, **(normalisation or {}))
    H, W = rgb.shape[:2]
    x0, y0, x1, y1 = _region(region, (H, W))
    labels = np.zeros((H, W), np.uint32)
    crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    if config.tile_size and max(crop.shape[:2]) > config.tile_size:
        tiles = tile_grid(crop.shape[:2], config.tile_size, config.tile_overlap)
        results = []
        for i, tile in enumerate(tiles):
            if cancel is not None and cancel.is_set():
                raise Cancelled("automatic segmentation was cancelled")
            results.append(_segment_rgb(predictor, prior, np.ascontiguousarray(crop[tile.slices]), config, None, cancel))
            if progress is not None:
                progress(i + 1, len(tiles))
        labels[y0:y1, x0:x1] = stitch_tiles(tiles, results, crop.shape[:2], min_area=config.min_area)
    else:
        labels[y0:y1, x0:x1] = _segment_rgb(predictor, prior, crop, config, progress, cancel)
    return labels


def _segment_rgb(predictor, prior, rgb, cfg, progress, cancel) -> np.ndarray:
    emb, proposals = embed_rgb_with_proposals(predictor, prior, rgb)
    masks = generate_masks_from_boxes(predictor, emb, proposals, cfg, progress=progress, cancel=cancel)
    return masks_to_labels(masks, rgb.shape[:2], cfg.min_area, cfg.min_visible_fraction)
