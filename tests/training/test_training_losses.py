"""Losses with a valid-region mask, on hand-computed inputs."""

from __future__ import annotations

import math

import pytest
import torch

from napari_edgesam.training.losses import (
    mask_iou,
    mask_loss,
    masked_bce,
    masked_dice,
    masked_mse,
    valid_grid,
)

LOGITS = torch.tensor([[0.0, 2.0], [-1.0, 5.0]])
TARGET = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
VALID = torch.tensor([[True, True], [True, False]])


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_masked_bce_by_hand():
    # bce(x, t) = log(1 + e^x) - x t ; the bottom-right pixel is padding
    expected = (math.log(2) + math.log(1 + math.e**2) + math.log(1 + math.e**-1)) / 3
    assert masked_bce(LOGITS, TARGET, VALID).item() == pytest.approx(expected, rel=1e-6)


def test_masked_dice_by_hand():
    p = [_sig(0.0), _sig(2.0), _sig(-1.0)]
    inter = p[0] * 1.0
    expected = 1 - (2 * inter + 1) / (sum(p) + 1.0 + 1)
    assert masked_dice(LOGITS, TARGET, VALID).item() == pytest.approx(expected, rel=1e-6)


def test_padding_is_ignored():
    changed = LOGITS.clone()
    changed[1, 1] = -50.0  # in the padding: must not matter
    for fn in (masked_bce, masked_dice):
        assert fn(changed, TARGET, VALID).item() == pytest.approx(fn(LOGITS, TARGET, VALID).item())


def test_mask_loss_weights_and_shape():
    logits = torch.stack([LOGITS, -LOGITS])[None]  # 1 x 2 x 2 x 2
    target = TARGET.expand(1, 2, 2, 2)
    out = mask_loss(logits, target, VALID, bce_weight=5.0, dice_weight=5.0)
    assert out.shape == (1, 2)
    first = 5 * masked_bce(LOGITS, TARGET, VALID) + 5 * masked_dice(LOGITS, TARGET, VALID)
    assert out[0, 0].item() == pytest.approx(first.item(), rel=1e-6)
    assert mask_loss(logits, target, VALID, 1.0, 0.0)[0, 1].item() == pytest.approx(
        masked_bce(-LOGITS, TARGET, VALID).item(), rel=1e-6
    )


def test_perfect_prediction_has_small_loss():
    target = torch.zeros(1, 8, 8)
    target[:, 2:6, 2:6] = 1
    logits = (target * 2 - 1) * 20
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    assert mask_loss(logits, target, valid).item() < 1e-3
    assert mask_loss(-logits, target, valid).item() > 50


def test_masked_mse_only_counts_valid_cells():
    student = torch.ones(2, 3, 4, 4)
    teacher = torch.zeros(2, 3, 4, 4)
    valid = torch.zeros(2, 4, 4, dtype=torch.bool)
    valid[0, :2, :3] = True
    valid[1, :, :] = True
    teacher[0, :, 2:, :] = 100.0  # padding of image 0: ignored
    teacher[1, 0] = 1.0  # image 1: channel 0 matches, so the channel-mean error is 2/3
    assert masked_mse(student, teacher, valid).item() == pytest.approx((1.0 + 2 / 3) / 2, rel=1e-6)


def test_valid_grid_uses_cell_centres():
    # 16-pixel input, 4 cells of 4 pixels (centres 2, 6, 10, 14); image 5 rows x 9 cols
    v = valid_grid(torch.tensor([[5, 9], [16, 16]]), img_size=16, grid=4)
    assert v.shape == (2, 4, 4)
    assert v[0].sum() == 2 and v[0, 0, :2].all() and not v[0, 1].any()
    assert v[1].all()


def test_mask_iou():
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    b = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2] = True
    b[0, 1:3] = True
    iou = mask_iou(a, b)
    assert iou[0].item() == pytest.approx(4 / 12)
    assert iou[1].item() == 1.0  # both empty
