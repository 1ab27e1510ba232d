"""Losses with a valid-region mask (the un-padded part of the padded model input).

- :func:`masked_mse`: phase-1 encoder distillation (student vs teacher embeddings).
- :func:`masked_bce` / :func:`masked_dice`: per-mask losses on low-res logits vs binary targets.
- :func:`mask_loss`: ``bce_weight * BCE + dice_weight * Dice`` per mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def valid_grid(input_sizes: torch.Tensor, img_size: int, grid: int) -> torch.Tensor:
    """Which cells of a ``grid x grid`` map of the padded ``img_size`` input are real image.

    Args:
        input_sizes: ``B x 2`` (h, w) of the resized image before padding.
        img_size: side of the padded input.
        grid: side of the map (embedding ``img_size/16`` or low-res ``img_size/4``).

    Returns:
        ``B x grid x grid`` bool: a cell is valid when its centre lies inside the image.
    """
    centres = (torch.arange(grid, device=input_sizes.device, dtype=torch.float64) + 0.5) * (img_size / grid)
    h = input_sizes[:, 0].to(torch.float64)
    w = input_sizes[:, 1].to(torch.float64)
    rows = centres[None, :] < h[:, None]
    cols = centres[None, :] < w[:, None]
    return rows[:, :, None] & cols[:, None, :]


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the valid positions, averaged over images.

    Args:
        student, teacher: ``B x C x H x W``.
        valid: ``B x H x W`` bool.

    Returns:
        scalar: mean over images of (sum over valid positions of the channel-mean squared error)
        / (number of valid positions).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} embeddings differ in shape")
    v = valid.to(student.dtype)
    err = (student - teacher.to(student.dtype)).pow(2).mean(dim=1)  # B x H x W
    per_image = (err * v).sum(dim=(1, 2)) / v.sum(dim=(1, 2)).clamp(min=1.0)
    return per_image.mean()


def masked_bce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits averaged over the valid pixels of each mask.

    Args:
        logits: ``... x H x W``.
        target: ``... x H x W`` in {0, 1}.
        valid: broadcastable to ``logits`` (bool).

    Returns:
        ``...`` (one value per mask).
    """
    v = valid.to(logits.dtype).expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    return (bce * v).sum(dim=(-1, -2)) / v.sum(dim=(-1, -2)).clamp(min=1.0)


def masked_dice(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """Soft Dice loss over the valid pixels: ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)``,
    ``p = sigmoid(logits)``; returns ``...`` (one value per mask)."""
    v = valid.to(logits.dtype).expand_as(logits)
    p = torch.sigmoid(logits) * v
    t = target.to(logits.dtype) * v
    inter = (p * t).sum(dim=(-1, -2))
    denom = p.sum(dim=(-1, -2)) + t.sum(dim=(-1, -2))
    return 1.0 - (2.0 * inter + smooth) / (denom + smooth)


def mask_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    bce_weight: float = 5.0,
    dice_weight: float = 5.0,
) -> torch.Tensor:
    """``bce_weight * BCE + dice_weight * Dice`` per mask (computed in float32): ``...``."""
    logits = logits.float()
    return bce_weight * masked_bce(logits, target, valid) + dice_weight * masked_dice(logits, target, valid)


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of bool masks ``... x H x W`` -> ``...`` (1 when both are empty)."""
    inter = (pred & target).sum(dim=(-1, -2)).float()
    union = (pred | target).sum(dim=(-1, -2)).float()
    return torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))
