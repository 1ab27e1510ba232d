"""Evaluation as in the EdgeSAM paper: mIoU over instances for box and point prompts,
with refinement points sampled from the error of the previous prediction (token 0).

Prompt modes:
  ``box``, ``box+1``, ``box+2``: the instance's bounding box, then one or two refinement points.
  ``point``, ``point+1``, ``point+2``: one positive point at the instance's centre, then refinement.
The "centre" is the pixel farthest from the instance boundary (the maximum of the distance
transform), which is the centre for convex nuclei and always lies inside the object. A
refinement point is placed the same way inside the larger of the two error regions of the
previous prediction: inside a false negative region it is positive, inside a false positive
region negative. Masks are token 0 (``num_multimask_outputs=1``), as in the paper.

A baseline gives the numbers meaning: Otsu's threshold inside the box (largest component),
and for a point the Otsu component of the whole image that contains the point.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)

MODES = ("box", "box+1", "box+2", "point", "point+1", "point+2")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Bounding box ``(x0, y0, x1, y1)`` of a boolean ``H x W`` mask, in pixel coordinates
    (x1, y1 are the last pixel's coordinates, like SAM's evaluation boxes)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("mask is empty")
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)


def interior_point(mask: np.ndarray) -> np.ndarray:
    """``(x, y)`` of the pixel of ``mask`` farthest from its boundary."""
    if not mask.any():
        raise ValueError("mask is empty")
    dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([x, y], np.float32)


def refinement_point(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, int] | None:
    """Next click from the error of ``pred`` against ``gt``: ``((x, y), label)`` or None if
    the prediction is perfect. Positive in the larger false-negative region, negative in the
    larger false-positive region (whichever error region is larger)."""
    fn = gt & ~pred
    fp = pred & ~gt
    if not fn.any() and not fp.any():
        return None
    fn_d = ndi.distance_transform_edt(np.pad(fn, 1))[1:-1, 1:-1]
    fp_d = ndi.distance_transform_edt(np.pad(fp, 1))[1:-1, 1:-1]
    positive = fn_d.max() >= fp_d.max()
    dist = fn_d if positive else fp_d
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([x, y], np.float32), int(positive)


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of a 1-D array of intensities."""
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0 or v.min() == v.max():
        return float(v.min()) if v.size else 0.0
    hist, edges = np.histogram(v, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between))])


def _grey(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, np.float32)
    return img.mean(-1) if img.ndim == 3 else img


def otsu_box(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Baseline for a box: Otsu inside the box, its largest connected component."""
    grey = _grey(image)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    crop = grey[y0 : y1 + 1, x0 : x1 + 1]
    fg = crop > otsu_threshold(crop)
    lab, n = ndi.label(fg)
    out = np.zeros(grey.shape, bool)
    if n:
        sizes = ndi.sum_labels(fg, lab, index=np.arange(1, n + 1))
        out[y0 : y1 + 1, x0 : x1 + 1] = lab == (1 + int(np.argmax(sizes)))
    return out


def otsu_point(image: np.ndarray, point: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Baseline for a point: the component of the image's Otsu foreground under the point."""
    grey = _grey(image)
    fg = grey > (otsu_threshold(grey) if threshold is None else threshold)
    lab, _ = ndi.label(fg)
    x, y = int(round(point[0])), int(round(point[1]))
    k = lab[y, x]
    return lab == k if k else np.zeros(grey.shape, bool)


@dataclass
class EvalResult:
    """Per-mode IoUs of every evaluated instance."""

    ious: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MODES})
    baseline: dict[str, list[float]] = field(default_factory=lambda: {"box": [], "point": []})

    def summary(self) -> dict:
        """``{"model": {mode: mIoU}, "baseline": {...}, "n_instances": n}`` (mIoU in %)."""
        mean = lambda v: round(100 * float(np.mean(v)), 2) if v else math.nan  # noqa: E731
        return {
            "model": {m: mean(v) for m, v in self.ious.items()},
            "baseline_otsu": {m: mean(v) for m, v in self.baseline.items()},
            "n_instances": len(self.ious["box"]),
        }


