"""Automatic mode on held-out real nuclei: point grid vs the granularity prior's boxes.

    python benchmarks/bench_prior_automatic.py --model edgesam-nuclei --prior PATH \
        --image data/nuclei/heldout/images/dsb_right_half.tif --labels data/nuclei/heldout/labels/dsb_right_half.tif

Prints time per image and instance quality (matched at IoU >= 0.5: precision, recall, F1,
mean IoU of the matches) for both modes, run one after the other in one process.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tifffile

from napari_edgesam.inference.automatic.boxes import BoxAutomaticConfig, segment_automatic_boxes
from napari_edgesam.inference.automatic.grid import AutomaticConfig, segment_automatic
from napari_edgesam.inference.loading.api import load_model
from napari_edgesam.inference.prior import load_prior


def match(pred: np.ndarray, gt: np.ndarray, thr: float = 0.5) -> dict:
    """Greedy one-to-one matching of instances by IoU."""
    p_ids = [i for i in np.unique(pred) if i]
    g_ids = [i for i in np.unique(gt) if i]
    pairs = []
    for g in g_ids:
        gm = gt == g
        cand = np.unique(pred[gm])
        for p in cand[cand > 0]:
            pm = pred == p
            iou = (pm & gm).sum() / (pm | gm).sum()
            if iou >= thr:
                pairs.append((iou, g, p))
    used_g, used_p, ious = set(), set(), []
    for iou, g, p in sorted(pairs, reverse=True):
        if g not in used_g and p not in used_p:
            used_g.add(g), used_p.add(p), ious.append(iou)
    tp = len(ious)
    prec = tp / max(len(p_ids), 1)
    rec = tp / max(len(g_ids), 1)
    return {"objects": len(p_ids), "precision": round(prec, 3), "recall": round(rec, 3),
            "F1": round(2 * prec * rec / max(prec + rec, 1e-9), 3),
            "matched mIoU": round(float(np.mean(ious)) if ious else 0.0, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="edgesam-nuclei")
    ap.add_argument("--prior", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--labels", required=True)
    args = ap.parse_args()
    image, gt = tifffile.imread(args.image), tifffile.imread(args.labels)
    predictor = load_model(args.model, backend="torch", device="cpu")
    prior = load_prior(args.prior, predictor)
    emb = predictor.encode(image, prior=None)
    rows = []
    t = time.perf_counter()
    grid = segment_automatic(predictor, image, AutomaticConfig(), embedding=emb)
    rows.append(("point grid 32x32 (batched)", time.perf_counter() - t, grid))
    t = time.perf_counter()
    boxes = segment_automatic_boxes(predictor, prior, image, BoxAutomaticConfig())
    rows.append(("prior boxes (incl. encoder + head)", time.perf_counter() - t, boxes))
    print(f"{args.image}: {len([i for i in np.unique(gt) if i])} instances (grid timing excludes the shared embedding)")
    print("| mode | seconds | objects | precision | recall | F1 | matched mIoU |\n|---|---|---|---|---|---|---|")
    for name, sec, res in rows:
        labels = res.labels if hasattr(res, "labels") else res
        m = match(np.asarray(labels), gt)
        print(f"| {name} | {sec:.1f} | {m['objects']} | {m['precision']} | {m['recall']} | {m['F1']} | {m['matched mIoU']} |")


if __name__ == "__main__":
    main()
