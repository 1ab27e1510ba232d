"""The interactive controller follows the image and the viewer: an in-place edit of the image
(``layer.data[...] = ...; layer.refresh()``) gives a new embedding, never one of other pixels;
closing the viewer closes the controller and lets its workers end cleanly."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import CountingBackend
from napari_edgesam._napari import layers as L
from napari_edgesam._napari import names
from napari_edgesam._napari.embedding import EmbeddingService
from napari_edgesam._napari.interactive_widget import InteractiveWidget
from napari_edgesam._napari.samples import make_nuclei_2d, make_nuclei_3d
from napari_edgesam.inference.core.predictor import EdgeSamPredictor
from napari_edgesam.inference.embeddings import keys as embedding_keys
from napari_edgesam.inference.volume.propagation import PropagationResult

TIMEOUT = 120_000


@pytest.fixture()
def predictor(golden_predictor):
    return EdgeSamPredictor(CountingBackend(golden_predictor.backend), "golden")


def test_an_off_grid_edit_of_a_large_numpy_array_changes_its_signature(monkeypatch):
    monkeypatch.setattr(embedding_keys, "FULL_HASH_BYTES", 1000)  # "large": the sampled path
    data = np.random.default_rng(0).integers(0, 255, (40, 64, 64), dtype=np.uint8)
    sampled = set(np.linspace(0, 39, 32).astype(int))
    z = next(i for i in range(40) if i not in sampled)
    before = embedding_keys.data_signature(data)
    service = EmbeddingService()
    sig = service.signature(data, compute=True)
    data[z, 1, 1] ^= 0xFF
    assert embedding_keys.data_signature(data) == before  # what a sampled key misses
    assert service.signature(data, compute=True) == sig  # memoised until told
    service.forget_data(data)
    assert service.signature(data, compute=True) != sig


class _ConstantEncoder:
    """A predictor whose embeddings are filled with ``value`` (tells models apart)."""

    def __init__(self, name: str, value: float) -> None:
        self.model_name, self.value, self.prior = name, value, None

    def encode(self, image, *, prior=None, **normalisation):
        from napari_edgesam.inference.core.predictor import ImageEmbedding

        return ImageEmbedding(np.full((1, 256, 64, 64), self.value, np.float32), image.shape[:2], (1024, 1024))


def test_work_of_the_previous_model_is_embedded_with_that_model():
    # a model switch while a plane is being embedded (or prefetched, precomputed) for the old
    # model: the old model's key must get the old model's embedding, never the new one's (with a
    # disk cache it would be served again for the old model later)
    service = EmbeddingService()
    service.set_predictor(_ConstantEncoder("a", 1.0))
    old = service.embedder
    service.set_predictor(_ConstantEncoder("b", 2.0))
    key = old.key("signature", (0,), {})
    emb = old.embed(np.zeros((32, 32), np.uint8), key)
    assert np.all(emb.features == 1.0) and np.all(service.cache.get(key).features == 1.0)
    new_key = service.embedder.key("signature", (0,), {})
    assert new_key != key and np.all(service.embedder.embed(np.zeros((32, 32), np.uint8), new_key).features == 2.0)


def test_in_place_edit_and_refresh_gives_a_new_embedding(make_napari_viewer, predictor, qtbot):
    viewer = make_napari_viewer()
    layer = viewer.add_image(make_nuclei_2d((96, 128), count=6, seed=5), name="nuclei")
    w = InteractiveWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.set_predictor(predictor)
    c, backend = w.controller, predictor.backend
    qtbot.waitUntil(lambda: c.embeddings.lookup(c.current_view()) is not None, timeout=TIMEOUT)
    points, _ = c.prompt_layers()
    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT):
        L.add_point(points, c.current_plane(), (40, 30))
    old = c.embeddings.lookup(c.current_view())
    encodes = backend.encodes
    qtbot.wait(300)
    assert backend.encodes == encodes  # nothing changed: nothing embedded again

    new_pixels = make_nuclei_2d((96, 128), count=6, seed=99)
    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT):
        layer.data[...] = new_pixels  # the same array object, edited in place
        layer.refresh()
    assert backend.encodes == encodes + 1
    view = c.current_view()
    emb = c.embeddings.lookup(view)
    ref = EdgeSamPredictor(backend.inner)  # not counted
    fresh = ref.encode(new_pixels, **view.normalisation)
    # the cache keeps float16 features: equal to the new pixels' embedding up to that rounding
    np.testing.assert_allclose(emb.features.astype(np.float32), fresh.features, rtol=2e-3, atol=1e-3)
    assert np.abs(emb.features.astype(np.float32) - old.features.astype(np.float32)).max() > 0.1
    # the preview is the answer on the new pixels
    mask, _, _ = ref.segment(np.float32([[40, 30]]), np.int64([1]), embedding=emb)
    np.testing.assert_array_equal(viewer.layers[names.PREVIEW_LAYER].data > 0, mask)
    # a slice/redraw without an edit costs no encoder run
    layer.refresh()
    qtbot.wait(500)
    assert backend.encodes == encodes + 1
    c.close()
    qtbot.waitUntil(lambda: not c.busy, timeout=TIMEOUT)


def test_closing_the_viewer_closes_the_controller_and_ends_its_workers(make_napari_viewer, predictor, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(make_nuclei_3d((7, 64, 80), count=5, seed=3), name="stack")
    viewer.dims.set_current_step(0, 3)
    w = InteractiveWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.set_predictor(predictor)
    c = w.controller
    qtbot.waitUntil(lambda: c.embeddings.lookup(c.current_view()) is not None, timeout=TIMEOUT)
    points, _ = c.prompt_layers()
    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT):
        L.add_point(points, c.current_plane(), (40, 30))
    started, reported = [], []

    def waits_for_cancel(predictor, get_embedding, seeds, n_slices, *, cancel, on_result, **kwargs):
        started.append(True)
        assert cancel.wait(30), "never cancelled"
        mask = seeds[1][3]
        try:
            on_result(1, 4, mask, 0.9)
            reported.append("ok")
        except RuntimeError as err:  # e.g. "Relay has been deleted"
            reported.append(str(err))
        return {1: PropagationResult({3: mask, 4: mask}, {3: 1.0, 4: 0.9}, {"forward": "cancelled"}, (3,))}

    c.propagation.propagate_fn = waits_for_cancel
    assert c.propagate("both")
    qtbot.waitUntil(lambda: bool(started), timeout=TIMEOUT)
    viewer.close()
    qtbot.waitUntil(lambda: c.closed, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not c.propagation.running, timeout=TIMEOUT)
    assert reported == ["ok"]
    assert not c.busy and len(c.embeddings.cache) == 0
