"""The granularity prior's box proposals beside the interactive widget's embeddings (no Qt).

:class:`ProposalStore` keeps one :class:`~napari_edgesam.inference.prior.ProposalSet` per
embedding-cache key; :class:`_ProposingPredictor` and :class:`_CacheWithProposals` wrap the
predictor and the cache for the :class:`~napari_edgesam.inference.slices.SliceEmbedder` so that
a plane's proposals come from the same encoder pass as its embedding and are stored under the
same key.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..inference.embedding_cache import EmbeddingCache
from ..inference.predictor import ImageEmbedding
from ..inference.prior import ProposalSet, compute_proposals, embed_with_proposals

logger = logging.getLogger(__name__)

#: Proposal sets kept by a :class:`ProposalStore` (one holds at most a few hundred boxes: ~6 KB).
MAX_PROPOSAL_SETS = 1024
#: File-name ending and format version of persisted proposal sets.
DISK_SUFFIX = ".proposals.npz"
DISK_FORMAT_VERSION = 1


class ProposalStore:
    """The prior's box proposals (:class:`ProposalSet`) by embedding-cache key; least recently
    used sets beyond ``max_entries`` are dropped from memory. Safe to use from several threads.

    With :meth:`set_disk` (the embedding cache's folder and the prior's :func:`prior_tag`) every
    set is also written to ``<sha1(key|tag)>.proposals.npz`` in that folder, atomically, and a
    memory miss reads it back: a restarted session keeps its proposals as it keeps its
    embeddings. The files live and are evicted with the embedding cache's (its ``*.npz`` budget,
    ``discard`` by key prefix, ``clear``); a file of another prior has another name.
    """

    def __init__(self, max_entries: int = MAX_PROPOSAL_SETS) -> None:
        if isinstance(max_entries, bool) or int(max_entries) < 1:
            raise ValueError(f"max_entries must be a positive integer, got {max_entries!r}")
        self.max_entries = int(max_entries)
        self._entries: OrderedDict[str, ProposalSet] = OrderedDict()
        self._lock = threading.Lock()
        self.disk_dir: Path | None = None
        self.tag: str | None = None

    def set_disk(self, disk_dir: str | os.PathLike | None, tag: str | None) -> None:
        """Persist to ``disk_dir`` the proposals of the prior identified by ``tag`` (either
        None: memory only). Sets held in memory are kept only if the prior is the same."""
        with self._lock:
            if tag != self.tag:
                self._entries.clear()
            self.disk_dir = None if disk_dir in (None, "") else Path(disk_dir)
            self.tag = tag

    def disk_path(self, key: str) -> Path | None:
        """The file holding ``key``'s proposals, or None without a disk layer."""
        if self.disk_dir is None or self.tag is None:
            return None
        return self.disk_dir / (hashlib.sha1(f"{key}|{self.tag}".encode()).hexdigest() + DISK_SUFFIX)

    def get(self, key: str) -> ProposalSet | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        found = self._read(key)
        if found is not None:
            self._remember(key, found)
        return found

    def put(self, key: str, proposals: ProposalSet) -> None:
        if not isinstance(proposals, ProposalSet):
            raise TypeError(f"expected a ProposalSet, got {type(proposals).__name__}")
        self._remember(key, proposals)
        self._write(key, proposals)

    def _remember(self, key: str, proposals: ProposalSet) -> None:
        with self._lock:
            self._entries[key] = proposals
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def _write(self, key: str, proposals: ProposalSet) -> None:
        path = self.disk_path(key)
        if path is None:
            return
        from .._atomic import atomic_open

        try:
            with atomic_open(path, "wb", suffix=".part", fsync=False) as f:
                np.savez(f, version=np.int64(DISK_FORMAT_VERSION), key=np.str_(key), tag=np.str_(self.tag),
                         boxes=proposals.boxes, scores=proposals.scores,
                         original_size=np.asarray(proposals.original_size, np.int64))
        except OSError as err:  # the memory copy is all that is lost
            logger.warning("could not write the proposals file %s: %s", path, err)

    def _read(self, key: str) -> ProposalSet | None:
        path = self.disk_path(key)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["version"]) != DISK_FORMAT_VERSION or str(z["key"]) != key or str(z["tag"]) != self.tag:
                    raise ValueError("the file holds other proposals")
                return ProposalSet(z["boxes"], z["scores"], tuple(int(v) for v in z["original_size"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            logger.warning("ignoring and deleting unreadable proposals file %s: %s", path, err)
            path.unlink(missing_ok=True)
            return None

    def __contains__(self, key: object) -> bool:
        with self._lock:
            if key in self._entries:
                return True
        path = self.disk_path(key) if isinstance(key, str) else None
        return path is not None and path.is_file()

    def __len__(self) -> int:
        """Sets held in memory."""
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        """Forget the sets held in memory (files stay: they are the disk cache's)."""
        with self._lock:
            self._entries.clear()


class _ProposingPredictor:
    """The predictor as the SliceEmbedder sees it. With a :attr:`prior`, ``compute_embedding``
    also proposes boxes in the same encoder pass and leaves them in the calling thread for
    :class:`_CacheWithProposals` to store under the plane's key. A failing prior is switched
    off (``failed(err)`` is called) and the plane is embedded without it. Encoder runs happen
    one at a time."""

    def __init__(self, predictor, failed: Callable[[BaseException], None]) -> None:
        self.predictor = predictor
        self.model_name = getattr(predictor, "model_name", "edgesam")
        self.prior = None
        self._failed = failed
        self._lock = threading.Lock()
        self._local = threading.local()

    def _prior_failed(self, err: BaseException) -> None:
        self.prior = None
        self._failed(err)

    def compute_embedding(self, image: np.ndarray, **normalisation) -> ImageEmbedding:
        prior, proposals = self.prior, None
        with self._lock:
            if prior is not None:
                try:
                    emb, proposals = embed_with_proposals(self.predictor, prior, image, **normalisation)
                except Exception as err:  # shown to the user; the plane is embedded without it
                    self._prior_failed(err)
                    prior = None
            if prior is None:
                emb = self.predictor.compute_embedding(image, **normalisation)
        self._local.proposals = proposals
        return emb

    def take_proposals(self) -> ProposalSet | None:
        """The proposals of this thread's last ``compute_embedding`` (once)."""
        found, self._local.proposals = getattr(self._local, "proposals", None), None
        return found

    def propose(self, image: np.ndarray, **normalisation) -> ProposalSet | None:
        """The prior's proposals for an image whose embedding exists (None without a prior)."""
        prior = self.prior
        if prior is None:
            return None
        with self._lock:
            try:
                return compute_proposals(prior, image, **normalisation)
            except Exception as err:
                self._prior_failed(err)
                return None


class _CacheWithProposals:
    """The cache as the SliceEmbedder sees it: ``put`` also stores the proposals the encoder
    left in this thread, under the same key and before the embedding (whoever finds the
    embedding finds them too)."""

    def __init__(self, cache: EmbeddingCache, proposals: ProposalStore, encoder: _ProposingPredictor) -> None:
        self.cache, self.proposals, self.encoder = cache, proposals, encoder

    def get(self, key: str) -> ImageEmbedding | None:
        return self.cache.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self.cache

    def put(self, key: str, embedding: ImageEmbedding) -> None:
        found = self.encoder.take_proposals()
        if found is not None:
            self.proposals.put(key, found)
        self.cache.put(key, embedding)
