"""Prior-box automatic segmentation at several object scales: does the granularity prior
propose boxes of the right size when the objects are larger or smaller in the 1024 frame?

    python benchmarks/bench_prior_scales.py [--model edgesam-nuclei] [--compare OTHER.prior.pth] [--backend torch]

Cases (synthetic nuclei only, ``datasets.synthetic_nuclei_2d``): a 512 x 512 image and crops of
its top-left corner (380, 256 and 180 px: the same nuclei 1.35x, 2x and 2.8x larger in the frame,
since the predictor resizes every image to 1024), without zoomed tiles; then, with the shipped
settings (zoom on), a field of small nuclei, a 1024 x 1024 image of 160 nuclei (small in the
frame: zoomed tiles), 8 large nuclei (radius 40-60 px) and, when ``data/nuclei_v2`` is prepared,
the stardist left half (training data). For each: F1 at IoU 0.5 (see
``bench_prior_automatic.match``) and the median proposal width in image pixels. ``--compare``
adds a column for another prior file of the same model (e.g. the previous one).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prior_automatic import match  # noqa: E402

from napari_edgesam.datasets import synthetic_nuclei_2d  # noqa: E402
from napari_edgesam.inference.automatic.boxes import BoxAutomaticConfig, segment_automatic_boxes  # noqa: E402
from napari_edgesam.inference.loading.with_prior import load_predictor  # noqa: E402
from napari_edgesam.inference.prior import load_prior  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="edgesam-nuclei")
    ap.add_argument("--backend", default="torch", help="torch (float32 prior head) or auto (the default backend)")
    ap.add_argument("--compare", default=None, help="another prior file of the same model")
    args = ap.parse_args()
    predictor, why = load_predictor(args.model, backend=args.backend)
    if predictor.prior is None:
        raise SystemExit(f"no granularity prior for {args.model}: {why}")
    priors = {"shipped": predictor.prior}
    if args.compare:
        priors["compare"] = load_prior(args.compare, predictor)
    image, truth = synthetic_nuclei_2d(seed=21, shape=(512, 512), n_nuclei=40)
    rows = []
    for side in (512, 380, 256, 180):
        crop, gt = np.ascontiguousarray(image[:side, :side]), truth[:side, :side]
        rows.append((f"synthetic 512, crop {side} ({512 / side:.2f}x larger), no zoom", crop, gt, False))
    for name, (img, gt) in (
        ("small nuclei (r 6-10), 512", synthetic_nuclei_2d(seed=7, shape=(512, 512), n_nuclei=80, radius=(6, 10))),
        ("160 nuclei, 1024", synthetic_nuclei_2d(seed=22, shape=(1024, 1024), n_nuclei=160)),
        ("8 large nuclei (r 40-60), 512", synthetic_nuclei_2d(seed=8, shape=(512, 512), n_nuclei=8, radius=(40, 60))),
    ):
        rows.append((f"{name}, zoom on", img, gt, True))
    train = Path(__file__).resolve().parents[1] / "data" / "nuclei_v2" / "train"
    if (train / "images" / "dsb_0_r0.tif").is_file():  # the real training half (the right half is held out)
        import tifffile

        rows.append(("stardist left half (train), zoom on", tifffile.imread(train / "images" / "dsb_0_r0.tif"),
                     tifffile.imread(train / "labels" / "dsb_0_r0.tif"), True))
    head = " | ".join(f"{k}: F1 / median box width / s" for k in priors)
    print(f"model {args.model}, backend {predictor.backend.name}\n")
    print(f"| case | {head} |")
    print("|---|" + "---|" * len(priors))
    for name, img, gt, zoom in rows:
        cells = []
        for prior in priors.values():
            t = time.perf_counter()
            labels = segment_automatic_boxes(predictor, prior, img, BoxAutomaticConfig(zoom=zoom))
            sec = time.perf_counter() - t
            props = predictor.encode(img, prior=prior).proposals
            width = float(np.median(props.boxes[:, 2] - props.boxes[:, 0])) if len(props.boxes) else 0.0
            cells.append(f"{match(np.asarray(labels), gt)['F1']:.3f} / {width:.1f} / {sec:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
