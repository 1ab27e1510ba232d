"""micro-sam's protocol: mSA on hand-made cases, corrective clicks, iterative prompting."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_edgesam.datasets import synthetic_nuclei_2d
from napari_edgesam.training.eval_metrics import (
    IOU_THRESHOLDS,
    corrective_point,
    matched_segmentation_accuracy,
    segmentation_accuracy,
)
from napari_edgesam.training.evaluate import evaluate, format_table, iterative_prompting


def test_thresholds():
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_msa_of_a_perfect_segmentation_is_one():
    _, labels = synthetic_nuclei_2d(seed=1, shape=(128, 128), n_nuclei=6)
    shuffled = np.where(labels > 0, labels.max() + 1 - labels, 0)  # ids do not matter
    assert np.all(segmentation_accuracy(shuffled, labels) == 1.0)
    assert segmentation_accuracy(np.zeros_like(labels), np.zeros_like(labels)).mean() == 1.0
    assert segmentation_accuracy(np.zeros_like(labels), labels).mean() == 0.0


def test_msa_of_a_known_partial_segmentation():
    gt = np.zeros((20, 40), np.int32)
    gt[0:10, 0:10] = 1          # 100 px
    gt[0:10, 20:30] = 2         # 100 px
    pred = np.zeros_like(gt)
    pred[0:10, 0:10] = 5        # exact: IoU 1
    pred[0:6, 20:30] = 7        # 60 of 100 px: IoU 0.6
    pred[15:18, 35:38] = 9      # a false positive
    sa = segmentation_accuracy(pred, gt)
    # t in 0.50, 0.55, 0.60: TP 2, FP 1, FN 0 -> 2/3; t >= 0.65: TP 1, FP 2, FN 1 -> 1/4
    np.testing.assert_allclose(sa, [2 / 3] * 3 + [1 / 4] * 7)
    assert sa.mean() == pytest.approx((3 * 2 / 3 + 7 / 4) / 10)  # 0.375


def test_matched_object_sa_by_hand():
    # three objects: IoU 1.0, 0.72 and an empty prediction
    sa = matched_segmentation_accuracy([1.0, 0.72, 0.0], [True, True, False])
    # t <= 0.70: TP 2, FN 1, FP 0 -> 2/3; t >= 0.75: TP 1, FN 2, FP 1 -> 1/4
    np.testing.assert_allclose(sa, [2 / 3] * 5 + [1 / 4] * 5)
    assert matched_segmentation_accuracy([1.0] * 4, [True] * 4).mean() == 1.0
    # with no empty prediction SA = TP / (2N - TP)
    v = np.array([0.9, 0.4, 0.66, 0.81])
    for t, s in zip(IOU_THRESHOLDS, matched_segmentation_accuracy(v, [True] * 4)):
        tp = (v >= t).sum()
        assert s == pytest.approx(tp / (8 - tp))


def disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_corrective_point_takes_the_largest_region_centre():
    gt = disk((80, 80), 40, 40, 20)
    pred = gt.copy()
    pred[gt & (np.arange(80)[None, :] > 48)] = False    # missed a slab on the right (FN, larger)
    pred |= disk((80, 80), 8, 8, 4)                       # a small false blob (FP)
    (x, y), label = corrective_point(pred, gt)
    fn = gt & ~pred
    assert label == 1 and fn[int(y), int(x)]
    dist = ndi.distance_transform_edt(np.pad(fn, 1))[1:-1, 1:-1]
    assert dist[int(y), int(x)] == dist.max()
    # make the false positive the largest region: the click is negative, at its centre
    pred2 = gt | disk((80, 80), 12, 68, 10)
    (x, y), label = corrective_point(pred2, gt)
    assert label == 0 and (x, y) == (68, 12)
    assert corrective_point(gt, gt) is None


class ScriptedPredictor:
    """Returns a fixed sequence of masks and records every call's prompts."""

    def __init__(self, masks):
        self.masks, self.calls = list(masks), []

    def predict(self, point_coords=None, point_labels=None, box=None, num_multimask_outputs=1, mask_input=None):
        i = len(self.calls)
        self.calls.append((point_coords, point_labels, box, mask_input))
        low = np.full((1, 8, 8), float(i), np.float32)  # identifies the call
        return self.masks[min(i, len(self.masks) - 1)][None], np.ones(1), low


