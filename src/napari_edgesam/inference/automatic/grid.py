"""Automatic ("segment everything") mode: a point grid decoded in batches -> instance labels.

Pipeline for one 2D image (or one tile of a large image):

1. A regular grid of points (isotropic spacing, ``points_per_side`` along the longest side),
   ordered coarse to fine.
2. Chunks of ``points_per_batch`` points go through ONE decoder call each
   (:meth:`EdgeSamPredictor.decode_batch`, ``upscale=False``; by default 64 per call on a
   GPU, and on a CPU the fastest of 64/16/4 as timed on the first chunks); every point yields
   4 (or 3) candidate masks, like SAM's multimask output.
3. Candidates are filtered on the 256 x 256 low-res logits: stability score (EdgeSAM's IoU head
   was never distilled, so it is off by default), the prompt point must lie inside its mask, and
   masks larger than ``max_area_fraction`` of the image are background. With ``skip_covered``
   the points of later chunks that fall inside an accepted mask, or inside a stable background
   mask with holes (background around objects; never a whole-image mask), are not decoded.
4. Only the survivors are upscaled, and only inside their bounding box (exactly equal to the
   full-size official upscaling there); small islands are removed and small holes filled
   (:func:`~napari_edgesam.inference.automatic.masks.candidate_from_logits`).
5. Box NMS (numpy) on the survivors, then painting into a label image largest-first (nested
   smaller objects stay visible), dropping labels that end up smaller than ``min_area``.

Steps 4-5, regions, tiles (each tile embedded at full resolution, one at a time, then stitched)
and stacks (:func:`segment_automatic_3d`: per slice, then merged in 3D) are shared with the
prior-box mode (:mod:`.masks`, :mod:`.common`). The names of those modules that
callers know from here (``MaskCandidate``, ``nms``, ``Cancelled``...) are re-exported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ...constants import MASK_THRESHOLD
from ..core.postprocess import stability_score
from ..core.predictor import ImageEmbedding
from .common import (
    Cancelled,
    MaskSettings,
    ProgressFn,
    accepts_keyword,
    check_cancel,
    segment_image,
    segment_volume,
    volume_normalisation,
)
from .masks import (
    MaskCandidate,
    candidate_from_logits,
    clean_mask,
    masks_to_labels,
    nms,
    upscale_in_box,
)

__all__ = [
    "AutomaticConfig", "COVER_MARGIN", "CPU_PROBE_SIZES", "Cancelled", "ChunkSizer",
    "GPU_POINTS_PER_BATCH", "MaskCandidate", "ONE_BY_ONE_POINTS_PER_BATCH", "ProgressFn", "clean_mask", "generate_masks",
    "masks_to_labels", "nms", "on_gpu", "point_grid", "segment_automatic", "segment_automatic_3d",
    "upscale_in_box", "volume_normalisation",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutomaticConfig(MaskSettings):
    """Parameters of point-grid automatic segmentation (microscopy-friendly defaults).

    Attributes (besides those of :class:`~napari_edgesam.inference.automatic.common.MaskSettings`:
    stability, NMS, areas, tiling):
        points_per_side: grid points along the longest side of the image (or tile).
        points_per_batch: prompts per decoder call; None: 64 on a GPU and where the backend
            decodes prompt by prompt (the torch CPU path), otherwise the fastest of 64/16/4,
            timed on the first chunks (see :class:`ChunkSizer`).
        num_multimask_outputs: candidates per point: 4 (all tokens) or 3 (tokens 1-3).
        iou_thresh: minimum IoU-head score; 0 disables it (EdgeSAM's IoU head is unreliable).
        max_area_fraction: masks covering more than this fraction of the image (or tile) are
            treated as background.
        skip_covered: do not decode grid points inside masks already accepted, or inside stable
            background masks that enclose holes (i.e. exclude objects).
        require_point_inside: drop masks that do not contain their own prompt point.
    """

    points_per_side: int = 32
    points_per_batch: int | None = None
    num_multimask_outputs: int = 4
    iou_thresh: float = 0.0
    max_area_fraction: float = 0.3
    skip_covered: bool = True
    require_point_inside: bool = True

    def _rules(self) -> list[tuple[bool, str, str]]:
        return [
            (1 <= int(self.points_per_side) <= 1024, "points_per_side",
             "from 1 to 1024 (the model's input side; 32 or 64 are usual)"),
            (self.points_per_batch is None or int(self.points_per_batch) >= 1, "points_per_batch",
             "None (auto) or >= 1"),
            (self.num_multimask_outputs in (3, 4), "num_multimask_outputs", "3 or 4"),
            (0.0 <= self.iou_thresh <= 1.0, "iou_thresh", "in [0, 1]"),
            (0.0 < self.max_area_fraction <= 1.0, "max_area_fraction", "in (0, 1]"),
            *super()._rules(),
        ]


# -- the grid ---------------------------------------------------------------------------------
def point_grid(shape: tuple[int, int], points_per_side: int) -> np.ndarray:
    """Grid points ``N x 2`` as (x, y) pixels at cell centres, ordered coarse to fine.

    Spacing is isotropic: ``points_per_side`` points along the longest side of ``shape`` (h, w).
    The first points form a coarse sub-grid (every 4th point), then every 2nd, then the rest,
    so that early chunks cover the whole image.
    """
    h, w = int(shape[0]), int(shape[1])
    step = max(h, w) / float(points_per_side)
    ny, nx = max(1, round(h / step)), max(1, round(w / step))
    ys = (np.arange(ny) + 0.5) * (h / ny)
    xs = (np.arange(nx) + 0.5) * (w / nx)
    jj, ii = np.meshgrid(np.arange(nx), np.arange(ny))
    level = np.where((ii % 4 == 0) & (jj % 4 == 0), 0, np.where((ii % 2 == 0) & (jj % 2 == 0), 1, 2))
    order = np.argsort(level.ravel(), kind="stable")
    pts = np.stack([xs[jj.ravel()], ys[ii.ravel()]], axis=1)[order]
    return pts.astype(np.float32)


#: Low-res pixels (4 px of the 1024 frame each) next to a mask's edge that still get decoded.
COVER_MARGIN = 2


def _interior(mask: np.ndarray) -> np.ndarray:
    """``mask`` without a band of ``COVER_MARGIN`` pixels along its edges: grid points near the
    edge of a found mask are still decoded (a mask that bleeds over a neighbour's edge must not
    hide that neighbour)."""
    return ndimage.binary_erosion(mask, iterations=COVER_MARGIN, border_value=1)


def _has_holes(mask: np.ndarray) -> bool:
    """Whether ``mask`` encloses regions not in it (e.g. background around objects)."""
    return bool((ndimage.binary_fill_holes(mask) & ~mask).any())


# -- candidates -------------------------------------------------------------------------------
def _low_res_pixels(pts: np.ndarray, emb: ImageEmbedding, shape: tuple[int, int]) -> np.ndarray:
    """``N x 2`` (row, col) of the low-res logit pixel under each (x, y) point, within the
    ``shape`` of the logits that cover the image."""
    sy, sx = emb.input_size[0] / emb.original_size[0], emb.input_size[1] / emb.original_size[1]
    pr = np.clip((pts[:, 1] * sy / 4).astype(int), 0, shape[0] - 1)
    pc = np.clip((pts[:, 0] * sx / 4).astype(int), 0, shape[1] - 1)
    return np.stack([pr, pc], axis=1)


def _filter_chunk(
    pts: np.ndarray, pred, emb: ImageEmbedding, cfg: AutomaticConfig, covered: np.ndarray
) -> list[MaskCandidate]:
    """Filter one chunk's candidates on their low-res logits, then upscale the survivors."""
    lh, lw = covered.shape
    low = pred.low_res_logits[:, :, :lh, :lw]
    pr, pc = _low_res_pixels(pts, emb, (lh, lw)).T
    inside = low[np.arange(len(pts)), :, pr, pc] > MASK_THRESHOLD if len(pts) else np.zeros(low.shape[:2], bool)
    # the whole-map statistics only for candidates that can still pass (most grid points on
    # background have no mask over their point)
    todo = inside if cfg.require_point_inside else np.ones_like(inside)
    stab = np.zeros(low.shape[:2], np.float32)
    frac = np.zeros(low.shape[:2])
    pos = np.zeros(low.shape, bool)
    if todo.any():
        stab[todo] = stability_score(low[todo], MASK_THRESHOLD, cfg.stability_offset)
        pos[todo] = low[todo] > MASK_THRESHOLD
        frac[todo] = pos[todo].sum((-1, -2)) / float(lh * lw)
    keep = todo & (stab >= cfg.stability_thresh)
    score = stab
    if cfg.iou_thresh > 0:
        keep &= pred.scores >= cfg.iou_thresh
        score = 0.5 * (stab + pred.scores)
    keep &= frac > 0
    if cfg.require_point_inside:
        keep &= inside
    background = keep & (frac > cfg.max_area_fraction)
    keep &= ~background
    if cfg.skip_covered:
        for b, c in zip(*np.nonzero(keep), strict=True):
            covered |= _interior(pos[b, c])
        for b, c in zip(*np.nonzero(background), strict=True):
            if _has_holes(pos[b, c]):  # background around objects, not "the whole image"
                covered |= _interior(pos[b, c])
    out = []
    for b, c in zip(*np.nonzero(keep), strict=True):
        cand = candidate_from_logits(pred.low_res_logits[b, c], emb, min_area=cfg.min_area,
                                     hole_area=None if cfg.fill_holes else cfg.hole_area,
                                     score=score[b, c], stability=stab[b, c], point=tuple(pts[b]))
        if cand is not None:
            out.append(cand)
    return out


def generate_masks(
    predictor,
    embedding: ImageEmbedding,
    config: AutomaticConfig = AutomaticConfig(),
    *,
    progress: ProgressFn | None = None,
    cancel=None,
) -> list[MaskCandidate]:
    """Run the point grid on one embedded image and return the masks kept by NMS.

    Args:
        predictor: an :class:`EdgeSamPredictor` (or anything with ``decode_batch(embedding, ...)``);
            its state (current image) is neither used nor changed.
        embedding: the image's embedding.
        progress: ``progress(done_points, total_points)`` after each chunk.
        cancel: an object with ``is_set()`` (e.g. ``threading.Event``); raises :class:`Cancelled`.
    Returns:
        masks sorted by descending score, in pixel coordinates of ``embedding.original_size``.
    """
    return _generate(predictor, embedding, config, progress, cancel)


#: Prompts per decoder call when ``points_per_batch`` is None: fixed on a GPU; on a CPU each
#: size is timed once on real chunks (largest first) and the fastest per prompt is kept.
GPU_POINTS_PER_BATCH = 64
CPU_PROBE_SIZES = (64, 16, 4)
#: Prompts per call for backends that decode prompt by prompt anyway (the torch CPU path):
#: fixed, so results do not depend on timing, and the GPU's, so both give the same masks.
ONE_BY_ONE_POINTS_PER_BATCH = GPU_POINTS_PER_BATCH


def on_gpu(predictor) -> bool:
    """Whether the predictor's backend runs on a GPU (cuda or mps)."""
    device = getattr(getattr(predictor, "backend", None), "device", None)
    kind = getattr(device, "type", None) or str(device or "cpu")
    return kind.split(":")[0] in ("cuda", "mps")


class ChunkSizer:
    """Prompts per decoder call. ``fixed`` is used as is; otherwise (CPU) every size in
    ``probe`` is tried once and the one with the lowest measured time per prompt is kept:
    on CPUs the best size depends on cache size and load (on the 2-core test machine 1-4
    prompts per call were fastest when it was idle, 64 when it was busy)."""

    def __init__(self, fixed: int | None = None, probe: Sequence[int] = CPU_PROBE_SIZES) -> None:
        self.fixed = fixed
        self.per_prompt: dict[int, float] = {}
        self._probe = [int(p) for p in probe]

    def next(self) -> int:
        if self.fixed:
            return self.fixed
        for size in self._probe:
            if size not in self.per_prompt:
                return size
        return min(self.per_prompt, key=self.per_prompt.get)

    def record(self, size: int, prompts: int, seconds: float) -> None:
        if not self.fixed and prompts == size and size not in self.per_prompt:
            self.per_prompt[size] = seconds / prompts


def _generate(predictor, emb, cfg, progress, cancel) -> list[MaskCandidate]:
    pts = point_grid(emb.original_size, cfg.points_per_side)
    fixed = cfg.points_per_batch or (GPU_POINTS_PER_BATCH if on_gpu(predictor) else None)
    if not fixed and getattr(getattr(predictor, "backend", None), "decodes_prompt_by_prompt", False):
        fixed = ONE_BY_ONE_POINTS_PER_BATCH  # no batch size is faster there
    sizer = ChunkSizer(fixed)
    ih, iw = emb.input_size
    covered = np.zeros((-(-ih // 4), -(-iw // 4)), bool)
    sy, sx = ih / emb.original_size[0] / 4, iw / emb.original_size[1] / 4
    remaining, done, candidates, calls = pts, 0, [], 0
    hinted = cfg.require_point_inside and accepts_keyword(predictor.decode_batch, "needed_at")
    while len(remaining):
        check_cancel(cancel)
        if cfg.skip_covered and covered.any():
            r = np.clip((remaining[:, 1] * sy).astype(int), 0, covered.shape[0] - 1)
            c = np.clip((remaining[:, 0] * sx).astype(int), 0, covered.shape[1] - 1)
            free = ~covered[r, c]
            done += int((~free).sum())
            remaining = remaining[free]
            if not len(remaining):
                break
        size = sizer.next()
        chunk, remaining = remaining[:size], remaining[size:]
        t0 = time.perf_counter()
        # a mask must contain its point: prompts with no mask there need no upscaling (most
        # background points; backends that cannot skip them ignore the hint)
        hint = {"needed_at": _low_res_pixels(chunk, emb, covered.shape)} if hinted else {}
        pred = predictor.decode_batch(
            emb, point_coords=chunk[:, None, :], point_labels=np.ones((len(chunk), 1), np.float32),
            num_multimask_outputs=cfg.num_multimask_outputs,
            use_stability_score=cfg.iou_thresh == 0, upscale=False, **hint,
        )
        sizer.record(size, len(chunk), time.perf_counter() - t0)
        calls += 1
        candidates += _filter_chunk(chunk, pred, emb, cfg, covered)
        done += len(chunk)
        if progress is not None:
            progress(done, len(pts))
    kept = nms(candidates, cfg.nms_thresh)
    logger.debug("automatic: %d points, %d decoder calls, %d candidates, %d after NMS",
                 len(pts), calls, len(candidates), len(kept))
    return kept




# -- whole images and stacks ------------------------------------------------------------------
def segment_automatic(
    predictor,
    image: np.ndarray,
    config: AutomaticConfig = AutomaticConfig(),
    *,
    region: Sequence[float] | None = None,
    embedding: ImageEmbedding | None = None,
    normalisation: dict | None = None,
    progress: ProgressFn | None = None,
    cancel=None,
) -> np.ndarray:
    """Automatic instance segmentation of a 2D image.

    Args:
        image: ``H x W`` or ``H x W x C`` (see :func:`~napari_edgesam.inference.core.preprocess.to_rgb_uint8`).
        region: ``(x0, y0, x1, y1)`` pixels: segment only there (e.g. the visible area); the
            crop is embedded on its own, so a small region is seen at higher resolution.
        embedding: a precomputed embedding of the whole image (used when there is no region and
            no tiling is needed).
        normalisation: keyword arguments of ``to_rgb_uint8`` (contrast limits, channel...).
        progress: ``progress(done_points, total_points)`` (over all tiles when tiled).
    Returns:
        ``H x W`` uint32 labels (0 background) over the whole image.
    """

    def segment_tile(rgb: np.ndarray, report: ProgressFn | None, whole: bool) -> np.ndarray:
        emb = None
        if whole and embedding is not None:
            if tuple(embedding.original_size) != rgb.shape[:2]:
                raise ValueError(f"embedding is of a {embedding.original_size} image, not {rgb.shape[:2]}")
            emb = embedding
        emb = emb if emb is not None else predictor.encode_rgb(rgb, prior=None)  # no proposals needed
        masks = generate_masks(predictor, emb, config, progress=report, cancel=cancel)
        return masks_to_labels(masks, rgb.shape[:2], config.min_area, config.min_visible_fraction)

    return segment_image(image, segment_tile, config, region=region, normalisation=normalisation,
                         progress=progress, cancel=cancel,
                         tile_work=lambda shape: len(point_grid(shape, config.points_per_side)))


def segment_automatic_3d(
    predictor,
    volume: np.ndarray,
    config: AutomaticConfig = AutomaticConfig(),
    *,
    region: Sequence[float] | None = None,
    normalisation: dict | None = None,
    merge_iou: float = 0.3,
    merge_overlap: float = 0.8,
    progress: ProgressFn | None = None,
    cancel=None,
) -> np.ndarray:
    """Per-slice :func:`segment_automatic` of a ``Z x H x W`` (or ``Z x H x W x C``) stack,
    merged into 3D instances by overlap of consecutive slices
    (see :func:`~napari_edgesam.inference.automatic.common.segment_volume`).

    ``progress(done_slices, Z)``; returns ``Z x H x W`` uint32 labels.
    """

    def plane(image: np.ndarray, norm: dict) -> np.ndarray:
        return segment_automatic(predictor, image, config, region=region, normalisation=norm, cancel=cancel)

    return segment_volume(volume, plane, normalisation=normalisation, merge_iou=merge_iou,
                          merge_overlap=merge_overlap, progress=progress, cancel=cancel)
