"""Synthetic training data (bright blobs on noise) for smoke tests, demos and CI.

:func:`write_folder_dataset` writes ``images/*.tif`` + ``labels/*.tif`` (instance labels);
:func:`write_sa1b_dataset` writes ``*.jpg`` + ``*.json`` with COCO-RLE masks (SA-1B layout).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .rle import encode_rle


def blob_image(
    shape: tuple[int, int], n_blobs: int, rng: np.random.Generator, radius: tuple[int, int] = (4, 12)
) -> tuple[np.ndarray, np.ndarray]:
    """A noisy float32 image with ``n_blobs`` bright ellipses and its ``uint16`` instance labels
    (later blobs cover earlier ones; ids 1..n, some may vanish when fully covered)."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros(shape, np.uint16)
    image = rng.normal(20.0, 5.0, shape)
    for k in range(1, n_blobs + 1):
        ry, rx = rng.integers(radius[0], radius[1] + 1, size=2)
        cy = rng.integers(ry, max(ry + 1, h - ry))
        cx = rng.integers(rx, max(rx + 1, w - rx))
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        labels[inside] = k
        image[inside] = rng.uniform(120.0, 220.0) + rng.normal(0.0, 5.0, int(inside.sum()))
    return image.astype(np.float32), labels


def write_folder_dataset(
    root: str | os.PathLike,
    n_images: int = 4,
    shape: tuple[int, int] = (96, 128),
    n_blobs: int = 5,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write ``root/images/img_XXX.tif`` and ``root/labels/img_XXX.tif``; returns both folders."""
    import tifffile

    root = Path(root)
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        img, lab = blob_image(shape, n_blobs, rng)
        tifffile.imwrite(images / f"img_{i:03d}.tif", img)
        tifffile.imwrite(labels / f"img_{i:03d}.tif", lab)
    return images, labels


def write_sa1b_dataset(
    root: str | os.PathLike,
    n_images: int = 2,
    shape: tuple[int, int] = (96, 128),
    n_blobs: int = 5,
    seed: int = 0,
) -> Path:
    """Write ``root/sa_XXX.jpg`` + ``root/sa_XXX.json`` (SA-1B layout, RLE masks); returns ``root``."""
    from PIL import Image

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        img, lab = blob_image(shape, n_blobs, rng)
        rgb = np.clip(img, 0, 255).astype(np.uint8)
        Image.fromarray(np.stack([rgb] * 3, axis=-1)).save(root / f"sa_{i:03d}.jpg", quality=95)
        anns = []
        for k in np.unique(lab[lab > 0]):
            mask = lab == k
            ys, xs = np.nonzero(mask)
            anns.append(
                {
                    "id": int(k),
                    "segmentation": encode_rle(mask),
                    "area": int(mask.sum()),
                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                }
            )
        meta = {"image": {"image_id": i, "height": shape[0], "width": shape[1], "file_name": f"sa_{i:03d}.jpg"},
                "annotations": anns}
        (root / f"sa_{i:03d}.json").write_text(json.dumps(meta), encoding="utf-8")
    return root
