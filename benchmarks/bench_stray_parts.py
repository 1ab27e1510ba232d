"""Stray parts: how often a prompted mask has pieces not connected to the object, and what
keeping only the prompted piece (``segment(one_piece=True)``, the default) gains (held-out
nuclei, validation only).

For every held-out nucleus: a box prompt (its bounding box) and a click at its interior-most
pixel, each through ``EdgeSamPredictor.segment`` (holes filled, as the widget does), with
``one_piece=False`` (every piece) and with the default (the 8-connected piece under the click;
for the box, the piece with most pixels in it:
:func:`~napari_edgesam.inference.core.postprocess.keep_prompted_pieces`). Prints mean IoU (%)
for both and how many masks come in more than one piece without the rule. Then the same click
with the model's granularity prior (``segment_click``, what the widget does by default when the
model has a prior): the mask ending at the box the prior joins to the click (the default) and not
(``clip_box=False``).

    python benchmarks/bench_stray_parts.py --model edgesam-nuclei --data data/nuclei_v2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

from napari_edgesam.inference.loading.api import load_model
from napari_edgesam.inference.loading.with_prior import load_predictor

EIGHT = np.ones((3, 3), bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="edgesam-nuclei")
    ap.add_argument("--data", default="data/nuclei_v2", help="a folder with heldout/images and heldout/labels")
    args = ap.parse_args(argv)
    predictor = load_model(args.model)
    with_prior, why = load_predictor(args.model)
    prior_rows: dict[str, list[float]] = {"cut": [], "not cut": []}
    rows = {"box": [], "box kept": [], "click": [], "click kept": [], "box alone": []}
    parts = {"box": 0, "click": 0}
    embeddings: dict = {}
    for image_path in sorted((Path(args.data) / "heldout" / "images").glob("*.tif")):
        image = tifffile.imread(image_path)
        labels = tifffile.imread(Path(args.data) / "heldout" / "labels" / image_path.name)
        emb = predictor.encode(image)
        for k in np.unique(labels)[1:]:
            truth = labels == k
            ys, xs = np.nonzero(truth)
            box = np.float32([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            dist = ndi.distance_transform_edt(np.pad(truth, 1))[1:-1, 1:-1]
            y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
            click = (np.float32([[x, y]]), np.ones(1, np.float32))
            by_box = predictor.segment(box=box, embedding=emb, one_piece=False)[0]
            by_click = predictor.segment(*click, embedding=emb, one_piece=False)[0]
            parts["box"] += ndi.label(by_box, EIGHT)[1] > 1
            parts["click"] += ndi.label(by_click, EIGHT)[1] > 1
            rows["box"].append(iou(by_box, truth))
            rows["box kept"].append(iou(predictor.segment(box=box, embedding=emb)[0], truth))
            rows["box alone"].append(iou(predictor.segment(box=box, embedding=emb, box_centre=False)[0], truth))
            rows["click"].append(iou(by_click, truth))
            rows["click kept"].append(iou(predictor.segment(*click, embedding=emb)[0], truth))
            if with_prior.prior is not None:
                pe = embeddings.setdefault(image_path, with_prior.encode(image))
                prior_rows["cut"].append(iou(with_prior.segment_click((x, y), embedding=pe)[0], truth))
                prior_rows["not cut"].append(iou(with_prior.segment_click((x, y), embedding=pe, clip_box=False)[0],
                                                 truth))
    n = len(rows["box"])
    print(f"{args.model}, {n} held-out objects of {args.data}")
    print("| prompt | every piece: mIoU (%) | one piece (default): mIoU (%) | masks in several pieces |")
    print("|---|---|---|---|")
    for kind in ("box", "click"):
        print(f"| {kind} | {100 * np.mean(rows[kind]):.1f} | {100 * np.mean(rows[kind + ' kept']):.1f} | "
              f"{parts[kind]}/{n} |")
    print(f"\nbox, default post-processing, decoded from the box alone (box_centre=False, before session 9): "
          f"{100 * np.mean(rows['box alone']):.1f} mIoU (%)")
    if prior_rows["cut"]:
        print(f"\ncentre click with the prior (segment_click, {with_prior.backend!r}): mask ending at the prior's box "
              f"{100 * np.mean(prior_rows['cut']):.1f}, not cut {100 * np.mean(prior_rows['not cut']):.1f} mIoU (%)")
    else:
        print(f"\nno prior: {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
