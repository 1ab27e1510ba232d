"""FCOS target assignment: ground-truth boxes -> per-location objectness, distances, centerness.

A location (centre ``(x, y)`` of a cell of stride ``s``) is positive for a box when it lies
inside the box and within ``center_radius * s`` of the box centre (centre sampling), and the
largest of its distances ``(l, t, r, b)`` to the box sides lies in its level's size range. A
location claimed by several boxes takes the smallest. Boxes are ``(x0, y0, x1, y1)`` in input
pixels (pixel-edge coordinates), like the head's outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ...model.box_head import BoxHeadConfig, locations


class Targets(NamedTuple):
    """Targets of one image over its ``N`` locations.

    ``positive``: ``N`` bool; ``ltrb``: ``N x 4`` distances (valid where positive);
    ``centerness``: ``N`` in [0, 1] (valid where positive); ``matched``: ``N`` index of the
    assigned box (-1 for negatives).
    """

    positive: torch.Tensor
    ltrb: torch.Tensor
    centerness: torch.Tensor
    matched: torch.Tensor


class LevelLayout(NamedTuple):
    """Per-location geometry of all levels: centres ``N x 2``, strides ``N``, size range ``N x 2``."""

    points: torch.Tensor
    strides: torch.Tensor
    ranges: torch.Tensor


def level_layout(sizes: Sequence[tuple[int, int]], config: BoxHeadConfig) -> LevelLayout:
    """The :class:`LevelLayout` for levels of ``sizes`` ``(h, w)`` (finest first)."""
    if len(sizes) != len(config.strides):
        raise ValueError(f"got {len(sizes)} level sizes for {len(config.strides)} strides")
    pts = locations(sizes, config.strides)
    counts = [h * w for h, w in sizes]
    strides = torch.repeat_interleave(torch.tensor(config.strides, dtype=torch.float32), torch.tensor(counts))
    lo = torch.tensor(config.size_bounds[:-1], dtype=torch.float32)
    hi = torch.tensor(config.size_bounds[1:], dtype=torch.float32)
    ranges = torch.stack([torch.repeat_interleave(lo, torch.tensor(counts)),
                          torch.repeat_interleave(hi, torch.tensor(counts))], 1)
    return LevelLayout(pts, strides, ranges)


def centerness_target(ltrb: torch.Tensor) -> torch.Tensor:
    """``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` of ``... x 4`` distances."""
    lr, tb = ltrb[..., [0, 2]], ltrb[..., [1, 3]]
    ratio = (lr.min(-1).values / lr.max(-1).values.clamp(min=1e-9)) * (
        tb.min(-1).values / tb.max(-1).values.clamp(min=1e-9))
    return torch.sqrt(ratio.clamp(min=0))


def assign_targets(boxes: torch.Tensor, layout: LevelLayout, center_radius: float) -> Targets:
    """Assign ``K x 4`` ground-truth boxes to the locations of ``layout``."""
    pts = layout.points
    n = pts.shape[0]
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if boxes.shape[0] == 0:
        return Targets(torch.zeros(n, dtype=torch.bool), torch.zeros(n, 4), torch.zeros(n),
                       torch.full((n,), -1, dtype=torch.int64))
    x, y = pts[:, 0:1], pts[:, 1:2]  # N x 1
    ltrb = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], -1)  # N x K x 4
    inside = ltrb.min(-1).values > 0
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    radius = layout.strides[:, None] * center_radius
    near = ((x - cx).abs() < radius) & ((y - cy).abs() < radius)
    reach = ltrb.max(-1).values
    in_range = (reach >= layout.ranges[:, 0:1]) & (reach < layout.ranges[:, 1:2])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cost = torch.where(inside & near & in_range, area[None, :].expand(n, -1), torch.full_like(reach, float("inf")))
    best, matched = cost.min(1)
    positive = torch.isfinite(best)
    matched = torch.where(positive, matched, torch.full_like(matched, -1))
    chosen = ltrb[torch.arange(n), matched.clamp(min=0)]
    ctr = torch.where(positive, centerness_target(chosen), torch.zeros(n))
    return Targets(positive, torch.where(positive[:, None], chosen, torch.zeros_like(chosen)), ctr, matched)


def batch_targets(boxes: Sequence[torch.Tensor], layout: LevelLayout, center_radius: float) -> Targets:
    """:func:`assign_targets` for a batch: fields stacked to ``B x N (x 4)``."""
    per = [assign_targets(b, layout, center_radius) for b in boxes]
    return Targets(*(torch.stack([getattr(t, f) for t in per]) for f in Targets._fields))
