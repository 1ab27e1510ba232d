"""Embeddings for the interactive widget: lazy, cached, prefetched, never on the Qt thread.

:class:`ImageView` is a snapshot of what to embed (data, plane, normalisation);
:class:`EmbeddingService` owns the :class:`~napari_edgesam.inference.embeddings.cache.EmbeddingCache`
and the :class:`~napari_edgesam.inference.embeddings.slices.SliceEmbedder`, embeds the current plane in a
worker, then prefetches its neighbours along the stack axis, and precomputes whole stacks.

With a granularity prior switched on (:meth:`EmbeddingService.set_prior`) every plane embedded
from then on also gets its box proposals in the same encoder pass (``predictor.encode``); they
travel with the embedding through the cache (memory and disk), tagged with the prior that made
them. A plane whose embedding was cached without them (from disk, before the prior was on, or
by another prior) gets them in a worker when it is requested, and is put back with them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject, Signal

from ..inference.core.predictor import ImageEmbedding
from ..inference.embeddings.cache import EmbeddingCache
from ..inference.embeddings.keys import data_signature
from ..inference.embeddings.slices import SliceEmbedder, neighbour_order
from ..inference.prior import ProposalSet, compute_proposals, prior_tag
from ..interactive.planes import Plane
from .workers import LatestRunner, Relay, error_reporter, start_worker

logger = logging.getLogger(__name__)

#: How far (in slices) around the current one embeddings are prefetched.
PREFETCH_RADIUS = 2
#: Prefetching starts no encoder run until the user has been idle this long (seconds), so
#: background encodes do not slow down the decoder while the user clicks.
PREFETCH_HOLD_OFF_S = 0.5
_MAX_SIGNATURES = 4


@dataclass(frozen=True)
class ImageView:
    """What to embed: ``data`` (the layer's full-resolution array), the plane, and the keyword
    arguments of ``predictor.encode`` (contrast limits, gamma, channel handling)."""

    data: object = field(repr=False, compare=False)
    plane: Plane
    normalisation: dict = field(compare=False)
    extra_shape: tuple[int, ...] = ()  # trailing channel/RGB axis of a taken plane

    def image(self, plane: Plane | None = None) -> np.ndarray:
        """The 2D plane (``rows x cols`` or ``rows x cols x C``)."""
        return (plane or self.plane).take(self.data)


class _Stack:
    """The planes along ``axis`` of a view, indexable like a ``Z x H x W (x C)`` array."""

    def __init__(self, view: ImageView, axis: int) -> None:
        self.view, self.axis = view, axis
        self.shape = (view.plane.shape[axis], *view.plane.size, *view.extra_shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, z: int) -> np.ndarray:
        return self.view.image(self.view.plane.at(self.axis, int(z)))


class EmbeddingService(QObject):
    """Embeds planes of the current image in the background through a shared cache.

    Signals (main thread): ``ready(key)`` when a requested plane is embedded (with its
    proposals when a prior is on); ``busy(bool, text)`` when the current-plane encoder
    starts/stops; ``precompute_progress(done, total)`` and ``precompute_finished(count)``;
    ``prior_failed(message)`` when the prior raised (it is switched off).
    """

    ready = Signal(str)
    busy = Signal(bool, str)
    precompute_progress = Signal(int, int)
    precompute_finished = Signal(int)
    prior_failed = Signal(str)

    def __init__(self, max_bytes: int = 1 << 30, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.max_bytes = int(max_bytes)
        #: Neighbours (in slices) embedded in the background around the current slice.
        self.prefetch_radius = PREFETCH_RADIUS
        self.cache = EmbeddingCache(self.max_bytes)
        self.embedder: SliceEmbedder | None = None
        self._encoder_name: str | None = None  # the model name in cache keys (None: the predictor's)
        self._predictor = None
        self._prior = None
        self._encode_lock = threading.Lock()  # encoder and prior runs, one at a time
        self._signatures: dict[int, tuple[object, str]] = {}
        self._sig_lock = threading.Lock()
        self._prefetch_cancel = threading.Event()
        self._quiet_after = 0.0
        self._prefetched_for: str | None = None
        self._precompute_cancel = threading.Event()
        self.precomputing = False
        self._runner = LatestRunner(self._embed_job, self._embedded, "EdgeSAM embedding", parent=self)
        self._relay = Relay(self)
        self._relay.progressed.connect(self.precompute_progress)
        self._runner.done.connect(lambda: self.busy.emit(False, ""))
        self._failures = Relay(self)
        self._failures.itemed.connect(self._prior_broke)

    # -- configuration -----------------------------------------------------------------------
    def set_predictor(self, predictor, encoder_name: str | None = None) -> None:
        """Use ``predictor`` (its ``encode``) from now on, without a prior (see
        :meth:`set_prior`). ``encoder_name``: the model name in cache keys when ``predictor``
        shares the encoder of a model used before (its embeddings are reused); default its own."""
        self.cancel_background()
        self._predictor = predictor
        self._encoder_name = encoder_name
        self._prior = None
        self._build_embedder()

    def _build_embedder(self) -> None:
        predictor = self._predictor  # work started for this model stays with it after a switch
        self.embedder = SliceEmbedder(predictor, self.cache, model_name=self._encoder_name,
                                      encode=lambda image, **norm: self._encode(predictor, image, **norm))

    def set_prior(self, prior) -> None:
        """Propose boxes with ``prior`` (the predictor's granularity prior) for every plane
        embedded or requested from now on; None: no proposals."""
        if self._predictor is None:
            raise RuntimeError("no model is loaded: load a model (or call set_predictor) first")
        self._prior = prior

    @property
    def prior(self):
        """The prior in use, or None."""
        return self._prior

    def proposals_of(self, emb: ImageEmbedding | None) -> ProposalSet | None:
        """The proposals ``emb`` carries if the prior in use made them (same :func:`prior_tag`),
        else None (no prior on, none computed yet, or another prior's)."""
        prior = self._prior
        found = None if emb is None or prior is None else emb.proposals
        return found if isinstance(found, ProposalSet) and found.tag == prior_tag(prior) else None

    def _encode(self, predictor, image: np.ndarray, **normalisation) -> ImageEmbedding:
        """``predictor.encode`` with the prior in use (none for a model no longer in use); a
        failing prior is switched off (reported once, on the main thread) and the plane is
        embedded without it."""
        prior = self._prior if predictor is self._predictor else None
        with self._encode_lock:
            if prior is not None:
                try:
                    return predictor.encode(image, prior=prior, **normalisation)
                except Exception as err:  # shown to the user; the plane is embedded without it
                    self._switch_prior_off(prior, err)
            return predictor.encode(image, prior=None, **normalisation)

    def _propose(self, image: np.ndarray, **normalisation) -> ProposalSet | None:
        """The proposals of the prior in use for an image whose embedding exists (None without
        a prior, or when it fails: then it is switched off)."""
        prior = self._prior
        if prior is None:
            return None
        with self._encode_lock:
            try:
                return compute_proposals(prior, image, **normalisation)
            except Exception as err:
                self._switch_prior_off(prior, err)
                return None

    def _switch_prior_off(self, prior, err: BaseException) -> None:
        if self._prior is prior:
            self._prior = None
        self._failures.item(err)

    def _prior_broke(self, err: BaseException) -> None:
        error_reporter("EdgeSAM granularity prior (switched off)")(err)
        self.prior_failed.emit(str(err))

    def set_cache_dir(self, directory: str | Path | None) -> None:
        """Keep embeddings also on disk in ``directory`` (None: memory only)."""
        self.cancel_background()
        self.cache = EmbeddingCache(self.max_bytes, disk_dir=directory or None)
        if self._predictor is not None:
            self._build_embedder()

    def clear(self) -> None:
        """Forget the embeddings (and their proposals) held in memory (another model)."""
        self.cache.clear()

    # -- keys --------------------------------------------------------------------------------
    def signature(self, data: object, compute: bool = False) -> str | None:
        """Content signature of ``data`` (memoised per array object; None if not yet known
        and ``compute`` is False). A numpy array (editable in place) is hashed in full, so any
        edit changes it once the memo is dropped (:meth:`forget_data`); lazy arrays (dask,
        zarr) are sampled (see :func:`~napari_edgesam.inference.embeddings.cache.data_signature`)."""
        with self._sig_lock:
            known = self._signatures.get(id(data))
        if known is not None and known[0] is data:
            return known[1]
        if not compute:
            return None
        sig = data_signature(data, full=isinstance(data, np.ndarray))
        with self._sig_lock:
            self._signatures[id(data)] = (data, sig)
            while len(self._signatures) > _MAX_SIGNATURES:  # do not keep old arrays alive
                self._signatures.pop(next(iter(self._signatures)))
        return sig

    def forget_data(self, data: object) -> None:
        """Drop the signature of ``data`` (its content changed)."""
        with self._sig_lock:
            self._signatures.pop(id(data), None)

    def key(self, view: ImageView, plane: Plane | None = None, compute: bool = False,
            embedder: SliceEmbedder | None = None) -> str | None:
        """Cache key of a plane of ``view`` (None while the data signature is unknown), for
        ``embedder``'s model (default: the current one)."""
        if self.embedder is None:
            raise RuntimeError("no model is loaded: load a model (or call set_predictor) first")
        sig = self.signature(view.data, compute)
        if sig is None:
            return None
        return self._key(sig, view, plane or view.plane, embedder)

    def _key(self, signature: str, view: ImageView, plane: Plane, embedder: SliceEmbedder | None = None) -> str:
        # a transposed view (rows = X) is another image for the encoder
        norm = {**view.normalisation, "transposed": plane.displayed[0] > plane.displayed[1]}
        return (embedder or self.embedder).key(signature, plane.key_index, norm)

    def lookup(self, view: ImageView) -> ImageEmbedding | None:
        """The cached embedding of the view's plane, or None (fast; main thread)."""
        key = self.key(view)
        return None if key is None else self.cache.get(key)

    def lookup_proposals(self, view: ImageView) -> ProposalSet | None:
        """The cached proposals of the view's plane made by the prior in use, or None (fast;
        main thread)."""
        return self.proposals_of(self.lookup(view))

    def embed_now(self, view: ImageView, plane: Plane | None = None) -> ImageEmbedding:
        """Embed (or fetch) a plane in the calling thread: for workers only."""
        embedder = self.embedder  # the key and the embedding of one model
        key = self.key(view, plane, compute=True, embedder=embedder)
        return embedder.embed(view.image(plane), key, **view.normalisation)

    # -- current plane + prefetch ------------------------------------------------------------
    def request(self, view: ImageView) -> None:
        """Embed the view's plane in the background; ``ready`` follows, then neighbours are
        prefetched. Only the newest pending request runs."""
        if self.embedder is None:
            raise RuntimeError("no model is loaded: load a model (or call set_predictor) first")
        self._prefetch_cancel.set()
        self._prefetched_for = None
        self._runner.request(view)

    @property
    def busy_embedding(self) -> bool:
        return self._runner.busy

    def _embed_job(self, view: ImageView) -> tuple[str, ImageView, bool]:
        embedder = self.embedder  # the key and the embedding of one model (it may change meanwhile)
        key = self.key(view, compute=True, embedder=embedder)
        computed = key not in self.cache
        if computed:
            self._notify_busy(view)
        emb = embedder.embed(view.image(), key, **view.normalisation)  # with proposals if on
        if self._prior is not None and embedder.predictor is self._predictor and self.proposals_of(emb) is None:
            # cached without them (and the model is still in use)
            self._notify_busy(view, "finding the objects of")
            found = self._propose(view.image(), **view.normalisation)
            if found is not None:
                self.cache.put(key, emb.with_proposals(found))  # they travel with it from now on
        return key, view, computed

    def _notify_busy(self, view: ImageView, doing: str = "embedding") -> None:
        axis = view.plane.stack_axis
        where = f"slice {view.plane.position[axis]}" if axis is not None else "the image"
        self.busy.emit(True, f"{doing} {where}...")

    def _embedded(self, result: tuple[str, ImageView, bool]) -> None:
        key, view, _computed = result
        if not self._runner.has_pending:
            self.prefetch_around(view, key)
        self.ready.emit(key)

    def prefetch_around(self, view: ImageView, key: str) -> None:
        """Prefetch the neighbours of the plane whose cache key is ``key``, unless that is
        already under way (e.g. the user scrolled back to it)."""
        if key != self._prefetched_for:
            self._prefetched_for = key
            self.hold_prefetch()  # the user just arrived here and may click right away
            self.prefetch(view)

    def prefetch(self, view: ImageView, radius: int | None = None) -> None:
        """Embed the neighbours of the view's plane along its stack axis (background)."""
        axis = view.plane.stack_axis
        radius = self.prefetch_radius if radius is None else int(radius)
        if axis is None or self.embedder is None or self.precomputing or radius < 1:
            return
        self._prefetch_cancel.set()
        cancel = self._prefetch_cancel = threading.Event()
        order = neighbour_order(view.plane.position[axis], view.plane.shape[axis], radius)[1:]
        planes = [view.plane.at(axis, z) for z in order]
        start_worker(self._prefetch_job, view, planes, cancel, context="EdgeSAM prefetch")

    def hold_prefetch(self, seconds: float = PREFETCH_HOLD_OFF_S) -> None:
        """Keep prefetching from starting an encoder run for ``seconds`` (user activity)."""
        self._quiet_after = max(self._quiet_after, time.monotonic() + seconds)

    def _prefetch_job(self, view: ImageView, planes: list[Plane], cancel: threading.Event) -> int:
        embedder = self.embedder  # the keys and the embeddings of one model

        def items():
            for p in planes:
                while time.monotonic() < self._quiet_after:  # the user is busy: wait
                    if cancel.wait(0.05):
                        return
                yield (self.key(view, p, compute=True, embedder=embedder), (lambda p=p: view.image(p)),
                       view.normalisation)

        return embedder.prefetch(items(), cancel)

    # -- whole stack -------------------------------------------------------------------------
    def precompute(self, view: ImageView) -> None:
        """Embed every plane along the view's stack axis (progress via signals)."""
        axis = view.plane.stack_axis
        if axis is None:
            raise ValueError("the image has no stack axis to precompute (it is 2D)")
        if self.embedder is None:
            raise RuntimeError("no model is loaded: load a model (or call set_predictor) first")
        if self.precomputing:
            return
        self._prefetch_cancel.set()
        self._precompute_cancel = threading.Event()
        self.precomputing = True
        start_worker(
            self._precompute_job, view, axis, self._precompute_cancel,
            on_result=self.precompute_finished.emit, on_error=self._precompute_failed,
            on_finished=self._precompute_done,
        )

    def _precompute_job(self, view: ImageView, axis: int, cancel: threading.Event) -> int:
        sig = self.signature(view.data, compute=True)
        embedder = self.embedder  # the keys and the embeddings of one model
        return embedder.precompute(
            _Stack(view, axis),
            lambda z: self._key(sig, view, view.plane.at(axis, z), embedder),
            view.normalisation, self._relay.progress, cancel,
        )

    def _precompute_failed(self, err: BaseException) -> None:
        error_reporter("EdgeSAM precompute")(err)
        self.precompute_finished.emit(-1)

    def _precompute_done(self) -> None:
        self.precomputing = False

    def cancel_precompute(self) -> None:
        self._precompute_cancel.set()

    def cancel_background(self) -> None:
        """Stop prefetching and precomputing (after the slice being embedded)."""
        self._prefetch_cancel.set()
        self._prefetched_for = None
        self._precompute_cancel.set()
        self._runner.cancel_pending()
