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

micro-sam's protocol (Archit et al., Nature Methods 2025), reported beside it:

* **Segmentation accuracy** at an IoU threshold ``t``: ``SA(t) = TP / (TP + FP + FN)``; **mSA**
  is its mean over ``t = 0.50, 0.55, ..., 0.95`` (:data:`~.eval_metrics.IOU_THRESHOLDS`). A pair matches at
  ``t`` when its IoU >= ``t`` (up to 1e-9). For an instance segmentation
  (:func:`~.eval_metrics.segmentation_accuracy`) predicted and true objects are matched one to one (maximum
  matching among the pairs with IoU >= t; for t > 0.5 such a matching is unique); TP = matched
  pairs, FP = unmatched predicted objects, FN = unmatched true objects. For per-object
  prompted evaluation (:func:`matched_segmentation_accuracy`) every prediction belongs to the
  object its prompt came from (the *matched-object definition*: no search for a partner):
  TP(t) = objects whose prediction has IoU >= t with them, FN(t) = the other objects,
  FP(t) = those of them whose prediction is not empty. With no empty prediction this is
  ``TP / (2 N - TP)``. (micro-sam paints the prompted masks into one label image and matches
  that; the two agree when the predicted masks do not overlap.)
* **Iterative prompting** (:func:`iterative_prompting`): start from the object's box or its
  centre point (the pixel farthest from its boundary), then add up to 7 corrective points,
  re-decoding with the box and all points so far and the previous prediction's low-res logits
  as mask input (token 0 throughout). Each new point is the pixel farthest from the boundary
  (maximum of the distance transform, image border counted as boundary) of the *largest*
  4-connected error region by area (:func:`corrective_point`), positive inside a false-negative
  region (missed object pixels), negative inside a false-positive one (ties go to the false
  negative). mIoU and mSA are reported after each iteration; a perfect prediction stops the
  clicks (its result is carried to the later iterations).

The metrics and the points derived from a mask are in :mod:`.eval_metrics`, the Otsu baseline in
:mod:`.eval_baseline`; this module runs the protocols and reports them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .eval_baseline import otsu_box, otsu_point, otsu_threshold, to_grey
from .eval_metrics import (
    corrective_point,
    interior_point,
    iou,
    mask_box,
    matched_segmentation_accuracy,
    refinement_point,
)

logger = logging.getLogger(__name__)

MODES = ("box", "box+1", "box+2", "point", "point+1", "point+2")
#: Corrective points after the first prompt in micro-sam's iterative prompting.
N_CORRECTIVE = 7


@dataclass
class IterativeResult:
    """One object's iterative prompting: per iteration its IoU, whether the mask was empty, and
    the prompts used (``points`` ``(x, y, label)`` in click order)."""

    ious: list[float]
    nonempty: list[bool]
    points: list[tuple[float, float, int]]
    used_mask_input: bool


def iterative_prompting(
    predictor, gt: np.ndarray, start: str, n_corrective: int = N_CORRECTIVE, use_mask_input: bool = True
) -> IterativeResult:
    """Prompt ``predictor`` (image already set) for object ``gt`` (``H x W`` bool) from its box
    or centre point (``start`` "box" or "point"), then ``n_corrective`` corrective points
    (:func:`corrective_point`); the previous low-res logits are the mask input when
    ``use_mask_input`` and the backend supports it. Returns ``n_corrective + 1`` IoUs."""
    if start not in ("box", "point"):
        raise ValueError(f"start must be 'box' or 'point', got {start!r}")
    gt = np.asarray(gt, bool)
    backend = getattr(predictor, "backend", None)
    use_mask_input = use_mask_input and getattr(backend, "supports_mask_input", True)
    box = mask_box(gt) if start == "box" else None
    points: list[tuple[float, float, int]] = []
    if start == "point":
        x, y = interior_point(gt)
        points.append((float(x), float(y), 1))
    ious: list[float] = []
    nonempty: list[bool] = []
    low = None
    for it in range(n_corrective + 1):
        pc = np.array([p[:2] for p in points], np.float32) if points else None
        pl = np.array([p[2] for p in points], np.float32) if points else None
        kwargs = {"mask_input": np.asarray(low)[:1]} if (use_mask_input and low is not None) else {}
        masks, _, low = predictor.predict(pc, pl, box, num_multimask_outputs=1, **kwargs)
        pred = np.asarray(masks[0], bool)
        ious.append(iou(pred, gt))
        nonempty.append(bool(pred.any()))
        if it == n_corrective:
            break
        nxt = corrective_point(pred, gt)
        if nxt is None:
            ious += [ious[-1]] * (n_corrective - it)
            nonempty += [nonempty[-1]] * (n_corrective - it)
            break
        points.append((float(nxt[0][0]), float(nxt[0][1]), int(nxt[1])))
    return IterativeResult(ious, nonempty, points, bool(use_mask_input))


