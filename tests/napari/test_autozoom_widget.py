"""AutoZoom in the Interactive widget: boxes are zoomed by default; unticking it gives the plain mask."""

from __future__ import annotations

import numpy as np


def _iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.float32([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_widget_zooms_boxes_by_default(make_napari_viewer, qtbot):
    """The Interactive widget with the shipped model: a box around a nucleus of radius 8 px in a
    1024 image at native resolution (far below the model's best scale) is segmented in a
    magnified crop; unticking AutoZoom gives the plain (collapsed) mask."""
    from napari_edgesam._napari import layers as L
    from napari_edgesam._napari.interactive_widget import InteractiveWidget
    from napari_edgesam.datasets import synthetic_nuclei_sized
    from napari_edgesam.inference.loading.api import load_model

    image, labels = synthetic_nuclei_sized(seed=5, shape=(1024, 1024), radius=8)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="nuclei")
    widget = InteractiveWidget(viewer)
    viewer.window.add_dock_widget(widget)
    c = widget.controller
    widget.set_predictor(load_model("edgesam-nuclei", backend="onnxruntime", allow_download=False))
    assert widget.autozoom.isChecked() and c.autozoom
    qtbot.waitUntil(lambda: c.embeddings.lookup(c.current_view()) is not None, timeout=120_000)
    truth = labels == 1
    _, boxes = c.prompt_layers()
    with qtbot.waitSignal(c.preview_updated, timeout=120_000) as blocker:
        L.add_box(boxes, c.current_plane(), tuple(_box(truth)))
    zoomed = _iou(blocker.args[0].labels == 1, truth)
    with qtbot.waitSignal(c.preview_updated, timeout=120_000) as blocker:
        widget.autozoom.setChecked(False)
    plain = _iou(blocker.args[0].labels == 1, truth)
    assert zoomed > 0.6 and zoomed > plain + 0.3, (zoomed, plain)
    c.close()
