"""The granularity prior: a class-agnostic, anchor-free box head on the encoder's stage features.

EdgeSAM's optional "RPN": a small FPN over the frozen RepViT taps ``stage1/2/3`` (strides
8/16/32) and an FCOS-style head shared by the levels. Every location of every level predicts an
objectness logit, the distances ``(l, t, r, b)`` from its centre to the four box sides (pixels)
and a centerness logit; a box's score is ``sqrt(sigmoid(objectness) * sigmoid(centerness))``.

Coordinates are (x, y) pixels of the padded model input (the 1024 frame); boxes are
``(x0, y0, x1, y1)`` with pixel-edge coordinates (a box around pixel columns ``c0..c1``
inclusive is ``x0 = c0, x1 = c1 + 1``). Locations are flattened level by level, row-major.

The head's weights live in their own file, stored beside the EdgeSAM checkpoint, so the
official checkpoints keep loading strictly; that file format (save, load, where it is) is
:mod:`napari_edgesam.inference.prior.files`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

STAGES = ("stage1", "stage2", "stage3")
#: Exponent clamp of the distance regression (exp(8) * 32 px is far beyond any image).
_MAX_LOG_DISTANCE = 8.0


@dataclass(frozen=True)
class BoxHeadConfig:
    """Architecture, target assignment and decoding defaults of a :class:`BoxHead`.

    Attributes:
        in_channels: channels of the input features, finest first (RepViT-M1: 96, 192, 384).
        strides: their strides in input pixels (8, 16, 32).
        channels: width of the FPN and the head towers.
        num_convs: 3x3 conv + GroupNorm + ReLU layers per tower (classification / regression).
        groups: GroupNorm groups (must divide ``channels``).
        prior_prob: initial objectness probability (focal-loss initialisation).
        size_bounds: a location of level ``i`` is responsible for boxes whose largest centre-to-side
            distance lies in ``[size_bounds[i], size_bounds[i + 1])`` (``len(strides) + 1`` values).
        center_radius: positives lie within ``center_radius * stride`` of the box centre.
        score_thresh: decoding: minimum box score.
        nms_thresh: decoding: box IoU above which the lower-scoring box is dropped.
        pre_nms_top_k: decoding: best boxes kept before NMS.
        max_detections: decoding: boxes kept after NMS.
    """

    in_channels: tuple[int, ...] = (96, 192, 384)
    strides: tuple[int, ...] = (8, 16, 32)
    channels: int = 64
    num_convs: int = 2
    groups: int = 8
    prior_prob: float = 0.01
    size_bounds: tuple[float, ...] = (0.0, 64.0, 128.0, 1e8)
    center_radius: float = 1.5
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    pre_nms_top_k: int = 1000
    max_detections: int = 300

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"BoxHeadConfig.{name}={getattr(self, name)!r} is invalid: must be {allowed}")

        n = len(self.strides)
        if n < 1 or len(self.in_channels) != n:
            raise bad("in_channels", f"one value per stride ({n})")
        if any(int(s) < 1 for s in self.strides) or list(self.strides) != sorted(self.strides):
            raise bad("strides", "positive and increasing")
        if self.channels < 1 or self.groups < 1 or self.channels % self.groups:
            raise bad("groups", f"a divisor of channels={self.channels}")
        if self.num_convs < 0:
            raise bad("num_convs", ">= 0")
        if not 0.0 < self.prior_prob < 1.0:
            raise bad("prior_prob", "in (0, 1)")
        if len(self.size_bounds) != n + 1 or list(self.size_bounds) != sorted(self.size_bounds):
            raise bad("size_bounds", f"{n + 1} increasing values")
        if self.center_radius <= 0:
            raise bad("center_radius", "> 0")
        if not 0.0 <= self.score_thresh <= 1.0:
            raise bad("score_thresh", "in [0, 1]")
        if not 0.0 < self.nms_thresh <= 1.0:
            raise bad("nms_thresh", "in (0, 1]")
        if self.pre_nms_top_k < 1 or self.max_detections < 1:
            raise bad("max_detections", ">= 1 (and pre_nms_top_k >= 1)")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BoxHeadConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown BoxHeadConfig fields {unknown}; allowed: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in data.items()})


class HeadOutput(NamedTuple):
    """Raw head outputs over all ``N`` locations (levels finest first, row-major).

    ``logits``: ``B x N`` objectness logits; ``ltrb``: ``B x N x 4`` distances (pixels, > 0)
    from each location to the left, top, right and bottom box sides; ``centerness``: ``B x N``
    logits; ``sizes``: ``(h, w)`` of every level.
    """

    logits: torch.Tensor
    ltrb: torch.Tensor
    centerness: torch.Tensor
    sizes: tuple[tuple[int, int], ...]


def _conv_gn(cin: int, cout: int, kernel: int, groups: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.GroupNorm(groups, cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FPN(nn.Module):
    """Top-down feature pyramid: 1x1 laterals (GroupNorm: robust to any feature scale),
    nearest-neighbour upsampling and addition, then a 3x3 output conv per level."""

    def __init__(self, in_channels: Sequence[int], channels: int, groups: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(_conv_gn(c, channels, 1, groups, relu=False) for c in in_channels)
        self.output = nn.ModuleList(_conv_gn(channels, channels, 3, groups, relu=True) for _ in in_channels)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        top = self.lateral[-1](feats[-1])
        merged = [top]
        for i in range(len(feats) - 2, -1, -1):
            top = self.lateral[i](feats[i]) + F.interpolate(top, size=feats[i].shape[-2:], mode="nearest")
            merged.insert(0, top)
        return [conv(x) for conv, x in zip(self.output, merged, strict=True)]


class BoxHead(nn.Module):
    """FPN + FCOS-style anchor-free head (class-agnostic).

    Input: the encoder's ``forward_features`` dict (or a sequence finest first):
    ``stage1`` ``B x 96 x S/8 x S/8``, ``stage2`` ``B x 192 x S/16 x S/16``,
    ``stage3`` ``B x 384 x S/32 x S/32`` for an ``S x S`` input. Output: :class:`HeadOutput`.
    """

    def __init__(self, config: BoxHeadConfig = BoxHeadConfig()) -> None:
        super().__init__()
        self.config = config
        c, g = config.channels, config.groups
        self.fpn = FPN(config.in_channels, c, g)
        self.cls_tower = nn.Sequential(*[_conv_gn(c, c, 3, g, relu=True) for _ in range(config.num_convs)])
        self.reg_tower = nn.Sequential(*[_conv_gn(c, c, 3, g, relu=True) for _ in range(config.num_convs)])
        self.cls_logits = nn.Conv2d(c, 1, 3, padding=1)
        self.bbox_pred = nn.Conv2d(c, 4, 3, padding=1)
        self.centerness = nn.Conv2d(c, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(config.strides)))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - self.config.prior_prob) / self.config.prior_prob))

    def _as_list(self, features: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        feats = [features[k] for k in STAGES] if isinstance(features, Mapping) else list(features)
        expected = self.config.in_channels
        if len(feats) != len(expected) or any(f.ndim != 4 or f.shape[1] != c for f, c in zip(feats, expected, strict=True)):
            got = [tuple(f.shape) for f in feats]
            raise ValueError(f"box head expects {len(expected)} B x C x H x W features with C = {expected}; got {got}")
        return feats

    def forward(self, features: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> HeadOutput:
        feats = self._as_list(features)
        logits, ltrb, ctr, sizes = [], [], [], []
        for level, (p, stride) in enumerate(zip(self.fpn(feats), self.config.strides, strict=True)):
            b, _, h, w = p.shape
            sizes.append((int(h), int(w)))
            cls_feat, reg_feat = self.cls_tower(p), self.reg_tower(p)
            logits.append(self.cls_logits(cls_feat).reshape(b, -1))
            ctr.append(self.centerness(reg_feat).reshape(b, -1))
            dist = torch.exp(torch.clamp(self.scales[level] * self.bbox_pred(reg_feat), max=_MAX_LOG_DISTANCE))
            ltrb.append((dist * float(stride)).reshape(b, 4, -1).transpose(1, 2))
        return HeadOutput(torch.cat(logits, 1), torch.cat(ltrb, 1), torch.cat(ctr, 1), tuple(sizes))

    def locations(self, sizes: Sequence[tuple[int, int]], device: torch.device | None = None) -> torch.Tensor:
        """Centres ``N x 2`` (x, y) in input pixels of all locations: ``((j + 0.5) s, (i + 0.5) s)``."""
        return locations(sizes, self.config.strides, device)

    def dense_boxes(
        self, features: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every location's box ``B x N x 4`` (x0, y0, x1, y1) and score ``B x N`` (no NMS)."""
        out = self(features)
        return decode_dense(out, self.locations(out.sizes, out.ltrb.device))

    @torch.no_grad()
    def detect(
        self,
        features: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
        valid_sizes: Sequence[tuple[int, int]] | None = None,
        *,
        score_thresh: float | None = None,
        nms_thresh: float | None = None,
        max_detections: int | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Boxes after thresholding, top-k and NMS, per image: ``[(boxes K x 4, scores K), ...]``
        sorted by descending score. ``valid_sizes``: ``(h, w)`` per image, the un-padded input
        region; boxes are clipped to it and boxes centred outside it are dropped. Unset options
        use the config."""
        cfg = self.config
        boxes, scores = self.dense_boxes(features)
        if valid_sizes is None:
            valid_sizes = [None] * boxes.shape[0]
        if len(valid_sizes) != boxes.shape[0]:
            raise ValueError(f"got {len(valid_sizes)} valid_sizes for a batch of {boxes.shape[0]}")
        return [
            select_boxes(
                b, s, None if v is None else (int(v[0]), int(v[1])),
                score_thresh=cfg.score_thresh if score_thresh is None else score_thresh,
                nms_thresh=cfg.nms_thresh if nms_thresh is None else nms_thresh,
                pre_nms_top_k=cfg.pre_nms_top_k,
                max_detections=cfg.max_detections if max_detections is None else max_detections,
            )
            for b, s, v in zip(boxes, scores, valid_sizes, strict=True)
        ]


# -- decoding ---------------------------------------------------------------------------------
def locations(
    sizes: Sequence[tuple[int, int]], strides: Sequence[int], device: torch.device | None = None
) -> torch.Tensor:
    """Centres ``N x 2`` (x, y) of all locations of levels with ``sizes`` (h, w) and ``strides``."""
    out = []
    for (h, w), s in zip(sizes, strides, strict=True):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        out.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1))
    return torch.cat(out, 0)


def decode_dense(out: HeadOutput, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Head outputs + location centres ``N x 2`` -> boxes ``B x N x 4`` and scores ``B x N``."""
    boxes = torch.cat([points - out.ltrb[..., :2], points + out.ltrb[..., 2:]], -1)
    scores = torch.sqrt(torch.sigmoid(out.logits) * torch.sigmoid(out.centerness))
    return boxes, scores


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ``N x 4`` and ``M x 4`` boxes (x0, y0, x1, y1) -> ``N x M``."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Greedy NMS: indices of kept boxes by descending score (ties: lower index first); a box is
    dropped if its IoU with a kept, higher-ranked box is above ``iou_thresh``."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = box_iou(boxes[order], boxes[order])
    alive = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(len(order)):
        if not bool(alive[i]):
            continue
        keep.append(i)
        alive &= iou[i] <= iou_thresh
    return order[torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)]


