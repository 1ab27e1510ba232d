"""The manifest's widgets dock in a real viewer."""

from __future__ import annotations

from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

MANIFEST = Path(__file__).resolve().parents[2] / "src" / "napari_edgesam" / "napari.yaml"





def test_napari_docks_the_interactive_widget(make_napari_viewer):
    from napari_edgesam._napari.interactive_widget import InteractiveWidget

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-edgesam", "Interactive segmentation")
    assert isinstance(widget, InteractiveWidget)
    viewer.open_sample("napari-edgesam", "nuclei_2d")
    assert widget.image.currentText() == "nuclei 2D"
