"""Automatic ("segment everything") mode: a point grid decoded in batches -> instance labels.

Pipeline for one 2D image (or one tile of a large image):

1. A regular grid of points (isotropic spacing, ``points_per_side`` along the longest side),
   ordered coarse to fine.
2. Chunks of ``points_per_batch`` points go through ONE decoder call each
   (:meth:`EdgeSamPredictor.predict_batch`, ``upscale=False``; by default 64 per call on a
   GPU, and on a CPU the fastest of 64/16/4 as timed on the first chunks); every point yields
   4 (or 3) candidate masks, like SAM's multimask output.
3. Candidates are filtered on the 256 x 256 low-res logits: stability score (EdgeSAM's IoU head
   was never distilled, so it is off by default), the prompt point must lie inside its mask, and
   masks larger than ``max_area_fraction`` of the image are background. With ``skip_covered``
   the points of later chunks that fall inside an accepted mask, or inside a stable background
   mask with holes (background around objects; never a whole-image mask), are not decoded.
4. Only the survivors are upscaled, and only inside their bounding box (exactly equal to the
   full-size official upscaling there); small islands are removed and small holes filled.
5. Box NMS (numpy) on the survivors, then painting into a label image largest-first (nested
   smaller objects stay visible), dropping labels that end up smaller than ``min_area``.

Images larger than ``tile_size`` are processed tile by tile (each tile embedded at full
resolution, one at a time) and stitched with :func:`~napari_edgesam.inference.tiling.stitch_tiles`,
so objects crossing a tile border come out as one label. 3D stacks: :func:`segment_automatic_3d`
segments each slice and links the slices with :func:`~napari_edgesam.inference.merge3d.merge_slices`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from ..constants import IMG_SIZE, LOW_RES_SIZE, MASK_THRESHOLD
from .merge3d import merge_slices
from .postprocess import bilinear_matrix, stability_score
from .predictor import ImageEmbedding
from .preprocess import DEFAULT_PERCENTILES, to_rgb_uint8
from .tiling import stitch_tiles, tile_grid

logger = logging.getLogger(__name__)

#: ``progress(done, total)``: called after every decoded chunk.
ProgressFn = Callable[[int, int], None]


class Cancelled(Exception):
    """Raised when a ``cancel`` event is set while segmenting."""


@dataclass(frozen=True)
class AutomaticConfig:
    """Parameters of automatic segmentation (microscopy-friendly defaults).

    Attributes:
        points_per_side: grid points along the longest side of the image (or tile).
        points_per_batch: prompts per decoder call; None: 64 on a GPU, and on a CPU the
            fastest of 64/16/4, timed on the first chunks (see :class:`ChunkSizer`).
        num_multimask_outputs: candidates per point: 4 (all tokens) or 3 (tokens 1-3).
        stability_thresh: minimum stability score (IoU of the masks at logit > +offset and > -offset).
        stability_offset: the logit offset of the stability score.
        iou_thresh: minimum IoU-head score; 0 disables it (EdgeSAM's IoU head is unreliable).
        nms_thresh: box IoU above which the lower-scoring mask is dropped.
        min_area: masks, islands and final labels smaller than this (pixels) are removed.
        hole_area: holes smaller than this (pixels) are filled.
        max_area_fraction: masks covering more than this fraction of the image (or tile) are
            treated as background.
        min_visible_fraction: after painting, labels showing less than this fraction of their
            mask (the rest hidden under smaller objects) are dropped.
        skip_covered: do not decode grid points inside masks already accepted, or inside stable
            background masks that enclose holes (i.e. exclude objects).
        require_point_inside: drop masks that do not contain their own prompt point.
        tile_size: images with a side longer than this are tiled (0 disables tiling).
        tile_overlap: overlap of neighbouring tiles in pixels.
    """

    points_per_side: int = 32
    points_per_batch: int | None = None
    num_multimask_outputs: int = 4
    stability_thresh: float = 0.9
    stability_offset: float = 1.0
    iou_thresh: float = 0.0
    nms_thresh: float = 0.7
    min_area: int = 25
    hole_area: int = 25
    max_area_fraction: float = 0.3
    min_visible_fraction: float = 0.25
    skip_covered: bool = True
    require_point_inside: bool = True
    tile_size: int = 1024
    tile_overlap: int = 128

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: must be {allowed}")

        need(int(self.points_per_side) >= 1, "points_per_side", ">= 1")
        need(self.points_per_batch is None or int(self.points_per_batch) >= 1, "points_per_batch",
             "None (auto) or >= 1")
        need(self.num_multimask_outputs in (3, 4), "num_multimask_outputs", "3 or 4")
        need(0.0 <= self.stability_thresh <= 1.0, "stability_thresh", "in [0, 1]")
        need(self.stability_offset > 0, "stability_offset", "> 0")
        need(0.0 <= self.iou_thresh <= 1.0, "iou_thresh", "in [0, 1]")
        need(0.0 < self.nms_thresh <= 1.0, "nms_thresh", "in (0, 1]")
        need(self.min_area >= 0, "min_area", ">= 0")
        need(self.hole_area >= 0, "hole_area", ">= 0")
        need(0.0 < self.max_area_fraction <= 1.0, "max_area_fraction", "in (0, 1]")
        need(0.0 <= self.min_visible_fraction <= 1.0, "min_visible_fraction", "in [0, 1]")
        need(self.tile_size == 0 or self.tile_size >= 64, "tile_size", "0 (no tiling) or >= 64")
        need(0 <= self.tile_overlap < max(self.tile_size, 1) // 2 or self.tile_size == 0,
             "tile_overlap", ">= 0 and less than half of tile_size")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class MaskCandidate:
    """One accepted mask, stored as a crop: ``mask[r, c]`` is pixel ``(y0 + r, x0 + c)``.

    ``point`` is the prompt (x, y) in pixels; ``score`` the ranking score (stability, averaged
    with the IoU head when that is enabled).
    """

    y0: int
    x0: int
    mask: np.ndarray
    score: float
    stability: float
    point: tuple[float, float]

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)``, end-exclusive."""
        return self.x0, self.y0, self.x0 + self.mask.shape[1], self.y0 + self.mask.shape[0]


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


# -- low-res -> full-res, inside a box --------------------------------------------------------
@lru_cache(maxsize=16)
def _axis_matrix(original: int, resized: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``original x 256`` interpolation matrix of one axis, and the first/last low-res index
    each output pixel depends on."""
    m = bilinear_matrix(original, resized) @ bilinear_matrix(IMG_SIZE, LOW_RES_SIZE)[:resized]
    nz = m > 0
    first = nz.argmax(1)
    last = m.shape[1] - 1 - nz[:, ::-1].argmax(1)
    return m.astype(np.float32), first, last


def upscale_in_box(low: np.ndarray, emb: ImageEmbedding) -> tuple[int, int, np.ndarray] | None:
    """Full-size mask of one ``256 x 256`` logit map, computed only where it can be positive.

    Returns ``(y0, x0, mask crop)`` with the crop tight around the mask, or None if empty.
    """
    pos = low > MASK_THRESHOLD
    rows, cols = np.flatnonzero(pos.any(1)), np.flatnonzero(pos.any(0))
    if rows.size == 0:
        return None
    r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
    (H, W), (h, w) = emb.original_size, emb.input_size
    mr, fr, lr = _axis_matrix(H, h)
    mc, fc, lc = _axis_matrix(W, w)
    ys = np.flatnonzero((lr >= r0) & (fr <= r1))
    xs = np.flatnonzero((lc >= c0) & (fc <= c1))
    if ys.size == 0 or xs.size == 0:
        return None
    y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
    a0, a1 = fr[y0], lr[y1 - 1] + 1
    b0, b1 = fc[x0], lc[x1 - 1] + 1
    crop = (mr[y0:y1, a0:a1] @ low[a0:a1, b0:b1].astype(np.float32) @ mc[x0:x1, b0:b1].T) > MASK_THRESHOLD
    rr, cc = np.flatnonzero(crop.any(1)), np.flatnonzero(crop.any(0))
    if rr.size == 0:
        return None
    crop = crop[rr[0] : rr[-1] + 1, cc[0] : cc[-1] + 1]
    return int(y0 + rr[0]), int(x0 + cc[0]), crop


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


_upscale_in_box = upscale_in_box  # the name used by automatic_boxes


def clean_mask(mask: np.ndarray, min_area: int, hole_area: int) -> np.ndarray:
    """Remove islands smaller than ``min_area`` and fill holes smaller than ``hole_area``."""
    out = mask
    if min_area > 0:
        lab, n = ndimage.label(out)
        if n > 1 or (n == 1 and out.sum() < min_area):
            sizes = np.bincount(lab.ravel(), minlength=n + 1)
            keep = sizes >= min_area
            keep[0] = False
            out = keep[lab]
    if hole_area > 0 and out.any():
        inv = np.pad(~out, 1, constant_values=True)
        lab, n = ndimage.label(inv)
        if n > 1:
            sizes = np.bincount(lab.ravel(), minlength=n + 1)
            fill = (sizes < hole_area) & (np.arange(n + 1) != lab[0, 0])
            fill[0] = False
            out = out | fill[lab][1:-1, 1:-1]
    return out


# -- candidates -------------------------------------------------------------------------------
def _filter_chunk(
    pts: np.ndarray, pred, emb: ImageEmbedding, cfg: AutomaticConfig, covered: np.ndarray
) -> list[MaskCandidate]:
    """Filter one chunk's candidates on their low-res logits, then upscale the survivors."""
    lh, lw = covered.shape
    low = pred.low_res_logits[:, :, :lh, :lw]
    stab = stability_score(low, MASK_THRESHOLD, cfg.stability_offset)
    keep = stab >= cfg.stability_thresh
    score = stab
    if cfg.iou_thresh > 0:
        keep &= pred.scores >= cfg.iou_thresh
        score = 0.5 * (stab + pred.scores)
    pos = low > MASK_THRESHOLD
    frac = pos.sum((-1, -2)) / float(lh * lw)
    keep &= frac > 0
    scale = (emb.input_size[0] / emb.original_size[0], emb.input_size[1] / emb.original_size[1])
    pr = np.clip((pts[:, 1] * scale[0] / 4).astype(int), 0, lh - 1)
    pc = np.clip((pts[:, 0] * scale[1] / 4).astype(int), 0, lw - 1)
    inside = pos[np.arange(len(pts)), :, pr, pc] if len(pts) else np.zeros_like(keep)
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
        up = upscale_in_box(pred.low_res_logits[b, c], emb)
        if up is None:
            continue
        y0, x0, crop = up
        crop = clean_mask(crop, cfg.min_area, cfg.hole_area)
        if crop.sum() < max(cfg.min_area, 1):
            continue
        rr, cc = np.flatnonzero(crop.any(1)), np.flatnonzero(crop.any(0))
        crop = crop[rr[0] : rr[-1] + 1, cc[0] : cc[-1] + 1]
        out.append(MaskCandidate(y0 + int(rr[0]), x0 + int(cc[0]), crop, float(score[b, c]),
                                 float(stab[b, c]), (float(pts[b, 0]), float(pts[b, 1]))))
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
        predictor: an :class:`EdgeSamPredictor` (or anything with ``predict_batch``,
            ``set_embedding``, ``embedding``, ``is_image_set``, ``reset_image``).
        embedding: the image's embedding; the predictor's current image is restored afterwards.
        progress: ``progress(done_points, total_points)`` after each chunk.
        cancel: an object with ``is_set()`` (e.g. ``threading.Event``); raises :class:`Cancelled`.
    Returns:
        masks sorted by descending score, in pixel coordinates of ``embedding.original_size``.
    """
    previous = predictor.embedding if predictor.is_image_set else None
    predictor.set_embedding(embedding)
    try:
        return _generate(predictor, embedding, config, progress, cancel)
    finally:
        if previous is not None:
            predictor.set_embedding(previous)
        else:
            predictor.reset_image()


#: Prompts per decoder call when ``points_per_batch`` is None: fixed on a GPU; on a CPU each
#: size is timed once on real chunks (largest first) and the fastest per prompt is kept.
GPU_POINTS_PER_BATCH = 64
CPU_PROBE_SIZES = (64, 16, 4)


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
    sizer = ChunkSizer(fixed)
    ih, iw = emb.input_size
    covered = np.zeros((-(-ih // 4), -(-iw // 4)), bool)
    sy, sx = ih / emb.original_size[0] / 4, iw / emb.original_size[1] / 4
    remaining, done, candidates, calls = pts, 0, [], 0
    while len(remaining):
        if cancel is not None and cancel.is_set():
            raise Cancelled("automatic segmentation was cancelled")
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
        pred = predictor.predict_batch(
            point_coords=chunk[:, None, :], point_labels=np.ones((len(chunk), 1), np.float32),
            num_multimask_outputs=cfg.num_multimask_outputs,
            use_stability_score=cfg.iou_thresh == 0, upscale=False,
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


def nms(candidates: Sequence[MaskCandidate], iou_thresh: float) -> list[MaskCandidate]:
    """Greedy box NMS: keep masks by descending score, dropping any whose box overlaps a kept
    one with IoU > ``iou_thresh``. Ties are broken by larger area, then input order.
    Memory is linear in the number of candidates (one IoU row per kept mask)."""
    if not candidates:
        return []
    order = sorted(range(len(candidates)), key=lambda i: (-candidates[i].score, -candidates[i].area, i))
    b = np.array([candidates[i].box for i in order], np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    alive = np.ones(len(order), bool)
    kept = []
    for k in range(len(order)):
        if not alive[k]:
            continue
        kept.append(candidates[order[k]])
        iw = np.clip(np.minimum(b[k, 2], b[:, 2]) - np.maximum(b[k, 0], b[:, 0]), 0, None)
        ih = np.clip(np.minimum(b[k, 3], b[:, 3]) - np.maximum(b[k, 1], b[:, 1]), 0, None)
        inter = iw * ih
        alive &= inter / np.maximum(area[k] + area - inter, 1e-9) <= iou_thresh
    return kept


def masks_to_labels(
    masks: Sequence[MaskCandidate], shape: tuple[int, int], min_area: int = 0,
    min_visible_fraction: float = 0.0,
) -> np.ndarray:
    """Paint masks into an ``H x W`` uint32 label image, largest first (smaller, nested objects
    stay on top), then drop labels with fewer than ``min_area`` visible pixels or less than
    ``min_visible_fraction`` of their mask visible. Labels are 1..N by descending area."""
    labels = np.zeros(shape, np.uint32)
    order = sorted(masks, key=lambda m: -m.area)
    for i, m in enumerate(order, start=1):
        region = labels[m.y0 : m.y0 + m.mask.shape[0], m.x0 : m.x0 + m.mask.shape[1]]
        region[m.mask[: region.shape[0], : region.shape[1]]] = i
    if not order:
        return labels
    visible = np.bincount(labels.ravel(), minlength=len(order) + 1)
    areas = np.array([0] + [m.area for m in order])
    keep = (visible >= max(min_area, 1)) & (visible >= min_visible_fraction * areas)
    keep[0] = False
    lut = np.zeros(len(order) + 1, np.uint32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return lut[labels]


# -- whole images -----------------------------------------------------------------------------
def _check_region(region, shape) -> tuple[int, int, int, int]:
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
        image: ``H x W`` or ``H x W x C`` (see :func:`to_rgb_uint8`).
        region: ``(x0, y0, x1, y1)`` pixels: segment only there (e.g. the visible area); the
            crop is embedded on its own, so a small region is seen at higher resolution.
        embedding: a precomputed embedding of the whole image (used when there is no region and
            no tiling is needed).
        normalisation: keyword arguments of :func:`to_rgb_uint8` (contrast limits, channel...).
    Returns:
        ``H x W`` uint32 labels (0 background) over the whole image.
    """
    rgb = to_rgb_uint8(image, **(normalisation or {}))
    H, W = rgb.shape[:2]
    x0, y0, x1, y1 = _check_region(region, (H, W))
    labels = np.zeros((H, W), np.uint32)
    whole = (x0, y0, x1, y1) == (0, 0, W, H)
    if whole and embedding is not None and tuple(embedding.original_size) != (H, W):
        raise ValueError(f"embedding is of a {embedding.original_size} image, not {(H, W)}")
    labels[y0:y1, x0:x1] = _segment_rgb(
        predictor, rgb[y0:y1, x0:x1], config, embedding if whole else None, progress, cancel
    )
    return labels


def _segment_rgb(predictor, rgb, cfg, embedding, progress, cancel) -> np.ndarray:
    shape = rgb.shape[:2]
    if cfg.tile_size and max(shape) > cfg.tile_size:
        return _segment_tiled(predictor, rgb, cfg, progress, cancel)
    emb = embedding if embedding is not None else predictor.embed_rgb(rgb)
    masks = generate_masks(predictor, emb, cfg, progress=progress, cancel=cancel)
    return masks_to_labels(masks, shape, cfg.min_area, cfg.min_visible_fraction)


def _segment_tiled(predictor, rgb, cfg, progress, cancel) -> np.ndarray:
    tiles = tile_grid(rgb.shape[:2], cfg.tile_size, cfg.tile_overlap)
    per_tile = [len(point_grid(t.shape, cfg.points_per_side)) for t in tiles]
    total, offset = sum(per_tile), 0
    results = []
    for tile, n in zip(tiles, per_tile, strict=True):
        if cancel is not None and cancel.is_set():
            raise Cancelled("automatic segmentation was cancelled")
        report = None if progress is None else (lambda d, _t, o=offset: progress(o + d, total))
        emb = predictor.embed_rgb(np.ascontiguousarray(rgb[tile.slices]))
        masks = generate_masks(predictor, emb, cfg, progress=report, cancel=cancel)
        results.append(masks_to_labels(masks, tile.shape, cfg.min_area, cfg.min_visible_fraction))
        offset += n
        logger.debug("tile %s: %d objects", tile, len(masks))
    return stitch_tiles(tiles, results, rgb.shape[:2], min_area=cfg.min_area)


def volume_normalisation(volume: np.ndarray, normalisation: dict | None = None) -> dict:
    """Normalisation shared by all slices of a single-channel stack: without contrast limits,
    non-uint8 data gets the percentiles of the whole volume (not of each slice), so every
    slice is seen with the same contrast."""
    norm = dict(normalisation or {})
    if volume.ndim == 3 and volume.dtype != np.uint8 and norm.get("contrast_limits") is None:
        sample = volume[:, ::4, ::4].astype(np.float32)
        sample = sample[np.isfinite(sample)]
        if sample.size:
            lo, hi = np.percentile(sample, norm.get("percentiles", DEFAULT_PERCENTILES))
            norm["contrast_limits"] = (float(lo), float(hi))
    return norm


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
    """Per-slice automatic segmentation of a ``Z x H x W`` (or ``Z x H x W x C``) stack, merged
    into 3D instances by overlap of consecutive slices (see :func:`merge_slices`).

    ``progress(done_slices, Z)``; returns ``Z x H x W`` uint32 labels.
    """
    vol = np.asarray(volume)
    if vol.ndim not in (3, 4):
        raise ValueError(f"volume must be Z x H x W or Z x H x W x C; got shape {vol.shape}")
    norm = volume_normalisation(vol, normalisation)
    slices = []
    for z in range(vol.shape[0]):
        if cancel is not None and cancel.is_set():
            raise Cancelled("automatic segmentation was cancelled")
        slices.append(segment_automatic(predictor, vol[z], config, region=region,
                                        normalisation=norm, cancel=cancel))
        if progress is not None:
            progress(z + 1, vol.shape[0])
    return merge_slices(np.stack(slices), iou_threshold=merge_iou, overlap_threshold=merge_overlap)
