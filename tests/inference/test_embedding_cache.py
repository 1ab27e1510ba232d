"""EmbeddingCache (LRU by bytes, fp16, threads, disk layer) and the cache keys."""

from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np
import pytest

from napari_edgesam.inference.core.predictor import ImageEmbedding
from napari_edgesam.inference.embeddings.cache import EmbeddingCache
from napari_edgesam.inference.embeddings.keys import (
    FULL_HASH_BYTES,
    data_signature,
    embedding_key,
    key_prefix,
)

EMB_BYTES_FP16 = 256 * 64 * 64 * 2


def make_embedding(seed: int, size=(300, 400)) -> ImageEmbedding:
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((1, 256, 64, 64)).astype(np.float32)
    scale = 1024 / max(size)
    return ImageEmbedding(features, size, (int(size[0] * scale + 0.5), int(size[1] * scale + 0.5)))


def test_stores_fp16_and_round_trips():
    cache = EmbeddingCache()
    emb = make_embedding(0)
    cache.put("a", emb)
    got = cache.get("a")
    assert got.features.dtype == np.float16
    assert cache.nbytes == EMB_BYTES_FP16 == emb.nbytes // 2
    assert got.original_size == emb.original_size and got.input_size == emb.input_size
    np.testing.assert_allclose(got.features, emb.features, rtol=1e-3, atol=1e-3)
    assert not got.features.flags.writeable  # callers cannot corrupt the cache
    assert cache.get("missing") is None
    assert "a" in cache and "missing" not in cache and len(cache) == 1


def test_float32_storage_is_exact():
    cache = EmbeddingCache(dtype=np.float32)
    emb = make_embedding(1)
    cache.put("a", emb)
    np.testing.assert_array_equal(cache.get("a").features, emb.features)
    with pytest.raises(ValueError, match="float16 or float32"):
        EmbeddingCache(dtype=np.int8)


def test_lru_eviction_by_bytes():
    cache = EmbeddingCache(max_bytes=3 * EMB_BYTES_FP16 + 100)
    for i in range(3):
        cache.put(f"k{i}", make_embedding(i))
    assert len(cache) == 3
    cache.get("k0")  # k1 is now the least recently used
    cache.put("k3", make_embedding(3))
    assert len(cache) == 3 and cache.nbytes <= cache.max_bytes
    assert "k1" not in cache
    assert all(k in cache for k in ("k0", "k2", "k3"))
    assert cache.keys() == ["k2", "k0", "k3"]
    # replacing a key does not double count its bytes
    cache.put("k3", make_embedding(4))
    assert cache.nbytes == 3 * EMB_BYTES_FP16


def test_entry_larger_than_budget_is_not_kept():
    cache = EmbeddingCache(max_bytes=EMB_BYTES_FP16 - 1)
    cache.put("a", make_embedding(0))
    assert len(cache) == 0 and cache.nbytes == 0 and cache.get("a") is None


def test_discard_prefix_and_clear():
    cache = EmbeddingCache()
    sig = data_signature(np.arange(10))
    k_old = [embedding_key("edgesam", sig, (z,), (0.0, 100.0)) for z in range(3)]
    k_new = [embedding_key("edgesam", sig, (z,), (0.0, 50.0)) for z in range(2)]
    for i, k in enumerate(k_old + k_new):
        cache.put(k, make_embedding(i))
    assert cache.discard(key_prefix("edgesam", sig, (0.0, 100.0))) == 3
    assert all(k not in cache for k in k_old) and all(k in cache for k in k_new)
    assert cache.nbytes == 2 * EMB_BYTES_FP16
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_thread_safety_smoke():
    cache = EmbeddingCache(max_bytes=5 * EMB_BYTES_FP16)
    embs = [make_embedding(i) for i in range(4)]
    errors = []

    def work(tid):
        try:
            for i in range(60):
                k = f"k{(tid + i) % 12}"
                cache.put(k, embs[i % 4])
                got = cache.get(f"k{(tid * 7 + i) % 12}")
                assert got is None or got.features.shape == (1, 256, 64, 64)
                assert cache.nbytes <= cache.max_bytes
        except Exception as err:  # reported in the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cache) <= 5
    assert cache.nbytes == len(cache) * EMB_BYTES_FP16


