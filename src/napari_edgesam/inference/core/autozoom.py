"""AutoZoom: segment an object in a crop embedded at the scale the model handles best.

EdgeSAM sees every image resized so its longest side is 1024 px. An object's size in that
frame then depends on the image size, and a model trained on one range of sizes (the shipped
``edgesam-nuclei``: nuclei of radius ~16-64 px in the frame) fails on objects much smaller or
larger. AutoZoom estimates the object's radius (from the box, or for clicks from a first
mask on the whole-image embedding), and when its radius in the frame lies outside
``[target / band, target * band]`` it embeds a crop around the object resized so that the
object's radius becomes ``target_radius`` frame pixels, decodes there and pastes the mask
back into the full image.

Geometry (all coordinates (x, y) in pixels of the original image, boxes ``(x0, y0, x1, y1)``):
the crop :class:`CropWindow` is the pixel rectangle ``[y0:y1, x0:x1]`` of the image (always
inside it); it is resized (bilinear, like the predictor) to ``input_size`` ``(h, w)`` with
longest side <= 1024 and zero-padded after normalisation to 1024 x 1024 exactly as the
predictor pads. The crop's embedding is a plain :class:`ImageEmbedding` with
``original_size = (y1 - y0, x1 - x0)``, so the predictor maps prompts and upscales masks in
the crop as it does for a whole image; the crop's mask is pasted at ``[y0:y1, x0:x1]``.
Crop embeddings are cached (:class:`CropEmbeddingCache`, keyed by image content,
normalisation, model, window and size). Qt-free and torch-free (the predictor's backend does
the encoding).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ...constants import IMG_SIZE
from .postprocess import fill_holes as _fill_holes
from .postprocess import keep_prompted_pieces
from .predictor import ImageEmbedding
from .preprocess import normalize_and_pad, resized_shape, to_rgb_uint8
from .prompts import validate_prompt

#: Object radius (pixels of the 1024 input frame) AutoZoom rescales objects to.
DEFAULT_TARGET_RADIUS = 32.0
#: No zoom of a box while the object's radius in the whole-image frame is within this factor of the target.
DEFAULT_BAND = 1.5
#: Clicks are zoomed out when their first mask on the whole image is larger than
#: ``target * click_band`` (that first mask is often a collapsed part of a larger object).
#: Clicks are not zoomed in by default: on the size sweep (benchmarks/bench_object_size.py)
#: zooming in lowered click mIoU on small nuclei, while zooming out raised it on large ones.
DEFAULT_CLICK_BAND = 1.0
#: Boxes are zoomed in only: objects larger than the target stay on the whole image. With the
#: shipped edgesam-nuclei v2 (trained on objects of 6-400 px in the frame) zooming large objects
#: out lost on the size sweep (radius 128: box mIoU 0.65 zoomed, 0.76 plain) and on the 3D sample
#: (0.73 vs 0.79), while zooming small ones in won (radius 4-16: 0.85-0.91 vs 0.19-0.55).
DEFAULT_BOX_ZOOM_OUT = False
#: ...except objects beyond the sizes the model handles: a box whose object has a radius above this
#: in the whole-image frame is zoomed out to :data:`DEFAULT_ZOOM_OUT_RADIUS`. edgesam-nuclei v2 was
#: trained on objects of up to ~400 px across (radius 200) and collapses above a radius of ~160
#: (box mIoU 0.55 at 160-400 on synthetic nuclei of other seeds than the size sweep's, 0.82 zoomed
#: out to 64), while from 80 to 160 the whole image is as good or better (0.87 plain, 0.86 zoomed;
#: n=71; ``benchmarks/bench_zoom_out.py``; the size sweep ``benchmarks/bench_object_size.py`` checks it).
DEFAULT_ZOOM_OUT_ABOVE = 160.0
#: The radius (1024-frame pixels) very large boxed objects are zoomed out to.
DEFAULT_ZOOM_OUT_RADIUS = 64.0
#: Largest magnification (frame pixels per image pixel) of a crop: tiny objects are not blown up further.
MAX_SCALE = 8.0
#: Clicks: at most this many re-crops when the mask found in a crop implies another scale.
MAX_REFINES = 2
#: Clicks with an empty mask on the whole image: first look at an object of this fraction of the target size.
EMPTY_GUESS = 0.25


@dataclass(frozen=True)
class CropWindow:
    """A crop ``[y0:y1, x0:x1]`` of the image, embedded resized to ``input_size`` ``(h, w)``."""

    x0: int
    y0: int
    x1: int
    y1: int
    input_size: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        """``(h, w)`` of the crop in image pixels."""
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def scale(self) -> float:
        """Frame pixels per image pixel (the mean of the two axes' factors)."""
        h, w = self.shape
        return 0.5 * (self.input_size[0] / h + self.input_size[1] / w)

    @property
    def key(self) -> tuple[int, int, int, int, int, int]:
        return self.x0, self.y0, self.x1, self.y1, self.input_size[0], self.input_size[1]

    def to_crop(self, coords: np.ndarray) -> np.ndarray:
        """``... x 2`` (x, y) image pixels -> pixels of the crop (boxes: reshape to ``2 x 2``)."""
        return np.asarray(coords, np.float32) - np.float32([self.x0, self.y0])

    def contains(self, coords: np.ndarray) -> np.ndarray:
        """Which ``N x 2`` (x, y) points lie inside the crop (borders included)."""
        c = np.asarray(coords, np.float64).reshape(-1, 2)
        return (c[:, 0] >= self.x0) & (c[:, 0] <= self.x1) & (c[:, 1] >= self.y0) & (c[:, 1] <= self.y1)

    def paste(self, crop_mask: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
        """The crop's ``h x w`` mask placed in an all-False ``H x W`` mask of the image."""
        if crop_mask.shape != self.shape:
            raise ValueError(f"the crop mask has shape {crop_mask.shape}, the window {self.shape}")
        out = np.zeros(tuple(image_shape), bool)
        out[self.y0 : self.y1, self.x0 : self.x1] = crop_mask
        return out


def object_radius(box: np.ndarray) -> float:
    """Radius (pixels) of an object from its box ``(x0, y0, x1, y1)``: half the longer side."""
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box).reshape(4))
    return 0.5 * max(x1 - x0, y1 - y0, 1.0)


