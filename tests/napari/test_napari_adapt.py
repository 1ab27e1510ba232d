"""The "Adapt to my annotations" panel in a real napari viewer: commits become training data,
adaptation runs while clicks keep being answered, the adapted model is hot-swapped (the preview
re-runs) or rejected, Revert goes back, Cancel stops.

These tests drive the panel with a stand-in of :mod:`napari_edgesam.training.adapt` of the same
shape (``AdaptObject``, ``AdaptData``, ``Adapter``, ``AdaptResult``), so that acceptance,
rejection and the length of a step are chosen by the test; ``test_napari_adapt_real.py`` runs
the real adaptation.
"""

from __future__ import annotations

import gc
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from test_napari_responsive import MAX_GAP_S, TickRecorder  # the stall test's method and bound

from _helpers import CountingBackend
from napari_edgesam._napari import adapt_panel as panel_module
from napari_edgesam._napari import layers as L
from napari_edgesam._napari.adapt_job import MIN_OBJECTS, AdaptJob, AdaptRequest, describe
from napari_edgesam._napari.interactive_widget import InteractiveWidget
from napari_edgesam._napari.samples import make_nuclei_2d
from napari_edgesam._napari.workers import wait_for_workers
from napari_edgesam.datasets import synthetic_nuclei_2d
from napari_edgesam.inference.backends import compute_thread
from napari_edgesam.inference.core.predictor import EdgeSamPredictor
from napari_edgesam.inference.core.preprocess import to_rgb_uint8
from napari_edgesam.interactive.annotations import read_annotations
from napari_edgesam.interactive.commit_log import AnnotationLog
from napari_edgesam.training.adapt import AdaptData, AdaptObject
from napari_edgesam.training.adapt.result import AdaptResult

TIMEOUT = 120_000
SHAPE, COUNT, SEED = (96, 128), 6, 5


class ShiftedBackend:
    """The golden decoder with its logits lowered: a visibly different (adapted) model that
    shares the encoder."""

    def __init__(self, inner, shift: float = 6.0) -> None:
        self.inner, self.shift = inner, shift
        self.name = inner.name
        self.model = getattr(inner, "model", None)
        self.provides_iou_scores = inner.provides_iou_scores
        self.supports_mask_input = inner.supports_mask_input

    def encode(self, image):
        return self.inner.encode(image)

    def decode(self, *args, **kwargs):
        low, iou = self.inner.decode(*args, **kwargs)
        return low - self.shift, iou