def test_disk_round_trip(tmp_path):
    emb = make_embedding(5, size=(123, 77))
    writer = EmbeddingCache(disk_dir=tmp_path)
    writer.put("model|sig|norm|(3)", emb)
    assert writer.disk_path("model|sig|norm|(3)").exists()
    assert [p.name for p in tmp_path.iterdir()] == [writer.disk_path("model|sig|norm|(3)").name]  # no temp file left
    # a new cache (e.g. a new session) with an empty memory layer reads the disk
    reader = EmbeddingCache(disk_dir=tmp_path, max_bytes=0)
    assert "model|sig|norm|(3)" in reader and len(reader) == 0
    got = reader.get("model|sig|norm|(3)")
    assert got.original_size == (123, 77) and got.input_size == emb.input_size
    np.testing.assert_allclose(got.features, emb.features, atol=2e-3, rtol=1e-3)
    assert reader.get("other") is None
    # discard on disk
    assert writer.discard("model|sig|", disk=True) == 1
    assert not writer.disk_path("model|sig|norm|(3)").exists()


def test_disk_hit_is_promoted_to_memory(tmp_path):
    EmbeddingCache(disk_dir=tmp_path).put("a", make_embedding(0))
    cache = EmbeddingCache(disk_dir=tmp_path)
    assert len(cache) == 0
    assert cache.get("a") is not None
    assert len(cache) == 1


def test_corrupt_disk_file_is_ignored_and_deleted(tmp_path, caplog):
    cache = EmbeddingCache(disk_dir=tmp_path, max_bytes=0)
    cache.put("good", make_embedding(0))
    cache.put("bad", make_embedding(1))
    path = cache.disk_path("bad")
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with caplog.at_level(logging.WARNING):
        assert cache.get("bad") is None
    assert "unreadable" in caplog.text
    assert not path.exists()
    assert cache.get("good") is not None


def test_disk_file_of_another_key_or_version_is_rejected(tmp_path):
    cache = EmbeddingCache(disk_dir=tmp_path, max_bytes=0)
    cache.put("a", make_embedding(0))
    cache.disk_path("a").rename(cache.disk_path("b"))  # e.g. a hash collision or a copied file
    assert cache.get("b") is None and not cache.disk_path("b").exists()
    cache.put("c", make_embedding(0))
    with np.load(cache.disk_path("c")) as z:
        fields = dict(z)
    fields["version"] = np.int64(999)
    with open(cache.disk_path("c"), "wb") as f:
        np.savez(f, **fields)
    assert cache.get("c") is None


def test_data_signature_changes_with_content_shape_and_dtype():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 1000, (5, 40, 50), dtype=np.uint16)
    sig = data_signature(a)
    assert sig == data_signature(a.copy()) and len(sig) == 32
    b = a.copy()
    b[3, 20, 7] += 1
    assert data_signature(b) != sig
    assert data_signature(a.astype(np.int32)) != sig
    assert data_signature(a.reshape(5, 50, 40)) != sig
    assert data_signature(a[:, ::2]) == data_signature(np.ascontiguousarray(a[:, ::2]))


def test_data_signature_of_large_array_samples(monkeypatch):
    import napari_edgesam.inference.embeddings.keys as ec

    monkeypatch.setattr(ec, "FULL_HASH_BYTES", 1000)  # force the sampled path
    assert ec.FULL_HASH_BYTES < FULL_HASH_BYTES
    vol = np.random.default_rng(1).random((40, 64, 64)).astype(np.float32)
    sig = ec.data_signature(vol)
    assert sig == ec.data_signature(vol.copy())
    changed = vol.copy()
    changed[0] += 1.0  # a whole slice changed: always sampled
    assert ec.data_signature(changed) != sig


def test_embedding_key_is_canonical():
    k1 = embedding_key("edgesam", "abc", (3, slice(None), slice(None)), (0.0, 255.0, 1.0, None))
    k2 = embedding_key("edgesam", "abc", (np.int64(3), slice(None), slice(None)), (np.float32(0.0), 255.0000001, 1, None))
    assert k1 == k2
    assert k1 != embedding_key("edgesam", "abc", (4, slice(None), slice(None)), (0.0, 255.0, 1.0, None))
    assert k1 != embedding_key("edgesam", "abc", (3, slice(None), slice(None)), (0.0, 254.0, 1.0, None))
    assert k1 != embedding_key("edgesam_3x", "abc", (3, slice(None), slice(None)), (0.0, 255.0, 1.0, None))
    # dicts are order independent
    assert embedding_key("m", "s", (1,), {"gamma": 1.0, "channel": 0}) == embedding_key(
        "m", "s", (1,), {"channel": 0, "gamma": 1.0}
    )
    assert k1.startswith(key_prefix("edgesam", "abc"))
    with pytest.raises(TypeError, match="index entries"):
        embedding_key("m", "s", (1.5,), ())
    with pytest.raises(TypeError, match="cache key"):
        embedding_key("m", "s", (1,), (object(),))


