"""EdgeSamPredictor: the official predictor's semantics, for microscopy images.

The stateless core is two calls: :meth:`EdgeSamPredictor.encode` (image -> :class:`ImageEmbedding`,
carrying the granularity prior's proposals when the predictor has a prior) and
:meth:`EdgeSamPredictor.decode` / :meth:`~EdgeSamPredictor.decode_batch` (embedding + prompts ->
masks, scores, low-res logits), which never touch the predictor's state; ``segment`` and
``segment_click`` take ``embedding=`` too. The official-style ``set_image`` once, then ``predict``
many times, is a thin layer over them. Coordinates are (x, y) in pixels of the original image;
boxes are (x0, y0, x1, y1).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ...constants import MASK_THRESHOLD, SKIPPED_LOGIT, token_slice
from ..backends import Backend, as_backend
from ..prior import ProposalSet, click_box, encode_with_prior
from .postprocess import (
    clip_to_box,
    keep_prompted_pieces,
    stability_in_image,
    stability_score,
    upscale_logits,
)
from .postprocess import fill_holes as _fill_holes
from .preprocess import DEFAULT_PERCENTILES, prepare_input, to_rgb_uint8
from .prompts import (
    check_candidate,
    check_k_nearest,
    to_decoder_prompts,
    validate_batch_prompts,
    validate_click,
    validate_mask_input,
    validate_prompt,
)

logger = logging.getLogger(__name__)

#: The default ``prior`` of :meth:`EdgeSamPredictor.encode`: the predictor's own :attr:`~EdgeSamPredictor.prior`.
OWN_PRIOR = object()


@dataclass(frozen=True)
class ImageEmbedding:
    """The encoder's output for one 2D image.

    Attributes:
        features: ``1 x 256 x 64 x 64`` (float32, or float16 when stored compactly).
        original_size: ``(h, w)`` of the image that was embedded.
        input_size: ``(h, w)`` of that image after the longest-side resize to 1024.
        proposals: the granularity prior's box proposals for the same image
            (a :class:`~napari_edgesam.inference.prior.ProposalSet`), or None without a prior.
    """

    features: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    proposals: ProposalSet | None = None

    def astype(self, dtype: np.dtype | type) -> ImageEmbedding:
        """A copy with ``features`` in ``dtype`` (e.g. ``np.float16`` for caches)."""
        return replace(self, features=self.features.astype(dtype))

    def with_proposals(self, proposals: ProposalSet | None) -> ImageEmbedding:
        """The same embedding carrying ``proposals`` (a ``ProposalSet`` or None)."""
        return replace(self, proposals=proposals)

    @property
    def nbytes(self) -> int:
        return int(self.features.nbytes)


def _check_embedding(emb: ImageEmbedding, shape: tuple | None = (1, 256, 64, 64)) -> None:
    """ValueError unless ``emb`` can be decoded: features finite floats of ``shape`` (the
    backend's ``embedding_shape``, ``1 x 256 x 64 x 64`` for EdgeSAM; any 4D ``1 x ...`` when
    None), ``original_size`` two integers >= 1, ``input_size`` two integers in 1..1024 (a damaged
    cache or a hand-made embedding would otherwise decode to garbage or fail in the backend)."""
    f = emb.features
    ok_shape = isinstance(f, np.ndarray) and (f.shape == tuple(shape) if shape is not None
                                              else f.ndim == 4 and f.shape[0] == 1)
    if not isinstance(f, np.ndarray) or f.dtype.kind != "f" or not ok_shape:
        what = f"{f.dtype} array of shape {f.shape}" if isinstance(f, np.ndarray) else type(f).__name__
        raise ValueError(f"embedding features must be a float array of shape {shape or '(1, C, H, W)'}; "
                         f"got a {what}")
    try:
        orig = tuple(int(v) for v in emb.original_size)
        inp = tuple(int(v) for v in emb.input_size)
    except (TypeError, ValueError):
        raise ValueError(f"embedding sizes must be (h, w) integers; got original_size {emb.original_size!r}, "
                         f"input_size {emb.input_size!r}") from None
    if len(orig) != 2 or min(orig) < 1 or len(inp) != 2 or min(inp) < 1 or max(inp) > 1024:
        raise ValueError(f"embedding sizes are invalid: original_size {emb.original_size!r} (h, w >= 1), "
                         f"input_size {emb.input_size!r} (h, w in 1..1024)")
    if not np.isfinite(f).all():
        raise ValueError("embedding features contain NaN or inf (a damaged cache file, or a diverged model): "
                         "compute the embedding again")


@dataclass(frozen=True)
class Prediction:
    """Output of :meth:`EdgeSamPredictor.predict_batch`.

    ``masks``: ``B x C x H x W`` (bool, or float32 logits); ``scores``: ``B x C``;
    ``low_res_logits``: ``B x C x 256 x 256``.
    """

    masks: np.ndarray | None
    scores: np.ndarray
    low_res_logits: np.ndarray


class EdgeSamPredictor:
    """Prompted segmentation with EdgeSAM on any :class:`Backend`.

    Like the official ``SamPredictor(sam)``, it can also be built from the model itself:
    ``EdgeSamPredictor(build_edge_sam(ckpt))`` wraps the ``EdgeSam`` module in the default
    torch backend (built on the compute thread, as ``load_model`` does; the module is put in
    eval mode and its conv/batch-norm pairs are fused in place for inference).

    Args:
        backend: a torch or onnxruntime backend, or an ``EdgeSam`` ``torch.nn.Module``.
        model_name: a label for logs, caches and records.
        device: for an ``EdgeSam`` module only: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.

    Raises:
        TypeError: ``backend`` is neither a backend (an object with ``encode``) nor an
            ``EdgeSam`` module.
    """

    def __init__(self, backend: Backend, model_name: str = "edgesam", *, device: str = "auto") -> None:
        self.backend = as_backend(backend, device)
        self.model_name = model_name
        self._embedding: ImageEmbedding | None = None
        self._warned_scores = False
        #: Optional granularity prior (a box head, see :mod:`napari_edgesam.inference.prior`):
        #: when set, :meth:`encode` (and ``set_image``) also computes the box proposals that
        #: :meth:`segment_click` uses.
        self.prior = None
        #: Interactive refinements (another point on an object) pass the previous low-res
        #: logits as ``mask_input`` (SAM's use). ``load_model`` sets False for models whose mask
        #: path makes refinements worse (see ``ModelSpec.mask_input_refines``); ``predict``
        #: itself always uses a ``mask_input`` it is given.
        self.refine_with_mask_input = True
        #: The weights file the model came from, if any (set by ``load_model``).
        self.source_path = None
        #: The PyTorch checkpoint (``.pth``) its torch parts were built from, if any (set by
        #: ``load_model``; differs from ``source_path`` when an ONNX encoder is paired with torch's decoder).
        self.checkpoint_path = None
        self._memo = _DecodeMemo()  # repeated decodes of one embedding: checked once, converted once

    # -- image -------------------------------------------------------------------------------
    def encode(
        self,
        image: np.ndarray,
        *,
        channel_axis: int | None = None,
        channel: int | None = None,
        contrast_limits: Sequence[float] | None = None,
        gamma: float = 1.0,
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        prior: object = OWN_PRIOR,
    ) -> ImageEmbedding:
        """Embed a 2D image without changing the predictor's state.

        ``image``: ``H x W`` grey, ``H x W x 3`` RGB, or multi-channel; any integer or float
        dtype. See :func:`~napari_edgesam.inference.core.preprocess.to_rgb_uint8` for the intensity
        normalisation (contrast limits, percentiles, gamma, NaN handling). ``prior``: whose box
        proposals the embedding carries (:attr:`ImageEmbedding.proposals`): the predictor's own
        :attr:`prior` by default, None for none (and no prior pass), or another prior. They
        come from the same encoder pass when the prior shares the backend's encoder (a torch
        prior on the torch backend); an ONNX prior runs a pass of its own.
        """
        rgb = to_rgb_uint8(
            image, channel_axis=channel_axis, channel=channel,
            contrast_limits=contrast_limits, gamma=gamma, percentiles=percentiles,
        )
        return self.encode_rgb(rgb, prior=prior)

    def encode_rgb(self, rgb: np.ndarray, *, prior: object = OWN_PRIOR) -> ImageEmbedding:
        """:meth:`encode` for an ``H x W x 3`` uint8 RGB image (no intensity normalisation)."""
        prior = self.prior if prior is OWN_PRIOR else prior
        x, input_size = prepare_input(rgb)
        input_size = (int(input_size[0]), int(input_size[1]))
        original = (int(rgb.shape[0]), int(rgb.shape[1]))
        if prior is None:
            return ImageEmbedding(self.backend.encode(x), original, input_size)
        features, proposals = encode_with_prior(prior, self.backend, x, input_size, original)
        return ImageEmbedding(features, original, input_size, proposals)

    def set_image(self, image: np.ndarray, **normalisation) -> ImageEmbedding:
        """Embed ``image`` (:meth:`encode`) and make it the current image; returns the embedding."""
        self._embedding = self.encode(image, **normalisation)
        return self._embedding

    def set_embedding(self, embedding: ImageEmbedding, proposals: ProposalSet | None = None) -> None:
        """Make a previously computed (e.g. cached) embedding current; ``proposals`` (a
        :class:`~napari_edgesam.inference.prior.ProposalSet`), when given, replace the ones it carries."""
        self._embedding = self.checked(embedding)
        if proposals is not None:
            self._embedding = self._embedding.with_proposals(proposals)

    def checked(self, embedding: ImageEmbedding) -> ImageEmbedding:
        """``embedding`` if this predictor's backend can decode it; TypeError or ValueError naming
        the problem otherwise."""
        if not isinstance(embedding, ImageEmbedding):
            raise TypeError(f"expected an ImageEmbedding, got {type(embedding).__name__}")
        last = self._memo.checked
        if last is not None and last[0]() is embedding and last[1]() is embedding.features:
            return embedding  # checked already (each click of a session decodes the same one)
        _check_embedding(embedding, getattr(self.backend, "embedding_shape", None))
        try:
            self._memo.checked = (weakref.ref(embedding), weakref.ref(embedding.features))
        except TypeError:
            self._memo.checked = None
        return embedding

    def _features32(self, emb: ImageEmbedding) -> np.ndarray:
        """``emb.features`` as float32; the conversion of float16 (cached) features is kept for
        the last array, so that repeated clicks neither convert again nor miss the backend's
        own per-embedding cache (keyed by the array it is given)."""
        f = emb.features
        if f.dtype == np.float32:
            return f
        last = self._memo.f32
        if last is not None and last[0]() is f:
            return last[1]
        out = f.astype(np.float32)
        try:
            self._memo.f32 = (weakref.ref(f), out)
        except TypeError:
            self._memo.f32 = None
        return out

    def reset_image(self) -> None:
        self._embedding = None

    @property
    def proposals(self) -> ProposalSet | None:
        """The prior's box proposals for the current image (None without a prior)."""
        return None if self._embedding is None else self._embedding.proposals

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    @property
    def embedding(self) -> ImageEmbedding:
        if self._embedding is None:
            raise RuntimeError("no image is set: call set_image(image) or set_embedding(...) first")
        return self._embedding

    def _given(self, embedding: ImageEmbedding | None) -> ImageEmbedding:
        return self.embedding if embedding is None else self.checked(embedding)

    # -- prompts -----------------------------------------------------------------------------
    def predict(self, *args, **kwargs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`decode` on the current image (the official ``SamPredictor.predict``)."""
        return self.decode(self.embedding, *args, **kwargs)

    def decode(
        self,
        embedding: ImageEmbedding,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        num_multimask_outputs: int = 1,
        return_logits: bool = False,
        use_stability_score: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment one object of ``embedding``'s image; the predictor's state is not used.

        Args:
            embedding: from :meth:`encode` (or a cache).
            point_coords: ``N x 2`` (x, y) pixel coordinates.
            point_labels: ``N`` labels, 1 positive, 0 negative.
            box: ``(x0, y0, x1, y1)`` in pixels.
            mask_input: ``1 x 256 x 256`` low-res logits from an earlier call (refinement).
            num_multimask_outputs: 1 (token 0), 3 (tokens 1-3) or 4 (all tokens).
            return_logits: return float logits instead of boolean masks.
            use_stability_score: replace the IoU-head scores with stability scores.
        Returns:
            masks ``C x H x W``, scores ``C``, low-res logits ``C x 256 x 256``.
        """
        emb = self.checked(embedding)
        coords, labels, boxes = _check_prompts(emb, point_coords, point_labels, box)
        out = self._decode(
            emb, coords, labels, boxes,
            None if mask_input is None else validate_mask_input(mask_input, 1),
            num_multimask_outputs, return_logits, use_stability_score, upscale=True,
        )
        return out.masks[0], out.scores[0], out.low_res_logits[0]

    def predict_batch(self, *args, **kwargs) -> Prediction:
        """:meth:`decode_batch` on the current image."""
        return self.decode_batch(self.embedding, *args, **kwargs)

    def decode_batch(
        self,
        embedding: ImageEmbedding,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        num_multimask_outputs: int = 1,
        return_logits: bool = False,
        use_stability_score: bool = False,
        upscale: bool = True,
        needed_at: np.ndarray | None = None,
        windows: np.ndarray | None = None,
    ) -> Prediction:
        """Segment ``B`` objects of ``embedding``'s image with one decoder call; the
        predictor's state is not used.

        Args:
            embedding: from :meth:`encode` (or a cache).
            point_coords: ``B x N x 2`` (x, y) pixels; ``point_labels``: ``B x N``.
            boxes: ``B x 4`` (x0, y0, x1, y1) pixels.
            mask_input: ``B x 1 x 256 x 256`` low-res logits.
            upscale: also compute full-size masks (``masks`` is None otherwise).
            needed_at: ``B x 2`` low-res pixels ``(row, col)`` (of the ``256 x 256`` logits), for
                callers that keep only masks positive at that pixel (the automatic grid: a mask
                must contain its point): a backend that can (``supports_needed_at``) skips the
                prompts with no mask positive there and returns them as empty (logits of
                :data:`~napari_edgesam.constants.SKIPPED_LOGIT`: stability 0); others compute
                everything.
            windows: ``B x 4`` low-res ``(r0, r1, c0, c1)`` (end-exclusive) per prompt: the low-res
                logits outside each window are set to ``SKIPPED_LOGIT`` (with any backend), and a
                backend that can skips computing them.
        """
        emb = self.checked(embedding)
        coords, labels, boxes = validate_batch_prompts(point_coords, point_labels, boxes, emb.original_size)
        batch = coords.shape[0] if coords is not None else boxes.shape[0]
        masks_in = None if mask_input is None else validate_mask_input(mask_input, batch)
        if needed_at is not None:
            needed_at = np.asarray(needed_at, np.int64)
            if needed_at.shape != (batch, 2):
                raise ValueError(f"needed_at must be {batch} x 2 low-res (row, col) pixels, got shape {needed_at.shape}")
        if windows is not None:
            windows = np.asarray(windows, np.int64)
            if windows.shape != (batch, 4):
                raise ValueError(f"windows must be {batch} x 4 low-res (r0, r1, c0, c1), got shape {windows.shape}")
        return self._decode(
            emb, coords, labels, boxes, masks_in, num_multimask_outputs, return_logits, use_stability_score, upscale,
            needed_at, windows,
        )

    def _decode(
        self,
        emb: ImageEmbedding,
        coords: np.ndarray | None,
        labels: np.ndarray | None,
        boxes: np.ndarray | None,
        mask_input: np.ndarray | None,
        num_multimask_outputs: int,
        return_logits: bool,
        use_stability_score: bool,
        upscale: bool,
        needed_at: np.ndarray | None = None,
        windows: np.ndarray | None = None,
    ) -> Prediction:
        sl = token_slice(num_multimask_outputs)
        if mask_input is not None and not self.backend.supports_mask_input:
            raise ValueError(
                f"the {self.backend.name} backend's decoder has no mask input; use the torch "
                "backend or an ONNX decoder exported by napari-edgesam"
            )
        dc, dl = to_decoder_prompts(coords, labels, boxes, emb.original_size, emb.input_size)
        features = self._features32(emb)
        understood = getattr(self.backend, "decode_hints", frozenset())
        # the IoU head's scores are not read when masks are ranked by stability
        need_iou = None if not use_stability_score else False
        hints = {k: v for k, v in (("needed_at", needed_at), ("windows", windows), ("mask_tokens", sl),
                                   ("need_iou", need_iou))
                 if v is not None and k in understood}
        low_res, iou = self.backend.decode(features, dc, dl, mask_input, **hints)
        if "mask_tokens" not in hints:
            low_res = low_res[:, sl]
        if windows is not None:
            if not low_res.flags.writeable:
                low_res = low_res.copy()
            for b, (r0, r1, c0, c1) in enumerate(windows):
                low_res[b, :, : max(r0, 0)] = SKIPPED_LOGIT
                low_res[b, :, max(r1, 0) :] = SKIPPED_LOGIT
                low_res[b, :, :, : max(c0, 0)] = SKIPPED_LOGIT
                low_res[b, :, :, max(c1, 0) :] = SKIPPED_LOGIT
        if use_stability_score or iou is None:
            if iou is None and not use_stability_score and not self._warned_scores:
                logger.warning("%s decoder gives no IoU scores; returning stability scores", self.backend.name)
                self._warned_scores = True
            scores = stability_score(low_res)
        else:
            scores = iou[:, sl].astype(np.float32)
        masks = None
        if upscale:
            masks = upscale_logits(low_res, emb.input_size, emb.original_size)
            if not return_logits:
                masks = masks > MASK_THRESHOLD
        return Prediction(masks, scores, low_res)

    # -- convenience -------------------------------------------------------------------------
    def segment(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        candidate: int | None = None,
        *,
        fill_holes: bool = True,
        one_piece: bool = True,
        embedding: ImageEmbedding | None = None,
        clip_box: bool = True,
        box_centre: bool = True,
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """One mask by EdgeSAM's rule: boxes use token 0; point-only prompts take the most
        stable of the 4 masks (the IoU head was never distilled). ``candidate`` (0-3) forces a
        token for point prompts (anything else is a ValueError). With ``fill_holes`` (the default) the mask's interior holes
        are filled (:func:`~napari_edgesam.inference.core.postprocess.fill_holes`); pass False to
        keep them (e.g. ring-shaped objects). With ``one_piece`` (the default) only the piece the
        prompt points at is kept (:func:`~napari_edgesam.inference.core.postprocess.keep_prompted_pieces`:
        stray fragments of neighbours go); pass False for objects in several pieces. With ``clip_box`` (the default) a
        box prompt's mask ends at the box (grown to take in positive points outside it), widened by a pixel and 2% of its side
        (:func:`~napari_edgesam.inference.core.postprocess.clip_to_box`: on crowded nuclei the decoder's
        mask runs into touching neighbours); pass False to keep what lies outside. With ``box_centre`` (the default) a box
        prompt without positive points is decoded a second time with the box's centre as a positive point when its
        first mask holds the centre but fills less of the box than the ellipse inscribed in it, and the box is at least
        16 pixels long, and no negative point lies in the box (:func:`box_centre_point`: a box's mask that falls
        short of the object); pass False for one decode of the box alone. ``embedding``: segment in this embedding's image
        instead of the current one (the predictor's state is not used). Returns mask ``H x W`` bool, stability score
        (of the decoder's mask; 0 for a mask with no pixel in the image), low-res
        ``256 x 256`` logits (unfilled).
        """
        n = 1 if box is not None else 4
        candidate = check_candidate(candidate)
        emb = self._given(embedding)
        coords, labels, boxes = _check_prompts(emb, point_coords, point_labels, box)
        out = self._decode(
            emb, coords, labels, boxes,
            None if mask_input is None else validate_mask_input(mask_input, 1),
            n, False, True, upscale=False,
        )
        low = out.low_res_logits[0]
        mask = None
        if box_centre and boxes is not None:
            first = upscale_logits(low[:1], emb.input_size, emb.original_size)[0] > MASK_THRESHOLD
            centre = box_centre_point(first, boxes[0], None if coords is None else coords[0],
                                      None if labels is None else labels[0])
            if centre is None:
                mask = first
            else:  # the post-processing below still follows the user's own prompts (as the session's,
                # AutoZoom's and the tiles' own passes do)
                with_centre = centre[None] if coords is None else np.concatenate([coords, centre[None]], axis=1)
                centre_labels = np.ones((1, 1), np.float32) if labels is None else np.concatenate(
                    [labels, np.ones((1, 1), np.float32)], axis=1)
                out = self._decode(
                    emb, with_centre, centre_labels, boxes,
                    None if mask_input is None else validate_mask_input(mask_input, 1),
                    n, False, True, upscale=False,
                )
                low = out.low_res_logits[0]
        # the decoder's 256 x 256 logits also cover the padding of the 1024 frame: a candidate
        # lying only there (no pixel in the image) scores 0, not a perfect 1
        stab = stability_in_image(low, emb.input_size)
        i = 0 if n == 1 else (candidate if candidate is not None else int(np.argmax(stab)))
        if mask is None:  # only the chosen candidate is brought to full size (memory: one H x W float32 plane)
            mask = upscale_logits(low[i : i + 1], emb.input_size, emb.original_size)[0] > MASK_THRESHOLD
        if clip_box and boxes is not None:
            positive = None if coords is None else coords[0][labels[0] == 1]
            mask = clip_to_box(mask, boxes[0], points=positive)
        if fill_holes:
            mask = _fill_holes(mask)
        if one_piece:
            mask = keep_prompted_pieces(mask, None if coords is None else coords[0],
                                        None if labels is None else labels[0], None if boxes is None else boxes[0])
        return mask, float(stab[i]), low[i]

    def segment_click(self, point: Sequence[float], k_nearest: int = 5, *, fill_holes: bool = True,
                      one_piece: bool = True, embedding: ImageEmbedding | None = None,
                      clip_box: bool = True) -> tuple[np.ndarray, float, np.ndarray]:
        """Segment the whole object under one positive click ``(x, y)`` (in ``embedding``'s
        image, or the current one).

        With proposals on the embedding, EdgeSAM's granularity rule picks a box (proposals
        containing the point, the ``k_nearest`` by centre, the best score) that joins the point;
        otherwise this is ``segment([point], [1])``. With ``clip_box`` (the default) the mask ends
        at that box as a box prompt's does (on nuclei the prior's boxes are good enough for it:
        centre-click mIoU on the stardist train half 0.56 -> 0.70, on synthetic nuclei +0.02-0.06).
        """
        k_nearest = check_k_nearest(k_nearest)
        emb = self._given(embedding)
        pt = validate_click(point, emb.original_size)
        box = None
        if emb.proposals is not None:
            box = click_box(emb.proposals, pt[0], emb.original_size, k_nearest)
        mask, score, low = self.segment(pt, np.ones(1, np.float32), box, fill_holes=fill_holes, one_piece=False,
                                        embedding=emb, clip_box=clip_box)
        if one_piece:  # the user's click, not the prior's box, says which piece is the object
            mask = keep_prompted_pieces(mask, pt, np.ones(1, np.float32))
        return mask, score, low


class _DecodeMemo:
    """What repeated decodes of one embedding need not redo: the embedding that passed
    :meth:`EdgeSamPredictor.checked` and the float32 copy of the last float16 features (weak
    references to the embedding's arrays, which are never modified in place). One object for
    the predictor's life: a cache, not the predictor's state."""

    __slots__ = ("checked", "f32")

    def __init__(self) -> None:
        self.checked: tuple | None = None
        self.f32: tuple | None = None


#: Boxes whose longer side is shorter than twice this (image pixels) get no centre point: on
#: objects that few pixels across, seen magnified, the point grew the masks (radius-4 nuclei
#: zoomed 6-8x by AutoZoom: box mIoU 0.915 alone, 0.892 with the point whenever the mask holds
#: it; ``benchmarks/bench_box_centre.py``).
CENTRE_MIN_HALF_SIDE = 8.0
#: A box's first mask filling at least this share of the box (the ellipse inscribed in it) is
#: left as it is: the point helped where the box's mask fell short and grew masks that already
#: filled their box (development sets, ``benchmarks/bench_box_centre.py``: first masks filling
#: under 0.7 of their box +0.03 to +0.11 box mIoU, over 0.85 -0.01 to -0.02).
CENTRE_MAX_FILL = float(np.pi / 4)


def box_centre_point(mask: np.ndarray, box: np.ndarray, points: np.ndarray | None = None,
                     labels: np.ndarray | None = None, pixel_size: float = 1.0) -> np.ndarray | None:
    """The centre of ``box`` (``(x0, y0, x1, y1)`` pixels) as a ``1 x 2`` (x, y) point to add as
    a positive prompt, or None. ``mask``: the box's own first mask ``H x W`` (bool, same pixels);
    ``points`` ``N x 2`` (x, y, same pixels) and ``labels`` ``N``: the prompt's points, or None;
    ``pixel_size``: image pixels per pixel of ``mask`` (e.g. low-res logits: 4 x the image's
    side / 1024).

    None when the prompt already has a positive point, or a negative point inside the box (the
    user is correcting the mask there: a positive centre could contradict the click); when the
    box is small (longer side below ``2 x`` :data:`CENTRE_MIN_HALF_SIDE` pixels); when the first
    mask already fills :data:`CENTRE_MAX_FILL` of the box or more (then it is not short of the
    object); or when the first mask does not hold the centre (a ring, a crescent, an object
    whose centre is background: the point would force the wrong pixels in)."""
    if labels is not None and len(labels):
        labels = np.asarray(labels).reshape(-1)
        if (labels == 1).any():
            return None
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        inside = ((pts[:, 0] >= box[0]) & (pts[:, 0] <= box[2]) & (pts[:, 1] >= box[1]) & (pts[:, 1] <= box[3]))
        if inside.any():
            return None
    x0, y0, x1, y1 = (float(v) for v in box)
    if max(x1 - x0, y1 - y0) * pixel_size < 2 * CENTRE_MIN_HALF_SIDE:
        return None
    h, w = mask.shape
    r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), h)
    c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), w)
    if mask[r0:r1, c0:c1].sum() >= CENTRE_MAX_FILL * (x1 - x0) * (y1 - y0):
        return None
    x, y = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    if not mask[min(max(int(y), 0), h - 1), min(max(int(x), 0), w - 1)]:
        return None
    return np.float32([[x, y]])


def _check_prompts(emb: ImageEmbedding, point_coords, point_labels, box) -> tuple:
    """Validated ``(coords 1 x N x 2 | None, labels 1 x N | None, boxes 1 x 4 | None)``."""
    coords, labels, box = validate_prompt(point_coords, point_labels, box, emb.original_size)
    return (None if coords is None else coords[None], None if labels is None else labels[None],
            None if box is None else box[None])
