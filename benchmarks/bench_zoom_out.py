"""Where AutoZoom should zoom boxes out: box mIoU of large synthetic nuclei on the whole image
against the same box decoded with the image embedded smaller (the object zoomed out to radius 64
or 80 in the 1024 frame), per band of the object's radius in the whole-image frame.

The seeds (11-13) are not the size sweep's (``bench_object_size.py``, seed 0), so the sweep stays
a check of the rule chosen here (``autozoom.DEFAULT_ZOOM_OUT_ABOVE`` / ``DEFAULT_ZOOM_OUT_RADIUS``)::

    python benchmarks/bench_zoom_out.py [--model edgesam-nuclei] [--seeds 11 12 13]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from napari_edgesam.datasets import synthetic_nuclei_sized
from napari_edgesam.inference.core import autozoom as az
from napari_edgesam.inference.loading.api import load_model

#: (nucleus radius, image side): whole-image frame radii of ~80 to ~400 px
CASES = ((48, 512), (64, 512), (100, 1024), (128, 1024), (32, 256), (24, 256), (40, 256))
BANDS = ((0, 80), (80, 96), (96, 112), (112, 128), (128, 160), (160, 400))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="edgesam-nuclei")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    ap.add_argument("--targets", type=float, nargs="+", default=[64.0, 80.0],
                    help="radii (1024 frame) the object is zoomed out to")
    args = ap.parse_args()
    predictor = load_model(args.model, backend=args.backend, allow_download=False)
    t0 = time.perf_counter()
    rows = []
    for seed in args.seeds:
        for r, side in CASES:
            image, labels = synthetic_nuclei_sized(seed=seed * 1000 + 97 * r + side, shape=(side, side), radius=r)
            predictor.set_image(image)
            zoom = az.AutoZoom(predictor, image, embedding=predictor.embedding)
            for i in np.arange(1, int(labels.max()) + 1)[:5]:
                truth = labels == i
                ys, xs = np.nonzero(truth)
                if ys.size < 30:
                    continue
                box = np.float32([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                row = [az.object_radius(box) * az.global_scale(image.shape[:2]),
                       iou(predictor.segment(None, None, box)[0], truth)]
                for t in args.targets:
                    w = az.crop_window(image.shape[:2], box, t)
                    _, _, crop_box = zoom._in_window(w, None, None, box)
                    mask = predictor.segment(None, None, crop_box, embedding=zoom.embedding(w))[0]
                    row.append(iou(w.paste(mask, image.shape[:2]), truth))
                rows.append(row)
    a = np.array(rows)
    print(f"{args.model}, synthetic nuclei (seeds {args.seeds}), box mIoU by the object's radius in the "
          f"whole-image frame; default post-processing; {time.perf_counter() - t0:.0f} s\n")
    print("| frame radius | n | whole image | " + " | ".join(f"zoomed out to {t:g}" for t in args.targets) + " |")
    print("|---" * (3 + len(args.targets)) + "|")
    for lo, hi in BANDS:
        sel = (a[:, 0] >= lo) & (a[:, 0] < hi)
        if sel.any():
            print(f"| {lo}-{hi} | {sel.sum()} | " + " | ".join(f"{a[sel, j].mean():.3f}" for j in range(1, a.shape[1])) + " |")


if __name__ == "__main__":
    main()