def test_data_signature_of_scalars_and_lazy_like_arrays():
    assert data_signature(np.float64(1.5)) != data_signature(np.float64(2.5))
    assert data_signature(np.array(3, np.int16)) == data_signature(np.array(3, np.int16))
    assert data_signature([[1, 2], [3, 4]]) == data_signature(np.array([[1, 2], [3, 4]]))


def test_data_signature_reads_lazy_data_only_where_it_samples(monkeypatch):
    import napari_edgesam.inference.embeddings.keys as ec

    class Lazy:
        """A dask/zarr-like array that records what is read."""

        def __init__(self, data):
            self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, []

        def __getitem__(self, index):
            self.reads.append(index)
            return self.data[index]

        def __array__(self, dtype=None, copy=None):
            raise AssertionError("the whole array was loaded")

    monkeypatch.setattr(ec, "FULL_HASH_BYTES", 1000)
    vol = np.random.default_rng(2).integers(0, 255, (100, 50, 60), dtype=np.uint8)
    lazy = Lazy(vol)
    assert ec.data_signature(lazy) == ec.data_signature(vol)
    assert 1 < len(lazy.reads) <= 32
    assert all(isinstance(r[0], int) for r in lazy.reads)  # one plane at a time


def test_clear_disk(tmp_path):
    cache = EmbeddingCache(disk_dir=tmp_path)
    cache.put("a", make_embedding(0))
    (tmp_path / ".crashed.part").write_bytes(b"x")
    cache.clear()
    assert "a" in cache  # still on disk
    cache.clear(disk=True)
    assert "a" not in cache and not list(tmp_path.iterdir())


def test_disk_layer_is_bounded_and_evicts_least_recently_used(tmp_path):
    cache = EmbeddingCache(max_bytes=0, disk_dir=tmp_path)
    cache.put("k0", make_embedding(0))
    file_bytes = cache.disk_bytes()
    assert file_bytes > EMB_BYTES_FP16  # features plus a little metadata
    budget = int(3.5 * file_bytes)  # room for 3 files
    cache = EmbeddingCache(max_bytes=0, disk_dir=tmp_path, max_disk_bytes=budget)
    for i in (1, 2):
        cache.put(f"k{i}", make_embedding(i))
    # make the order of use unambiguous (file times have a coarse resolution on some systems)
    for age, key in ((30, "k0"), (20, "k1"), (10, "k2")):
        t = time.time() - age
        os.utime(cache.disk_path(key), (t, t))
    assert cache.get("k0") is not None  # a read makes k0 the most recently used
    cache.put("k3", make_embedding(3))  # over budget: the least recently used (k1) goes
    assert not cache.disk_path("k1").exists()
    assert all(cache.disk_path(k).exists() for k in ("k0", "k2", "k3"))
    assert cache.disk_bytes() <= budget
    # another process sharing the folder sees the same bound
    other = EmbeddingCache(max_bytes=0, disk_dir=tmp_path, max_disk_bytes=budget)
    other.put("k4", make_embedding(4))
    assert other.disk_bytes() <= budget and other.disk_path("k4").exists()
    assert not cache.disk_path("k2").exists()  # the oldest then


def test_disk_budget_smaller_than_one_file_keeps_the_newest(tmp_path):
    cache = EmbeddingCache(max_bytes=0, disk_dir=tmp_path, max_disk_bytes=1000)
    cache.put("a", make_embedding(0))
    cache.put("b", make_embedding(1))
    assert not cache.disk_path("a").exists() and cache.get("b") is not None
    with pytest.raises(ValueError, match="max_disk_bytes"):
        EmbeddingCache(disk_dir=tmp_path, max_disk_bytes=-1)
