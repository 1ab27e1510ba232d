"""The interactive loop: prompt layers -> (cached) embedding -> decoder -> preview -> commit.

:class:`InteractiveController` has no widgets of its own; the dock widget drives it, and
tests, the demo and the benchmark drive it directly. Everything slow runs in workers.
"""

from __future__ import annotations

import logging

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import QObject, Signal

from ..inference.core.autozoom import AutoZoom, CropEmbeddingCache
from ..inference.loading.with_prior import NO_PRIOR_REASON
from ..interactive.commit_log import AnnotationLog
from ..interactive.planes import Plane
from ..interactive.result_text import describe
from ..interactive.session import PlaneResult, Session, group_prompts, is_single_click
from . import layers as L
from . import names
from .actions import PromptActions
from .embedding import EmbeddingService, ImageView
from .image_watch import ImageWatch
from .keys import ShortcutBinder
from .layer_set import EdgeSamLayers
from .model_loading import load_in_background
from .propagate import PropagationRunner
from .propagation_actions import PropagationActions
from .workers import LatestRunner, keep_alive_while

logger = logging.getLogger(__name__)

#: Milliseconds between decoder runs during bursts of prompt edits.
DECODE_DEBOUNCE_MS = 30
#: AutoZoom crop embeddings kept (fp16, 2 MiB each).
CROP_CACHE_SIZE = 32
_FINAL_ACTIONS = ("added", "changed", "removed")


