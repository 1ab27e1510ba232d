"""The plugin's own 3D sample (``nuclei 3D``), plain against AutoZoom, hole filling and the
one-piece rule.

Prompts: box and centre click on every nucleus slice of >= 30 px (mean IoU, share of raw masks
with interior holes). "raw": the decoder's mask; "filled": its holes filled; "default": what
``segment`` gives by default (holes filled, only the prompted piece, a box's centre point);
"box alone": the default without the centre point (``box_centre=False``). With ``--propagate``:
propagation from each nucleus's largest slice (its ground-truth mask as the seed), 3D IoU per
nucleus, with raw masks, holes filled, the default (also one piece), and AutoZoom per slice
(``propagate_objects(..., zoom_for=...)``).

    python benchmarks/bench_autozoom_3d.py [--propagate] [--no-autozoom] [--no-prompts]
        [--sample-seed 2024] [--seed-at largest|half] [--stardist-3d WHEEL]

``--stardist-3d WHEEL`` measures the same on the stardist wheel's real 3D example instead (held
out: never used for training or tuning). ``--no-autozoom`` leaves the AutoZoom rows out (minutes instead of most of an hour on 2 cores:
AutoZoom embeds a crop per nucleus slice).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage as ndi

from napari_edgesam.datasets import synthetic_nuclei_3d
from napari_edgesam.inference.core.autozoom import AutoZoom, CropEmbeddingCache
from napari_edgesam.inference.core.postprocess import fill_holes
from napari_edgesam.inference.loading.api import load_model
from napari_edgesam.inference.volume.propagation import propagate_objects


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def holes(mask: np.ndarray) -> bool:
    return bool((fill_holes(mask) & ~mask).any())


def prompts(predictor, image: np.ndarray, labels: np.ndarray, autozoom: bool = True) -> None:
    cache = CropEmbeddingCache(64)
    res: dict[str, list] = {k: [] for k in ("box raw", "box filled", "box default", "box alone (no centre point)", "click raw", "click filled",
                                            "click default", "AZ box", "AZ click", "holes raw", "AZ holes raw")}
    t0 = time.perf_counter()
    for z in range(image.shape[0]):
        ids = [i for i in np.unique(labels[z]) if i and (labels[z] == i).sum() >= 30]
        if not ids:
            continue
        predictor.set_image(image[z])
        zoom = AutoZoom(predictor, image[z], embedding=predictor.embedding, cache=cache)
        for i in ids:
            truth = labels[z] == i
            ys, xs = np.nonzero(truth)
            box = np.float32([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            cy, cx = ndi.center_of_mass(truth)
            click = np.float32([[cx + 0.5, cy + 0.5]]), np.ones(1, np.float32)
            raw = {"fill_holes": False, "one_piece": False}
            mb = predictor.segment(box=box, **raw)[0]
            mc = predictor.segment(*click, **raw)[0]
            res["box raw"].append(iou(mb, truth))
            res["box filled"].append(iou(fill_holes(mb), truth))
            res["box default"].append(iou(predictor.segment(box=box)[0], truth))
            res["box alone (no centre point)"].append(iou(predictor.segment(box=box, box_centre=False)[0], truth))
            res["click raw"].append(iou(mc, truth))
            res["click filled"].append(iou(fill_holes(mc), truth))
            res["click default"].append(iou(predictor.segment(*click)[0], truth))
            res["holes raw"] += [holes(mb), holes(mc)]
            if autozoom:
                ab = zoom.segment(box=box, **raw).mask
                ac = zoom.segment(*click, **raw).mask
                res["AZ box"].append(iou(zoom.segment(box=box).mask, truth))
                res["AZ click"].append(iou(zoom.segment(*click).mask, truth))
                res["AZ holes raw"] += [holes(ab), holes(ac)]
    print(f"{len(res['box raw'])} nucleus slices >= 30 px ({time.perf_counter() - t0:.0f} s); "
          "mean IoU (AZ: AutoZoom, default post-processing); holes: share of raw masks")
    for k, v in res.items():
        if v:
            print(f"  {k}: {np.mean(v):.3f}")


def propagation(predictor, image: np.ndarray, labels: np.ndarray, seed_at: str = "largest") -> None:
    ids = [int(i) for i in np.unique(labels)[1:]]
    seeds = {}
    for i in ids:
        area = (labels == i).sum((1, 2))
        # the largest slice, or the first with half that area (the object grows from there)
        z = int(np.argmax(area)) if seed_at == "largest" else int(np.nonzero(area >= 0.5 * area.max())[0][0])
        seeds[i] = {z: labels[z] == i}
    embeddings: dict = {}
    cache = CropEmbeddingCache(256)
    zooms: dict = {}

    def get_embedding(z: int):
        return embeddings.setdefault(z, predictor.encode(image[z]))

    def zoom_for(z: int) -> AutoZoom:
        return zooms.setdefault(z, AutoZoom(predictor, image[z], cache=cache, image_key=("slice", z)))

    for mode, kw in (("raw masks", {"fill_holes": False, "one_piece": False}),
                     ("holes filled", {"one_piece": False}),
                     ("default (holes filled, one piece, objects exclusive)", {}),
                     ("default, objects may share pixels", {"exclusive": False}),
                     ("default, no mask input", {"use_mask_input": False}),
                     ("AutoZoom + default", {"zoom_for": zoom_for}),
                     ("AutoZoom + default, no mask input", {"zoom_for": zoom_for, "use_mask_input": False})):
        t0 = time.perf_counter()
        res = propagate_objects(predictor, get_embedding, seeds, image.shape[0], **kw)
        scores = []
        for i in ids:
            pred = np.zeros(labels.shape, bool)
            for z, m in res[i].masks.items():
                pred[z] = m
            scores.append(iou(pred, labels == i))
        s = np.array(scores)
        stops: dict[str, int] = {}
        for r in res.values():
            for v in r.stopped.values():
                stops[v] = stops.get(v, 0) + 1
        print(f"propagation, {mode}: 3D IoU mean {s.mean():.3f}, median {np.median(s):.3f}, "
              f">= 0.8: {(s >= 0.8).sum()}/{len(s)} ({time.perf_counter() - t0:.0f} s); stops {stops}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="edgesam-nuclei")
    ap.add_argument("--propagate", action="store_true", help="also measure 3D propagation")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--no-autozoom", action="store_true", help="leave the AutoZoom rows out (much faster)")
    ap.add_argument("--sample-seed", type=int, default=2024, help="seed of the synthetic stack (2024: the plugin's sample)")
    ap.add_argument("--seed-at", choices=("largest", "half"), default="largest",
                    help="propagation seeds: each nucleus's largest slice, or its first slice with half that area")
    ap.add_argument("--no-prompts", action="store_true", help="propagation rows only")
    ap.add_argument("--stardist-3d", metavar="WHEEL", default=None,
                    help="measure on the stardist wheel's real 3D example (img3d.tif + mask3d.tif, 31 x 61 x 57: "
                         "nuclei from another microscope, held out) instead of the synthetic sample")
    args = ap.parse_args()
    predictor = load_model(args.model, backend=args.backend, allow_download=False)
    if args.stardist_3d:
        import io
        import zipfile

        import tifffile

        with zipfile.ZipFile(args.stardist_3d) as z:
            image, labels = (tifffile.imread(io.BytesIO(z.read(f"stardist/data/images/{n}")))
                             for n in ("img3d.tif", "mask3d.tif"))
        print(f"{args.model}, the stardist wheel's 3D example {image.shape} (real, held out); "
              f"propagation seeded at the {args.seed_at} slice")
    else:
        image, labels = synthetic_nuclei_3d(seed=args.sample_seed, shape=(24, 192, 192), n_nuclei=20)
        print(f"{args.model}, 3D sample synthetic_nuclei_3d(seed={args.sample_seed}, shape=(24, 192, 192), n_nuclei=20)"
              f"{' (the plugin sample)' if args.sample_seed == 2024 else ''}; propagation seeded at the {args.seed_at} slice")
    if not args.no_prompts:
        prompts(predictor, image, labels, autozoom=not args.no_autozoom)
    if args.propagate:
        propagation(predictor, image, labels, args.seed_at)


if __name__ == "__main__":
    main()
