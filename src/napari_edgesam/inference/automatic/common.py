"""What the two automatic modes share: settings, cancelling, the region, tiles and stacks.

A mode (the point grid, :mod:`.grid`; the prior's boxes, :mod:`.boxes`) only
says how ONE image or tile becomes labels (a :data:`TileSegmenter`); :func:`segment_image`
normalises the image, crops the region, tiles large images (stitched with
:func:`~napari_edgesam.inference.embeddings.tiling.stitch_tiles`, so objects crossing a tile border come out
as one label) and :func:`segment_volume` runs a plane function on every slice of a stack and links
the slices with :func:`~napari_edgesam.inference.volume.merge3d.merge_slices`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..core.preprocess import DEFAULT_PERCENTILES, to_rgb_uint8
from ..embeddings.tiling import stitch_tiles, tile_grid
from ..volume.merge3d import merge_slices

#: ``progress(done, total)``: called as work gets done.
ProgressFn = Callable[[int, int], None]

#: ``segment_tile(rgb H x W x 3 uint8, progress, whole) -> H x W uint32 labels`` of one image or
#: tile; ``whole`` is True when ``rgb`` is the entire image (no region, no tiling).
TileSegmenter = Callable[[np.ndarray, ProgressFn | None, bool], np.ndarray]


class Cancelled(Exception):
    """Raised when a ``cancel`` event is set while segmenting."""


def check_cancel(cancel) -> None:
    """Raise :class:`Cancelled` if ``cancel`` (anything with ``is_set()``, or None) is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("automatic segmentation was cancelled")


@dataclass(frozen=True)
class MaskSettings:
    """Settings shared by both automatic modes (masks, cleanup, painting, tiling).

    Attributes:
        stability_thresh: minimum stability score (IoU of the masks at logit > +offset and > -offset).
        stability_offset: the logit offset of the stability score.
        nms_thresh: box IoU above which the lower-scoring mask is dropped.
        min_area: masks, islands and final labels smaller than this (pixels) are removed.
        hole_area: with ``fill_holes`` False, holes smaller than this (pixels) are filled.
        fill_holes: fill every interior hole of each object's mask (the default, as the
            interactive and prompt masks); False keeps holes of ``hole_area`` pixels or more.
        min_visible_fraction: after painting, labels showing less than this fraction of their
            mask (the rest hidden under smaller objects) are dropped.
        tile_size: images with a side longer than this are tiled (0 disables tiling).
        tile_overlap: overlap of neighbouring tiles in pixels.
    """

    stability_thresh: float = 0.9
    stability_offset: float = 1.0
    nms_thresh: float = 0.7
    min_area: int = 25
    hole_area: int = 25
    fill_holes: bool = True
    min_visible_fraction: float = 0.25
    tile_size: int = 1024
    tile_overlap: int = 128

    def __post_init__(self) -> None:
        for ok, name, allowed in self._rules():
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: must be {allowed}")

    def _rules(self) -> list[tuple[bool, str, str]]:
        """``(valid, field, what is allowed)`` per check; subclasses add theirs."""
        return [
            (0.0 <= self.stability_thresh <= 1.0, "stability_thresh", "in [0, 1]"),
            (self.stability_offset > 0, "stability_offset", "> 0"),
            (0.0 < self.nms_thresh <= 1.0, "nms_thresh", "in (0, 1]"),
            (self.min_area >= 0, "min_area", ">= 0"),
            (self.hole_area >= 0, "hole_area", ">= 0"),
            (0.0 <= self.min_visible_fraction <= 1.0, "min_visible_fraction", "in [0, 1]"),
            (self.tile_size == 0 or self.tile_size >= 64, "tile_size", "0 (no tiling) or >= 64"),
            (self.tile_size == 0 or 0 <= self.tile_overlap < self.tile_size // 2, "tile_overlap",
             ">= 0 and less than half of tile_size"),
        ]

    def to_dict(self) -> dict:
        return asdict(self)


