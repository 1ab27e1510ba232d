"""Reading images and writing label images safely (atomic writes). No torch, no napari."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF, PNG, JPEG or ``.npy`` file into an array (``H x W`` or ``H x W x C``, or
    a stack for multi-page TIFFs). Raises ``FileNotFoundError``/``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix in (".png", ".jpg", ".jpeg"):
            from PIL import Image

            with Image.open(path) as im:
                return np.asarray(im)
    except Exception as err:  # noqa: BLE001 - any reader failure becomes one clear error
        raise ValueError(f"cannot read image {path}: {err}") from err
    raise ValueError(f"unsupported image type {path.suffix!r} ({path}); use one of {IMAGE_SUFFIXES}")


def label_dtype(max_label: int) -> type:
    """The smallest unsigned dtype that holds ``max_label``."""
    if max_label < 2**8:
        return np.uint8
    if max_label < 2**16:
        return np.uint16
    return np.uint32


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write an integer label image as TIFF (compressed) atomically: a temporary file in the
    same folder is renamed over ``path`` only once complete, so a crash never leaves a
    half-written file."""
    import tifffile

    path = Path(path)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    out = labels.astype(label_dtype(int(labels.max(initial=0))), copy=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        tifffile.imwrite(tmp, out, compression="zlib")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
