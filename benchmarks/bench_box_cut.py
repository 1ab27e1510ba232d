"""Masks ending at their box (``clip_to_box``): the development figures behind the rule, on data
that is not held out (the stardist train crop, synthetic nuclei, the plugin's 3D sample).

Rows per image, shipped model on the torch backend, cut (default) against not cut:
  * box mIoU: ``segment(box=...)`` with each nucleus's bounding box;
  * prior click mIoU: ``segment_click`` at each nucleus's interior-most pixel (the prior's box
    joined to the click);
  * prior-box automatic F1@0.5 (``BoxAutomaticConfig.box_margin`` 0.02 against None), with
    ``--automatic``.

    python benchmarks/bench_box_cut.py [--automatic] [--data data/nuclei_v2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prior_automatic import match  # noqa: E402

from napari_edgesam.datasets import synthetic_nuclei_2d, synthetic_nuclei_3d  # noqa: E402
from napari_edgesam.inference.automatic.boxes import BoxAutomaticConfig, segment_automatic_boxes  # noqa: E402
from napari_edgesam.inference.loading.with_prior import load_predictor  # noqa: E402


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def prompts(predictor, image: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    emb = predictor.encode(image)
    rows: dict[str, list[float]] = {"box cut": [], "box not cut": [], "click cut": [], "click not cut": []}
    for k in np.unique(labels)[1:]:
        truth = labels == k
        if truth.sum() < 10:
            continue
        ys, xs = np.nonzero(truth)
        box = np.float32([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        dist = ndi.distance_transform_edt(np.pad(truth, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        for cut, tag in ((True, "cut"), (False, "not cut")):
            rows[f"box {tag}"].append(iou(predictor.segment(box=box, embedding=emb, clip_box=cut)[0], truth))
            rows[f"click {tag}"].append(iou(predictor.segment_click((x, y), embedding=emb, clip_box=cut)[0], truth))
    return {k: float(np.mean(v)) for k, v in rows.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="edgesam-nuclei")
    ap.add_argument("--data", default="data/nuclei_v2", help="folder with train/images and train/labels")
    ap.add_argument("--automatic", action="store_true", help="also prior-box automatic F1 with and without the cut")
    args = ap.parse_args()
    predictor, why = load_predictor(args.model, backend="torch")
    if predictor.prior is None:
        print(f"no prior: {why}")
        return 1
    cases = []
    crop = Path(args.data) / "train" / "images" / "dsb_0_r0.tif"
    if crop.is_file():
        cases.append(("stardist train crop", tifffile.imread(crop), tifffile.imread(crop.parents[1] / "labels" / crop.name)))
    cases += [(f"synthetic 512 seed {s}", *synthetic_nuclei_2d(seed=s)) for s in (101, 7)]
    volume, vlabels = synthetic_nuclei_3d(seed=2024, shape=(24, 192, 192), n_nuclei=20)
    cases += [(f"3D sample slice {z}", volume[z], vlabels[z]) for z in (8, 12, 16)]
    print(f"{args.model} (torch), mean IoU; cut: the mask ends at its box widened by 1 px + 2%")
    print("| image | box cut | box not cut | prior click cut | prior click not cut |"
          + (" prior-box F1 cut | not cut |" if args.automatic else ""))
    print("|---|---|---|---|---|" + ("---|---|" if args.automatic else ""))
    for name, image, labels in cases:
        r = prompts(predictor, image, labels)
        line = f"| {name} | {r['box cut']:.3f} | {r['box not cut']:.3f} | {r['click cut']:.3f} | {r['click not cut']:.3f} |"
        if args.automatic and not name.startswith("3D"):
            f1 = [match(np.asarray(segment_automatic_boxes(predictor, predictor.prior, image,
                                                           BoxAutomaticConfig(box_margin=m))), labels)["F1"]
                  for m in (0.02, None)]
            line += f" {f1[0]:.3f} | {f1[1]:.3f} |"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
