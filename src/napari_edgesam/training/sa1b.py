"""The SA-1B layout: ``xxx.jpg`` + ``xxx.json`` with COCO-RLE instance masks.

A json holds ``{"image": {"height", "width", "file_name", ...}, "annotations": [{"segmentation":
{"size": [h, w], "counts": str}, "area": int, "bbox": [x, y, w, h], ...}, ...]}``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .rle import decode_rle, rle_area

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SA1BRecord:
    """One SA-1B image and its annotation file; ``key`` is the image path relative to the root."""

    image: Path
    annotation: Path
    key: str


def find_sa1b(images: str | os.PathLike, annotations: str | os.PathLike | None = None) -> list[SA1BRecord]:
    """Pairs ``*.jpg`` under ``images`` with ``<stem>.json`` in ``annotations`` (default: beside
    each image; also tried: the same relative folder under ``annotations``). Sorted by path;
    images without a json are skipped with a warning."""
    root = Path(images)
    if not root.is_dir():
        raise FileNotFoundError(f"SA-1B image folder not found: {root}")
    ann_root = Path(annotations) if annotations else None
    if ann_root is not None and not ann_root.is_dir():
        raise FileNotFoundError(f"SA-1B annotation folder not found: {ann_root}")
    records, missing = [], 0
    for img in sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")):
        rel = img.relative_to(root)
        candidates = [img.with_suffix(".json")]
        if ann_root is not None:
            candidates = [ann_root / rel.with_suffix(".json"), ann_root / f"{img.stem}.json"]
        ann = next((c for c in candidates if c.is_file()), None)
        if ann is None:
            missing += 1
            continue
        records.append(SA1BRecord(img, ann, rel.with_suffix("").as_posix()))
    if missing:
        logger.warning("%d SA-1B images under %s have no annotation json and are skipped", missing, root)
    return records


def read_annotations(path: str | os.PathLike) -> list[dict]:
    """The ``annotations`` list of an SA-1B json (each with a ``segmentation`` RLE)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read SA-1B annotation file {path}: {err}") from err
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        raise ValueError(f"{path} has no 'annotations' list (not an SA-1B json)")
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict) or "segmentation" not in ann:
            raise ValueError(f"{path}: annotation {i} has no 'segmentation' RLE")
    return anns


def annotation_area(ann: dict) -> int:
    """Foreground pixels of an annotation (its ``area`` field, else counted from the RLE)."""
    area = ann.get("area")
    return int(area) if isinstance(area, (int, float)) else rle_area(ann["segmentation"])


def decode_annotations(anns: list[dict], indices: np.ndarray) -> np.ndarray:
    """``K x H x W`` bool masks of the chosen annotations."""
    masks = [decode_rle(anns[int(i)]["segmentation"]) for i in indices]
    if not masks:
        return np.zeros((0, 1, 1), dtype=bool)
    return np.stack(masks)
