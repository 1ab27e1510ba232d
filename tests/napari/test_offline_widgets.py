"""The widgets offline: the shipped model is their default and loads without a network."""

from __future__ import annotations

import pytest
import tifffile

pytest.importorskip("torch")  # the shipped model is a .pth (its ONNX form is another issue)





napari = pytest.importorskip("napari")


def _image():
    from napari_edgesam._napari.samples import make_nuclei_2d

    return make_nuclei_2d((256, 256), count=12, seed=7)


def test_automatic_widget_defaults_to_a_local_model_and_runs(offline, make_napari_viewer, qtbot):
    from _helpers import run_widget
    from napari_edgesam._napari.automatic_widget import LABELS_LAYER, AutomaticWidget

    _, attempts = offline
    viewer = make_napari_viewer()
    viewer.add_image(_image(), name="nuclei")
    widget = AutomaticWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.model.value == "edgesam-nuclei"
    assert widget.status.value.startswith("model edgesam-nuclei: the model shipped")
    widget.points_per_side.value = 4
    run_widget(widget, qtbot, timeout=300_000)
    assert widget.status.value.endswith("objects"), widget.status.value
    assert viewer.layers[LABELS_LAYER].data.max() > 0
    assert attempts == []



def test_batch_widget_defaults_to_a_local_model_and_runs(offline, make_napari_viewer, qtbot, tmp_path):
    from _helpers import run_widget
    from napari_edgesam._napari.batch_widget import BatchWidget

    _, attempts = offline
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", _image())
    widget = BatchWidget(make_napari_viewer())
    qtbot.addWidget(widget)
    assert widget.model.value == "edgesam-nuclei" and "shipped" in widget.status.value
    widget.folder.value, widget.output.value = folder, tmp_path / "out"
    widget.points_per_side.value = 4
    run_widget(widget, qtbot, timeout=300_000)
    assert "1 ok" in widget.status.value, widget.status.value
    assert tifffile.imread(tmp_path / "out" / "a_labels.tif").max() > 0
    assert attempts == []



def test_failed_download_is_one_wrapped_line_and_keeps_the_window_width(offline, make_napari_viewer, qtbot):
    from _helpers import run_widget
    from napari_edgesam._napari.automatic_widget import AutomaticWidget

    cache, attempts = offline
    viewer = make_napari_viewer(show=True)
    viewer.add_image(_image(), name="nuclei")
    widget = AutomaticWidget(viewer)
    viewer.window.add_dock_widget(widget)
    window = viewer.window._qt_window
    qtbot.wait(100)
    width = window.width()
    widget.model.value = "edgesam"  # the official model, not cached: a download is asked for
    run_widget(widget, qtbot)
    qtbot.wait(100)
    text = widget.status.value
    assert attempts and text.startswith("failed: could not download weight file edge_sam.pth")
    assert "\n" not in text and str(cache) in text
    assert window.width() == width
    assert widget.minimumSizeHint().width() < 500
    assert widget.status.native.wordWrap()



def test_interactive_widget_loads_the_local_model_and_an_offline_download_fails_in_one_line(
        offline, make_napari_viewer, qtbot):
    from napari_edgesam._napari import layers as L
    from napari_edgesam._napari.interactive_widget import InteractiveWidget
    from napari_edgesam._napari.workers import wait_for_workers

    cache, attempts = offline
    viewer = make_napari_viewer()
    viewer.add_image(_image(), name="nuclei")
    widget = InteractiveWidget(viewer)
    viewer.window.add_dock_widget(widget)
    panel, c = widget.model_panel, widget.controller
    assert "edgesam-nuclei: the model shipped" in panel.message.text()
    qtbot.waitUntil(lambda: widget.predictor is not None, timeout=300_000)
    assert widget.predictor.model_name.removesuffix("-int8") == "edgesam-nuclei" and attempts == []
    qtbot.waitUntil(lambda: c.embeddings.lookup(c.current_view()) is not None, timeout=300_000)
    points, _ = c.prompt_layers()
    with qtbot.waitSignal(c.preview_updated, timeout=300_000) as blocker:
        L.add_point(points, c.current_plane(), (128, 128))
    assert blocker.args[0].labels.any()
    panel.model.setCurrentText("edgesam")  # asked for: the download is tried, and fails
    with qtbot.waitSignal(c.status, timeout=300_000, check_params_cb=lambda t: t.startswith("could not load")):
        panel.load.click()
    message = panel.message.text()
    assert attempts and "\n" not in message and "edge_sam.pth" in message and str(cache) in message
    assert widget.predictor.model_name.removesuffix("-int8") == "edgesam-nuclei"  # the working model stays
    c.close()
    wait_for_workers(60_000)
