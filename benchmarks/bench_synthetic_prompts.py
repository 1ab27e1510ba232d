"""Prompt quality of a model on synthetic nuclei with known instances: box, plain click, and
click with the granularity prior (EdgeSAM's rule), mean IoU over every nucleus.

    python benchmarks/bench_synthetic_prompts.py [--model edgesam-nuclei] [--shape 512 512] [--nuclei 50]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage as ndi

from napari_edgesam._napari.samples import SEED
from napari_edgesam.datasets import synthetic_nuclei_2d
from napari_edgesam.inference.loading.api import load_model


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="edgesam-nuclei")
    ap.add_argument("--shape", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    ap.add_argument("--nuclei", type=int, default=50)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    image, labels = synthetic_nuclei_2d(seed=args.seed, shape=tuple(args.shape), n_nuclei=args.nuclei)
    predictor = load_model(args.model, prior="auto", allow_download=False)
    predictor.set_image(image)
    rows: dict[str, list[float]] = {"box": [], "click": [], "click + prior": []}
    for i in range(1, int(labels.max()) + 1):
        truth = labels == i
        if truth.sum() < 30:
            continue
        ys, xs = np.nonzero(truth)
        cy, cx = ndi.center_of_mass(truth)
        rows["box"].append(iou(predictor.segment(box=np.array([xs.min(), ys.min(), xs.max(), ys.max()]))[0], truth))
        rows["click"].append(iou(predictor.segment(np.array([[cx, cy]]), np.array([1]))[0], truth))
        if predictor.prior is not None:
            rows["click + prior"].append(iou(predictor.segment_click((cx, cy))[0], truth))
    print(f"{args.model}, synthetic nuclei {args.shape[0]}x{args.shape[1]}, seed {args.seed}, "
          f"{len(rows['box'])} nuclei (centroid clicks)\n")
    print("| prompt | mean IoU | median IoU |\n|---|---|---|")
    for name, values in rows.items():
        if values:
            print(f"| {name} | {np.mean(values):.3f} | {np.median(values):.3f} |")


if __name__ == "__main__":
    main()
