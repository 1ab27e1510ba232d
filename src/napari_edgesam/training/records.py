"""Training data on disk: the images of a config with their label sources, and file reading.

:func:`find_records` lists a folder of images with label images matched by stem (or SA-1B
images with their json annotations) plus the generated synthetic samples of an epoch;
:func:`read_array` reads one image or label file. Does not import torch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DataConfig
from .sa1b import find_sa1b

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".npy")


@dataclass(frozen=True)
class Record:
    """One training image: its file, its label source (label image or SA-1B json) and a key."""

    image: Path
    labels: Path | None
    key: str
    kind: str  # "folder", "sa1b" or "synthetic" (generated per epoch; ``image`` is a placeholder)


def find_records(cfg: DataConfig) -> list[Record]:
    """The images of ``cfg`` (sorted by path, at most ``cfg.limit``) with their label sources."""
    if cfg.kind == "sa1b":
        recs = [Record(r.image, r.annotation, r.key, "sa1b") for r in find_sa1b(cfg.images, cfg.labels)]
    else:
        recs = _find_folder(cfg)
    if cfg.limit is not None:
        recs = recs[: cfg.limit]
    if not recs:
        raise ValueError(f"no training images found in {cfg.images!r} (looked for {list(IMAGE_SUFFIXES)})")
    recs += [
        Record(Path(f"<synthetic>/{i:05d}"), None, f"synthetic/{i:05d}", "synthetic")
        for i in range(getattr(cfg, "synthetic_images", 0))
    ]
    return recs


def _find_folder(cfg: DataConfig) -> list[Record]:
    root = Path(cfg.images)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    label_root = Path(cfg.labels) if cfg.labels else None
    if label_root is not None and not label_root.is_dir():
        raise FileNotFoundError(f"label folder not found: {label_root}")
    suffixes = [s for s in cfg.label_suffixes if s]
    same_dir = label_root is not None and label_root.resolve() == root.resolve()
    labels_by_stem: dict[str, Path] = {}
    if label_root is not None:
        for p in sorted(label_root.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                labels_by_stem.setdefault(p.stem, p)
    records = []
    for img in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        if same_dir and any(img.stem.endswith(s) and img.stem[: -len(s)] in labels_by_stem for s in suffixes):
            continue  # this file is a label image
        label = None
        if label_root is not None:
            for s in cfg.label_suffixes:
                cand = labels_by_stem.get(img.stem + s)
                if cand is not None and cand != img:
                    label = cand
                    break
        records.append(Record(img, label, img.relative_to(root).with_suffix("").as_posix(), "folder"))
    if label_root is not None:
        n_lab = sum(r.labels is not None for r in records)
        if n_lab == 0:
            raise ValueError(
                f"no label image in {label_root} matches an image in {root} (stems tried: image "
                f"stem + {cfg.label_suffixes})"
            )
        if n_lab < len(records):
            logger.warning("%d of %d images have no label image", len(records) - n_lab, len(records))
    return records


def read_array(path: str | os.PathLike, *, labels: bool = False) -> np.ndarray:
    """Read an image or label file (tif/tiff via tifffile, npy, else PIL) as a numpy array.

    Palette images are converted to RGB unless ``labels`` (then the palette indices are the ids).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        from PIL import Image

        with Image.open(path) as im:
            if im.mode in ("P", "PA") and not labels:
                im = im.convert("RGB")
            return np.asarray(im)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
