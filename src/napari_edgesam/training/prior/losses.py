"""Losses of the box head: sigmoid focal loss (objectness), GIoU (boxes), BCE (centerness)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...model.box_head import HeadOutput
from .targets import Targets


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Element-wise focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)`` (same shape as ``logits``);
    ``targets`` in {0, 1}. ``alpha < 0`` disables the class weighting."""
    targets = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def giou_loss(pred_ltrb: torch.Tensor, target_ltrb: torch.Tensor) -> torch.Tensor:
    """``1 - GIoU`` of boxes given as distances ``... x 4`` (l, t, r, b) from the same point."""
    pl, pt, pr, pb = pred_ltrb.unbind(-1)
    tl, tt, tr, tb = target_ltrb.unbind(-1)
    pred_area = (pl + pr) * (pt + pb)
    target_area = (tl + tr) * (tt + tb)
    inter = (torch.minimum(pl, tl) + torch.minimum(pr, tr)).clamp(min=0) * (
        torch.minimum(pt, tt) + torch.minimum(pb, tb)).clamp(min=0)
    union = pred_area + target_area - inter
    enclose = (torch.maximum(pl, tl) + torch.maximum(pr, tr)) * (torch.maximum(pt, tt) + torch.maximum(pb, tb))
    iou = inter / union.clamp(min=1e-9)
    giou = iou - (enclose - union) / enclose.clamp(min=1e-9)
    return 1.0 - giou


def prior_loss(
    out: HeadOutput,
    targets: Targets,
    valid: torch.Tensor | None = None,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    box_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """FCOS loss of a batch. ``out`` and ``targets`` are ``B x N``; ``valid`` (``B x N`` bool)
    excludes locations (e.g. in the padding) from the objectness loss.

    Returns ``{"loss", "cls", "box", "ctr", "num_pos"}``: focal loss summed over valid locations
    and divided by the number of positives (at least 1); GIoU weighted by the centerness targets
    (normalised by their sum); centerness BCE averaged over positives.
    """
    pos = targets.positive
    num_pos = pos.sum().clamp(min=1).to(out.logits.dtype)
    focal = sigmoid_focal_loss(out.logits, pos, alpha, gamma)
    if valid is not None:
        focal = focal * valid.to(focal.dtype)
    cls = focal.sum() / num_pos
    if bool(pos.any()):
        w = targets.centerness[pos]
        box = (giou_loss(out.ltrb[pos], targets.ltrb[pos]) * w).sum() / w.sum().clamp(min=1e-6)
        ctr = F.binary_cross_entropy_with_logits(out.centerness[pos], targets.centerness[pos], reduction="sum") / num_pos
    else:
        box = out.ltrb.sum() * 0.0
        ctr = out.centerness.sum() * 0.0
    total = cls + box_weight * box + ctr
    return {"loss": total, "cls": cls.detach(), "box": box.detach(), "ctr": ctr.detach(), "num_pos": num_pos.detach()}
