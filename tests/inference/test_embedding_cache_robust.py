"""The embedding cache discards damaged, crafted and non-finite entries instead of raising or
serving them (issue 12, item 9)."""

from __future__ import annotations

import logging
import zipfile

import numpy as np
import pytest

from napari_edgesam.inference.core.predictor import ImageEmbedding
from napari_edgesam.inference.embeddings.cache import DISK_FORMAT_VERSION, EmbeddingCache


def _emb(seed=0) -> ImageEmbedding:
    f = np.random.default_rng(seed).standard_normal((1, 256, 64, 64)).astype(np.float32)
    return ImageEmbedding(f, (300, 400), (768, 1024))


def _fields(key: str) -> dict:
    e = _emb()
    return {"version": np.int64(DISK_FORMAT_VERSION), "key": np.str_(key),
            "features": e.features.astype(np.float16), "original_size": np.array([300, 400]),
            "input_size": np.array([768, 1024])}


CRAFTED = {
    "version as a vector": {"version": np.arange(3)},
    "version as text": {"version": np.str_("1")},
    "key as a number": {"key": np.int64(7)},
    "key as a vector": {"key": np.array(["k", "k"])},
    "features as text": {"features": np.full((1, 4, 2, 2), "x")},
    "features as integers": {"features": np.ones((1, 256, 64, 64), np.int16)},
    "features of 3 axes": {"features": np.ones((256, 64, 64), np.float16)},
    "features empty": {"features": np.ones((1, 0, 64, 64), np.float16)},
    "NaN features": {"features": np.full((1, 256, 64, 64), np.nan, np.float16)},
    "inf features": {"features": np.full((1, 256, 64, 64), np.inf, np.float32)},
    "sizes as text": {"original_size": np.array(["a", "b"])},
    "sizes of 3 values": {"input_size": np.array([1, 2, 3])},
    "zero size": {"original_size": np.array([0, 400])},
    "missing features": {"features": None},
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_disk_files_are_discarded(tmp_path, caplog, name):
    cache = EmbeddingCache(disk_dir=tmp_path, max_bytes=0)
    fields = _fields("k")
    for field, value in CRAFTED[name].items():
        if value is None:
            fields.pop(field)
        else:
            fields[field] = value
    path = cache.disk_path("k")
    with open(path, "wb") as f:
        np.savez(f, **fields)
    with caplog.at_level(logging.WARNING):
        assert cache.get("k") is None
    assert "ignoring and deleting" in caplog.text and not path.exists()
    cache.put("k", _emb())  # recomputed and stored again
    assert cache.get("k") is not None


def test_damaged_compressed_member_is_discarded(tmp_path):
    cache = EmbeddingCache(disk_dir=tmp_path, max_bytes=0)
    path = cache.disk_path("k")
    with open(path, "wb") as f:
        np.savez_compressed(f, **_fields("k"))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("features.npy")
    start = info.header_offset + 30 + len(info.filename) + 200
    data[start : start + 100] = b"\x00" * 100  # inside the deflated features
    path.write_bytes(bytes(data))
    assert cache.get("k") is None and not path.exists()


def test_non_finite_embeddings_are_not_stored(tmp_path, caplog):
    cache = EmbeddingCache(disk_dir=tmp_path)
    cache.put("k", _emb(1))
    nan = _emb(2).features.copy()
    nan[0, 3, 4, 5] = np.nan
    with caplog.at_level(logging.WARNING):
        cache.put("k", ImageEmbedding(nan, (300, 400), (768, 1024)))
    assert "NaN or inf" in caplog.text
    np.testing.assert_array_equal(cache.get("k").features, _emb(1).features.astype(np.float16))  # kept
    big = _emb(3).features * 1e6  # finite in float32, inf in float16
    cache.put("big", ImageEmbedding(big, (300, 400), (768, 1024)))
    assert cache.get("big") is None and not cache.disk_path("big").exists()
    assert "in float16" in caplog.text
