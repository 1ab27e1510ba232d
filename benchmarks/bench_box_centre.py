"""A box whose first mask falls short, decoded again with its centre as a positive point
(``segment(box_centre=True)``, the default): the development figures behind the rule, on data
that is not held out (the stardist train crop, synthetic nuclei, a 3D sample other than the
plugin's own, nuclei of one size).

Rows per data set, shipped model on the torch backend, default post-processing: box mIoU with
the rule (default) and with the box alone (``box_centre=False``), and the same split by how much
of its box the box-alone mask fills (the rule re-decodes only below pi/4, the ellipse inscribed
in the box, and only boxes at least 16 px long), beside the first version of the rule (the
centre added whenever the box's mask holds it: "point always"); and radius-4 nuclei that
AutoZoom magnifies 6-8x (where the 16-px minimum comes from). With ``--automatic``: prior-box automatic
F1@0.5 and matched mIoU with ``BoxAutomaticConfig(box_centre=True)`` against the default (off).
Also, as validation on real nuclei from another microscope, never used for training or tuning:
the stardist wheel's 3D example (``--wheel``), with and without AutoZoom, beside Otsu's threshold
inside the box; and the latency of a box prompt on the train crop, with the rule and alone
(interleaved).

    python benchmarks/bench_box_centre.py [--automatic] [--data data/nuclei_v2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prior_automatic import match  # noqa: E402

from napari_edgesam.datasets import synthetic_nuclei_2d, synthetic_nuclei_3d, synthetic_nuclei_sized  # noqa: E402
from napari_edgesam.inference.automatic.boxes import BoxAutomaticConfig, segment_automatic_boxes  # noqa: E402
from napari_edgesam.inference.core import predictor as P  # noqa: E402
from napari_edgesam.inference.core.autozoom import AutoZoom, CropEmbeddingCache  # noqa: E402
from napari_edgesam.inference.loading.with_prior import load_predictor  # noqa: E402

FILL_BANDS = ((0.0, 0.7), (0.7, np.pi / 4), (np.pi / 4, 0.85), (0.85, 2.0))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


class Always:
    """Within the block, the rule adds the centre to every box whose mask holds it (no fill or
    size condition): the first version of the rule, for comparison."""

    def __enter__(self):
        self.saved = P.CENTRE_MAX_FILL, P.CENTRE_MIN_HALF_SIDE
        P.CENTRE_MAX_FILL, P.CENTRE_MIN_HALF_SIDE = np.inf, 0.0

    def __exit__(self, *exc):
        P.CENTRE_MAX_FILL, P.CENTRE_MIN_HALF_SIDE = self.saved


def boxes(predictor, pairs, zoom: bool = False) -> np.ndarray:
    """Rows (fill of the box-alone mask, IoU with the rule, IoU alone, IoU with the point always)
    of every nucleus >= 30 px (``zoom``: through AutoZoom, every nucleus)."""
    rows = []
    for image, labels in pairs:
        if zoom:
            zooms = {c: AutoZoom(predictor, image, box_centre=c, cache=CropEmbeddingCache(64)) for c in (True, False)}

            def seg(box, centre, zooms=zooms):
                return zooms[centre].segment(box=box).mask
        else:
            emb = predictor.encode(image)

            def seg(box, centre, emb=emb):
                return predictor.segment(box=box, embedding=emb, box_centre=centre)[0]
        for k in np.unique(labels)[1:]:
            truth = labels == k
            if truth.sum() < (1 if zoom else 30):
                continue
            ys, xs = np.nonzero(truth)
            box = np.float32([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            alone = seg(box, False)
            fill = alone.sum() / float((box[2] - box[0]) * (box[3] - box[1]))
            with_rule = seg(box, True)
            with Always():
                always = seg(box, True)
            rows.append((fill, iou(with_rule, truth), iou(alone, truth), iou(always, truth)))
    return np.array(rows)


def timing(predictor, pair, rounds: int = 3) -> None:
    """Median seconds per box prompt (``segment`` on a cached embedding, float32 features), with
    the rule and alone, interleaved box by box; how many boxes the rule decoded twice."""
    image, labels = pair
    emb = predictor.encode(image)
    found = []
    for k in np.unique(labels)[1:]:
        ys, xs = np.nonzero(labels == k)
        if len(ys) >= 30:
            found.append(np.float32([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]))
    secs: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for box in found:
            for centre in (True, False):
                t = time.perf_counter()
                predictor.segment(box=box, embedding=emb, box_centre=centre)
                secs[centre].append(time.perf_counter() - t)
    real, twice = predictor._decode, [0]

    def counting(*a, **k):
        twice[0] += 1
        return real(*a, **k)

    predictor._decode = counting
    for box in found:
        predictor.segment(box=box, embedding=emb)
    predictor._decode = real
    print(f"\nlatency per box prompt ({len(found)} boxes of {image.shape[1]} x {image.shape[0]}, {rounds} rounds, "
          f"interleaved): with the rule {1e3 * statistics.median(secs[True]):.1f} ms, box alone "
          f"{1e3 * statistics.median(secs[False]):.1f} ms (median); decoded twice: {twice[0] - len(found)} of {len(found)}",
          flush=True)


def stardist_3d(wheel: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The stardist wheel's 3D example (``img3d.tif`` + ``mask3d.tif``, 31 x 61 x 57, BSD-3):
    real nuclei from another microscope than the 2D image, never used for training or tuning."""
    import io
    import zipfile

    if not zipfile.is_zipfile(wheel):
        return None
    with zipfile.ZipFile(wheel) as z:
        return tuple(tifffile.imread(io.BytesIO(z.read(f"stardist/data/images/{n}")))  # type: ignore[return-value]
                     for n in ("img3d.tif", "mask3d.tif"))


