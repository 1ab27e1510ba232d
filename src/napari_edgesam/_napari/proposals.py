"""The granularity prior's box proposals beside the interactive widget's embeddings (no Qt).

:class:`ProposalStore` keeps one :class:`~napari_edgesam.inference.prior.ProposalSet` per
embedding-cache key; :class:`_ProposingPredictor` and :class:`_CacheWithProposals` wrap the
predictor and the cache for the :class:`~napari_edgesam.inference.slices.SliceEmbedder` so that
a plane's proposals come from the same encoder pass as its embedding and are stored under the
same key.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from ..inference.embedding_cache import EmbeddingCache
from ..inference.predictor import ImageEmbedding
from ..inference.prior import ProposalSet, compute_proposals, embed_with_proposals

#: Proposal sets kept by a :class:`ProposalStore` (one holds at most a few hundred boxes: ~6 KB).
MAX_PROPOSAL_SETS = 1024


class ProposalStore:
    """The prior's box proposals (:class:`ProposalSet`) by embedding-cache key; least recently
    used sets beyond ``max_entries`` are dropped. Safe to use from several threads."""

    def __init__(self, max_entries: int = MAX_PROPOSAL_SETS) -> None:
        if isinstance(max_entries, bool) or int(max_entries) < 1:
            raise ValueError(f"max_entries must be a positive integer, got {max_entries!r}")
        self.max_entries = int(max_entries)
        self._entries: OrderedDict[str, ProposalSet] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> ProposalSet | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: str, proposals: ProposalSet) -> None:
        if not isinstance(proposals, ProposalSet):
            raise TypeError(f"expected a ProposalSet, got {type(proposals).__name__}")
        with self._lock:
            self._entries[key] = proposals
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
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
