"""The shipped ``edgesam-nuclei`` model: registered, loads strictly offline, and segments
nuclei it has never seen (synthetic images from another seed range) well."""

from __future__ import annotations

import numpy as np
import pytest

from napari_edgesam.datasets import synthetic_nuclei_2d
from napari_edgesam.inference.loading.api import best_available_model, list_models, load_model
from napari_edgesam.training.eval_metrics import iou, mask_box

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def nuclei_predictor():
    return load_model("edgesam-nuclei", backend="torch", device="cpu", allow_download=False)


def test_registered_and_offline_default(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_EDGESAM_CACHE", str(tmp_path))  # empty cache: official weights absent
    names = {m["name"]: m for m in list_models()}
    assert "edgesam-nuclei" in names
    assert names["edgesam-nuclei"]["files"]["pth"]["cached"]
    assert best_available_model(allow_download=False) == "edgesam-nuclei"


def test_weights_are_small_fp16(nuclei_predictor):
    from napari_edgesam.models import PACKAGED_DIR

    path = PACKAGED_DIR / "edgesam_nuclei" / "edge_sam_nuclei.pth"
    assert path.stat().st_size < 25_000_000  # fp16: about half of the official 38.8 MB
    assert nuclei_predictor.model_name == "edgesam-nuclei"


def test_segments_unseen_synthetic_nuclei(nuclei_predictor):
    image, labels = synthetic_nuclei_2d(seed=987_654, shape=(512, 512), n_nuclei=60, radius=(6, 14))
    nuclei_predictor.set_image(image)
    ids = [k for k in np.unique(labels)[1:] if (labels == k).sum() > 80][:12]
    scores = [iou(nuclei_predictor.segment(box=mask_box(labels == k))[0], labels == k) for k in ids]
    assert len(scores) >= 8
    assert np.mean(scores) > 0.7, scores
