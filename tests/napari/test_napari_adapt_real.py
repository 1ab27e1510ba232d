"""The adapt panel end to end with the real adaptation (:mod:`napari_edgesam.training.adapt`).

The mismatch (as tests/training/test_adapt.py): the shipped ``edgesam-nuclei`` (bright nuclei on
a dark background) on nuclei with inverted contrast, where its box masks are nearly empty. The
user has labels of the image (e.g. Cellpose output) and ticks them in the panel; the adapted
model is hot-swapped (the preview of a box gets better), a click is answered while it adapts,
the Qt thread never stalls, Revert restores the preview, Save puts it in the model list and it
loads by name with the same masks.
"""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest
from test_napari_responsive import MAX_GAP_S, TickRecorder

from napari_edgesam._napari import layers as L
from napari_edgesam._napari.interactive_widget import InteractiveWidget
from napari_edgesam.datasets import synthetic_nuclei_2d

torch = pytest.importorskip("torch")

TIMEOUT = 300_000
SHAPE, COUNT, SEED = (192, 192), 10, 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def _boxes(truth: np.ndarray) -> list[tuple[int, tuple[float, float, float, float]]]:
    """(id, box (x0, y0, x1, y1)) of the nuclei, largest first."""
    ids, counts = np.unique(truth[truth > 0], return_counts=True)
    out = []
    for i in ids[np.argsort(-counts)]:
        rows, cols = np.nonzero(truth == i)
        h, w = truth.shape
        out.append((int(i), (max(cols.min() - 1.0, 0.0), max(rows.min() - 1.0, 0.0), min(cols.max() + 1.0, w - 1.0),
                             min(rows.max() + 1.0, h - 1.0))))
    return out


def _box_preview(qtbot, c, box) -> np.ndarray:
    _, boxes = c.prompt_layers()
    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT) as blocker:
        L.add_box(boxes, c.current_plane(), box)
    return blocker.args[0].labels > 0


@pytest.fixture()
def own_cache(monkeypatch, tmp_path):
    """A weights cache of this test's own: the model it saves does not reach later tests' lists."""
    from napari_edgesam.cachedir import CACHE_ENV
    from napari_edgesam.inference.loading.weights import refresh_adapted_models

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    yield
    monkeypatch.undo()
    refresh_adapted_models()  # the saved model leaves the registry with its cache


@pytest.mark.usefixtures("own_cache")
def test_adapt_end_to_end(make_napari_viewer, qtbot):
    from napari_edgesam.inference.loading.api import list_models, load_model

    base = load_model("edgesam-nuclei", backend="torch", allow_download=False, jit=False)
    viewer = make_napari_viewer()
    image, truth = synthetic_nuclei_2d(seed=SEED, shape=SHAPE, n_nuclei=COUNT, radius=(10.0, 20.0))
    viewer.add_image((image.max() - image).astype(np.uint16), name="inverted nuclei")
    viewer.add_labels(truth.astype(np.int32), name="cellpose")
    w = InteractiveWidget(viewer)
    viewer.window.add_dock_widget(w)
    c, panel = w.controller, w.adapt_panel
    assert not panel.disabled_reason and panel.adapt.isEnabled()
    w.autozoom.setChecked(False)
    w.set_predictor(base)
    qtbot.waitUntil(lambda: c.embeddings.lookup(c.current_view()) is not None, timeout=TIMEOUT)

    nuclei = _boxes(truth)
    label, box = nuclei[0]
    before = _box_preview(qtbot, c, box)
    assert _iou(before, truth == label) < 0.5  # the mismatch is real
    assert not panel.start() and "commit at least" in panel.result.text()  # nothing committed, nothing ticked
    panel.use_labels.setChecked(True)
    panel.labels_layer.setCurrentText("cellpose")
    panel.seconds.setValue(25)

    assert panel.start()
    # the first adaptation of a session imports torch._dynamo (adapt_job.warm_up: one stall, before any step)
    qtbot.waitUntil(lambda: panel.progress.value() > 0, timeout=TIMEOUT)  # stepping now
    gc.collect()  # not the garbage earlier tests left: a full collection of it holds the interpreter ~0.4 s here
    with TickRecorder() as rec:  # from the first step through the hot swap
        points, _ = c.prompt_layers()
        start = time.perf_counter()
        with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT):
            L.add_point(points, c.current_plane(), ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
        click_s = time.perf_counter() - start
        busy_when_answered = panel.runner.busy
        points.data = points.data[:0]  # back to the box alone
        qtbot.waitUntil(lambda: not panel.runner.busy, timeout=TIMEOUT)
        qtbot.waitUntil(lambda: c.preview_layer().data.any() and not c.busy, timeout=TIMEOUT)
    outcome = panel.last_outcome
    print(f"click answered in {click_s:.3f} s while adapting; steps {len(outcome.step_seconds)}, median "
          f"{np.median(outcome.step_seconds):.3f} s; longest Qt stall {rec.max_gap:.3f} s; {outcome.message}")
    assert busy_when_answered, "the click was answered only after the adaptation"
    assert click_s < 1.5  # no step is waited for (noisy shared CPU: generous)
    # an adaptation step on the Qt thread stalled it 0.66-3.1 s per step (session 5); the real run
    # keeps it far below that, but one CI run on a host ~2x slower than usual measured a 0.385 s
    # tick gap (0.015 s typical): twice the responsiveness tests' bound still catches a step
    assert rec.max_gap < 2 * MAX_GAP_S, f"the Qt thread was blocked for {rec.max_gap:.3f} s while adapting"
    assert outcome.accepted, outcome.message
    result = outcome.result
    assert result.after["mean"] > result.before["mean"] + 0.15
    assert c.predictor is result.predictor and c.predictor is not base
    assert panel.result.text().startswith("held-out IoU") and panel.revert.isEnabled()

    after = c.preview_layer().data > 0  # the preview re-ran with the adapted model
    assert _iou(after, truth == label) > _iou(before, truth == label) + 0.2, (
        _iou(before, truth == label), _iou(after, truth == label))

    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT) as reverted:
        panel.revert.click()
    assert c.predictor is base
    assert np.array_equal(reverted.args[0].labels > 0, before)

    name = "inverted-nuclei-by-test"
    assert panel.save_model(name) is not None
    qtbot.waitUntil(lambda: "saved as" in panel.result.text() or "could not" in panel.result.text(),
                    timeout=TIMEOUT)
    assert "saved as" in panel.result.text(), panel.result.text()
    items = [w.model_panel.model.itemText(i) for i in range(w.model_panel.model.count())]
    assert name in items and w.model_panel.model.currentText() == name
    assert name in [m["name"] for m in list_models()]
    loaded = load_model(name, backend="torch", allow_download=False, jit=False)
    emb = c.embeddings.lookup(c.current_view())
    saved, _, _ = loaded.segment(None, None, np.asarray(box, np.float32), embedding=emb)
    live, _, _ = result.predictor.segment(None, None, np.asarray(box, np.float32), embedding=emb)
    assert _iou(np.asarray(saved, bool), np.asarray(live, bool)) > 0.98

    c.close()
    qtbot.waitUntil(lambda: not c.busy, timeout=TIMEOUT)
