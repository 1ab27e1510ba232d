"""Evaluation of the granularity prior.

* Proposal quality over a dataset: box recall at IoU 0.5 (fraction of ground-truth boxes
  covered by some proposal) and AP50 (COCO-style 101-point interpolated average precision,
  greedy matching by descending score, each ground-truth box matched at most once).
* What it is for: single-click mIoU with and without the prior (click at each instance's
  interior centre; EdgeSAM's rule alone vs. the paper's box-from-proposals rule).

``napari-edgesam train prior-evaluate --images DIR --labels DIR --model M --prior P``
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence

import numpy as np

from ...inference.prior import box_iou as box_iou_np

logger = logging.getLogger(__name__)


def box_recall(
    predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray], iou_thresh: float = 0.5
) -> float:
    """Fraction of ground-truth boxes (over all images) with a predicted box at IoU >= ``iou_thresh``."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} prediction sets for {len(truths)} images")
    hit = total = 0
    for pred, gt in zip(predictions, truths, strict=True):
        gt = np.asarray(gt).reshape(-1, 4)
        total += len(gt)
        if len(gt) and len(pred):
            hit += int((box_iou_np(gt, pred).max(1) >= iou_thresh).sum())
    return float(hit / total) if total else float("nan")


def average_precision(
    predictions: Sequence[tuple[np.ndarray, np.ndarray]], truths: Sequence[np.ndarray], iou_thresh: float = 0.5
) -> float:
    """COCO-style AP at ``iou_thresh`` of ``[(boxes K x 4, scores K), ...]`` against ``[M x 4, ...]``."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} prediction sets for {len(truths)} images")
    scores, tps = [], []
    n_gt = 0
    for (boxes, sc), gt in zip(predictions, truths, strict=True):
        boxes, sc = np.asarray(boxes).reshape(-1, 4), np.asarray(sc).reshape(-1)
        gt = np.asarray(gt).reshape(-1, 4)
        n_gt += len(gt)
        order = np.argsort(-sc, kind="stable")
        iou = box_iou_np(boxes[order], gt) if len(gt) else np.zeros((len(order), 0))
        taken = np.zeros(len(gt), bool)
        for row, k in enumerate(order):
            tp = False
            if len(gt):
                cand = np.where(taken, -1.0, iou[row])
                j = int(np.argmax(cand))
                if cand[j] >= iou_thresh:
                    taken[j] = tp = True
            scores.append(float(sc[k]))
            tps.append(tp)
    if n_gt == 0:
        return float("nan")
    if not scores:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.asarray(tps)[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone envelope
    ap = 0.0
    for r in np.linspace(0, 1, 101):
        idx = np.searchsorted(recall, r, side="left")
        ap += precision[idx] if idx < len(precision) else 0.0
    return float(ap / 101)


def evaluate_head(head, store, keys: Sequence[str], *, batch_size: int = 4, device: str = "cpu") -> dict:
    """Box recall@0.5, AP50 and proposals per image of ``head`` on cached features ``keys``."""
    import torch

    from .data import load_batch

    head = head.eval().to(device)
    preds, truths = [], []
    with torch.no_grad():
        for i in range(0, len(keys), batch_size):
            feats, boxes, sizes = load_batch(store, keys[i : i + batch_size], device)
            dets = head.detect(feats, [tuple(v) for v in sizes.tolist()])
            preds += [(b.cpu().numpy(), s.cpu().numpy()) for b, s in dets]
            truths += [g.numpy() for g in boxes]
    return {
        "images": len(keys),
        "boxes": int(sum(len(t) for t in truths)),
        "recall50": box_recall([p[0] for p in preds], truths),
        "ap50": average_precision(preds, truths),
        "proposals_per_image": float(np.mean([len(p[0]) for p in preds])) if preds else 0.0,
    }


def click_miou(predictor, prior, pairs: Sequence[tuple[np.ndarray, np.ndarray]], *, k_nearest: int = 5) -> dict:
    """Single-click mIoU with and without the prior on ``[(image, labels), ...]``.

    Each instance is clicked once at its interior centre. Returns ``{"without", "with",
    "instances", "box_used" (fraction of clicks that found a proposal), "seconds_without",
    "seconds_with" (mean per click, decoding only), "seconds_proposals" (per image)}``.
    """
    from ...inference.prior import click_box
    from ..eval_metrics import interior_point, iou

    without, with_prior, used = [], [], 0
    t_plain = t_prior = t_props = 0.0
    for image, labels in pairs:
        t0 = time.perf_counter()
        emb = predictor.encode(image, prior=prior)  # the embedding with the prior's proposals
        t_props += time.perf_counter() - t0
        for lab in np.unique(labels[labels > 0]):
            gt = labels == lab
            pt = np.asarray(interior_point(gt), np.float32)
            t0 = time.perf_counter()
            mask, _, _ = predictor.segment(pt[None], np.ones(1), embedding=emb)
            t1 = time.perf_counter()
            box = click_box(emb.proposals, pt, emb.original_size, k_nearest)  # the rule, once
            mask_p, _, _ = predictor.segment(pt[None], np.ones(1), box, embedding=emb)
            t2 = time.perf_counter()
            t_plain += t1 - t0
            t_prior += t2 - t1
            used += box is not None
            without.append(iou(mask, gt))
            with_prior.append(iou(mask_p, gt))
    n = len(without)
    return {
        "instances": n,
        "without": float(np.mean(without)) if n else float("nan"),
        "with": float(np.mean(with_prior)) if n else float("nan"),
        "box_used": used / n if n else float("nan"),
        "seconds_without": t_plain / max(n, 1),
        "seconds_with": t_prior / max(n, 1),
        "seconds_proposals": t_props / max(len(pairs), 1),
    }


# -- CLI --------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, help="folder of images (or SA-1B jpgs)")
    p.add_argument("--labels", default=None, help="folder of instance label images (SA-1B: json folder)")
    p.add_argument("--kind", default="folder", choices=["folder", "sa1b"])
    p.add_argument("--model", required=True, help="EdgeSAM model name or .pth (the prior's encoder)")
    p.add_argument("--prior", required=True, help="box head .pth (from 'train')")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--clicks", action="store_true", help="also measure single-click mIoU with/without the prior")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write the results to this JSON file (atomically)")


def run(args: argparse.Namespace) -> int:
    from ...inference.loading.api import load_model
    from ...inference.prior import load_prior
    from ..config import DataConfig
    from ..evaluate import write_json_atomic
    from ..records import find_records, read_array
    from .data import FeatureStore, cache_features, store_digest

    records = find_records(DataConfig(kind=args.kind, images=args.images, labels=args.labels, limit=args.limit))
    predictor = load_model(args.model, backend="torch", device=args.device, allow_download=False)
    prior = load_prior(args.prior, predictor)
    encoder = prior.encoder
    store = FeatureStore(None, store_digest(encoder, 1024))
    keys = cache_features(encoder, records, DataConfig(kind=args.kind, images=args.images, labels=args.labels),
                          1024, store, device=prior.device)
    result = {"proposals": evaluate_head(prior.head, store, keys, device=prior.device)}
    if args.clicks:
        if args.kind != "folder":
            raise ValueError("--clicks needs instance label images (--kind folder)")
        pairs = [(read_array(r.image), read_array(r.labels, labels=True)) for r in records if r.labels is not None]
        result["clicks"] = click_miou(predictor, prior, pairs)
    print(json.dumps(result, indent=2))
    if args.json:
        write_json_atomic(result, args.json)
    return 0
