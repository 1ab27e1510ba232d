"""Automatic mode with the shipped model: point grid vs the granularity prior's boxes, speed and quality.

    python benchmarks/bench_prior_automatic.py [--quick] [--compare] [--model edgesam-nuclei] [--prior PATH]
        [--backend auto] [--image IMG --labels LABELS]

The model loads as the widget and ``batch`` load it (``load_predictor``: ``--backend auto`` is the
default backend, e.g. OpenVINO's int8 encoder with torch's decoder, and the prior stored beside
the encoder file). Prior boxes run twice: as shipped (``zoom`` on: images whose objects are small
in the 1024 frame are segmented again in zoomed tiles), with ``zoom=False``, and with
``box_centre=True`` (boxes whose mask fell short decoded again with their centre as a positive
point; "prompts decoded" counts those second decodes).

Cases: the held-out stardist right half (``data/nuclei_v2/heldout``, 512 x 256, never used for
training or tuning) unless ``--image/--labels`` name another pair, a synthetic 512 x 512 and a
synthetic 1024 x 1024 nuclei image (``datasets.synthetic_nuclei_2d``; ``--quick`` leaves the
1024 one out). For each: seconds (grid: with and without the shared encoder pass; prior boxes:
including the encoder and box head), decoder prompts, and instance quality matched at
IoU >= 0.5 (precision, recall, F1, mean IoU of the matches). One process, modes one after the
other; timings are of a shared machine (noisy). ``--compare`` also runs every mode with the
previous decoder path and no decode hints (``bench_decoder.previous_predictor``), each right
after the current one, so that both see the same machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from napari_edgesam.datasets import synthetic_nuclei_2d
from napari_edgesam.inference.automatic.boxes import BoxAutomaticConfig, segment_automatic_boxes
from napari_edgesam.inference.automatic.grid import AutomaticConfig, segment_automatic
from napari_edgesam.inference.loading.with_prior import load_predictor
from napari_edgesam.inference.prior import load_prior

HELDOUT = Path(__file__).resolve().parents[1] / "data" / "nuclei_v2" / "heldout"


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
    ap.add_argument("--backend", default="auto", help="auto (the default backend), torch, onnxruntime or openvino")
    ap.add_argument("--prior", default=None, help="box head file (default: the one stored beside the model)")
    ap.add_argument("--image", default=None)
    ap.add_argument("--labels", default=None)
    ap.add_argument("--quick", action="store_true", help="leave the 1024 x 1024 synthetic image out")
    ap.add_argument("--compare", action="store_true", help="also the previous decoder path, interleaved")
    args = ap.parse_args()
    import tifffile

    predictor, why = load_predictor(args.model, backend=args.backend)
    prior = load_prior(args.prior, predictor) if args.prior else predictor.prior
    if prior is None:
        raise SystemExit(f"no granularity prior for {args.model}: {why}")
    print(f"backend {predictor.backend.name}, prior {type(prior).__name__}")
    calls = {"prompts": 0}
    image_path = args.image or HELDOUT / "images" / "dsb_right_half.tif"
    label_path = args.labels or HELDOUT / "labels" / "dsb_right_half.tif"
    cases = [(f"held-out {Path(image_path).name}", tifffile.imread(image_path), tifffile.imread(label_path)),
             ("synthetic 512x512", *synthetic_nuclei_2d(seed=21, shape=(512, 512), n_nuclei=40))]
    if not args.quick:
        cases.append(("synthetic 1024x1024", *synthetic_nuclei_2d(seed=22, shape=(1024, 1024), n_nuclei=160)))
    segment_automatic_boxes(predictor, prior, cases[0][1], BoxAutomaticConfig())  # warm-up (jit trace)
    versions = [("", predictor)]
    if args.compare:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_decoder import previous_predictor

        versions.append((" [previous path]", previous_predictor(predictor)))
    print("| image | mode | seconds | prompts decoded | objects | precision | recall | F1 | matched mIoU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, image, gt in cases:
        rows = []
        for tag, pred in versions:  # the current path, then the previous one on the same machine state
            real = pred.decode_batch

            def counting(emb, point_coords=None, point_labels=None, boxes=None, *a, _real=real, **k):
                calls["prompts"] += len(point_coords if point_coords is not None else boxes)
                return _real(emb, point_coords, point_labels, boxes, *a, **k)

            if tag:  # keep the previous path's signature (no hints) visible to the automatic modes
                import functools

                counting = functools.wraps(real)(lambda *a, _c=counting, **k: _c(*a, **k))
            pred.decode_batch = counting
            t = time.perf_counter()
            emb = pred.encode(image, prior=None)
            t_enc = time.perf_counter() - t
            calls["prompts"] = 0
            t = time.perf_counter()
            grid = segment_automatic(pred, image, AutomaticConfig(), embedding=emb)
            sec = time.perf_counter() - t
            rows.append((f"point grid 32x32{tag} ({sec + t_enc:.2f} s with the encoder)", sec, calls["prompts"], grid))
            for zoom, centre in ((True, False), (False, False), (True, True)):
                calls["prompts"] = 0
                t = time.perf_counter()
                boxes = segment_automatic_boxes(pred, prior, image, BoxAutomaticConfig(zoom=zoom, box_centre=centre))
                rows.append((f"prior boxes{tag}{'' if zoom else ', no zoom'}{', box centre' if centre else ''} "
                             "(incl. encoder + head)", time.perf_counter() - t, calls["prompts"], boxes))
            pred.decode_batch = real
        for mode, sec, n, labels in rows:
            m = match(np.asarray(labels), gt)
            print(f"| {name} ({len(np.unique(gt[gt > 0]))} nuclei) | {mode} | {sec:.2f} | {n} | {m['objects']} | {m['precision']} "
                  f"| {m['recall']} | {m['F1']} | {m['matched mIoU']} |", flush=True)


if __name__ == "__main__":
    main()
