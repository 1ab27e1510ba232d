"""Offline by default: ``load_model("auto")``, the CLI and the widgets pick the best model on
this machine (no network), say which and why in one line, and a failed download of a model
the user asked for is one wrapped line that does not widen the window."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import tifffile

from napari_edgesam.inference import api, weights

pytest.importorskip("torch")  # the shipped model is a .pth (its ONNX form is another issue)


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    """An empty weights cache and no network: every download attempt raises and is counted."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(cache))
    attempts = []

    def no_network(url, *args, **kwargs):
        attempts.append(url)
        raise ConnectionError(f"network blocked by the test: {url}")

    monkeypatch.setattr("pooch.retrieve", no_network)
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError("network blocked by the test")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return cache, attempts


def test_auto_picks_the_shipped_model_offline_without_trying_a_download(offline):
    cache, attempts = offline
    name, why = api.choose_model()
    assert name == "edgesam-nuclei"
    assert "shipped" in why and str(cache) in why and "edge_sam.pth" in why and "\n" not in why
    predictor = api.load_model("auto", device="cpu")
    assert predictor.model_name == "edgesam-nuclei"
    assert attempts == []


def test_a_downloaded_official_model_comes_first_and_no_download_is_tried(offline):
    cache, attempts = offline
    cache.mkdir()
    spec = weights.MODEL_REGISTRY["edgesam"].files["pth"]
    with open(cache / spec.filename, "wb") as fh:  # right size: what "present" means before loading
        fh.truncate(spec.size)
    name, why = api.choose_model(allow_download=True)
    assert name == "edgesam" and "official weights found" in why and str(cache) in why
    assert attempts == []


def test_an_explicit_download_model_still_downloads_and_fails_in_one_line(offline):
    cache, attempts = offline
    with pytest.raises(weights.WeightsUnavailableError) as info:
        api.load_model("edgesam", backend="torch", device="cpu")
    message = str(info.value)
    assert attempts, "an explicitly named model must try its download"
    assert "\n" not in message and "edge_sam.pth" in message and str(cache) in message
    assert "by hand" in message


def test_cli_says_which_model_and_why(offline, tmp_path, capsys):
    from napari_edgesam.cli import main
    from napari_edgesam.datasets import synthetic_nuclei_2d

    _, attempts = offline
    image, labels = synthetic_nuclei_2d(seed=11, shape=(384, 384), n_nuclei=12, radius=(6, 14))
    tifffile.imwrite(tmp_path / "img.tif", image)
    ys, xs = np.nonzero(labels == 2)
    box = f"{xs.min()},{ys.min()},{xs.max() + 1},{ys.max() + 1}"
    assert main(["segment", str(tmp_path / "img.tif"), "--box", box, "-o", str(tmp_path / "out.tif"),
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "model edgesam-nuclei" in line]
    assert len(lines) == 1 and "shipped" in lines[0]
    out = tifffile.imread(tmp_path / "out.tif") > 0
    assert (out & (labels == 2)).sum() / (out | (labels == 2)).sum() > 0.7
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "default model (--model auto): edgesam-nuclei: the model shipped" in out
    assert attempts == []


def test_demo_uses_the_model_on_this_machine_first(offline, capsys):
    from napari_edgesam.cli import demo

    _, attempts = offline
    predictor = demo.choose_model(None, device="cpu")
    assert predictor.model_name == "edgesam-nuclei" and attempts == []
    lines = [line for line in capsys.readouterr().err.splitlines() if "model edgesam-nuclei" in line]
    assert len(lines) == 1 and "shipped" in lines[0]


# -- widgets -----------------------------------------------------------------------------------
napari = pytest.importorskip("napari")


def _image():
    from napari_edgesam._napari.samples import make_nuclei_2d

    return make_nuclei_2d((256, 256), count=12, seed=7)


@pytest.mark.gui
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


@pytest.mark.gui
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


@pytest.mark.gui
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


@pytest.mark.gui
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
    assert widget.predictor.model_name == "edgesam-nuclei" and attempts == []
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
    assert widget.predictor.model_name == "edgesam-nuclei"  # the working model stays
    c.close()
    wait_for_workers(60_000)