def test_iterative_prompting_follows_the_rule():
    gt = disk((64, 64), 32, 32, 14)
    empty = np.zeros_like(gt)
    half = gt & (np.arange(64)[None, :] < 32)
    too_big = disk((64, 64), 32, 32, 20)
    pred = ScriptedPredictor([empty, half, too_big, gt])
    res = iterative_prompting(pred, gt, "box", n_corrective=7)
    assert len(res.ious) == 8 and res.ious[-1] == 1.0 and res.ious[0] == 0.0
    assert len(pred.calls) == 4                      # perfect at the 4th decode: no more clicks
    assert res.ious[3:] == [1.0] * 5
    # every call keeps the box and all earlier points; the mask input is the previous call's logits
    expected = []
    for i, (pc, pl, box, mi) in enumerate(pred.calls):
        np.testing.assert_array_equal(box, [18, 18, 46, 46])
        if i == 0:
            assert pc is None and mi is None
            continue
        assert mi.shape == (1, 8, 8) and mi[0, 0, 0] == i - 1
        prev = pred.masks[i - 1]
        (x, y), label = corrective_point(prev, gt)
        expected.append((x, y, label))
        np.testing.assert_array_equal(pc, np.array([e[:2] for e in expected], np.float32))
        np.testing.assert_array_equal(pl, [e[2] for e in expected])
    assert [p[2] for p in res.points] == [1, 1, 0]  # missed all, missed half, then too big


def test_iterative_prompting_with_the_golden_model(golden_predictor):
    image, labels = synthetic_nuclei_2d(seed=7, shape=(128, 128), n_nuclei=3)
    res = evaluate(golden_predictor, [(image, labels)], max_instances=2, iterations=3)
    summ = res.summary()
    for start in ("box", "point"):
        assert len(res.iterative[start]) == 2
        r = res.iterative[start][0]
        assert len(r.ious) == 4 and r.used_mask_input
        assert all(0.0 <= v <= 1.0 for v in r.ious)
        assert len(r.points) <= (4 if start == "point" else 3)
        assert len(summ["iterative"][start]["msa"]) == 4
        # each corrective click is inside the error of the decode before it (positive: on the object)
        gt = labels == np.unique(labels[labels > 0])[np.argsort(-np.bincount(labels.ravel())[1:][np.unique(labels[labels > 0]) - 1])][0]
        for x, y, lab in r.points[(1 if start == "point" else 0):]:
            assert bool(gt[int(y), int(x)]) == bool(lab)
    table = format_table(summ)
    assert "| box | mSA |" in table and "| point | mIoU |" in table
    assert 0.0 <= summ["otsu_msa"]["box"] <= 100.0


def test_iterative_prompting_without_mask_input():
    gt = disk((64, 64), 32, 32, 14)
    half = gt & (np.arange(64)[None, :] < 32)
    pred = ScriptedPredictor([half, half, gt])
    res = iterative_prompting(pred, gt, "point", n_corrective=2, use_mask_input=False)
    assert all(call[3] is None for call in pred.calls) and not res.used_mask_input
    assert len(res.ious) == 3 and res.points[0][2] == 1 and len(pred.calls[2][0]) == 3
    with pytest.raises(ValueError, match="start"):
        iterative_prompting(pred, gt, "scribble")


def test_train_evaluate_prints_both_protocols(tmp_path, golden_checkpoint, capsys):
    import json

    import tifffile

    from napari_edgesam.cli import main

    (tmp_path / "im").mkdir()
    (tmp_path / "lab").mkdir()
    image, labels = synthetic_nuclei_2d(seed=9, shape=(96, 96), n_nuclei=3)
    tifffile.imwrite(tmp_path / "im/a.tif", image)
    tifffile.imwrite(tmp_path / "lab/a.tif", labels)
    out_json = tmp_path / "eval.json"
    assert main(["train", "evaluate", "--model", str(golden_checkpoint), "--images", str(tmp_path / "im"),
                 "--labels", str(tmp_path / "lab"), "--max-instances", "1", "--iterations", "2",
                 "--out-json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "| box | mIoU |" in printed and "| point | mSA |" in printed and "| box+2 |" in printed
    summary = json.loads(out_json.read_text())
    assert len(summary["iterative"]["box"]["miou"]) == 3 and summary["iterative"]["box"]["mask_input"]
