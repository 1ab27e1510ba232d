"""Offline by default: ``load_model("auto")``, the CLI and the widgets pick the best model on
this machine (no network), say which and why in one line, and a failed download of a model
the user asked for is one wrapped line that does not widen the window."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_edgesam.inference.loading import api, weights

pytest.importorskip("torch")  # the shipped model is a .pth (its ONNX form is another issue)


def test_auto_picks_the_shipped_model_offline_without_trying_a_download(offline):
    cache, attempts = offline
    name, why = api.choose_model()
    assert name == "edgesam-nuclei"
    assert "shipped" in why and str(cache) in why and "edge_sam.pth" in why and "\n" not in why
    predictor = api.load_model("auto", device="cpu")
    assert predictor.model_name.removesuffix("-int8") == "edgesam-nuclei"  # -int8: the gated int8 encoder on OpenVINO
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
    assert predictor.model_name.removesuffix("-int8") == "edgesam-nuclei"  # -int8: the gated int8 encoder on OpenVINO and attempts == []
    lines = [line for line in capsys.readouterr().err.splitlines() if "model edgesam-nuclei" in line]
    assert len(lines) == 1 and "shipped" in lines[0]