def held_out_3d(predictor, volume: np.ndarray, labels: np.ndarray) -> None:
    """Box mIoU on every nucleus slice >= 30 px of the real 3D example: the rule against the box
    alone, on the whole slice and through AutoZoom (the widget's default), beside Otsu's
    threshold inside the same box."""
    from skimage.filters import threshold_otsu

    res: dict[str, list[float]] = {k: [] for k in ("rule", "alone", "AZ rule", "AZ alone", "Otsu in the box")}
    for z in range(volume.shape[0]):
        ids = [i for i in np.unique(labels[z]) if i and (labels[z] == i).sum() >= 30]
        if not ids:
            continue
        emb = predictor.encode(volume[z])
        zooms = {c: AutoZoom(predictor, volume[z], box_centre=c, embedding=emb) for c in (True, False)}
        for k in ids:
            truth = labels[z] == k
            ys, xs = np.nonzero(truth)
            box = np.float32([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            res["rule"].append(iou(predictor.segment(box=box, embedding=emb)[0], truth))
            res["alone"].append(iou(predictor.segment(box=box, embedding=emb, box_centre=False)[0], truth))
            res["AZ rule"].append(iou(zooms[True].segment(box=box).mask, truth))
            res["AZ alone"].append(iou(zooms[False].segment(box=box).mask, truth))
            x0, y0, x1, y1 = box.astype(int)
            crop = volume[z][y0:y1, x0:x1].astype(np.float64)
            otsu = np.zeros_like(truth)
            if crop.max() > crop.min():
                otsu[y0:y1, x0:x1] = crop > threshold_otsu(crop)
            res["Otsu in the box"].append(iou(otsu, truth))
    print(f"\nheld out, real: the stardist wheel's 3D example ({volume.shape[0]} x {volume.shape[1]} x "
          f"{volume.shape[2]}), {len(res['rule'])} nucleus slices >= 30 px, box mIoU: "
          + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in res.items()), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="edgesam-nuclei")
    ap.add_argument("--data", default="data/nuclei_v2", help="folder with train/images and train/labels")
    ap.add_argument("--automatic", action="store_true", help="also prior-box automatic F1 with and without the rule")
    ap.add_argument("--wheel", default=None,
                    help="stardist wheel for the real 3D example (default: data/stardist-*.whl; skipped if absent)")
    args = ap.parse_args()
    predictor, why = load_predictor(args.model, backend="torch")
    cases = []
    crop = Path(args.data) / "train" / "images" / "dsb_0_r0.tif"
    if crop.is_file():
        cases.append(("stardist train crop", [(tifffile.imread(crop), tifffile.imread(crop.parents[1] / "labels" / crop.name))]))
    cases += [(f"synthetic 512 seed {s}", [synthetic_nuclei_2d(seed=s)]) for s in (101, 7, 102)]
    volume, vlabels = synthetic_nuclei_3d(seed=7, shape=(24, 192, 192), n_nuclei=20)
    cases.append(("3D sample seed 7, every other slice", [(volume[z], vlabels[z]) for z in range(0, 24, 2)]))
    cases.append(("sized nuclei r16/32/48 in 512", [synthetic_nuclei_sized(seed=5, shape=(512, 512), radius=r)
                                                    for r in (16, 32, 48)]))
    tiny = [synthetic_nuclei_sized(seed=s, shape=(1024, 1024), radius=4) for s in (11, 12)]
    for _, labels in tiny:  # 6 nuclei per image: each is an AutoZoom crop of its own
        labels[~np.isin(labels, np.random.default_rng(0).choice(np.arange(1, labels.max() + 1), 6, replace=False))] = 0
    bands = " | ".join(f"fill {lo:.2f}-{hi:.2f}" if hi < 2 else f"fill >= {lo:.2f}" for lo, hi in FILL_BANDS)
    print(f"{args.model} (torch), box mIoU, default post-processing: with the centre rule (default) / box alone / "
          "point always; fill: share of its box the box-alone mask covers (n in brackets)\n")
    print("columns 'with the rule' / 'box alone' / 'point always' (the centre whenever the mask holds it, "
          "whatever the fill and size: the first version of the rule)\n")
    print(f"| data | n | with the rule | box alone | point always | {bands} |")
    print("|---|---|---|---|---|" + "---|" * len(FILL_BANDS))
    for name, pairs, zoom in [(n, p, False) for n, p in cases] + [
            ("radius-4 nuclei in 1024 images, AutoZoom (crops magnified 6-8x)", tiny, True)]:
        r = boxes(predictor, pairs, zoom)
        cells = []
        for lo, hi in FILL_BANDS:
            s = (r[:, 0] >= lo) & (r[:, 0] < hi)
            cells.append(f"{r[s, 1].mean():.3f} / {r[s, 2].mean():.3f} / {r[s, 3].mean():.3f} ({s.sum()})"
                         if s.any() else "-")
        print(f"| {name} | {len(r)} | {r[:, 1].mean():.3f} | {r[:, 2].mean():.3f} | {r[:, 3].mean():.3f} | "
              + " | ".join(cells) + " |", flush=True)
    wheels = [Path(args.wheel)] if args.wheel else sorted(Path("data").glob("stardist-*.whl"))
    example = stardist_3d(wheels[0]) if wheels and wheels[0].is_file() else None
    if example is not None:
        held_out_3d(predictor, *example)
    timing(predictor, cases[0][1][0])
    if args.automatic:
        if predictor.prior is None:
            print(f"\nno prior: {why}")
            return 1
        print("\nprior-box automatic, F1@0.5 (matched mIoU): box_centre=True / the default (off)\n")
        print("| data | box centre | default |")
        print("|---|---|---|")
        for name, pairs in cases:
            if len(pairs) != 1:
                continue
            image, labels = pairs[0]
            res = [match(np.asarray(segment_automatic_boxes(predictor, predictor.prior, image,
                                                            BoxAutomaticConfig(box_centre=c))), labels)
                   for c in (True, False)]
            print(f"| {name} | " + " | ".join(f"{m['F1']:.3f} ({m['matched mIoU']:.3f})" for m in res) + " |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
