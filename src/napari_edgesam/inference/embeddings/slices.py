"""Lazy per-slice embedding of nD data (napari's planes are indexed in :mod:`napari_edgesam.coords`).

Nothing is embedded up front: :meth:`SliceEmbedder.embed` computes the plane the user looks
at (or takes it from the cache), :meth:`SliceEmbedder.prefetch` fills the cache with the
neighbours (:func:`neighbour_order`) in a background thread, and
:meth:`SliceEmbedder.precompute` embeds a whole stack when asked to.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..core.predictor import ImageEmbedding
from .cache import EmbeddingCache
from .keys import embedding_key

logger = logging.getLogger(__name__)


class SliceEmbedder:
    """Embeds 2D planes on demand through an :class:`EmbeddingCache`.

    Args:
        predictor: anything with ``encode(image2d, **normalisation) -> ImageEmbedding``
            (an :class:`~napari_edgesam.inference.core.predictor.EdgeSamPredictor`: the embedding
            carries its prior's proposals when it has one).
        cache: where embeddings are kept (with their proposals).
        model_name: used by :meth:`key`; defaults to ``predictor.model_name``.
        encode: what computes an embedding, ``encode(image2d, **normalisation)``; defaults to
            ``predictor.encode`` (e.g. the widget's, which picks the prior and survives its failure).

    Safe to use from several threads (e.g. the UI's current slice and a prefetch worker):
    encoder calls run one at a time, and a plane being embedded by one thread is waited
    for, not embedded twice, by another.
    """

    def __init__(self, predictor, cache: EmbeddingCache, *, model_name: str | None = None,
                 encode: Callable[..., ImageEmbedding] | None = None) -> None:
        self.predictor = predictor
        self.cache = cache
        self._encode = encode  # None: ``self.predictor.encode``
        self.model_name = model_name or getattr(predictor, "model_name", "edgesam")
        self._encode_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._in_flight: dict[str, threading.Event] = {}
        #: Number of encoder calls made so far.
        self.computed = 0

    def key(self, signature: str, index: tuple, normalisation: object = ()) -> str:
        """:func:`~napari_edgesam.inference.embeddings.keys.embedding_key` for this model."""
        return embedding_key(self.model_name, signature, index, normalisation)

    def embed(self, image2d: np.ndarray, key: str, **normalisation) -> ImageEmbedding:
        """The embedding of ``image2d`` (``H x W`` or ``H x W x C``): from the cache, or computed
        with ``predictor.encode(image2d, **normalisation)`` and stored under ``key``.
        """
        return self._embed(key, lambda: image2d, normalisation)[0]

    def _embed(
        self, key: str, load: Callable[[], np.ndarray], normalisation: dict
    ) -> tuple[ImageEmbedding, bool]:
        """Returns the embedding and whether this call ran the encoder."""
        while True:
            emb = self.cache.get(key)
            if emb is not None:
                return emb, False
            with self._state_lock:
                pending = self._in_flight.get(key)
                if pending is None:
                    done = self._in_flight[key] = threading.Event()
                    break
            pending.wait()  # another thread embeds this plane; then read the cache
            emb = self.cache.get(key)
            if emb is not None:
                return emb, False
        try:
            image = np.asarray(load())
            with self._encode_lock:
                encode = self._encode if self._encode is not None else self.predictor.encode
                emb = encode(image, **normalisation)
                self.computed += 1
            self.cache.put(key, emb)
            return emb, True
        finally:
            with self._state_lock:
                del self._in_flight[key]
            done.set()

    def prefetch(
        self,
        items: Iterable[tuple[str, Callable[[], np.ndarray], dict]],
        cancel: threading.Event | None = None,
    ) -> int:
        """Embed the missing planes among ``items`` in order; stop early when ``cancel`` is set.

        Args:
            items: ``(key, load, normalisation)``; ``load()`` returns the 2D plane and is only
                called for planes not in the cache (so lazy data is read only when needed).
        Returns:
            How many planes were embedded.
        """
        count = 0
        for key, load, normalisation in items:
            if cancel is not None and cancel.is_set():
                logger.debug("prefetch cancelled after %d embeddings", count)
                break
            if key in self.cache:
                continue
            count += self._embed(key, load, dict(normalisation or {}))[1]
        return count

    def precompute(
        self,
        volume: np.ndarray,
        key_fn: Callable[[int], str],
        normalisation: dict | None = None,
        progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        """Embed every slice of a stack (those already cached are skipped).

        Args:
            volume: ``Z x H x W`` or ``Z x H x W x C`` (numpy or lazy, e.g. dask; slices are
                read one at a time).
            key_fn: cache key of slice ``z``.
            normalisation: keyword arguments for ``encode``.
            progress: called as ``progress(done, total)`` after each slice.
            cancel: set it to stop after the current slice.
        Returns:
            How many slices were embedded (not counting cache hits).
        """
        ndim = len(np.shape(volume))
        if ndim not in (3, 4):
            raise ValueError(
                f"volume must be Z x H x W or Z x H x W x C; got shape {np.shape(volume)}"
            )
        total = int(np.shape(volume)[0])
        norm = dict(normalisation or {})
        count = 0
        todo = [z for z in range(total) if key_fn(z) not in self.cache]
        after = dict(zip(todo, todo[1:]))  # the next missing slice of each
        # the next missing slice is read (e.g. from a lazy dask/zarr stack on disk) in a thread
        # while this one is encoded: reading and encoding overlap
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgesam-read-ahead") as reader:
            ahead = {z: reader.submit(_read, volume, z) for z in todo[:1]}
            for z in range(total):
                if cancel is not None and cancel.is_set():
                    logger.debug("precompute cancelled at slice %d of %d", z, total)
                    break
                key = key_fn(z)
                if z in ahead:
                    if z in after:
                        ahead[after[z]] = reader.submit(_read, volume, after[z])
                    count += self._embed(key, ahead.pop(z).result, norm)[1]
                elif key not in self.cache:
                    count += self._embed(key, lambda z=z: volume[z], norm)[1]
                if progress is not None:
                    progress(z + 1, total)
            for future in ahead.values():
                future.cancel()
        return count


def _read(volume, z: int) -> np.ndarray:
    return np.asarray(volume[z])


def neighbour_order(current: int, n: int, radius: int = 2) -> list[int]:
    """Slices to embed around ``current``, nearest first: ``z, z+1, z-1, z+2, z-2, ...``
    up to ``radius`` away, limited to ``[0, n)``."""
    if n < 0 or radius < 0:
        raise ValueError(f"n and radius must be >= 0, got n={n}, radius={radius}")
    if not 0 <= current < n:
        raise ValueError(f"current slice {current} is outside [0, {n})")
    order = [current]
    for d in range(1, radius + 1):
        order += [z for z in (current + d, current - d) if 0 <= z < n]
    return order


