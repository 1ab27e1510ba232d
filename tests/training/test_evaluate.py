"""Evaluation metrics, prompt placement and the Otsu baseline on known inputs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_edgesam.datasets import synthetic_nuclei_2d
from napari_edgesam.training.eval_baseline import otsu_box, otsu_threshold
from napari_edgesam.training.eval_metrics import interior_point, iou, mask_box, refinement_point
from napari_edgesam.training.evaluate import MODES, evaluate, format_table


def disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_iou_box_and_interior_point():
    a = np.zeros((10, 10), bool)
    a[2:6, 3:7] = True
    b = np.zeros_like(a)
    b[4:8, 3:7] = True
    assert iou(a, b) == pytest.approx(8 / 24)
    assert iou(np.zeros_like(a), np.zeros_like(a)) == 1.0
    np.testing.assert_array_equal(mask_box(a), [3, 2, 6, 5])
    m = disk((40, 50), 20, 30, 8)
    np.testing.assert_array_equal(interior_point(m), [30, 20])
    with pytest.raises(ValueError, match="empty"):
        mask_box(np.zeros((3, 3), bool))


def test_refinement_point_sign_and_place():
    gt = disk((60, 60), 30, 30, 15)
    pred = gt.copy()
    pred[:, 30:] = False  # misses the right half: false negative
    (x, y), label = refinement_point(pred, gt)
    assert label == 1 and gt[int(y), int(x)] and not pred[int(y), int(x)]
    pred2 = gt | disk((60, 60), 10, 50, 6)  # an extra blob: false positive
    (x, y), label = refinement_point(pred2, gt)
    assert label == 0 and pred2[int(y), int(x)] and not gt[int(y), int(x)]
    assert refinement_point(gt, gt) is None


def test_otsu_baseline_on_synthetic_nuclei():
    image, labels = synthetic_nuclei_2d(seed=3, shape=(256, 256), n_nuclei=12)
    assert labels.max() >= 8
    vals = np.concatenate([np.full(100, 10.0), np.full(100, 200.0)])
    assert 10 <= otsu_threshold(vals) < 200
    scores = [iou(otsu_box(image, mask_box(labels == k)), labels == k) for k in range(1, labels.max() + 1)]
    assert np.median(scores) > 0.7


class OraclePredictor:
    """Returns the ground-truth instance under the prompt (or nothing)."""

    def __init__(self, labels, perfect=True):
        self.labels, self.perfect = labels, perfect

    def set_image(self, image, **kw):
        pass

    def predict(self, point_coords=None, point_labels=None, box=None, num_multimask_outputs=1):
        if not self.perfect:
            return np.zeros((1, *self.labels.shape), bool), None, None
        if box is not None:
            x0, y0, x1, y1 = (int(v) for v in box)
            ids, counts = np.unique(self.labels[y0 : y1 + 1, x0 : x1 + 1], return_counts=True)
            k = ids[ids > 0][np.argmax(counts[ids > 0])]
        else:
            x, y = point_coords[0]
            k = self.labels[int(y), int(x)]
        return (self.labels == k)[None], None, None


def test_evaluate_oracle_and_empty_predictors():
    image, labels = synthetic_nuclei_2d(seed=5, shape=(192, 192), n_nuclei=8)
    good = evaluate(OraclePredictor(labels), [(image, labels)]).summary()
    assert good["n_instances"] == len(np.unique(labels)) - 1
    assert all(good["model"][m] > 95 for m in MODES)
    bad = evaluate(OraclePredictor(labels, perfect=False), [(image, labels)]).summary()
    assert bad["model"]["box"] == 0.0
    assert "| box |" in format_table(good)


def test_evaluate_real_predictor_plumbing(golden_predictor):
    image, labels = synthetic_nuclei_2d(seed=7, shape=(128, 128), n_nuclei=3)
    res = evaluate(golden_predictor, [(image, labels)], max_instances=1)
    assert len(res.ious["box+2"]) == 1 and 0.0 <= res.ious["box+2"][0] <= 1.0
