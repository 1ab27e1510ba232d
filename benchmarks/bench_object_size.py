"""Size sweep: box and centre-click mean IoU of a model on synthetic nuclei of one radius
(4-128 px) in images of 256-2048 px, with and without AutoZoom and hole filling.

    python benchmarks/bench_object_size.py [--model edgesam-nuclei] [--objects 4] [--quick]

Every image is a field of whole nuclei of one radius
(:func:`napari_edgesam.datasets.synthetic_nuclei_sized`), of which ``--objects`` are prompted
(chosen at random); a nucleus of radius ``r`` in an
image of side ``S`` appears with radius ``r * 1024 / S`` in the model's 1024 input frame
(column "frame r"). Prompts: the nucleus's bounding box, and one positive click at its
centroid (most stable of the 4 masks, no prior). "raw" masks are the decoder's, "filled" have
their interior holes filled (:func:`napari_edgesam.inference.automatic.masks.fill_holes`),
"default" is what ``segment`` gives by default (holes filled, only the prompted piece); "holes" is
the share of raw masks (box and click) with an interior hole. AutoZoom
(:mod:`napari_edgesam.inference.core.autozoom`) embeds a crop in which the object has its
preferred size; ``--targets`` sweeps that size (radius in the 1024 frame). "box alone" is
AutoZoom's default box mask decoded from the box only (``box_centre=False``: before session 9,
a box prompt got no centre point).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
from scipy import ndimage as ndi

from napari_edgesam.datasets import synthetic_nuclei_sized
from napari_edgesam.inference.loading.api import load_model

try:  # absent before AutoZoom existed: the sweep then measures the plain predictor only
    from napari_edgesam.inference.core import autozoom
    from napari_edgesam.inference.core.postprocess import fill_holes
except ImportError:  # pragma: no cover
    autozoom = None

    def fill_holes(mask: np.ndarray) -> np.ndarray:
        return ndi.binary_fill_holes(mask)


RADII = (4, 8, 16, 32, 64, 128)
SIZES = (256, 512, 1024, 2048)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def has_holes(mask: np.ndarray) -> bool:
    return bool((fill_holes(mask) & ~mask).any())


def _segment_raw(predictor, points, labels, box):
    """The predictor's mask without hole filling and with every piece (works before and after
    the options existed)."""
    for raw in ({"fill_holes": False, "one_piece": False}, {"fill_holes": False}, {}):
        try:
            return predictor.segment(points, labels, box, **raw)[0]
        except TypeError:
            continue
    raise RuntimeError("unreachable")


def measure(predictor, radius: int, size: int, n_objects: int, seed: int, targets, zoom_cache,
            band: float | None = None, zoom_out_above: float | None = None) -> dict:
    image, labels = synthetic_nuclei_sized(seed=seed + 97 * radius + size, shape=(size, size), radius=radius)
    rng = np.random.default_rng(seed + radius + size)
    chosen = rng.choice(np.arange(1, int(labels.max()) + 1), size=min(n_objects, int(labels.max())), replace=False)
    predictor.set_image(image)
    zoom = None
    if autozoom is not None and targets:
        extra = {} if band is None else {"band": band}
        if zoom_out_above is not None:
            extra["zoom_out_above"] = zoom_out_above
        zoom = {t: autozoom.AutoZoom(predictor, image, target_radius=t, cache=zoom_cache,
                                     embedding=predictor.embedding, **extra) for t in targets}
        # the same without zooming very large boxes out, side by side (what that rule brings)
        no_out = {t: autozoom.AutoZoom(predictor, image, target_radius=t, cache=zoom_cache,
                                       embedding=predictor.embedding, **{**extra, "zoom_out_above": None})
                  for t in targets}
        # the same with box prompts decoded from the box alone (no centre point), side by side
        alone = {t: autozoom.AutoZoom(predictor, image, target_radius=t, cache=zoom_cache,
                                      embedding=predictor.embedding, box_centre=False, **extra)
                 for t in targets}
    out: dict[str, list[float]] = defaultdict(list)
    for i in sorted(chosen.tolist()):
        ys, xs = np.nonzero(labels == i)
        sl = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
        truth = np.zeros(labels.shape, bool)
        truth[sl] = labels[sl] == i
        ys, xs = np.nonzero(truth)
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
        cy, cx = ndi.center_of_mass(truth)
        click = np.array([[cx + 0.5, cy + 0.5]], np.float32), np.ones(1, np.float32)
        for name, mask in (("box", _segment_raw(predictor, None, None, box)),
                           ("click", _segment_raw(predictor, *click, None))):
            out[f"{name}"].append(iou(mask, truth))
            out[f"{name} filled"].append(iou(fill_holes(mask), truth))
            out["holes"].append(has_holes(mask))
        out["box default"].append(iou(predictor.segment(None, None, box)[0], truth))
        out["click default"].append(iou(predictor.segment(*click, None)[0], truth))
        for t, z in (zoom or {}).items():
            raw = {"fill_holes": False, "one_piece": False}
            for name, mask in (("box", z.segment(box=box, **raw).mask),
                               ("click", z.segment(*click, **raw).mask)):
                out[f"AZ{t} {name}"].append(iou(mask, truth))
                out[f"AZ{t} {name} filled"].append(iou(fill_holes(mask), truth))
                out[f"AZ{t} holes"].append(has_holes(mask))
            out[f"AZ{t} box default"].append(iou(z.segment(box=box).mask, truth))
            out[f"AZ{t} box no zoom-out"].append(iou(no_out[t].segment(box=box).mask, truth))
            out[f"AZ{t} box alone"].append(iou(alone[t].segment(box=box).mask, truth))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="edgesam-nuclei")
    ap.add_argument("--objects", type=int, default=4, help="nuclei prompted per image (default 4)")
    ap.add_argument("--radii", type=int, nargs="+", default=RADII)
    ap.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    ap.add_argument("--targets", type=float, nargs="*", default=None,
                    help="AutoZoom target radii in the 1024 frame (default: the module's default; none: off)")
    ap.add_argument("--band", type=float, default=None,
                    help="AutoZoom band (default: the module's; 1: zoom every object to the target)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zoom-out-above", type=float, default=None,
                    help="AutoZoom zooms boxes out above this radius in the 1024 frame "
                         "(default: autozoom.DEFAULT_ZOOM_OUT_ABOVE); the 'no zoom-out' column never does")
    ap.add_argument("--quick", action="store_true", help="2 nuclei per image, images of 256 and 1024 px")
    args = ap.parse_args()
    if args.quick:
        args.objects, args.sizes = 2, [256, 1024]
    targets = args.targets
    if targets is None:
        targets = [autozoom.DEFAULT_TARGET_RADIUS] if autozoom is not None else []
    predictor = load_model(args.model, allow_download=False)
    cache = autozoom.CropEmbeddingCache(max_items=16) if autozoom is not None else None
    t0 = time.perf_counter()
    rows, per_radius = [], defaultdict(lambda: defaultdict(list))
    for r in args.radii:
        for s in args.sizes:
            if s < 3 * r:
                continue
            res = measure(predictor, r, s, args.objects, args.seed, targets, cache, args.band, args.zoom_out_above)
            rows.append((r, s, res))
            for k, v in res.items():
                per_radius[r][k] += v
    keys = ["box", "box filled", "box default", "click", "click filled", "click default", "holes"]
    for t in targets:
        keys += [f"AZ{t:g} box", f"AZ{t:g} box filled", f"AZ{t:g} box default", f"AZ{t:g} box no zoom-out",
                 f"AZ{t:g} box alone",
                 f"AZ{t:g} click",
                 f"AZ{t:g} click filled", f"AZ{t:g} holes"]
    keys = [k.replace(".0 ", " ") for k in keys]

    def cells(res: dict) -> list[str]:
        fixed = {k.replace(".0 ", " "): v for k, v in res.items()}
        return [f"{100 * np.mean(fixed[k]):.0f}%" if k.endswith("holes") else f"{np.mean(fixed[k]):.3f}"
                for k in keys]

    print(f"{args.model}, synthetic nuclei (datasets.synthetic_nuclei_sized), {args.objects} prompted per image, "
          f"seed {args.seed}; mean IoU; AZ<t> = AutoZoom to radius t in the 1024 frame "
          f"(band {args.band if args.band is not None else autozoom.DEFAULT_BAND if autozoom else '-'}); "
          f"{time.perf_counter() - t0:.0f} s\n")
    print("| radius | image | frame r | n | " + " | ".join(keys) + " |")
    print("|---" * (4 + len(keys)) + "|")
    for r, s, res in rows:
        print(f"| {r} | {s} | {r * 1024 / s:.0f} | {len(res['box'])} | " + " | ".join(cells(res)) + " |")
    print("\nPer radius (all image sizes):\n")
    print("| radius | n | " + " | ".join(keys) + " |")
    print("|---" * (2 + len(keys)) + "|")
    for r, res in per_radius.items():
        print(f"| {r} | {len(res['box'])} | " + " | ".join(cells(res)) + " |")


if __name__ == "__main__":
    main()
