"""The prior's proposals travel with their embedding through the EmbeddingCache (memory and
disk), tagged with the prior that made them; old cache files read as proposal-free."""

from __future__ import annotations

import os

import numpy as np
import pytest

from napari_edgesam.inference.core.predictor import ImageEmbedding
from napari_edgesam.inference.embeddings.cache import DISK_FORMAT_VERSION, EmbeddingCache
from napari_edgesam.inference.prior import ProposalSet, prior_tag


def proposals(seed: int, n: int = 5, tag: str | None = "prior-A") -> ProposalSet:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 200, (n, 2))
    return ProposalSet(np.hstack([xy, xy + rng.uniform(5, 40, (n, 2))]), rng.uniform(0, 1, n), (300, 400), tag)


def embedding(seed: int = 0, props: ProposalSet | None = None) -> ImageEmbedding:
    features = np.random.default_rng(seed).normal(0, 1, (1, 256, 64, 64)).astype(np.float32)
    return ImageEmbedding(features, (300, 400), (768, 1024), props)


def same(a: ProposalSet, b: ProposalSet) -> bool:
    return (np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
            and a.original_size == b.original_size and a.tag == b.tag)


def test_memory_keeps_the_proposals_with_the_embedding():
    cache = EmbeddingCache(max_bytes=3 * embedding().features.astype(np.float16).nbytes)
    props = proposals(1, tag=None)  # a prior built in memory: kept in memory all the same
    cache.put("k0", embedding(0, props))
    cache.put("k1", embedding(1))
    got = cache.get("k0")
    assert got.proposals is props and cache.get("k1").proposals is None
    cache.put("k1", cache.get("k1").with_proposals(proposals(2)))  # found later: put back with them
    assert same(cache.get("k1").proposals, proposals(2))
    for i in range(2, 5):  # evicted together
        cache.put(f"k{i}", embedding(i))
    assert cache.get("k0") is None


def test_disk_round_trip_with_the_prior_tag(tmp_path):
    cache = EmbeddingCache(disk_dir=tmp_path)
    cache.put("model|sig|(0)", embedding(0, proposals(1)))
    assert not list(tmp_path.glob("*.part"))  # written atomically, nothing left behind
    assert len(list(tmp_path.glob("*.npz"))) == 1  # one file: the embedding and its proposals
    fresh = EmbeddingCache(disk_dir=tmp_path)  # a new session on the same folder
    got = fresh.get("model|sig|(0)")
    assert got is not None and same(got.proposals, proposals(1))
    np.testing.assert_array_equal(got.features, embedding(0).features.astype(np.float16))
    # a prior built in memory has no identity to persist under: its proposals stay in memory
    cache.put("model|sig|(1)", embedding(1, proposals(2, tag=None)))
    assert cache.get("model|sig|(1)").proposals is not None
    assert EmbeddingCache(disk_dir=tmp_path).get("model|sig|(1)").proposals is None


def test_old_files_read_as_proposal_free(tmp_path):
    """Version 1 (before proposals travelled with embeddings) still serves its embedding."""
    cache = EmbeddingCache(disk_dir=tmp_path)
    emb = embedding(3)
    np.savez(cache.disk_path("k"), version=np.int64(1), key=np.str_("k"), features=emb.features.astype(np.float16),
             original_size=np.int64([300, 400]), input_size=np.int64([768, 1024]))
    got = cache.get("k")
    assert DISK_FORMAT_VERSION == 2 and got is not None and got.proposals is None
    np.testing.assert_array_equal(got.features, emb.features.astype(np.float16))


@pytest.mark.parametrize("damage", [
    {"proposal_boxes": np.float32([[0, 0, np.nan, 1]]), "proposal_scores": np.float32([0.5])},
    {"proposal_boxes": np.zeros((2, 3), np.float32), "proposal_scores": np.zeros(2, np.float32)},
    {"proposal_tag": np.int64(3)},
])
def test_damaged_proposals_discard_the_file(tmp_path, damage):
    cache = EmbeddingCache(disk_dir=tmp_path)
    emb = embedding(4)
    arrays = {"version": np.int64(DISK_FORMAT_VERSION), "key": np.str_("k"), "features": emb.features.astype(np.float16),
              "original_size": np.int64([300, 400]), "input_size": np.int64([768, 1024]),
              "proposal_boxes": np.float32([[1, 2, 30, 40]]), "proposal_scores": np.float32([0.9]),
              "proposal_tag": np.str_("t"), **damage}
    np.savez(cache.disk_path("k"), **arrays)
    assert cache.get("k") is None and not cache.disk_path("k").exists()  # recomputed by the caller


def test_files_follow_the_embedding_cache(tmp_path):
    """discard() by key prefix and clear(disk=True) remove the proposals with their embeddings."""
    cache = EmbeddingCache(disk_dir=tmp_path)
    for key in ("m|a|(0)", "m|b|(0)"):
        cache.put(key, embedding(0, proposals(3)))
    cache.discard("m|a|", disk=True)
    assert not cache.disk_path("m|a|(0)").exists() and cache.disk_path("m|b|(0)").exists()
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
    loaded = Prior()
    loaded.source_tag = first  # what load_prior records: the file as it was loaded
    assert prior_tag(loaded) == first


def test_proposal_set_keeps_its_tag():
    p = proposals(5, tag="t1")
    assert p.above(0.0).tag == "t1" and ProposalSet.from_dict(p.to_dict()).tag == "t1"
    untagged = proposals(5, tag=None)
    assert "tag" not in untagged.to_dict() and ProposalSet.from_dict(untagged.to_dict()).tag is None
    moved = ProposalSet.from_input_frame(np.float32([[0, 0, 512, 384]]), np.float32([0.5]), (768, 1024), (300, 400), "t2")
    assert moved.tag == "t2"
    np.testing.assert_allclose(moved.boxes, [[0, 0, 200, 150]])
