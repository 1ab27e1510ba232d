"""SliceEmbedder (lazy per-slice embedding), neighbour_order and the nD -> 2D helpers."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_edgesam.coords import get_plane, plane_index
from napari_edgesam.inference.core.predictor import ImageEmbedding
from napari_edgesam.inference.core.preprocess import resized_shape
from napari_edgesam.inference.embeddings.cache import EmbeddingCache
from napari_edgesam.inference.embeddings.keys import data_signature
from napari_edgesam.inference.embeddings.slices import SliceEmbedder, neighbour_order


class CountingEncoder:
    """Stands in for EdgeSamPredictor.encode: features encode the image mean."""

    model_name = "stub"

    def __init__(self, delay: float = 0.0):
        self.calls: list[dict] = []
        self.delay = delay
        self._lock = threading.Lock()

    def encode(self, image, **normalisation):
        with self._lock:
            self.calls.append(normalisation)
        time.sleep(self.delay)
        image = np.asarray(image)
        features = np.full((1, 256, 64, 64), float(image.mean()), np.float32)
        return ImageEmbedding(features, image.shape[:2], resized_shape(image.shape[:2]))


@pytest.fixture
def volume():
    return np.random.default_rng(0).integers(0, 4000, (6, 32, 48), dtype=np.uint16)


def test_embed_uses_the_cache(volume):
    enc = CountingEncoder()
    emb = SliceEmbedder(enc, EmbeddingCache())
    sig = data_signature(volume)
    key = emb.key(sig, (2,), (0.0, 4000.0))
    first = emb.embed(volume[2], key, contrast_limits=(0.0, 4000.0))
    again = emb.embed(volume[2], key, contrast_limits=(0.0, 4000.0))
    assert len(enc.calls) == 1 and emb.computed == 1
    assert enc.calls[0] == {"contrast_limits": (0.0, 4000.0)}
    assert first.original_size == (32, 48)
    np.testing.assert_allclose(again.features, volume[2].mean(), rtol=1e-3)
    # another normalisation is another key: computed again
    emb.embed(volume[2], emb.key(sig, (2,), (0.0, 1000.0)), contrast_limits=(0.0, 1000.0))
    assert len(enc.calls) == 2
    assert emb.model_name == "stub"
    assert SliceEmbedder(enc, EmbeddingCache(), model_name="other").model_name == "other"


def test_prefetch_computes_missing_in_order_and_loads_lazily(volume):
    enc = CountingEncoder()
    emb = SliceEmbedder(enc, EmbeddingCache())
    keys = {z: f"k{z}" for z in range(6)}
    emb.embed(volume[3], keys[3])
    loaded = []

    def loader(z):
        def load():
            loaded.append(z)
            return volume[z]
        return load

    order = neighbour_order(3, 6, radius=2)
    n = emb.prefetch([(keys[z], loader(z), {"gamma": 1.0}) for z in order])
    assert n == 4
    assert loaded == [4, 2, 5, 1]  # slice 3 was cached: never loaded
    assert all(keys[z] in emb.cache for z in order)
    assert emb.prefetch([(keys[z], loader(z), {}) for z in order]) == 0


def test_prefetch_stops_on_cancel(volume):
    enc = CountingEncoder()
    emb = SliceEmbedder(enc, EmbeddingCache())
    cancel = threading.Event()

    def items():
        for z in range(6):
            if z == 2:
                cancel.set()  # e.g. the user moved to another slice
            yield f"k{z}", (lambda z=z: volume[z]), {}

    assert emb.prefetch(items(), cancel=cancel) == 2
    assert len(enc.calls) == 2 and "k2" not in emb.cache


def test_precompute_progress_skip_and_cancel(volume):
    enc = CountingEncoder()
    emb = SliceEmbedder(enc, EmbeddingCache())
    emb.embed(volume[0], "z0")
    seen = []
    n = emb.precompute(volume, lambda z: f"z{z}", {"contrast_limits": (0, 4000)}, progress=lambda d, t: seen.append((d, t)))
    assert n == 5 and len(enc.calls) == 6
    assert seen == [(z, 6) for z in range(1, 7)]
    cancel = threading.Event()
    cancel.set()
    assert emb.precompute(volume, lambda z: f"other{z}", cancel=cancel) == 0
    with pytest.raises(ValueError, match="Z x H x W"):
        emb.precompute(volume[0], lambda z: f"z{z}")


def test_concurrent_requests_for_one_slice_embed_once(volume):
    enc = CountingEncoder(delay=0.2)
    emb = SliceEmbedder(enc, EmbeddingCache())
    results = []
    threads = [threading.Thread(target=lambda: results.append(emb.embed(volume[1], "same"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(enc.calls) == 1


def test_encoder_error_propagates_and_does_not_block(volume):
    class Failing(CountingEncoder):
        def encode(self, image, **normalisation):
            raise RuntimeError("boom")

    emb = SliceEmbedder(Failing(), EmbeddingCache())
    with pytest.raises(RuntimeError, match="boom"):
        emb.embed(volume[0], "k")
    emb.predictor = CountingEncoder()
    assert emb.embed(volume[0], "k").original_size == (32, 48)


def test_neighbour_order():
    assert neighbour_order(5, 10) == [5, 6, 4, 7, 3]
    assert neighbour_order(0, 10, radius=3) == [0, 1, 2, 3]
    assert neighbour_order(9, 10) == [9, 8, 7]
    assert neighbour_order(0, 1, radius=4) == [0]
    assert neighbour_order(2, 5, radius=0) == [2]
    with pytest.raises(ValueError, match="outside"):
        neighbour_order(10, 10)
    with pytest.raises(ValueError):
        neighbour_order(0, 3, radius=-1)


@pytest.mark.parametrize(
    "ndim, displayed, step, expected",
    [
        (2, (0, 1), (0, 0), (slice(None), slice(None))),
        (3, (1, 2), (7, 0, 0), (7, slice(None), slice(None))),  # ZYX
        (3, (0, 2), (3, 11, 4), (slice(None), 11, slice(None))),  # XZ plane of a volume
        (4, (2, 3), (5, 2, 0, 0), (5, 2, slice(None), slice(None))),  # TZYX
        (4, (1, 3), (5, 2, 9, 0), (5, slice(None), 9, slice(None))),
    ],
)
def test_plane_index(ndim, displayed, step, expected):
    assert plane_index(ndim, displayed, step) == expected


def test_plane_index_rejects_bad_input():
    with pytest.raises(ValueError, match="current_step"):
        plane_index(3, (1, 2), (0, 0))
    with pytest.raises(ValueError, match="displayed"):
        plane_index(3, (1, 1), (0, 0, 0))
    with pytest.raises(ValueError, match="displayed"):
        plane_index(3, (1, 3), (0, 0, 0))


def test_get_plane_orders_axes_like_the_view():
    data = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    idx = plane_index(3, (1, 2), (2, 0, 0))
    np.testing.assert_array_equal(get_plane(data, idx, (1, 2)), data[2])
    idx = plane_index(3, (2, 1), (0, 0, 3))  # rows show axis 2, columns axis 1
    np.testing.assert_array_equal(get_plane(data, idx, (2, 1)), data[0].T)
    idx = plane_index(3, (0, 2), (0, 4, 0))
    np.testing.assert_array_equal(get_plane(data, idx, (0, 2)), data[:, 4, :])


def test_precompute_reads_the_next_slice_while_encoding(volume):
    """A lazy stack (e.g. dask on disk): slice z+1 is read while slice z is encoded, each
    missing slice once, cached ones never; the embeddings are those of the right slices."""
    next_read = {z: threading.Event() for z in range(len(volume))}
    reads: list[tuple[int, str]] = []

    class Lazy:
        shape, dtype = volume.shape, volume.dtype

        def __getitem__(self, z):
            reads.append((z, threading.current_thread().name))
            time.sleep(0.02)  # disk
            next_read[z].set()
            return volume[z]

    overlapped = []

    class Waiting(CountingEncoder):
        def encode(self, image, **normalisation):
            z = int(np.flatnonzero(np.isclose(volume.mean(axis=(1, 2)), np.asarray(image).mean()))[0])
            if z + 1 in (1, 2, 3, 4):  # the read of the next missing slice runs meanwhile
                overlapped.append(next_read[z + 1].wait(5))
            return super().encode(image, **normalisation)

    enc = Waiting()
    emb = SliceEmbedder(enc, EmbeddingCache())
    emb.embed(volume[5], "z5")
    assert emb.precompute(Lazy(), lambda z: f"z{z}") == 5
    assert sorted(z for z, _ in reads) == [0, 1, 2, 3, 4]  # slice 5 was cached: never read
    assert all(name.startswith("edgesam-read-ahead") for _, name in reads)
    assert all(overlapped) and len(overlapped) == 4
    for z in range(len(volume)):
        assert emb.cache.get(f"z{z}").features[0, 0, 0, 0] == pytest.approx(volume[z].mean(), rel=1e-3)
