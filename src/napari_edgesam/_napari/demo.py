"""The demo's window: napari with a sample image, the interactive widget docked and one nucleus
segmented from a click (``napari-edgesam demo`` parses the options and loads the model)."""

from __future__ import annotations

import sys
import time


def demo_box(image, margin: int = 4) -> tuple[float, float, float, float]:
    """A box ``(x0, y0, x1, y1)`` around the bright object nearest the image centre."""
    import numpy as np
    from scipy import ndimage

    plane = np.asarray(image, np.float32)
    smooth = ndimage.gaussian_filter(plane, 2)
    labels, n = ndimage.label(smooth > (np.percentile(smooth, 50) + np.percentile(smooth, 99)) / 2)
    if n == 0:
        h, w = plane.shape
        return (w * 0.35, h * 0.35, w * 0.65, h * 0.65)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, range(1, n + 1))
    centres = ndimage.center_of_mass(np.ones_like(labels), labels, range(1, n + 1))
    mid = np.array(plane.shape) / 2
    ok = [i for i in range(n) if sizes[i] >= 50] or list(range(n))
    best = min(ok, key=lambda i: np.hypot(*(np.array(centres[i]) - mid)))
    rows, cols = ndimage.find_objects(labels)[best]
    h, w = plane.shape
    return (max(cols.start - margin, 0), max(rows.start - margin, 0),
            min(cols.stop - 1 + margin, w - 1), min(rows.stop - 1 + margin, h - 1))


def show_demo(predictor, sample: str = "nuclei_2d", screenshot: str | None = None, timeout: float = 600.0) -> int:
    """Open the demo window with ``predictor`` (an ``EdgeSamPredictor``) on the sample image
    ``sample`` (a function of :mod:`napari_edgesam._napari.samples`). Without ``screenshot`` this
    runs napari's event loop until the window is closed; with it, waits up to ``timeout`` s for
    the segmentation, saves the window as that PNG and returns. Returns the exit status."""
    from qtpy.QtWidgets import QApplication

    import napari

    from . import layers as L
    from . import samples
    from .interactive_widget import InteractiveWidget
    from .workers import wait_for_workers

    viewer = napari.Viewer(title="napari-edgesam demo")
    viewer.window.resize(1500, 950)
    for data, meta, _ in getattr(samples, sample)():
        image = viewer.add_image(data, **meta)
    widget = InteractiveWidget(viewer)
    viewer.window.add_dock_widget(widget, name="EdgeSAM interactive", area="right")
    widget.set_predictor(predictor)
    c = widget.controller
    done: list = []
    c.preview_updated.connect(done.append)
    plane = c.current_plane()
    points, boxes = c.prompt_layers()
    pixels = plane.take(L.image_data(image))
    x0, y0, x1, y1 = demo_box(pixels.mean(-1) if pixels.ndim == 3 else pixels)
    L.add_point(points, plane, ((x0 + x1) / 2, (y0 + y1) / 2))  # one click on the central nucleus
    viewer.layers.selection.active = points
    points.mode = "add"
    prior = "with its granularity prior" if getattr(predictor, "prior", None) is not None else "no granularity prior"
    print(f"napari-edgesam demo: model {predictor.model_name} ({prior}); click to add points "
          f"({widget.shortcuts.text().splitlines()[0]})")
    if not screenshot:
        napari.run()
        return 0

    app = QApplication.instance()
    start = time.monotonic()
    while not done and time.monotonic() - start < timeout:
        app.processEvents()
        time.sleep(0.01)
    if not done:
        print(f"napari-edgesam demo: no segmentation after {timeout:.0f} s", file=sys.stderr)
        return 1
    for _ in range(20):  # let napari draw the preview
        app.processEvents()
        time.sleep(0.02)
    viewer.screenshot(screenshot, canvas_only=False, flash=False)
    c.close()
    wait_for_workers()
    viewer.close()
    print(f"napari-edgesam demo: saved {screenshot}")
    return 0