class FakeAdapter:
    """``n_steps`` steps of ``step_s`` seconds each (sleeping where it runs: the compute thread);
    records where each step ran and what data it got."""

    def __init__(self, api, predictor, data, *, max_seconds=60.0, holdout_fraction=0.2, seed=0, params="decoder"):
        self.api, self.predictor, self.data, self.params = api, predictor, data, params
        self.i = 0
        api.adapters.append(self)
        self.threads: list[bool] = []

    def prepare(self):
        self.t0 = time.monotonic()

    def step(self):
        self.threads.append((threading.current_thread().name, compute_thread.on_compute_thread()))
        time.sleep(self.api.step_s)
        self.i += 1
        return 1.0 / self.i

    @property
    def done(self):
        return self.i >= self.api.n_steps

    @property
    def progress(self):
        return self.i / self.api.n_steps, (self.api.n_steps - self.i) * self.api.step_s

    def finish(self):
        n_held = max(1, len(self.data.objects) // 5)
        adapted = EdgeSamPredictor(ShiftedBackend(self.predictor.backend), f"{self.predictor.model_name}-adapted")
        after = 0.81 if self.api.accept else 0.41
        return AdaptResult(self.api.accept, {"miou": 0.62}, {"miou": after}, len(self.data.objects) - n_held,
                          n_held, time.monotonic() - self.t0, "fake", adapted)


def fake_api(accept=True, n_steps=3, step_s=0.01):
    api = SimpleNamespace(accept=accept, n_steps=n_steps, step_s=step_s, adapters=[], saved=[])
    api.AdaptObject, api.AdaptData = AdaptObject, AdaptData  # the real (torch-free) data classes
    api.Adapter = lambda *a, **k: FakeAdapter(api, *a, **k)

    def save_adapted(result, name):
        api.saved.append((result, name))
        return f"/cache/{name}.pth"

    api.save_adapted = save_adapted
    return api


@pytest.fixture()
def predictor(golden_predictor):
    return EdgeSamPredictor(CountingBackend(golden_predictor.backend), "golden")


def make_widget(make_napari_viewer, predictor, qtbot, api):
    viewer = make_napari_viewer()
    image, truth = synthetic_nuclei_2d(seed=SEED, shape=SHAPE, n_nuclei=COUNT)
    assert np.array_equal(image, make_nuclei_2d(SHAPE, count=COUNT, seed=SEED))
    viewer.add_image(image, name="nuclei")
    w = InteractiveWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.adapt_panel._api = api  # the stand-in (the real module: test_napari_adapt_real.py)
    w.adapt_panel.disabled_reason = ""
    w.adapt_panel._set_available(True)
    w.autozoom.setChecked(False)
    w.set_predictor(predictor)
    c = w.controller
    qtbot.waitUntil(lambda: c.embeddings.lookup(c.current_view()) is not None, timeout=TIMEOUT)
    return w, truth


def close(w, qtbot):
    w.adapt_panel.runner.cancel()
    assert w.adapt_panel.runner.wait(60)
    w.controller.close()
    qtbot.waitUntil(lambda: not w.controller._decode.busy and not w.controller.embeddings.busy_embedding,
                    timeout=TIMEOUT)


def nucleus_boxes(truth: np.ndarray, n: int) -> list[tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) boxes around the ``n`` largest nuclei."""
    ids, counts = np.unique(truth[truth > 0], return_counts=True)
    out = []
    for i in ids[np.argsort(-counts)][:n]:
        rows, cols = np.nonzero(truth == i)
        out.append((cols.min() - 1.0, rows.min() - 1.0, cols.max() + 1.0, rows.max() + 1.0))
    return out


def commit_box(qtbot, c, box) -> object:
    _, boxes = c.prompt_layers()
    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT):
        L.add_box(boxes, c.current_plane(), box)
    return c.commit()


def add_point(qtbot, c, xy):
    points, _ = c.prompt_layers()
    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT) as blocker:
        L.add_point(points, c.current_plane(), xy)
    return blocker.args[0]


def run_adaptation(qtbot, panel):
    with qtbot.waitSignal(panel.runner.finished, timeout=TIMEOUT):
        assert panel.start()
    return panel.last_outcome


def test_commits_become_training_data_and_undo_removes_them(make_napari_viewer, predictor, qtbot):
    api = fake_api()
    w, truth = make_widget(make_napari_viewer, predictor, qtbot, api)
    c, panel = w.controller, w.adapt_panel
    boxes = nucleus_boxes(truth, 3)
    records = [commit_box(qtbot, c, b) for b in boxes]
    snap = c.annotations.snapshot()
    assert snap.n_objects == 3 and snap.n_images == 1
    assert "3 committed object(s) on 1 plane(s)" in panel.counts.text()
    target = c.target_layer().data
    for obj, record, box in zip(snap.objects, records, boxes, strict=True):
        (tid,) = record.ids.values()
        assert obj.label == tid
        assert np.array_equal(obj.mask, target == tid)  # exactly what was committed
        assert np.allclose(obj.prompts.box, box) and len(obj.prompts.points) == 0
    (rgb,) = snap.load_images().values()
    layer = c.image_layer
    assert np.array_equal(rgb, to_rgb_uint8(layer.data, contrast_limits=layer.contrast_limits, gamma=layer.gamma))

    # too few objects: a clear line, nothing starts
    assert not panel.start()
    assert f"commit at least {MIN_OBJECTS} objects" in panel.result.text() and not panel.runner.busy

    # the user corrects with the brush: object 0 loses its upper half, object 1 is erased
    layer = c.target_layer()
    first, second = (o.label for o in snap.objects[:2])
    rows, cols = np.nonzero(layer.data == first)  # raster order: the first half are the upper rows
    assert len(rows) >= 2
    layer.data[rows[: len(rows) // 2], cols[: len(rows) // 2]] = 0
    layer.data[layer.data == second] = 0
    now = c.annotations.snapshot().current()
    assert [o.label for o in now.objects] == [first, snap.objects[2].label]
    assert np.array_equal(now.objects[0].mask, layer.data == first) and 0 < now.objects[0].area < snap.objects[0].area
    w.viewer.layers.remove(layer)  # gone: the masks of the commits are used
    assert [o.area for o in c.annotations.snapshot().current().objects] == [o.area for o in snap.objects]
    w.viewer.layers.append(layer)

    c.undo_commit()
    assert len(c.annotations) == 2
    assert [o.label for o in c.annotations.snapshot().objects] == [o.label for o in snap.objects[:2]]
    close(w, qtbot)


def test_adapt_hot_swaps_the_model_revert_save_export(make_napari_viewer, predictor, qtbot, tmp_path):
    api = fake_api(accept=True)
    w, truth = make_widget(make_napari_viewer, predictor, qtbot, api)
    c, panel = w.controller, w.adapt_panel
    boxes = nucleus_boxes(truth, 5)
    for b in boxes:
        commit_box(qtbot, c, b)
    cx, cy = (boxes[0][0] + boxes[0][2]) / 2, (boxes[0][1] + boxes[0][3]) / 2
    before = add_point(qtbot, c, (cx, cy)).labels.copy()
    encodes = predictor.backend.encodes

    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT) as swapped:  # the preview re-runs
        outcome = run_adaptation(qtbot, panel)
    assert outcome.accepted
    (adapter,) = api.adapters
    assert adapter.predictor is predictor and len(adapter.threads) == api.n_steps
    # the steps ran on the adaptation's own thread, never on the compute thread that answers clicks
    assert adapter.threads == [("napari-edgesam-adapt", False)] * api.n_steps
    ids, areas = np.unique(c.target_layer().data, return_counts=True)
    kept = int(np.sum((ids > 0) & (areas >= c.annotations.min_area)))  # (the golden model's masks may overlap)
    assert kept >= 3 and len(adapter.data.objects) == kept and len(adapter.data.images) == 1
    assert all(o.box is not None and len(o.points) == 0 for o in adapter.data.objects)
    (key,) = adapter.data.embeddings  # the widget's cached embedding, not encoded again
    assert adapter.data.embeddings[key] is c.embeddings.lookup(c.current_view())
    adapted = c.predictor
    assert adapted is outcome.result.predictor and adapted is not predictor
    after = swapped.args[0].labels
    assert after.sum() < before.sum()  # the adapted (lower-logit) decoder answered
    assert np.array_equal(c.preview_layer().data, after)
    assert predictor.backend.encodes == encodes, "a decoder-only adaptation must not re-embed"
    assert panel.result.text().startswith(f"held-out IoU 0.62 -> 0.81 on 1 of your {kept} objects")
    assert panel.revert.isEnabled() and panel.save.isEnabled()
    assert panel.name.text() == "golden-adapted"

    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT) as reverted:
        panel.revert.click()
    assert c.predictor is predictor and not panel.revert.isEnabled()
    assert np.array_equal(reverted.args[0].labels, before)

    assert panel.save_model("my-nuclei") is not None
    qtbot.waitUntil(lambda: "saved as 'my-nuclei'" in panel.result.text(), timeout=TIMEOUT)
    assert api.saved == [(outcome.result, "my-nuclei")]

    assert panel.export_to(tmp_path / "export") is not None
    qtbot.waitUntil(lambda: panel.result.text().startswith("exported"), timeout=TIMEOUT)
    (item,) = read_annotations(tmp_path / "export")  # the training folder, read back
    layer = c.image_layer
    assert np.array_equal(item.image, to_rgb_uint8(layer.data, contrast_limits=layer.contrast_limits)[..., 0])
    target = c.target_layer().data
    assert np.array_equal(item.labels, np.where(np.isin(target, ids[areas >= c.annotations.min_area]), target, 0))
    assert len(item.prompts) == kept
    by_id = {o.label: o.prompts.box for o in c.annotations.snapshot().objects}
    for p in item.prompts:  # the box that made each object, under its id
        assert np.allclose(p.box, by_id[p.id]) and any(np.allclose(p.box, b) for b in boxes) and len(p.points) == 0
    close(w, qtbot)


def test_rejected_adaptation_keeps_the_base_model(make_napari_viewer, predictor, qtbot):
    api = fake_api(accept=False)
    w, truth = make_widget(make_napari_viewer, predictor, qtbot, api)
    c, panel = w.controller, w.adapt_panel
    for b in nucleus_boxes(truth, 4):
        commit_box(qtbot, c, b)
    outcome = run_adaptation(qtbot, panel)
    assert not outcome.accepted and c.predictor is predictor
    assert "0.62 -> 0.41" in panel.result.text() and "the base model is kept" in panel.result.text()
    assert not panel.revert.isEnabled() and not panel.save.isEnabled()
    assert panel.save_model("x") is None and "nothing to save" in panel.result.text()
    close(w, qtbot)


def test_cancel_keeps_the_model_and_clicks_are_answered_while_adapting(make_napari_viewer, predictor, qtbot):
    """Adaptation with 150 ms steps: a click is answered long before it ends, the Qt thread
    never stalls, Cancel stops it after the current step and the model stays."""
    api = fake_api(accept=True, n_steps=400, step_s=0.15)  # 60 s unless cancelled
    w, truth = make_widget(make_napari_viewer, predictor, qtbot, api)
    c, panel = w.controller, w.adapt_panel
    boxes = nucleus_boxes(truth, 5)
    for b in boxes:
        commit_box(qtbot, c, b)
    qtbot.wait(300)
    gc.collect()  # not the garbage earlier tests left (a full collection of it holds the interpreter)
    with TickRecorder() as rec:
        assert panel.start()
        qtbot.waitUntil(lambda: bool(api.adapters) and api.adapters[0].i >= 3, timeout=TIMEOUT)
        latencies = []
        for box in boxes[:3]:
            start = time.perf_counter()
            add_point(qtbot, c, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
            latencies.append(time.perf_counter() - start)
            c.clear()
        assert panel.runner.busy and panel.progress.value() > 0 and "s left" in panel.progress.format()
        with qtbot.waitSignal(panel.runner.finished, timeout=TIMEOUT):
            panel.cancel.click()
    assert rec.max_gap < MAX_GAP_S, f"the Qt thread was blocked for {rec.max_gap:.3f} s while adapting"
    assert max(latencies) < 1.5, latencies  # no step is waited for (generous for a busy CI)
    outcome = panel.last_outcome
    assert outcome.cancelled and c.predictor is predictor and api.adapters[0].i < api.n_steps
    assert "cancelled" in panel.result.text() and panel.adapt.isEnabled() and not panel.cancel.isEnabled()
    close(w, qtbot)


def test_adapt_after_every_n_commits_and_a_labels_layer(make_napari_viewer, predictor, qtbot):
    api = fake_api(accept=False)
    w, truth = make_widget(make_napari_viewer, predictor, qtbot, api)
    c, panel = w.controller, w.adapt_panel
    w.viewer.add_labels(truth.astype(np.int32), name="cellpose")
    panel.use_labels.setChecked(True)
    panel.labels_layer.setCurrentText("cellpose")
    assert panel.start()  # no commits: the labels layer alone
    qtbot.waitUntil(lambda: not panel.runner.busy, timeout=TIMEOUT)
    data = api.adapters[-1].data
    assert len(data.objects) == len(np.unique(truth)) - 1
    assert all(o.box is None and len(o.points) == 0 for o in data.objects)
    panel.use_labels.setChecked(False)

    panel.auto.setChecked(True)
    panel.auto_every.setValue(4)
    boxes = nucleus_boxes(truth, 4)
    for b in boxes[:3]:
        commit_box(qtbot, c, b)
    assert len(api.adapters) == 1 and not panel.runner.busy
    with qtbot.waitSignal(panel.runner.finished, timeout=TIMEOUT):
        commit_box(qtbot, c, boxes[3])
    assert len(api.adapters) == 2 and len(api.adapters[1].data.objects) == 4
    close(w, qtbot)


def test_panel_without_torch_is_disabled_with_the_reason(make_napari_viewer, monkeypatch):
    monkeypatch.setattr("napari_edgesam.inference.loading.api.torch_available", lambda: False)
    reason = panel_module.torch_missing_reason()
    assert "needs PyTorch" in reason and "pip install" in reason
    viewer = make_napari_viewer()
    w = InteractiveWidget(viewer)
    panel = w.adapt_panel
    assert not panel.adapt.isEnabled() and panel.adapt.toolTip() == reason
    assert panel.toolTip() == reason and panel.result.text() == reason
    assert not panel.start() and not panel.runner.busy
    w.controller.close()
    assert wait_for_workers(TIMEOUT)  # the model panel's own start-up workers


# -- Qt-free parts ---------------------------------------------------------------------------
def test_job_reports_failures_and_too_few_in_one_line():
    log = AnnotationLog()
    image = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[4:12, 4:12] = True
    log.add_commit(object(), [("k", lambda: image, {1: mask}, {})])
    api = fake_api()
    api.Adapter = lambda *a, **k: (_ for _ in ()).throw(ValueError("too few objects\nto hold out"))
    job = AdaptJob(SimpleNamespace(model_name="m"), AdaptRequest(log.snapshot()), api=api,
                   run_step=lambda fn: fn())
    outcome = job.run(threading.Event())
    assert outcome.failed and outcome.result is None
    assert outcome.message == "adaptation failed, the model is unchanged: too few objects; to hold out"


def test_describe_and_annotation_log_undo_by_identity():
    res = SimpleNamespace(accepted=True, before={"box_miou": 0.5}, after={"box_miou": 0.75}, n_heldout=4,
                          n_train=16, seconds=47.6, message="")
    assert describe(res, 20) == ("held-out IoU 0.50 -> 0.75 on 4 of your 20 objects, 48 s: "
                                 "the adapted model is in use (Revert goes back)")
    log = AnnotationLog(min_area=4)
    mask = np.ones((8, 8), bool)
    speck = np.zeros((8, 8), bool)
    speck[0, 0] = True

    class Record:  # a commit record (weak-referenceable, compared by identity)
        pass

    first, second = Record(), Record()
    assert log.add_commit(first, [("a", lambda: None, {1: mask, 2: speck}, {})]) == 1  # the speck is dropped
    assert log.add_commit(second, [("b", lambda: None, {3: mask}, {})]) == 1
    assert log.undo_commit(Record()) == 0 and len(log) == 2
    assert log.undo_commit(second) == 1 and log.snapshot().n_images == 1
    assert log.undo_commit(second) == 0 and log.n_commits == 1



def test_a_propagated_commit_is_kept_on_every_slice_and_a_labels_stack_per_plane():
    """3D: a commit whose preview spans slices 2-4 (propagation) gives one object per slice
    (the prompts only where the user prompted); a labels layer of a stack gives every plane."""
    from napari_edgesam._napari.annotation_capture import capture_commit, labels_planes
    from napari_edgesam._napari.embedding import ImageView
    from napari_edgesam.interactive.planes import Plane
    from napari_edgesam.interactive.session import ObjectPrompt, Session

    class NoModel:  # the widget's embeddings before a model is loaded
        def key(self, view, plane):
            raise RuntimeError("no model")

    data = np.random.default_rng(0).integers(0, 4000, (6, 40, 50)).astype(np.uint16)
    view = ImageView(data, Plane(data.shape, (1, 2), (3, 0, 0)), {"contrast_limits": (0.0, 4000.0), "gamma": 1.0})
    preview = np.zeros(data.shape, np.uint16)
    preview[2:5, 10:20, 10:25] = 1
    target = np.zeros(data.shape, np.uint32)
    target[3, 10:12, 10:25] = 7  # an existing object the commit does not overwrite
    record = Session().commit(preview, target, handle="layer")
    prompt = ObjectPrompt(np.array([[15.0, 15.0]], np.float32), np.array([1]))
    log = AnnotationLog()
    assert capture_commit(log, NoModel(), view, [prompt], record, preview, target) == 3
    snap = log.snapshot()
    (tid,) = record.ids.values()
    assert snap.n_images == 3 and [o.label for o in snap.objects] == [tid] * 3
    for obj, z in zip(snap.objects, (2, 3, 4), strict=True):
        assert np.array_equal(obj.mask, target[z] == tid)
        assert (obj.prompts is prompt) == (z == 3)
    images = snap.load_images()
    assert np.array_equal(images[snap.objects[0].image_key], to_rgb_uint8(data[2], contrast_limits=(0, 4000)))

    labels = np.zeros(data.shape, np.int32)
    labels[1, 5:9, 5:9] = 3
    labels[4, 20:30, 20:30] = 5
    planes = labels_planes(view, labels, NoModel())
    assert len(planes) == 6  # read later, in the worker: empty planes are skipped there
    job = AdaptJob(None, AdaptRequest(AnnotationLog().snapshot(), tuple(planes)), api=fake_api())
    adapt_data = job.build_data(fake_api())
    assert [int(o.mask.sum()) for o in adapt_data.objects] == [16, 100] and len(adapt_data.images) == 2
    with pytest.raises(ValueError, match="labels layer has shape"):
        labels_planes(view, labels[:3], NoModel())
