"""Train the granularity prior (box head) with the EdgeSAM encoder frozen.

The encoder's ``stage1/2/3`` features are computed once per image (:mod:`.data`), so every
epoch only runs the small head: CPU training is practical. AdamW, linear warm-up then cosine
decay, gradient clipping; the FCOS loss of :mod:`.losses`. The trained head is written
atomically with its config and ``meta`` (encoder name and signature, input size, data,
epochs, seconds per epoch, validation recall/AP50).

``napari-edgesam train prior --images DIR --labels DIR --model M --output P``
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...inference.prior.files import save_box_head
from ...model.box_head import BoxHead, BoxHeadConfig, encoder_signature
from ..config import DataConfig
from ..records import find_records
from .data import FeatureStore, cache_features, load_batch, store_digest
from .evaluate_prior import evaluate_head
from .losses import prior_loss
from .targets import batch_targets, level_layout

logger = logging.getLogger(__name__)


@dataclass
class PriorTrainConfig:
    """Everything a prior training run needs (all fields have CLI flags of the same name)."""

    #: Training images (folder, or SA-1B jpgs with ``kind="sa1b"``).
    images: str = ""
    #: Instance label images matched by stem (folder) or SA-1B json folder (default: beside).
    labels: str | None = None
    kind: str = "folder"
    #: Validation images/labels; without them ``val_fraction`` of the training images are held out.
    val_images: str | None = None
    val_labels: str | None = None
    val_fraction: float = 0.1
    #: EdgeSAM model whose encoder the head reads: registered name or ``.pth``.
    model: str = "edgesam"
    #: Where the head is written (``.pth``).
    output: str = "prior.pth"
    #: Model-input side (the predictor uses 1024; smaller is only for quick experiments).
    img_size: int = 1024
    epochs: int = 24
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 5.0
    seed: int = 0
    #: Folder for cached features (None: keep them in memory).
    cache_dir: str | None = None
    device: str = "cpu"
    #: torch intra-op threads (None: torch's default).
    num_threads: int | None = None
    #: Head width and tower depth.
    channels: int = 64
    num_convs: int = 2
    #: Boxes thinner than this (input pixels) are ignored.
    min_box_size: float = 2.0
    limit: int | None = None
    channel_axis: int | None = None
    percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])

    def validate(self) -> PriorTrainConfig:
        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: must be {allowed}")

        need(bool(self.images), "images", "a folder of training images")
        need(self.kind in ("folder", "sa1b"), "kind", "'folder' or 'sa1b'")
        need(self.img_size >= 64 and self.img_size % 32 == 0, "img_size", "a multiple of 32, >= 64")
        need(self.epochs >= 1, "epochs", ">= 1")
        need(self.batch_size >= 1, "batch_size", ">= 1")
        need(self.lr > 0, "lr", "> 0")
        need(self.weight_decay >= 0, "weight_decay", ">= 0")
        need(self.warmup_steps >= 0, "warmup_steps", ">= 0")
        need(self.grad_clip > 0, "grad_clip", "> 0")
        need(0.0 <= self.val_fraction < 1.0, "val_fraction", "in [0, 1)")
        need(self.min_box_size >= 0, "min_box_size", ">= 0")
        need(self.num_threads is None or self.num_threads >= 1, "num_threads", "None or >= 1")
        return self

    def data(self, images: str, labels: str | None) -> DataConfig:
        return DataConfig(kind=self.kind, images=images, labels=labels, limit=self.limit,
                          channel_axis=self.channel_axis, percentiles=list(self.percentiles))


@dataclass
class PriorTrainResult:
    """The trained head (eval mode), per-epoch history and the validation metrics."""

    head: BoxHead
    history: list[dict]
    validation: dict | None
    seconds_caching: float


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 1% of ``base`` at ``total``."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def train_step(head: BoxHead, optimizer, feats: dict, boxes: list, sizes: torch.Tensor, grad_clip: float) -> dict:
    """One optimisation step on a batch; returns the float loss terms."""
    head.train()
    out = head(feats)
    layout = level_layout(out.sizes, head.config)
    targets = batch_targets(boxes, layout, head.config.center_radius)
    pts = layout.points.to(out.logits.device)
    sizes = sizes.to(out.logits.device)
    valid = (pts[None, :, 0] < sizes[:, 1:2]) & (pts[None, :, 1] < sizes[:, 0:1])
    targets = type(targets)(*(t.to(out.logits.device) for t in targets))
    losses = prior_loss(out, targets, valid)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(head.parameters(), grad_clip)
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def _split(keys: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    if fraction <= 0 or len(keys) < 2:
        return keys, []
    order = np.random.default_rng(seed).permutation(len(keys))
    n_val = min(max(1, int(round(fraction * len(keys)))), len(keys) - 1)
    val = sorted(keys[i] for i in order[:n_val])
    return [k for k in keys if k not in set(val)], val


def load_frozen_encoder(model: str, device: str = "cpu") -> torch.nn.Module:
    """The fused, frozen image encoder of a registered model name or ``.pth`` path."""
    from ...inference.loading import weights
    from ...model.build import build_edge_sam

    path = Path(model)
    if model in weights.MODEL_REGISTRY:
        path = weights.fetch_weight(model, "pth")
    elif not path.is_file():
        raise FileNotFoundError(f"model {model!r} is neither a registered name nor a .pth file")
    encoder = build_edge_sam(path).image_encoder.fuse().eval().to(device)
    weights.confirm_loaded(path)  # a fetched file's hash is recorded once it has loaded
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder


def train_prior(
    cfg: PriorTrainConfig,
    *,
    encoder: torch.nn.Module | None = None,
    log: Callable[[dict], None] | None = None,
) -> PriorTrainResult:
    """Cache features, train the head, evaluate on the held-out images, save to ``cfg.output``.

    ``encoder``: use this frozen encoder instead of loading ``cfg.model`` (tests, notebooks).
    ``log(record)``: called after every epoch with ``{"epoch", "loss", "cls", "box", "ctr", "seconds"}``.
    """
    cfg.validate()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    if encoder is None:
        encoder = load_frozen_encoder(cfg.model, cfg.device)
    encoder = encoder.eval()
    store = FeatureStore(cfg.cache_dir, store_digest(encoder, cfg.img_size))
    t0 = time.perf_counter()
    train_records = find_records(cfg.data(cfg.images, cfg.labels))
    keys = cache_features(encoder, train_records, cfg.data(cfg.images, cfg.labels), cfg.img_size, store,
                          min_box_size=cfg.min_box_size, device=cfg.device)
    if cfg.val_images:
        val_records = find_records(cfg.data(cfg.val_images, cfg.val_labels))
        val_keys = cache_features(encoder, val_records, cfg.data(cfg.val_images, cfg.val_labels), cfg.img_size,
                                  store, min_box_size=cfg.min_box_size, device=cfg.device)
    else:
        keys, val_keys = _split(keys, cfg.val_fraction, cfg.seed)
    seconds_caching = time.perf_counter() - t0
    logger.info("%d training / %d validation images; features in %.1f s", len(keys), len(val_keys), seconds_caching)

    head = BoxHead(BoxHeadConfig(channels=cfg.channels, num_convs=cfg.num_convs, groups=min(8, cfg.channels)))
    head.to(cfg.device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(keys) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    rng = np.random.default_rng(cfg.seed)
    history, step = [], 0
    for epoch in range(cfg.epochs):
        t_epoch = time.perf_counter()
        order = rng.permutation(len(keys))
        sums: dict[str, float] = {}
        for b in range(steps_per_epoch):
            batch = [keys[i] for i in order[b * cfg.batch_size : (b + 1) * cfg.batch_size]]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, cfg.lr, cfg.warmup_steps)
            feats, boxes, sizes = load_batch(store, batch, cfg.device)
            terms = train_step(head, optimizer, feats, boxes, sizes, cfg.grad_clip)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            step += 1
        record = {"epoch": epoch + 1, **{k: v / steps_per_epoch for k, v in sums.items()},
                  "seconds": time.perf_counter() - t_epoch}
        history.append(record)
        logger.info("epoch %d/%d loss %.4f (cls %.4f box %.4f ctr %.4f) %.2f s", epoch + 1, cfg.epochs,
                    record["loss"], record["cls"], record["box"], record["ctr"], record["seconds"])
        if log is not None:
            log(record)
    head.eval()
    validation = evaluate_head(head, store, val_keys, device=cfg.device) if val_keys else None
    meta = {
        "encoder": cfg.model,
        "encoder_signature": encoder_signature(encoder),
        "img_size": cfg.img_size,
        "train_images": len(keys),
        "epochs": cfg.epochs,
        "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])),
        "validation": validation or {},
        "train_config": {k: v for k, v in asdict(cfg).items() if k not in ("output",)},
    }
    save_box_head(head.cpu(), cfg.output, meta)
    logger.info("wrote %s", cfg.output)
    return PriorTrainResult(head, history, validation, seconds_caching)


# -- CLI --------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    defaults = PriorTrainConfig()
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        if name == "percentiles":
            p.add_argument(flag, type=float, nargs=2, default=value, metavar=("LOW", "HIGH"))
        elif isinstance(value, bool):
            p.add_argument(flag, action="store_true", default=value)
        else:
            kind = type(value) if value is not None else (int if name in ("limit", "channel_axis", "num_threads") else str)
            p.add_argument(flag, type=kind, default=value, required=name in ("images", "output"))


def run(args: argparse.Namespace) -> int:
    names = set(asdict(PriorTrainConfig()))
    cfg = PriorTrainConfig(**{k: v for k, v in vars(args).items() if k in names})

    def show(rec: dict) -> None:
        print(f"epoch {rec['epoch']}: loss {rec['loss']:.4f} (cls {rec['cls']:.4f}, box {rec['box']:.4f}, "
              f"ctr {rec['ctr']:.4f}) {rec['seconds']:.2f} s", flush=True)

    result = train_prior(cfg, log=show)
    print(f"features cached in {result.seconds_caching:.1f} s; "
          f"{np.mean([h['seconds'] for h in result.history]):.2f} s per epoch; wrote {cfg.output}")
    if result.validation:
        v = result.validation
        print(f"validation: {v['images']} images, {v['boxes']} boxes, recall@0.5 {v['recall50']:.3f}, "
              f"AP50 {v['ap50']:.3f}, {v['proposals_per_image']:.1f} proposals/image")
    return 0
