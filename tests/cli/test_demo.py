"""``napari-edgesam demo``: a real napari session with one object segmented, saved as PNG."""

from __future__ import annotations

import argparse

import numpy as np

from napari_edgesam._napari.demo import demo_box
from napari_edgesam.cli import demo
from napari_edgesam.inference.loading import weights


def test_demo_box_surrounds_the_central_nucleus():
    from napari_edgesam._napari.samples import make_nuclei_2d

    image = make_nuclei_2d()
    x0, y0, x1, y1 = demo_box(image)
    assert 0 <= x0 < x1 < image.shape[1] and 0 <= y0 < y1 < image.shape[0]
    assert 10 < x1 - x0 < 60 and 10 < y1 - y0 < 60
    inside = image[int(y0):int(y1) + 1, int(x0):int(x1) + 1]
    assert np.median(inside) > 2 * np.median(image)


def test_without_any_model_the_demo_says_what_to_do(monkeypatch, capsys):
    def unavailable(name, **kwargs):
        raise weights.WeightsUnavailableError(f"weight file for {name} is not in the cache")

    monkeypatch.setattr("napari_edgesam.inference.loading.api.load_model", unavailable)
    args = argparse.Namespace(model=None, backend="auto", device="auto", sample="nuclei_2d",
                              screenshot=None, timeout=1.0)
    assert demo.run(args) == 1
    err = capsys.readouterr().err
    assert "no EdgeSAM model could be loaded" in err
    assert "edgesam: weight file for edgesam is not in the cache" in err
    assert "--model PATH" in err


def test_a_packaged_model_is_the_fallback(monkeypatch):
    tried = []

    def load(name, **kwargs):
        tried.append(name)
        if name == "edgesam":
            raise weights.WeightsUnavailableError("offline")
        return f"predictor:{name}"

    monkeypatch.setattr("napari_edgesam.inference.loading.api.load_model", load)
    monkeypatch.setattr("napari_edgesam.inference.loading.api.list_models",
                        lambda: [{"name": "edgesam"}, {"name": "edgesam-nuclei"}])
    assert demo.choose_model(None) == "predictor:edgesam-nuclei"
    assert tried == ["edgesam", "edgesam-nuclei"]
