"""What a new user hit in the interactive dock: its width on a small screen, a preview that
looks like committed objects, a stale status after Clear, a silent fallback of the
whole-object click, and no hint on how to draw a box."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtWidgets import QApplication

from _helpers import CountingBackend
from napari_edgesam._napari import layers as L
from napari_edgesam._napari import names
from napari_edgesam._napari.interactive_widget import InteractiveWidget
from napari_edgesam._napari.samples import make_nuclei_2d
from napari_edgesam.inference.core.predictor import EdgeSamPredictor
from napari_edgesam.inference.prior import ProposalSet
from napari_edgesam.interactive.result_text import describe
from napari_edgesam.interactive.session import ObjectPrompt, Session

TIMEOUT = 120_000
#: A 1366 px wide screen leaves ~940 px beside a dock of this width for the canvas and layer list.
MAX_DOCK_WIDTH = 420


@pytest.fixture()
def widget(make_napari_viewer, golden_predictor, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(make_nuclei_2d((96, 128), count=6, seed=5),
                     name="nuclei_of_a_long_experiment_name_2026-12-07_plate3_well_B7_field_12")
    w = InteractiveWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.set_predictor(EdgeSamPredictor(CountingBackend(golden_predictor.backend), "golden"))
    yield w
    w.controller.close()
    qtbot.waitUntil(lambda: not w.controller.busy, timeout=TIMEOUT)


def _point(qtbot, c, xy=(40, 30)):
    qtbot.waitUntil(lambda: c.embeddings.lookup(c.current_view()) is not None, timeout=TIMEOUT)
    points, _ = c.prompt_layers()
    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT) as blocker:
        L.add_point(points, c.current_plane(), xy)
    return blocker.args[0]


def test_the_dock_fits_beside_the_canvas_on_a_1366_px_screen(widget, qtbot):
    assert widget.minimumSizeHint().width() <= MAX_DOCK_WIDTH
    # long unbreakable messages wrap instead of widening the dock
    widget.status.setText("could not load the model: " + "x" * 3000)
    widget.model_panel.set_message("/very/long/path/" * 200)
    QApplication.processEvents()
    assert widget.minimumSizeHint().width() <= MAX_DOCK_WIDTH
    assert widget.shortcuts.wordWrap() and widget.status.wordWrap() and widget.hint.wordWrap()


def test_the_preview_is_drawn_unlike_committed_objects(widget, qtbot):
    c = widget.controller
    _point(qtbot, c)
    preview = widget.viewer.layers[names.PREVIEW_LAYER]
    record = c.commit()
    assert record is not None
    target = c.target_layer()
    committed_id = max(record.ids.values())
    _point(qtbot, c, (90, 60))
    assert preview.contour == names.PREVIEW_CONTOUR and target.contour == 0  # outline vs filled
    assert not np.allclose(preview.get_color(1), target.get_color(committed_id))
    np.testing.assert_allclose(preview.get_color(1)[:3], [0, 1, 1])  # the preview colour


def test_clear_resets_the_status(widget, qtbot):
    c = widget.controller
    _point(qtbot, c)
    assert "object 1" in widget.status.text()
    widget.clear.click()
    assert "object 1" not in widget.status.text() and "cleared" in widget.status.text()
    qtbot.wait(300)  # a late decoder answer must not bring it back
    assert "object 1" not in widget.status.text()
    _point(qtbot, c)
    assert "object 1" in widget.status.text()
    points, _ = c.prompt_layers()
    points.data = np.empty((0, 2))  # the user deletes the points: the same
    qtbot.waitUntil(lambda: "no prompts" in widget.status.text(), timeout=TIMEOUT)


def test_draw_box_and_add_points_buttons_select_the_tools(widget, qtbot):
    c, viewer = widget.controller, widget.viewer
    points, boxes = c.prompt_layers()
    assert names.BOXES_LAYER in widget.hint.text() and "rectangle" in widget.hint.text()
    widget.draw_box.click()
    assert viewer.layers.selection.active is boxes and boxes.mode == "add_rectangle"
    assert "drag a box" in widget.status.text()
    widget.add_points.click()
    assert viewer.layers.selection.active is points and points.mode == "add"
    binding = next(v for k, v in points.keymap.items() if str(k) == "Shift+B")
    binding(points)
    assert viewer.layers.selection.active is boxes and boxes.mode == "add_rectangle"


def test_a_whole_object_click_that_falls_back_says_why(golden_predictor):
    image = make_nuclei_2d((96, 128), count=6, seed=5)
    emb = golden_predictor.encode(image)
    proposals = ProposalSet(np.float32([[10, 10, 40, 40]]), np.float32([0.9]), (96, 128))
    p = golden_predictor
    session = Session()
    inside = session.decode(p, emb, "a", [ObjectPrompt(np.float32([[20, 20]]), np.array([1]))],
                            proposals=proposals)
    assert inside.objects[0].prior_box is not None and inside.objects[0].note == ""
    assert "whole object: granularity prior" in describe(inside)
    outside = session.decode(p, emb, "b", [ObjectPrompt(np.float32([[100, 80]]), np.array([1]))],
                             proposals=proposals)
    assert outside.objects[0].prior_box is None and outside.objects[0].candidate is not None
    text = describe(outside)
    assert "whole object not taken" in text and "no box of the granularity prior contains the click" in text
    no_prior = session.decode(p, emb, "c", [ObjectPrompt(np.float32([[100, 80]]), np.array([1]))])
    assert "whole object" not in describe(no_prior)  # the prior is off: nothing to explain
