"""Prompt sampling: boxes and points from masks, refinement points from FP/FN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_edgesam.training.prompts import (
    low_res_to_input,
    mask_to_box,
    masks_to_boxes,
    random_box_around,
    sample_point_in_mask,
    sample_refinement_points,
)


def _rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0 : y1 + 1, x0 : x1 + 1] = True
    return m


def test_box_is_inclusive_xy():
    m = _rect(10, 12, 2, 4, 3, 7)
    np.testing.assert_array_equal(mask_to_box(m), [3, 2, 7, 4])
    t = masks_to_boxes(torch.from_numpy(np.stack([m, np.zeros_like(m)])))
    np.testing.assert_array_equal(t[0].numpy(), [3, 2, 7, 4])
    np.testing.assert_array_equal(t[1].numpy(), [0, 0, 0, 0])
    with pytest.raises(ValueError, match="empty"):
        mask_to_box(np.zeros((3, 3), bool))


def test_points_fall_inside_the_mask_and_cover_it():
    m = np.zeros((20, 30), bool)
    m[5:8, 10:12] = True
    m[15, 25] = True
    rng = np.random.default_rng(0)
    pts = np.array([sample_point_in_mask(m, rng) for _ in range(300)])
    assert m[pts[:, 1].astype(int), pts[:, 0].astype(int)].all()  # (x, y) -> [y, x]
    assert len({tuple(p) for p in pts}) == int(m.sum())  # every pixel is reachable


def test_random_box_contains_point_and_stays_in_image():
    rng = np.random.default_rng(1)
    for _ in range(50):
        p = np.array([rng.integers(40), rng.integers(30)], np.float32)
        x0, y0, x1, y1 = random_box_around(p, (30, 40), rng)
        assert 0 <= x0 <= p[0] <= x1 <= 39 and 0 <= y0 <= p[1] <= y1 <= 29


def test_false_positive_gives_negative_point_inside_fp():
    target = torch.zeros(1, 16, 16, dtype=torch.bool)
    target[0, 4:8, 4:8] = True
    pred = target.clone()
    pred[0, 10:14, 2:6] = True  # 16 false-positive pixels
    pts, labels = sample_refinement_points(pred, target, torch.Generator().manual_seed(0))
    x, y = pts[0].long().tolist()
    assert labels.tolist() == [0]
    assert pred[0, y, x] and not target[0, y, x]


def test_false_negative_gives_positive_point_inside_fn():
    target = torch.zeros(1, 16, 16, dtype=torch.bool)
    target[0, 2:12, 2:12] = True
    pred = torch.zeros_like(target)
    pred[0, 2:12, 2:7] = True
    for seed in range(20):
        pts, labels = sample_refinement_points(pred, target, torch.Generator().manual_seed(seed))
        x, y = pts[0].long().tolist()
        assert labels.item() == 1 and target[0, y, x] and not pred[0, y, x]


def test_sampling_is_uniform_over_fp_union_fn():
    target = torch.zeros(1, 20, 20, dtype=torch.bool)
    pred = torch.zeros_like(target)
    target[0, 0:3, 0:10] = True  # 30 FN pixels
    pred[0, 10:20, 0:9] = True  # 90 FP pixels
    gen = torch.Generator().manual_seed(3)
    batch_t, batch_p = target.expand(4000, -1, -1), pred.expand(4000, -1, -1)
    pts, labels = sample_refinement_points(batch_p, batch_t, gen)
    assert (labels >= 0).all()
    assert (labels == 1).float().mean().item() == pytest.approx(0.25, abs=0.03)
    # every error pixel can be drawn, and only error pixels
    flat = (pts[:, 1] * 20 + pts[:, 0]).long()
    error = (pred[0] ^ target[0]).flatten()
    assert error[flat].all()
    assert len(torch.unique(flat)) == 120


def test_fewer_than_min_error_pixels_is_ignored():
    target = torch.zeros(2, 8, 8, dtype=torch.bool)
    pred = target.clone()
    pred[0, 0, :8] = True
    pred[0, 1, 0] = True  # 9 disagreeing pixels -> ignored
    pred[1, 0, :8] = True
    pred[1, 1, :2] = True  # 10 -> a real point
    pts, labels = sample_refinement_points(pred, target, torch.Generator().manual_seed(0), min_error_pixels=10)
    assert labels.tolist() == [-2, 0]
    assert pts[0].tolist() == [0.0, 0.0]


def test_refinement_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="N x H x W"):
        sample_refinement_points(torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(1, 4, 5, dtype=torch.bool))


def test_low_res_points_map_to_block_centres():
    p = torch.tensor([[0.0, 0.0], [255.0, 10.0]])
    np.testing.assert_allclose(low_res_to_input(p, 4.0).numpy(), [[1.5, 1.5], [1021.5, 41.5]])
