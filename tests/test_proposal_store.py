"""ProposalStore: the prior's proposals by embedding key, in memory and beside the disk cache."""

from __future__ import annotations

import os

import numpy as np
import pytest

from napari_edgesam._napari.proposals import ProposalStore
from napari_edgesam.inference.embedding_cache import EmbeddingCache
from napari_edgesam.inference.predictor import ImageEmbedding
from napari_edgesam.inference.prior import ProposalSet, prior_tag


def proposals(seed: int, n: int = 5) -> ProposalSet:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 200, (n, 2))
    return ProposalSet(np.hstack([xy, xy + rng.uniform(5, 40, (n, 2))]), rng.uniform(0, 1, n), (300, 400))


def same(a: ProposalSet, b: ProposalSet) -> bool:
    return (np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
            and a.original_size == b.original_size)


def test_memory_only_by_default_and_bounded():
    store = ProposalStore(max_entries=2)
    for i in range(3):
        store.put(f"k{i}", proposals(i))
    assert "k0" not in store and same(store.get("k2"), proposals(2)) and len(store) == 2
    assert store.disk_path("k2") is None
    with pytest.raises(TypeError):
        store.put("x", "not proposals")
    with pytest.raises(ValueError):
        ProposalStore(max_entries=0)


def test_disk_round_trip_per_prior(tmp_path):
    store = ProposalStore()
    store.set_disk(tmp_path, "prior-A")
    store.put("model|sig|(0)", proposals(1))
    path = store.disk_path("model|sig|(0)")
    assert path.is_file() and path.name.endswith(".proposals.npz")
    assert not list(tmp_path.glob("*.part"))  # written atomically, nothing left behind
    fresh = ProposalStore()  # a new session on the same folder and prior
    fresh.set_disk(tmp_path, "prior-A")
    assert "model|sig|(0)" in fresh and same(fresh.get("model|sig|(0)"), proposals(1))
    other = ProposalStore()  # another prior never sees them
    other.set_disk(tmp_path, "prior-B")
    assert "model|sig|(0)" not in other and other.get("model|sig|(0)") is None
    # changing the prior of a store drops what it holds in memory
    store.set_disk(tmp_path, "prior-B")
    assert len(store) == 0 and store.get("model|sig|(0)") is None


def test_unreadable_file_is_ignored_and_deleted(tmp_path):
    store = ProposalStore()
    store.set_disk(tmp_path, "t")
    store.put("k", proposals(2))
    path = store.disk_path("k")
    path.write_bytes(b"garbage")
    fresh = ProposalStore()
    fresh.set_disk(tmp_path, "t")
    assert fresh.get("k") is None and not path.exists()


def test_files_follow_the_embedding_cache(tmp_path):
    """discard() by key prefix and clear(disk=True) of the embedding cache remove them too."""
    cache = EmbeddingCache(disk_dir=tmp_path)
    store = ProposalStore()
    store.set_disk(tmp_path, "t")
    emb = ImageEmbedding(np.zeros((1, 256, 64, 64), np.float32), (300, 400), (768, 1024))
    for key in ("m|a|(0)", "m|b|(0)"):
        cache.put(key, emb)
        store.put(key, proposals(3))
    cache.discard("m|a|", disk=True)
    assert not store.disk_path("m|a|(0)").exists() and store.disk_path("m|b|(0)").exists()
    cache.clear(disk=True)
    assert not list(tmp_path.iterdir())


def test_prior_tag_changes_with_the_file(tmp_path):
    class Prior:
        source_path = tmp_path / "x.prior.pth"

    Prior.source_path.write_bytes(b"one")
    first = prior_tag(Prior())
    os.utime(Prior.source_path, ns=(1, 1))
    assert prior_tag(Prior()) != first
    assert prior_tag(object()) is None  # built in memory: nothing to persist under