def check_region(region: Sequence[float] | None, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``region`` ``(x0, y0, x1, y1)`` pixels (None: the whole image) clipped to an ``(h, w)``
    image, as ints; ValueError if it is malformed or does not overlap the image."""
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


def accepts_keyword(fn, name: str) -> bool:
    """Whether callable ``fn`` accepts the keyword ``name`` (duck-typed predictors may not)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


# -- images, tiles and stacks -----------------------------------------------------------------
def segment_image(
    image: np.ndarray,
    segment_tile: TileSegmenter,
    settings: MaskSettings,
    *,
    region: Sequence[float] | None = None,
    normalisation: dict | None = None,
    progress: ProgressFn | None = None,
    cancel=None,
    tile_work: Callable[[tuple[int, int]], int] | None = None,
) -> np.ndarray:
    """Labels of a 2D ``H x W [x C]`` image from a mode's :data:`TileSegmenter`.

    Args:
        region: ``(x0, y0, x1, y1)`` pixels: segment only there (the crop is embedded on its own).
        normalisation: keyword arguments of :func:`to_rgb_uint8`.
        progress: untiled, passed to ``segment_tile``; tiled, ``progress(done, total)`` in units of
            ``tile_work(tile shape)`` (within tiles too), or of tiles when ``tile_work`` is None.
        tile_work: the amount of work of a tile of shape ``(h, w)`` (e.g. its grid points).
    Returns:
        ``H x W`` uint32 labels (0 background) over the whole image, zero outside the region.
    """
    rgb = to_rgb_uint8(image, **(normalisation or {}))
    H, W = rgb.shape[:2]
    x0, y0, x1, y1 = check_region(region, (H, W))
    crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    labels = np.zeros((H, W), np.uint32)
    if not settings.tile_size or max(crop.shape[:2]) <= settings.tile_size:
        labels[y0:y1, x0:x1] = segment_tile(crop, progress, (x0, y0, x1, y1) == (0, 0, W, H))
        return labels
    tiles = tile_grid(crop.shape[:2], settings.tile_size, settings.tile_overlap)
    work = [tile_work(t.shape) if tile_work is not None else 1 for t in tiles]
    total, offset, results = sum(work), 0, []
    for tile, n in zip(tiles, work, strict=True):
        check_cancel(cancel)
        report = None
        if progress is not None and tile_work is not None:
            report = lambda d, _t, o=offset: progress(o + d, total)  # noqa: E731
        results.append(segment_tile(np.ascontiguousarray(crop[tile.slices]), report, False))
        offset += n
        if progress is not None:
            progress(offset, total)
    labels[y0:y1, x0:x1] = stitch_tiles(tiles, results, crop.shape[:2], min_area=settings.min_area)
    return labels


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


def segment_volume(
    volume: np.ndarray,
    segment_plane: Callable[[np.ndarray, dict], np.ndarray],
    *,
    normalisation: dict | None = None,
    merge_iou: float = 0.3,
    merge_overlap: float = 0.8,
    progress: ProgressFn | None = None,
    cancel=None,
) -> np.ndarray:
    """``segment_plane(plane, normalisation) -> H x W labels`` on every slice of a ``Z x H x W``
    (or ``Z x H x W x C``) stack, merged into 3D instances by overlap of consecutive slices
    (see :func:`merge_slices`). ``progress(done_slices, Z)``; returns ``Z x H x W`` uint32 labels."""
    vol = np.asarray(volume)
    if vol.ndim not in (3, 4):
        raise ValueError(f"volume must be Z x H x W or Z x H x W x C; got shape {vol.shape}")
    norm = volume_normalisation(vol, normalisation)
    slices = []
    for z in range(vol.shape[0]):
        check_cancel(cancel)
        slices.append(segment_plane(vol[z], norm))
        if progress is not None:
            progress(z + 1, vol.shape[0])
    return merge_slices(np.stack(slices), iou_threshold=merge_iou, overlap_threshold=merge_overlap)