class InteractiveController(QObject, PromptActions, PropagationActions):
    """Interactive EdgeSAM segmentation in one napari viewer.

    Signals: ``preview_updated(PlaneResult)``, ``status(str)``, ``model_changed(str)``,
    ``committed(CommitRecord)``, ``target_changed(object)``, ``polarity_changed(bool)``,
    ``embedding_busy(bool, str)``, ``prior_changed(available, reason)`` (whether the model has
    a usable granularity prior, and if not why), ``propagated(results or None)`` (a 3D
    propagation ended; None if it failed or is outdated), ``propagation_summary(str)``.
    """

    preview_updated = Signal(object)
    status = Signal(str)
    model_changed = Signal(str)
    committed = Signal(object)
    target_changed = Signal(object)
    polarity_changed = Signal(bool)
    embedding_busy = Signal(bool, str)
    prior_changed = Signal(bool, str)
    propagated = Signal(object)
    propagation_summary = Signal(str)

    def __init__(self, viewer, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.session = Session()
        #: The committed objects of this session (masks, prompts, plane images): adaptation's data.
        self.annotations = AnnotationLog()
        self.embeddings = EmbeddingService(parent=self)
        self.embeddings.ready.connect(lambda _key: self.refresh())
        self.embeddings.busy.connect(self.embedding_busy)
        self.embeddings.prior_failed.connect(self._prior_failed)
        self.propagation = PropagationRunner(parent=self)
        self.predictor = None
        self.image_layer: Image | None = None
        self.channel_axis: int | None = None
        self.channel: int | None = None
        self.target: Labels | None = None  # None: a new "EdgeSAM labels" layer
        self.overwrite = False
        self.use_prior = True  # see set_use_prior for why on by default
        self.autozoom = True  # see set_autozoom for why on by default
        self._crop_cache = CropEmbeddingCache(CROP_CACHE_SIZE)
        #: Why the model has no usable prior ("" when it has one).
        self.prior_reason = NO_PRIOR_REASON
        self.keep_ids: dict[int, int] = {}  # preview id -> target id (objects taken from the target)
        self._prompted: set = set()  # plane keys whose preview comes from prompts
        self._generation = 0
        self._last_question: tuple | None = None
        self._cycles = 0  # candidate changes so far
        self.closed = False
        self._muted = False
        self._keys = ShortcutBinder(self)
        self.edgesam_layers = EdgeSamLayers(viewer, self._keys, self._prompts_changed)
        self._decode = LatestRunner(self._decode_job, self._apply_decode, "EdgeSAM decoder",
                                    min_interval_ms=DECODE_DEBOUNCE_MS, parent=self)
        self._watch = ImageWatch(viewer, parent=self)
        self._watch.settled.connect(self.refresh)
        self._watch.pixels_changed.connect(self._pixels_changed)
        self.propagation.partial.connect(self._propagated_slice)
        self.propagation.completed.connect(self._propagation_done)
        self.propagation.message.connect(self.status)
        #: Further keyword arguments of ``propagate_objects`` (stop rules ...) for new propagations.
        self.propagation_options: dict = {}
        self._keys.bind(viewer)

    # -- model -------------------------------------------------------------------------------
    def set_predictor(self, predictor, prior_reason: str | None = None, *, same_encoder: bool = False) -> None:
        """Use an already-built predictor (e.g. from ``load_model``; tests pass their own).

        Its granularity prior (``predictor.prior``), if any, serves single clicks while
        :attr:`use_prior` is on; ``prior_reason`` says why it has none (default
        :data:`~napari_edgesam._napari.model_panel.NO_PRIOR_REASON`).
        ``same_encoder``: ``predictor`` has the current one's encoder (a model adapted in its
        decoder only, or the base model it came from): the cached embeddings stay in use.
        """
        keep = same_encoder and self.predictor is not None and self.embeddings.embedder is not None
        encoder_name = self.embeddings.embedder.model_name if keep else None
        if self.predictor is not None and predictor is not self.predictor and not keep:
            self.embeddings.clear()  # another model (perhaps under the same name)
        self.predictor = predictor
        self.embeddings.set_predictor(predictor, encoder_name=encoder_name)
        has_prior = getattr(predictor, "prior", None) is not None
        self.prior_reason = "" if has_prior else (prior_reason or NO_PRIOR_REASON)
        self.embeddings.set_prior(self._prior_to_use())
        self.session.forget()
        self._generation += 1
        name = getattr(predictor, "model_name", "model")
        self.prior_changed.emit(has_prior, self.prior_reason)
        self.model_changed.emit(name)
        self.status.emit(f"model {name} ready" + (" (with its granularity prior)" if has_prior else ""))
        self.refresh()

    # -- granularity prior -------------------------------------------------------------------
    @property
    def prior_available(self) -> bool:
        """The model has a granularity prior that works."""
        return self.predictor is not None and getattr(self.predictor, "prior", None) is not None \
            and not self.prior_reason

    @property
    def prior_on(self) -> bool:
        """Single positive clicks are segmented with the prior now."""
        return self.predictor is not None and self.embeddings.prior is not None

    def _prior_to_use(self):
        return self.predictor.prior if self.use_prior and self.prior_available else None

    def set_use_prior(self, on: bool) -> None:
        """Let a single positive click take the whole object with the model's granularity
        prior (when it has one). Planes embedded from now on get their box proposals in the
        same encoder pass; cached planes get them in a worker when shown. On by default since
        a click's mask ends at the box the prior joins to it (``segment_click``): centre-click
        mIoU of the shipped nuclei model 63.7 -> 70.4 on the held-out image (62.2 with the prior
        before the cut), 0.58 -> 0.70 on the train crop, +0.02-0.05 on synthetic nuclei and on
        the 3D sample; without a prior the option is off."""
        self.use_prior = bool(on)
        if self.predictor is not None:
            self.embeddings.set_prior(self._prior_to_use())
        self.refresh()

    def set_autozoom(self, on: bool) -> None:
        """Segment boxes with AutoZoom (:mod:`napari_edgesam.inference.core.autozoom`: a box around
        an object much smaller or larger than the model's best scale is segmented in a crop
        embedded at that scale) or not. On by default: with the shipped model on the size sweep
        it took box mIoU from 0.19-0.71 to 0.84-0.91 for radii of 4-32 px (larger objects are
        not zoomed out: v2 does better on the whole image); clicks are not zoomed (it lost on
        small nuclei)."""
        self.autozoom = bool(on)
        self.refresh()

    def _prior_failed(self, message: str) -> None:
        self.prior_reason = f"the granularity prior failed and was switched off: {message}"
        self.embeddings.set_prior(None)
        self.prior_changed.emit(False, self.prior_reason)
        self.refresh()

    def load_model(self, name_or_path: str, backend: str = "auto", device: str = "auto",
                   *, only_if_none: bool = False):
        """Load a model and the granularity prior stored beside it in a worker;
        ``model_changed`` or an error message follows.

        With ``only_if_none`` the loaded model is dropped if a predictor was set meanwhile
        (automatic loading at start-up must not replace the user's or a test's choice).
        """
        return load_in_background(
            name_or_path, self.set_predictor, self.status.emit, backend=backend, device=device,
            allow_download=not only_if_none,
            wanted=lambda: not (self.closed or (only_if_none and self.predictor is not None)))

    # -- image -------------------------------------------------------------------------------
    def set_image_layer(self, layer: Image | None, channel_axis: int | None = None,
                        channel: int | None = None) -> None:
        """Segment ``layer`` (its displayed plane); ``channel_axis``/``channel`` pick channels."""
        if self.closed:
            return
        if layer is self.image_layer and (channel_axis, channel) == (self.channel_axis, self.channel):
            return
        self._watch.watch(layer)
        self.image_layer, self.channel_axis, self.channel = layer, channel_axis, channel
        self.embeddings.cancel_background()
        self.session.forget()
        self._prompted.clear()
        self.keep_ids.clear()
        self._generation += 1
        if layer is not None:
            self.preview_layer()  # created now, not on the first click (layer creation takes a while)
            self.prompt_layers()
        self.refresh()

    def _pixels_changed(self, layer) -> None:
        """The image's pixels may differ: its content signature is computed again (in a
        worker, before any embedding is looked up), so an embedding of other pixels is never served."""
        self.embeddings.forget_data(L.image_data(layer))
        self.refresh()

    def current_plane(self) -> Plane | None:
        """The displayed plane of the image layer (None without an image or in a 3D view)."""
        if self.image_layer is None:
            return None
        if self.viewer.dims.ndisplay != 2:
            self.status.emit("switch to the 2D view to segment")
            return None
        try:
            return L.current_plane(self.viewer, self.image_layer, self.channel_axis)
        except ValueError as err:
            self.status.emit(f"cannot segment this view: {err}")
            return None

    def current_view(self) -> ImageView | None:
        """What the model sees now: the plane, normalised with the layer's contrast and gamma."""
        plane = self.current_plane()
        return None if plane is None else L.image_view(self.image_layer, plane, self.channel)

    # -- layers ------------------------------------------------------------------------------
    def prompt_layers(self):
        """The (points, boxes) prompt layers, created for the image layer if needed."""
        if self.image_layer is None:
            raise RuntimeError("choose an image layer first")
        return self.edgesam_layers.prompts(self.image_layer)

    def preview_layer(self, create: bool = True) -> Labels | None:
        """The "EdgeSAM preview" labels layer (matching the image layer's shape)."""
        return None if self.image_layer is None else self.edgesam_layers.preview(self.image_layer, create)

    def target_layer(self, create: bool = False) -> Labels | None:
        """The chosen target labels layer; with ``create``, "EdgeSAM labels" if none is chosen."""
        if self.target is not None and self.target in self.viewer.layers:
            return self.target
        if not create or self.image_layer is None:
            return None
        layer = L.get_or_create_labels(self.viewer, names.LABELS_LAYER, self.image_layer, np.uint32)
        self.target = layer
        self.target_changed.emit(layer)
        return layer

    def unbind_keys(self) -> None:
        """Remove the shortcuts from the viewer and the layers (on widget close)."""
        self._keys.unbind_all()

    # -- the loop ----------------------------------------------------------------------------
    def _prompts_changed(self, event=None) -> None:
        action = str(getattr(event, "action", "changed")).lower().rsplit(".", 1)[-1]
        if not self._muted and action in _FINAL_ACTIONS:
            self.refresh()

    def refresh(self) -> None:
        """Bring the preview of the current plane up to date with its prompts (and make sure
        its embedding exists). Cheap; all heavy work is sent to workers."""
        if self.predictor is None or self._muted or self.closed:
            return
        view = self.current_view()
        if view is None:
            return
        objects, ignored = self._objects(view.plane)
        key = view.plane.key
        if not objects and key in self._prompted:
            self._clear_plane(view.plane)
        cache_key = self.embeddings.key(view)
        emb = None if cache_key is None else self.embeddings.cache.get(cache_key)
        if emb is None:
            self.embeddings.request(view)
            return
        proposals = self.embeddings.proposals_of(emb) if self.prior_on else None
        if self.prior_on and proposals is None:  # cached without them: found in a worker
            self.embeddings.request(view)
            if is_single_click(objects):
                return  # its answer needs them; ``ready`` comes back here
        else:
            self.embeddings.prefetch_around(view, cache_key)
        if objects:
            question = self._question(view.plane, objects)
            use = proposals if is_single_click(objects) else None
            if (question, id(emb), id(use)) != self._last_question:  # the same question has the same answer
                self._last_question = (question, id(emb), id(use))
                self.embeddings.hold_prefetch()
                zoom = (view, cache_key) if self.autozoom and any(o.box is not None for o in objects) else None
                self._decode.request(emb, view.plane, objects, ignored, question, use, zoom)

    def _objects(self, plane: Plane):
        points, boxes = self.prompt_layers()
        return group_prompts(*L.points_on_plane(points, plane), L.boxes_on_plane(boxes, plane))

    def _question(self, plane: Plane, objects) -> tuple:
        """What a decode answers: the prompts of ``plane`` now (and candidate choices)."""
        return (self._generation, self._cycles, self.prior_on, self.autozoom, plane.key,
                tuple(o.signature for o in objects))

    def _decode_job(self, emb, plane: Plane, objects, ignored: int, question: tuple, proposals=None, zoom=None):
        if zoom is not None:  # boxes are segmented at the model's best scale (crops cached)
            view, cache_key = zoom
            zoom = AutoZoom(self.predictor, view.image(plane), embedding=emb, proposals=proposals,
                            cache=self._crop_cache, image_key=cache_key, **view.normalisation)
        return question, plane, self.session.decode(self.predictor, emb, plane.key, objects, ignored, proposals,
                                                    zoom=zoom)

    def _apply_decode(self, out: tuple[tuple, Plane, PlaneResult]) -> None:
        question, plane, result = out
        if self.image_layer is None or question != self._question(plane, self._objects(plane)[0]):
            return  # the prompts changed (or were cleared, committed ...) meanwhile: not shown
        preview = self.preview_layer()
        plane.write(preview.data, result.labels)
        preview.refresh()
        self._prompted.add(plane.key)
        self.status.emit(describe(result))
        self.embeddings.hold_prefetch()
        self.preview_updated.emit(result)

    def _clear_plane(self, plane: Plane) -> None:
        self._last_question = None
        self._prompted.discard(plane.key)
        self.session.forget(plane.key)
        preview = self.preview_layer(create=False)
        if preview is not None:
            plane.write(preview.data, np.zeros(plane.size, preview.data.dtype))
            preview.refresh()
        self.status.emit("no prompts on this plane: click to add points, or draw a box")

    # -- actions (buttons and shortcuts) -----------------------------------------------------
    def cycle_candidate(self) -> int | None:
        """Show the next candidate mask of the point prompt on the current plane (after a
        click the prior took, the 4 candidates, then the prior's whole object again:
        :data:`~napari_edgesam.interactive.session.PRIOR_CHOICE`)."""
        plane = self.current_plane()
        chosen = None if plane is None else self.session.cycle_candidate(plane.key)
        if chosen is None:
            self.status.emit("candidates exist for point prompts only: click a point first")
        else:
            self._cycles += 1
            self.refresh()
        return chosen

    def clear(self) -> None:
        """Remove all prompts and the preview."""
        self._generation += 1
        self._muted = True
        try:
            self.edgesam_layers.remove_prompts()
        finally:
            self._muted = False
        preview = self.preview_layer(create=False)
        if preview is not None:
            preview.data[...] = 0
            preview.refresh()
        self.session.forget()
        self._prompted.clear()
        self.keep_ids.clear()
        self.status.emit("cleared: click to add points, or draw a box")

    @property
    def generation(self) -> int:
        """Increases whenever the image, model or prompts change so that pending results are stale."""
        return self._generation

    @property
    def busy(self) -> bool:
        """A worker of this controller is running or waiting (decoder, embedding,
        precomputation or propagation)."""
        return bool(self._decode.busy or self.embeddings.busy_embedding or self.embeddings.precomputing
                    or self.propagation.running)

    def close(self) -> None:
        """Stop background work, disconnect from the viewer and remove the shortcuts; the
        embeddings held in memory are dropped. Workers still running finish on their own
        (their results are ignored): until then the controller keeps itself alive, so they
        never report to deleted Qt objects."""
        if self.closed:
            return
        self.set_image_layer(None)
        self._watch.stop()
        self.closed = True
        self.embeddings.cancel_background()
        self.propagation.cancel()
        self._decode.cancel_pending()
        self.unbind_keys()
        self.embeddings.clear()
        keep_alive_while(self, lambda: self.busy)