def global_scale(image_shape: tuple[int, int]) -> float:
    """Frame pixels per image pixel when the whole image is embedded (longest side -> 1024)."""
    return IMG_SIZE / max(int(image_shape[0]), int(image_shape[1]))


def crop_window(
    image_shape: tuple[int, int], box: np.ndarray, target_radius: float = DEFAULT_TARGET_RADIUS,
    max_scale: float = MAX_SCALE,
) -> CropWindow:
    """The crop in which the object of ``box`` (x0, y0, x1, y1) has radius ``target_radius``
    in the 1024 frame: centred on the box, shifted to lie inside the image, and the whole
    image (padded in the frame) when the image is smaller than the crop.

    The magnification is ``target_radius / radius`` (at most ``max_scale``); the crop's side
    is ``1024 / magnification`` image pixels, so it fills the frame unless it is the image.
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    if h < 1 or w < 1:
        raise ValueError(f"image shape must be positive, got {tuple(image_shape)}")
    if target_radius <= 0:
        raise ValueError(f"target_radius must be > 0, got {target_radius}")
    scale = min(float(target_radius) / object_radius(box), float(max_scale))
    side = max(1, int(math.floor(IMG_SIZE / scale)))
    ch, cw = min(h, side), min(w, side)
    x0b, y0b, x1b, y1b = (float(v) for v in np.asarray(box).reshape(4))
    cx, cy = 0.5 * (x0b + x1b), 0.5 * (y0b + y1b)
    x0 = int(min(max(round(cx - cw / 2), 0), w - cw))
    y0 = int(min(max(round(cy - ch / 2), 0), h - ch))
    if max(ch, cw) == side:  # the crop fills the frame: the predictor's own resize rule
        input_size = resized_shape((ch, cw))
    else:  # the whole image, smaller than the frame at this scale (padded)
        input_size = (max(1, min(IMG_SIZE, int(ch * scale + 0.5))), max(1, min(IMG_SIZE, int(cw * scale + 0.5))))
    return CropWindow(x0, y0, x0 + cw, y0 + ch, input_size)


class CropEmbeddingCache:
    """A small thread-safe LRU of crop embeddings (float16), keyed by any hashable key
    (:class:`AutoZoom` uses image identity + normalisation + model + window + input size)."""

    def __init__(self, max_items: int = 32) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.max_items = int(max_items)
        self._items: OrderedDict[Hashable, ImageEmbedding] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> ImageEmbedding | None:
        with self._lock:
            emb = self._items.get(key)
            if emb is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return emb

    def put(self, key: Hashable, emb: ImageEmbedding) -> None:
        with self._lock:
            self._items[key] = emb
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


@dataclass(frozen=True)
class ZoomResult:
    """One object's mask from :meth:`AutoZoom.segment`.

    ``mask``: ``H x W`` bool in image pixels; ``score``: stability score; ``window``: the crop
    it was decoded in (None: the whole-image embedding); ``low_res``: ``256 x 256`` logits in
    that embedding's frame (usable as ``mask_input`` only with that same embedding).
    """

    mask: np.ndarray
    score: float
    window: CropWindow | None
    low_res: np.ndarray


class AutoZoom:
    """Prompted segmentation of one 2D image with AutoZoom.

    Args:
        predictor: an :class:`~napari_edgesam.inference.core.predictor.EdgeSamPredictor`; crops are
            encoded with its backend; its state (current image) is neither used nor changed.
        image: ``H x W`` or ``H x W x C``, normalised once for the whole image (so crops share
            the whole image's contrast) with ``normalisation`` (see ``to_rgb_uint8``).
        target_radius: the object radius (1024-frame pixels) crops are scaled to.
        band: no zoom of a box while the object's radius in the whole-image frame is within
            ``[target / band, target * band]`` (then the cost is the plain predictor's).
        click_band: point prompts are zoomed out when their first mask's radius in the
            whole-image frame exceeds ``target * click_band``.
        box_zoom_out: also zoom boxes out (objects larger than ``target * band`` in the
            whole-image frame) to ``target_radius`` (those above ``zoom_out_above`` still go to
            ``zoom_out_radius``); off by default (:data:`DEFAULT_BOX_ZOOM_OUT`).
        zoom_out_above: boxes whose object's radius in the whole-image frame exceeds this (and
            ``zoom_out_radius``) are zoomed out so that it becomes ``zoom_out_radius`` (the
            model fails on objects that large; :data:`DEFAULT_ZOOM_OUT_ABOVE`); None: never.
        zoom_out_radius: see ``zoom_out_above`` (:data:`DEFAULT_ZOOM_OUT_RADIUS`).
        click_zoom_in: also zoom point prompts in (first mask smaller than
            ``target / click_band``, or empty); off by default (it lost on the size sweep).
        box_centre: box prompts without a positive point also get the box's centre as one when
            it lies in the box's first mask (``EdgeSamPredictor.segment(box_centre=...)``).
        cache: where crop embeddings are kept (a private 8-entry cache by default).
        image_key: identifies the image in ``cache`` (default: a content hash).
        embedding: the whole image's embedding if the caller has it (e.g. ``predictor.embedding``
            right after ``set_image(image)``), with the prior's ``proposals`` for it; otherwise
            it is computed when a click needs it (boxes that need a zoom never do).
    """

    def __init__(self, predictor, image: np.ndarray, *, target_radius: float = DEFAULT_TARGET_RADIUS,
                 band: float = DEFAULT_BAND, click_band: float = DEFAULT_CLICK_BAND,
                 click_zoom_in: bool = False, box_zoom_out: bool = DEFAULT_BOX_ZOOM_OUT,
                 zoom_out_above: float | None = DEFAULT_ZOOM_OUT_ABOVE,
                 zoom_out_radius: float = DEFAULT_ZOOM_OUT_RADIUS,
                 max_scale: float = MAX_SCALE, box_centre: bool = True,
                 cache: CropEmbeddingCache | None = None, image_key: Hashable | None = None,
                 embedding: ImageEmbedding | None = None, proposals=None, **normalisation) -> None:
        if band < 1 or click_band < 1:
            raise ValueError(f"band and click_band must be >= 1, got {band}, {click_band}")
        if target_radius <= 0:
            raise ValueError(f"target_radius must be > 0, got {target_radius}")
        if zoom_out_radius <= 0 or (zoom_out_above is not None and zoom_out_above <= 0):
            raise ValueError(f"zoom_out_radius and zoom_out_above must be > 0, got {zoom_out_radius}, {zoom_out_above}")
        self.predictor = predictor
        self.rgb = to_rgb_uint8(image, **normalisation)
        self.shape: tuple[int, int] = tuple(self.rgb.shape[:2])
        self.target_radius, self.band, self.max_scale = float(target_radius), float(band), float(max_scale)
        self.click_band, self.click_zoom_in = float(click_band), bool(click_zoom_in)
        self.box_zoom_out = bool(box_zoom_out)
        self.zoom_out_above = None if zoom_out_above is None else float(zoom_out_above)
        self.zoom_out_radius = float(zoom_out_radius)
        self.box_centre = bool(box_centre)
        self.cache = cache if cache is not None else CropEmbeddingCache(8)
        if image_key is None:
            from ..embeddings.keys import data_signature

            image_key = (data_signature(np.asarray(image)), repr(sorted(normalisation.items())))
        self.image_key = (getattr(predictor, "model_name", ""), image_key)
        if embedding is not None and tuple(embedding.original_size) != self.shape:
            raise ValueError(f"the embedding is of a {tuple(embedding.original_size)} image, the image is {self.shape}")
        self._global: ImageEmbedding | None = embedding
        self._proposals = proposals if embedding is not None else None
        self.n_embedded = 0

    # -- embeddings ------------------------------------------------------------------------
    def global_embedding(self) -> ImageEmbedding:
        if self._global is None:
            self._global = self.predictor.encode_rgb(self.rgb, prior=None)  # as without an embedding: no proposals
        return self._global

    def embedding(self, window: CropWindow) -> ImageEmbedding:
        """The (cached) embedding of ``window``."""
        key = (self.image_key, window.key)
        emb = self.cache.get(key)
        if emb is None:
            crop = np.ascontiguousarray(self.rgb[window.y0 : window.y1, window.x0 : window.x1])
            h, w = window.input_size
            resized = crop if (h, w) == crop.shape[:2] else np.asarray(
                Image.fromarray(crop).resize((w, h), Image.BILINEAR))
            features = self.predictor.backend.encode(normalize_and_pad(resized))
            emb = ImageEmbedding(features, window.shape, (h, w)).astype(np.float16)
            self.n_embedded += 1
            self.cache.put(key, emb)
        return emb

    def needs_zoom(self, radius: float, band: float | None = None) -> bool:
        """Whether an object of ``radius`` image pixels is outside ``band`` (default: the box
        band) around the target in the whole-image frame."""
        r = radius * global_scale(self.shape)
        band = self.band if band is None else band
        return not (self.target_radius / band <= r <= self.target_radius * band)

    def window_for(self, box: np.ndarray) -> CropWindow:
        return crop_window(self.shape, box, self.target_radius, self.max_scale)

    # -- decoding --------------------------------------------------------------------------
    def _decode(self, emb: ImageEmbedding, points, labels, box, proposals=None, click_rule=False,
                one_piece: bool = True, clip_box: bool = True):
        if click_rule:  # the prior's rule on these proposals
            return self.predictor.segment_click(points[0], fill_holes=False, one_piece=one_piece,
                                                embedding=emb.with_proposals(proposals), clip_box=clip_box)
        return self.predictor.segment(points, labels, box, fill_holes=False, one_piece=one_piece, embedding=emb,
                                      clip_box=clip_box, box_centre=self.box_centre)

    def _in_window(self, window: CropWindow, points, labels, box):
        cp = cl = cb = None
        if points is not None:
            inside = window.contains(points)
            if inside.any():
                cp, cl = window.to_crop(points[inside]), labels[inside]
        if box is not None:
            b = np.clip(box.reshape(2, 2), [window.x0, window.y0], [window.x1, window.y1])
            cb = window.to_crop(b).reshape(4)
        return cp, cl, cb

    def segment(self, point_coords: np.ndarray | None = None, point_labels: np.ndarray | None = None,
                box: np.ndarray | None = None, *, fill_holes: bool = True, one_piece: bool = True,
                clip_box: bool = True) -> ZoomResult:
        """Segment one object from points ``N x 2`` (x, y) + labels ``N`` and/or a box
        ``(x0, y0, x1, y1)``, all in image pixels. Boxes set the object's size; point-only
        prompts are first decoded on the whole image (with the prior's proposals for a single
        positive click, as ``segment_click``), and that mask's box sets the size; clicks are
        only zoomed out unless ``click_zoom_in`` (then an empty first mask is looked at again
        in a crop that magnifies it to a quarter of the target size). Interior holes are filled unless
        ``fill_holes`` is False; only the piece the prompt points at is kept unless ``one_piece`` is
        False (:func:`~napari_edgesam.inference.core.postprocess.keep_prompted_pieces`); a box's mask
        ends at the box unless ``clip_box`` is False (``EdgeSamPredictor.segment``)."""
        # the predictor's own checks (outside the image, NaN/inf, complex, labels, inverted boxes)
        pts, lab, bx = validate_prompt(point_coords, point_labels, box, self.shape)
        result = self._segment(pts, lab, bx, one_piece, bool(clip_box))
        if fill_holes and result.mask.any():
            result = ZoomResult(_fill_holes(result.mask), result.score, result.window, result.low_res)
        if one_piece and result.mask.any():
            result = ZoomResult(keep_prompted_pieces(result.mask, pts, lab, bx), result.score, result.window,
                                result.low_res)
        return result

    def _segment(self, pts, lab, bx, one_piece: bool = True, clip_box: bool = True) -> ZoomResult:
        """``one_piece``: each decoded mask keeps only its prompted piece (so a click's first mask
        sizes the crop without a neighbour's fragments); False keeps every piece."""
        if bx is not None:
            radius = object_radius(bx)
            frame_r = radius * global_scale(self.shape)
            if self.zoom_out_above is not None and frame_r > max(self.zoom_out_above, self.zoom_out_radius):
                # beyond the model's sizes (and only ever a zoom out)
                window = crop_window(self.shape, bx, self.zoom_out_radius, self.max_scale)
                return (self._on_window(window, pts, lab, bx, one_piece, clip_box)
                        or self._on_whole_image(pts, lab, bx, one_piece, clip_box))
            larger = frame_r > self.target_radius
            if not self.needs_zoom(radius) or (larger and not self.box_zoom_out):
                return self._on_whole_image(pts, lab, bx, one_piece, clip_box)
            return (self._on_window(self.window_for(bx), pts, lab, bx, one_piece, clip_box)
                    or self._on_whole_image(pts, lab, bx, one_piece, clip_box))
        result = self._on_whole_image(pts, lab, None, one_piece, clip_box)
        box = _mask_box(result.mask)
        if box is None:  # nothing on the whole image: most likely too small there; look closer
            if not self.click_zoom_in:
                return result
            r = EMPTY_GUESS * self.target_radius / global_scale(self.shape)
            x, y = pts[lab == 1][0] if (lab == 1).any() else pts[0]
            box = np.float32([x - r, y - r, x + r, y + r])
        else:
            frame_r = object_radius(box) * global_scale(self.shape)
            if frame_r <= self.target_radius * self.click_band and not (
                    self.click_zoom_in and frame_r < self.target_radius / self.click_band):
                return result
        tried: set = set()
        for _ in range(1 + MAX_REFINES):
            window = self.window_for(box)
            if window.key in tried:
                return result
            tried.add(window.key)
            zoomed = self._on_window(window, pts, lab, None, one_piece, clip_box)
            if zoomed is None:
                return result
            result, new_box = zoomed, _mask_box(zoomed.mask)
            if new_box is None or (_similar(object_radius(new_box), object_radius(box))
                                   and not _cut(window, new_box, self.shape)):
                return result
            box = new_box
        return result

    def _on_whole_image(self, pts, lab, bx, one_piece: bool = True, clip_box: bool = True) -> ZoomResult:
        emb = self.global_embedding()
        single = bx is None and pts is not None and len(pts) == 1 and lab[0] == 1
        click_rule = single and self._proposals is not None
        mask, score, low = self._decode(emb, pts, lab, bx, self._proposals if click_rule else None, click_rule,
                                        one_piece, clip_box)
        return ZoomResult(np.asarray(mask, bool), float(score), None, low)

    def _on_window(self, window: CropWindow, pts, lab, bx, one_piece: bool = True,
                   clip_box: bool = True) -> ZoomResult | None:
        cp, cl, cb = self._in_window(window, pts, lab, bx)
        if cb is None and (cl is None or not (cl == 1).any()):
            return None
        mask, score, low = self._decode(self.embedding(window), cp, cl, cb, one_piece=one_piece, clip_box=clip_box)
        return ZoomResult(window.paste(np.asarray(mask, bool), self.shape), float(score), window, low)


def _mask_box(mask: np.ndarray) -> np.ndarray | None:
    """``(x0, y0, x1, y1)`` (end-exclusive) of a mask, None if empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return np.float32([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])


def _similar(a: float, b: float, factor: float = 1.25) -> bool:
    return max(a, b) <= factor * min(a, b)


def _cut(window: CropWindow, box: np.ndarray, shape: tuple[int, int]) -> bool:
    """Whether a mask's box touches a crop edge that is not the image's edge."""
    x0, y0, x1, y1 = box
    return bool((x0 <= window.x0 and window.x0 > 0) or (y0 <= window.y0 and window.y0 > 0)
                or (x1 >= window.x1 and window.x1 < shape[1]) or (y1 >= window.y1 and window.y1 < shape[0]))


def segment_autozoom(
    predictor, image: np.ndarray, point_coords: np.ndarray | None = None, point_labels: np.ndarray | None = None,
    box: np.ndarray | None = None, *, target_radius: float = DEFAULT_TARGET_RADIUS, band: float = DEFAULT_BAND,
    cache: CropEmbeddingCache | None = None, fill_holes: bool = True, one_piece: bool = True, embedding: ImageEmbedding | None = None,
    proposals=None, **normalisation,
) -> ZoomResult:
    """One object of ``image`` with AutoZoom (see :class:`AutoZoom`; coordinates (x, y) pixels,
    box ``(x0, y0, x1, y1)``). For many prompts on one image, make one :class:`AutoZoom`."""
    zoom = AutoZoom(predictor, image, target_radius=target_radius, band=band, cache=cache,
                    embedding=embedding, proposals=proposals, **normalisation)
    return zoom.segment(point_coords, point_labels, box, fill_holes=fill_holes, one_piece=one_piece)
