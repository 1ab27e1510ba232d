"""The interactive widget on a Z x Y x X stack: lazy embedding with prefetch, per-slice
previews committed as one 3D object, precomputation, and 3D propagation wiring."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import CountingBackend
from napari_edgesam._napari import layers as L
from napari_edgesam._napari import names
from napari_edgesam._napari.interactive_widget import InteractiveWidget
from napari_edgesam._napari.samples import make_nuclei_3d
from napari_edgesam.inference.core.predictor import EdgeSamPredictor
from napari_edgesam.inference.volume.propagation import PropagationResult

N_SLICES = 7
TIMEOUT = 120_000  # ms; the shared CI machine can be slow


@pytest.fixture()
def predictor(golden_predictor):
    return EdgeSamPredictor(CountingBackend(golden_predictor.backend), "golden")


@pytest.fixture()
def widget(make_napari_viewer, predictor, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(make_nuclei_3d((N_SLICES, 64, 80), count=5, seed=3), name="stack")
    viewer.dims.set_current_step(0, 3)
    w = InteractiveWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.set_predictor(predictor)
    yield w
    c = w.controller
    c.close()
    qtbot.waitUntil(lambda: not (c._decode.busy or c.embeddings.busy_embedding or c.embeddings.precomputing
                                 or c.propagation.running), timeout=TIMEOUT)
    from napari_edgesam._napari.workers import wait_for_workers

    wait_for_workers(TIMEOUT)


def cached_slices(c) -> list[int]:
    view = c.current_view()
    return [z for z in range(N_SLICES) if c.embeddings.key(view, view.plane.at(0, z)) in c.embeddings.cache]


def prompt(qtbot, c, xy):
    points, _ = c.prompt_layers()
    plane = c.current_plane()
    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT,
                          check_params_cb=lambda result: result.plane_key == plane.key) as blocker:
        L.add_point(points, plane, xy)
    return blocker.args[0]


def test_current_slice_first_then_neighbours(widget, predictor, qtbot):
    c = widget.controller
    assert c.current_plane().position[0] == 3
    qtbot.waitUntil(lambda: cached_slices(c) == [1, 2, 3, 4, 5], timeout=TIMEOUT)
    assert predictor.backend.encodes == 5  # z, then z+-1, z+-2; nothing else
    points, _ = c.prompt_layers()
    assert points.ndim == 3


def test_slices_are_segmented_separately_and_committed_as_one_object(widget, qtbot):
    c, viewer = widget.controller, widget.viewer
    qtbot.waitUntil(lambda: c.embeddings.lookup(c.current_view()) is not None, timeout=TIMEOUT)
    first = prompt(qtbot, c, (40, 30)).labels > 0
    preview = viewer.layers[names.PREVIEW_LAYER]
    assert preview.data.shape == (N_SLICES, 64, 80)
    np.testing.assert_array_equal(preview.data[3] > 0, first)
    assert not preview.data[[0, 1, 2, 4, 5, 6]].any()

    viewer.dims.set_current_step(0, 5)
    qtbot.waitUntil(lambda: c.current_plane().position[0] == 5 and
                    c.embeddings.lookup(c.current_view()) is not None, timeout=TIMEOUT)
    second = prompt(qtbot, c, (42, 31)).labels > 0
    np.testing.assert_array_equal(preview.data[5] > 0, second)
    np.testing.assert_array_equal(preview.data[3] > 0, first)  # slice 3 untouched

    record = c.commit()
    target = viewer.layers[names.LABELS_LAYER]
    assert record.ids == {1: 1}
    np.testing.assert_array_equal(target.data[3] == 1, first)
    np.testing.assert_array_equal(target.data[5] == 1, second)
    assert len(c.prompt_layers()[0].data) == 0
    c.undo_commit()
    assert not target.data.any()


def test_precompute_embeds_every_slice(widget, predictor, qtbot):
    c = widget.controller
    with qtbot.waitSignal(c.embeddings.precompute_finished, timeout=TIMEOUT):
        widget.precompute.click()
    assert cached_slices(c) == list(range(N_SLICES))
    assert widget.precompute_bar.value() == widget.precompute_bar.maximum() == N_SLICES
    assert predictor.backend.encodes == N_SLICES


def test_precompute_with_a_disk_cache(widget, qtbot, tmp_path):
    c = widget.controller
    widget.cache_dir.setText(str(tmp_path))
    widget.cache_dir.editingFinished.emit()
    with qtbot.waitSignal(c.embeddings.precompute_finished, timeout=TIMEOUT):
        c.precompute()
    assert len(list(tmp_path.glob("*.npz"))) == N_SLICES


def test_propagation_wiring_with_a_stub(widget, qtbot):
    c, viewer = widget.controller, widget.viewer
    qtbot.waitUntil(lambda: c.embeddings.lookup(c.current_view()) is not None, timeout=TIMEOUT)
    seed = prompt(qtbot, c, (40, 30)).labels > 0
    calls = {}

    def fake_propagate(predictor, get_embedding, seeds, n_slices, *, direction, cancel, progress, on_result,
                       protected=None):
        calls.update(seeds=seeds, n=n_slices, direction=direction, emb=get_embedding(4), protected=protected)
        out = {}
        for obj, obj_seeds in seeds.items():
            (z0, m0), = obj_seeds.items()
            masks, scores = dict(obj_seeds), {z0: 1.0}
            for z in (z0 + 1, z0 + 2):
                masks[z], scores[z] = np.roll(m0, z - z0, axis=1), 0.5 + 0.1 * (z - z0)
                on_result(obj, z, masks[z], scores[z])
                progress(z - z0, 2)
            out[obj] = PropagationResult(masks, scores, {"forward": "low stability", "backward": "end of stack"}, (z0,))
        return out

    c.propagation.propagate_fn = fake_propagate
    widget.direction.setCurrentText("forward (z+)")
    with qtbot.waitSignal(c.propagated, timeout=TIMEOUT) as blocker:
        widget.propagate.click()
    results = blocker.args[0]
    assert calls["direction"] == "forward" and calls["n"] == N_SLICES
    assert list(calls["seeds"]) == [1] and list(calls["seeds"][1]) == [3]
    np.testing.assert_array_equal(calls["seeds"][1][3], seed)
    assert calls["emb"].original_size == (64, 80)
    # nothing committed yet: no pixel of the stack is protected
    assert calls["protected"] is None or not calls["protected"](4).any()
    preview = viewer.layers[names.PREVIEW_LAYER].data
    np.testing.assert_array_equal(preview[3] > 0, seed)
    np.testing.assert_array_equal(preview[4] == 1, np.roll(seed, 1, axis=1))
    np.testing.assert_array_equal(preview[5] == 1, np.roll(seed, 2, axis=1))
    assert not preview[[0, 1, 2, 6]].any()
    assert "slices 3-5" in widget.quality.text() and "low stability" in widget.quality.text()
    assert viewer.layers[names.PREVIEW_LAYER].metadata["edgesam_propagation"]["1"]["5"] == pytest.approx(0.7)
    assert widget.propagation_bar.value() == 2
    assert set(results[1].masks) == {3, 4, 5}
    # the propagated object is committed as one 3D object
    c.commit()
    assert sorted({z for z in range(N_SLICES) if (viewer.layers[names.LABELS_LAYER].data[z] == 1).any()}) == [3, 4, 5]


def test_propagate_a_committed_label_back_into_its_id(widget, qtbot):
    c, viewer = widget.controller, widget.viewer
    qtbot.waitUntil(lambda: c.embeddings.lookup(c.current_view()) is not None, timeout=TIMEOUT)
    prompt(qtbot, c, (40, 30))
    c.commit()
    target = viewer.layers[names.LABELS_LAYER]
    target.data[0, :5, :5] = 2  # another object elsewhere
    target.selected_label = 1
    seen = {}

    def fake_propagate(predictor, get_embedding, seeds, n_slices, **kwargs):
        seen["seeds"] = seeds
        seen["protected"] = kwargs.get("protected")
        m = seeds[1][3]
        return {1: PropagationResult({3: m, 2: m}, {3: 1.0, 2: 0.9}, {}, (3,))}

    c.propagation.propagate_fn = fake_propagate
    with qtbot.waitSignal(c.propagated, timeout=TIMEOUT):
        assert c.propagate("backward")
    assert list(seen["seeds"]) == [1] and list(seen["seeds"][1]) == [3]
    assert c.keep_ids == {1: 1}
    # the other committed object is protected, the propagated one's own pixels are not
    assert seen["protected"](0)[:5, :5].all() and seen["protected"](0).sum() == 25
    assert not seen["protected"](3).any()
    # propagated again (the preview now holds it): its own committed pixels are still not protected
    with qtbot.waitSignal(c.propagated, timeout=TIMEOUT):
        assert c.propagate("forward")
    assert not seen["protected"](3).any() and seen["protected"](0).sum() == 25
    assert c.keep_ids == {1: 1}
    record = c.commit()
    assert record.ids == {1: 1}
    np.testing.assert_array_equal(target.data[2] == 1, target.data[3] == 1)
    assert (target.data[0] == 2).sum() == 25


def test_propagation_with_the_golden_model(widget, qtbot):
    c, viewer = widget.controller, widget.viewer
    qtbot.waitUntil(lambda: c.embeddings.lookup(c.current_view()) is not None, timeout=TIMEOUT)
    _, boxes = c.prompt_layers()
    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT):
        L.add_box(boxes, c.current_plane(), (20, 15, 60, 45))
    seed = viewer.layers[names.PREVIEW_LAYER].data[3].copy()
    c.propagation_options = {"min_stability": 0.0, "min_overlap": 0.0, "min_area": 1}
    state = dict(vars(c.predictor))
    with qtbot.waitSignal(c.propagated, timeout=TIMEOUT) as blocker:
        assert c.propagate("both")
    results = blocker.args[0]
    assert vars(c.predictor) == state  # propagation only decodes: the predictor is not changed
    res = results[1]
    assert res.seeded == (3,)
    preview = viewer.layers[names.PREVIEW_LAYER].data
    np.testing.assert_array_equal(preview[3], seed)
    for z, mask in res.masks.items():
        np.testing.assert_array_equal(preview[z] == 1, mask)
    assert set(res.stopped) == {"forward", "backward"}
    assert widget.quality.text().startswith("object 1:")


def test_propagation_can_be_cancelled(widget, qtbot):
    c = widget.controller
    qtbot.waitUntil(lambda: c.embeddings.lookup(c.current_view()) is not None, timeout=TIMEOUT)
    prompt(qtbot, c, (40, 30))
    started = []

    def waits_for_cancel(predictor, get_embedding, seeds, n_slices, *, cancel, on_result, **kwargs):
        started.append(True)
        assert cancel.wait(30), "never cancelled"
        mask = seeds[1][3]
        on_result(1, 4, mask, 0.9)  # what was found before the cancel is kept
        return {1: PropagationResult({3: mask, 4: mask}, {3: 1.0, 4: 0.9}, {"forward": "cancelled"}, (3,))}

    c.propagation.propagate_fn = waits_for_cancel
    with qtbot.waitSignal(c.propagated, timeout=TIMEOUT):
        widget.propagate.click()
        qtbot.waitUntil(lambda: bool(started), timeout=TIMEOUT)
        assert c.propagation.running
        widget.cancel_propagation.click()
    assert not c.propagation.running
    assert "cancelled" in widget.quality.text() and "cancelled" in widget.status.text()
    assert (widget.viewer.layers[names.PREVIEW_LAYER].data[4] > 0).any()


class _SleepyEncoder:
    """Encodes in 0.3 s with fixed features (for cancelling mid-way)."""

    name = "sleepy"
    provides_iou_scores = True
    supports_mask_input = True

    def encode(self, image):
        import time

        time.sleep(0.3)
        return np.zeros((1, 256, 64, 64), np.float32)

    def decode(self, *args, **kwargs):  # pragma: no cover - not used
        raise AssertionError("no decoding in this test")


def test_precompute_can_be_cancelled(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 4000, (20, 32, 32)).astype(np.uint16), name="stack")
    w = InteractiveWidget(viewer)
    c = w.controller
    c.embeddings.prefetch_radius = 0
    w.set_predictor(EdgeSamPredictor(_SleepyEncoder(), "sleepy"))
    qtbot.waitUntil(lambda: not c.embeddings.busy_embedding, timeout=TIMEOUT)
    progress = []
    c.embeddings.precompute_progress.connect(lambda done, total: progress.append(done))
    with qtbot.waitSignal(c.embeddings.precompute_finished, timeout=TIMEOUT) as blocker:
        w.precompute.click()
        qtbot.waitUntil(lambda: len(progress) >= 2, timeout=TIMEOUT)
        w.cancel_precompute.click()
    assert 0 < blocker.args[0] < 19
    assert max(progress) < 20
    c.close()
