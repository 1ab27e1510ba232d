"""The three widgets segment with the shipped model where torch cannot be imported and the
network is down (a torch-free install, offline).

The outer test runs this file's inner tests with pytest in a subprocess whose import system
refuses torch (the same blocker as ``test_no_torch_import.py``); the inner tests run only there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile

INNER = os.environ.get("NAPARI_EDGESAM_TORCH_FREE_INNER") == "1"
inner = pytest.mark.skipif(not INNER, reason="runs inside test_widgets_segment_without_torch_and_network")
TIMEOUT = 300_000


def test_widgets_segment_without_torch_and_network(tmp_path):
    if INNER:
        pytest.skip("the outer test")
    from _helpers import BLOCKER

    run = textwrap.dedent(f"""
        import pytest
        code = pytest.main(["-q", "-p", "no:cacheprovider", {__file__!r}, "-k", "inner_"])
        assert "torch" not in sys.modules, "torch was imported"
        sys.exit(code)
    """)
    env = dict(os.environ, NAPARI_EDGESAM_TORCH_FREE_INNER="1", NAPARI_EDGESAM_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", BLOCKER + run], cwd=os.path.dirname(__file__), env=env,
                          capture_output=True, text=True, timeout=1200)
    out = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, out
    assert "3 passed" in proc.stdout, out


@pytest.fixture()
def no_network(monkeypatch):
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError("network blocked by the test")
        return real(self, address)

    real = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", connect)


def _image() -> np.ndarray:
    from napari_edgesam._napari.samples import make_nuclei_2d

    return make_nuclei_2d((256, 256), count=12, seed=7)


@inner
def test_inner_interactive(no_network, make_napari_viewer, qtbot):
    from napari_edgesam._napari import layers as L
    from napari_edgesam._napari.interactive_widget import InteractiveWidget

    viewer = make_napari_viewer()
    image = _image()
    viewer.add_image(image, name="nuclei")
    widget = InteractiveWidget(viewer)  # loads the model on this machine by itself
    viewer.window.add_dock_widget(widget)
    c = widget.controller
    qtbot.waitUntil(lambda: c.predictor is not None, timeout=TIMEOUT)
    assert c.predictor.backend.name in ("onnxruntime", "openvino")
    assert c.predictor.model_name.removesuffix("-int8") == "edgesam-nuclei"
    qtbot.waitUntil(lambda: c.embeddings.lookup(c.current_view()) is not None, timeout=TIMEOUT)
    from scipy import ndimage as ndi

    from napari_edgesam.datasets import synthetic_nuclei_2d

    same, labels = synthetic_nuclei_2d(seed=7, shape=(256, 256), n_nuclei=12)  # the image's own ground truth
    assert np.array_equal(same, image)
    big = 1 + int(np.argmax(ndi.sum(np.ones_like(labels), labels, range(1, int(labels.max()) + 1))))
    truth = np.where(labels == big, 1, 0)
    sl = ndi.find_objects(truth)[0]
    _, boxes = c.prompt_layers()
    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT) as blocker:
        L.add_box(boxes, c.current_plane(), (sl[1].start - 2, sl[0].start - 2, sl[1].stop + 2, sl[0].stop + 2))
    mask = blocker.args[0].labels == 1
    obj = truth == 1
    assert (mask & obj).sum() / (mask | obj).sum() > 0.5
    panel = widget.adapt_panel  # adapting needs torch: disabled, saying why; the export does not
    assert not panel.adapt.isEnabled() and "needs PyTorch" in panel.adapt.toolTip() and panel.export.isEnabled()
    assert c.commit() is not None and len(c.annotations) == 1
    c.close()


@inner
def test_inner_automatic(no_network, make_napari_viewer, qtbot):
    from _helpers import run_widget
    from napari_edgesam._napari.automatic_widget import LABELS_LAYER, AutomaticWidget

    viewer = make_napari_viewer()
    viewer.add_image(_image(), name="nuclei")
    widget = AutomaticWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.model.value == "edgesam-nuclei"
    widget.points_per_side.value = 4
    run_widget(widget, qtbot, timeout=TIMEOUT)
    assert widget.status.value.endswith("objects"), widget.status.value
    assert viewer.layers[LABELS_LAYER].data.max() > 0


@inner
def test_inner_batch(no_network, make_napari_viewer, qtbot, tmp_path):
    from _helpers import run_widget
    from napari_edgesam._napari.batch_widget import BatchWidget

    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", _image())
    widget = BatchWidget(make_napari_viewer())
    qtbot.addWidget(widget)
    assert widget.model.value == "edgesam-nuclei"
    widget.folder.value, widget.output.value = folder, tmp_path / "out"
    widget.points_per_side.value = 4
    run_widget(widget, qtbot, timeout=TIMEOUT)
    assert "1 ok" in widget.status.value, widget.status.value
    assert tifffile.imread(tmp_path / "out" / "a_labels.tif").max() > 0