@dataclass
class EvalResult:
    """Per-mode IoUs of every evaluated instance."""

    ious: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MODES})
    baseline: dict[str, list[float]] = field(default_factory=lambda: {"box": [], "point": []})
    #: Otsu baselines: whether each mask had any pixel (for mSA's false positives).
    baseline_nonempty: dict[str, list[bool]] = field(default_factory=lambda: {"box": [], "point": []})
    #: micro-sam iterative prompting: start -> one :class:`IterativeResult` per object.
    iterative: dict[str, list[IterativeResult]] = field(default_factory=lambda: {"box": [], "point": []})

    def summary(self) -> dict:
        """``{"model": {mode: mIoU}, "baseline_otsu": {...}, "n_instances": n}`` (mIoU in %),
        and with iterative results ``"iterative": {start: {"miou": [...], "msa": [...]}}`` (one
        value per iteration, %) and ``"otsu_msa"`` (the baselines' mSA, %)."""
        mean = lambda v: round(100 * float(np.mean(v)), 2) if v else math.nan  # noqa: E731
        msa = lambda i, n: round(100 * float(matched_segmentation_accuracy(i, n).mean()), 2) if len(i) else math.nan  # noqa: E731
        out = {
            "model": {m: mean(v) for m, v in self.ious.items()},
            "baseline_otsu": {m: mean(v) for m, v in self.baseline.items()},
            "n_instances": len(self.ious["box"]),
        }
        if any(self.iterative.values()):
            it = {}
            for start, results in self.iterative.items():
                if not results:
                    continue
                n_it = len(results[0].ious)
                it[start] = {
                    "miou": [mean([r.ious[j] for r in results]) for j in range(n_it)],
                    "msa": [msa([r.ious[j] for r in results], [r.nonempty[j] for r in results]) for j in range(n_it)],
                    "mask_input": all(r.used_mask_input for r in results),
                }
            out["iterative"] = it
            out["otsu_msa"] = {m: msa(self.baseline[m], self.baseline_nonempty[m]) for m in self.baseline}
        return out


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
    iterations: int = N_CORRECTIVE,
    mask_input: bool = True,
) -> EvalResult:
    """Evaluate ``predictor`` on ``(image, instance_labels)`` pairs.

    Args:
        predictor: an :class:`~napari_edgesam.inference.core.predictor.EdgeSamPredictor`.
        samples: images (``H x W`` or ``H x W x C``) with ``H x W`` integer instance labels.
        min_area: instances smaller than this (pixels) are skipped.
        max_instances: at most this many instances per image (the largest first).
        normalisation: passed to ``predictor.set_image`` (e.g. percentiles).
        iterations: corrective points of micro-sam's iterative prompting (box and point
            starts); 0 skips it.
        mask_input: pass the previous low-res logits as mask input in iterative prompting
            (micro-sam's protocol; False measures the clicks alone).
    """
    res = EvalResult()
    for image, labels in samples:
        labels = np.asarray(labels)
        predictor.set_image(image, **(normalisation or {}))
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        order = [i for i, c in sorted(zip(ids, counts), key=lambda t: -t[1]) if c >= min_area]
        if max_instances is not None:
            order = order[:max_instances]
        grey_thr = otsu_threshold(to_grey(image))
        for k in order:
            gt = labels == k
            for start in ("box", "point"):
                ious = _run_mode(predictor, gt, start, 2)
                for j, v in enumerate(ious):
                    res.ious[start if j == 0 else f"{start}+{j}"].append(v)
            if iterations > 0:
                for start in ("box", "point"):
                    res.iterative[start].append(iterative_prompting(predictor, gt, start, iterations, mask_input))
            for name, mask in (("box", otsu_box(image, mask_box(gt))), ("point", otsu_point(image, interior_point(gt), grey_thr))):
                res.baseline[name].append(iou(mask, gt))
                res.baseline_nonempty[name].append(bool(mask.any()))
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
    it = summary.get("iterative")
    if it:
        n_it = max(len(v["miou"]) for v in it.values())
        lines += ["", "micro-sam protocol: iterative prompting (token 0, + corrective points, previous logits as mask input), "
                  "mIoU and mSA (IoU 0.50:0.05:0.95, matched objects) in %", ""]
        lines.append("| start | metric | " + " | ".join(f"+{j}" for j in range(n_it)) + " | Otsu in the box / under the point |")
        lines.append("|---|---|" + "---|" * n_it + "---|")
        for start, v in it.items():
            base = {"miou": summary["baseline_otsu"][start], "msa": summary["otsu_msa"][start]}
            for metric in ("miou", "msa"):
                label = "mIoU" if metric == "miou" else "mSA"
                lines.append(f"| {start} | {label} | " + " | ".join(str(x) for x in v[metric]) + f" | {base[metric]} |")
        if not all(v.get("mask_input", True) for v in it.values()):
            lines.append("\n(without mask input: the corrective clicks were decoded from the prompts alone)")
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


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``napari-edgesam train evaluate`` (parsed by :func:`napari_edgesam.cli.main`)."""
    ap.add_argument("--model", required=True, help="model name or .pth/.onnx path")
    ap.add_argument("--images", required=True, help="folder of images")
    ap.add_argument("--labels", required=True, help="folder of instance label images (same file names)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--max-instances", type=int, default=None)
    ap.add_argument("--iterations", type=int, default=N_CORRECTIVE,
                    help=f"corrective points of micro-sam's iterative prompting (default {N_CORRECTIVE}; 0: skip)")
    ap.add_argument("--no-mask-input", action="store_true",
                    help="iterative prompting without the previous logits as mask input (micro-sam uses them)")
    ap.add_argument("--out-json", default=None)


def run(args: argparse.Namespace) -> int:
    """``napari-edgesam train evaluate --model M --images DIR --labels DIR [--out-json F]``."""
    from ..inference.loading.api import load_model

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
    summary = evaluate(predictor, load_pairs(pairs), max_instances=args.max_instances, iterations=args.iterations,
                       mask_input=not args.no_mask_input).summary()
    summary["images"] = [p.name for p in images]
    if args.out_json:
        write_json_atomic(summary, args.out_json)
    print(format_table(summary, f"{args.model} on {len(images)} image(s)"))
    return 0