def select_boxes(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    valid_size: tuple[int, int] | None,
    *,
    score_thresh: float,
    nms_thresh: float,
    pre_nms_top_k: int,
    max_detections: int,
    min_size: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score threshold, drop boxes centred outside ``valid_size`` and clip the rest to it,
    drop boxes thinner than ``min_size`` pixels, keep the ``pre_nms_top_k`` best, NMS, keep
    ``max_detections``. ``boxes`` ``N x 4``, ``scores`` ``N`` -> ``(K x 4, K)`` by descending score."""
    keep = scores >= score_thresh
    if valid_size is not None:
        h, w = float(valid_size[0]), float(valid_size[1])
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        keep &= (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
        boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                             boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], 1)
    keep &= ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    boxes, scores = boxes[keep], scores[keep]
    if scores.numel() > pre_nms_top_k:
        top = torch.topk(scores, pre_nms_top_k).indices
        boxes, scores = boxes[top], scores[top]
    kept = nms(boxes, scores, nms_thresh)[:max_detections]
    return boxes[kept], scores[kept]


# -- encoder identity -------------------------------------------------------------------------
@torch.no_grad()
def encoder_signature(encoder: nn.Module) -> list[float]:
    """A fingerprint of an image encoder: the spatial mean of each ``stage3`` channel on a fixed
    ``1 x 3 x 64 x 64`` input (float32). Equal (to rounding) for the fused and unfused encoder;
    stored with a trained head to detect use with a different encoder."""
    param = next(encoder.parameters())
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    x = torch.stack([torch.sin(3 * xx), torch.cos(2 * yy), xx * yy])[None].to(param.device, torch.float32)
    was_training = encoder.training
    encoder.eval()
    try:
        stage3 = encoder.forward_features(x)["stage3"].float()
    finally:
        encoder.train(was_training)
    return [float(v) for v in stage3.mean((0, 2, 3)).cpu()]


def signatures_match(a: Sequence[float], b: Sequence[float], rtol: float = 1e-2) -> bool:
    """Whether two :func:`encoder_signature` values come from the same encoder (relative L2)."""
    ta, tb = torch.as_tensor(list(a), dtype=torch.float64), torch.as_tensor(list(b), dtype=torch.float64)
    if ta.shape != tb.shape:
        return False
    return bool(torch.linalg.norm(ta - tb) <= rtol * max(float(torch.linalg.norm(tb)), 1e-12))