def _run_mode(predictor, gt: np.ndarray, start: str, n_refine: int) -> list[float]:
    """IoUs after 0..n_refine refinement points for one instance."""
    box = mask_box(gt) if start == "box" else None
    coords: list[np.ndarray] = [] if start == "box" else [interior_point(gt)]
    labels: list[int] = [] if start == "box" else [1]
    out = []
    for step in range(n_refine + 1):
        pc = np.array(coords, np.float32).reshape(-1, 2) if coords else None
        pl = np.array(labels, np.float32) if coords else None
        masks, _, _ = predictor.predict(pc, pl, box, num_multimask_outputs=1)
        pred = masks[0]
        out.append(iou(pred, gt))
        if step < n_refine:
            nxt = refinement_point(pred, gt)
            if nxt is None:
                out.extend([out[-1]] * (n_refine - step))
                break
            coords.append(nxt[0])
            labels.append(nxt[1])
    return out


def evaluate(
    predictor,
    samples: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    min_area: int = 10,
    max_instances: int | None = None,
    normalisation: dict | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Evaluate ``predictor`` on ``(image, instance_labels)`` pairs.

    Args:
        predictor: an :class:`~napari_edgesam.inference.predictor.EdgeSamPredictor`.
        samples: images (``H x W`` or ``H x W x C``) with ``H x W`` integer instance labels.
        min_area: instances smaller than this (pixels) are skipped.
        max_instances: at most this many instances per image (the largest first).
        normalisation: passed to ``predictor.set_image`` (e.g. percentiles).
    """
    res = EvalResult()
    for image, labels in samples:
        labels = np.asarray(labels)
        predictor.set_image(image, **(normalisation or {}))
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        order = [i for i, c in sorted(zip(ids, counts), key=lambda t: -t[1]) if c >= min_area]
        if max_instances is not None:
            order = order[:max_instances]
        grey_thr = otsu_threshold(_grey(image))
        for k in order:
            gt = labels == k
            for start in ("box", "point"):
                ious = _run_mode(predictor, gt, start, 2)
                for j, v in enumerate(ious):
                    res.ious[start if j == 0 else f"{start}+{j}"].append(v)
            res.baseline["box"].append(iou(otsu_box(image, mask_box(gt)), gt))
            res.baseline["point"].append(iou(otsu_point(image, interior_point(gt), grey_thr), gt))
            if progress is not None:
                progress(1)
    return res


def format_table(summary: dict, title: str = "") -> str:
    """A Markdown table of a :meth:`EvalResult.summary`."""
    lines = [f"**{title}**", ""] if title else []
    lines += ["| prompt | model mIoU (%) | Otsu baseline (%) |", "|---|---|---|"]
    for m in MODES:
        base = summary["baseline_otsu"].get(m, "")
        lines.append(f"| {m} | {summary['model'][m]} | {base if base == '' else base} |")
    lines.append(f"\n{summary['n_instances']} instances")
    return "\n".join(lines)


def write_json_atomic(obj: dict, path: str | os.PathLike) -> Path:
    """Write ``obj`` as JSON atomically (see :mod:`napari_edgesam._atomic`)."""
    from .._atomic import atomic_write_text

    return atomic_write_text(path, json.dumps(obj, indent=2))


def load_pairs(pairs: Sequence[tuple[str, str]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read ``(image_path, labels_path)`` TIFF/PNG pairs."""
    import tifffile
    from PIL import Image

    def read(p: str) -> np.ndarray:
        return tifffile.imread(p) if p.lower().endswith((".tif", ".tiff")) else np.asarray(Image.open(p))

    return [(read(i), read(m)) for i, m in pairs]


def main(argv: list[str] | None = None) -> int:
    """``napari-edgesam train evaluate --model M --images DIR --labels DIR [--out-json F]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="napari-edgesam train evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model name or .pth/.onnx path")
    ap.add_argument("--images", required=True, help="folder of images")
    ap.add_argument("--labels", required=True, help="folder of instance label images (same file names)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--max-instances", type=int, default=None)
    ap.add_argument("--out-json", default=None)
    args = ap.parse_args(argv)
    from ..inference.api import load_model

    images = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png", ".jpg"))
    if not images:
        raise ValueError(f"no images in {args.images}")
    pairs = []
    for p in images:
        lab = Path(args.labels) / p.name
        if not lab.is_file():
            raise ValueError(f"no label image {lab} for {p}")
        pairs.append((str(p), str(lab)))
    predictor = load_model(args.model, backend=args.backend)
    summary = evaluate(predictor, load_pairs(pairs), max_instances=args.max_instances).summary()
    summary["images"] = [p.name for p in images]
    if args.out_json:
        write_json_atomic(summary, args.out_json)
    print(format_table(summary, f"{args.model} on {len(images)} image(s)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
