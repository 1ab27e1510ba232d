"""What the user committed: one object = a plane (by its content hash), a mask, the prompts.

No torch here: :class:`AdaptObject` and :func:`objects_from_labels` are plain numpy, so the GUI
and the annotation export can build them without the training stack.
Coordinates are ``(x, y)`` pixels of the plane; boxes ``(x0, y0, x1, y1)``; masks ``[row, col]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ...inference.embeddings.keys import data_signature


def plane_key(image: np.ndarray) -> str:
    """The content hash of a 2D plane (``H x W`` or ``H x W x C``): 32 hex characters, the same
    for the same pixels and dtype (every byte is hashed)."""
    return data_signature(np.asarray(image), full=True)


@dataclass
class AdaptObject:
    """One committed object.

    Attributes:
        image_key: :func:`plane_key` of the plane it lies on (a key of :attr:`AdaptData.images`).
        mask: ``H x W`` bool, the committed mask (the plane's shape).
        box: the box prompt ``(x0, y0, x1, y1)`` that made it, or None.
        points: ``N x 2`` (x, y) point prompts that made it (may be empty).
        point_labels: ``N`` labels (1 positive, 0 negative).
    """

    image_key: str
    mask: np.ndarray
    box: np.ndarray | None = None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask, bool)
        if self.mask.ndim != 2:
            raise ValueError(f"an object's mask must be H x W, got shape {self.mask.shape}")
        if self.box is not None:
            self.box = np.asarray(self.box, np.float32).reshape(4)
        self.points = np.asarray(self.points, np.float32).reshape(-1, 2)
        self.point_labels = np.asarray(self.point_labels, np.int64).reshape(-1)
        if len(self.points) != len(self.point_labels):
            raise ValueError(f"{len(self.points)} points but {len(self.point_labels)} point labels")

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    def prompts(self) -> dict:
        """The prompts as plain data: ``{"box": [x0, y0, x1, y1] | None, "points": [[x, y], ...],
        "point_labels": [...]}``."""
        return {"box": None if self.box is None else [float(v) for v in self.box],
                "points": self.points.tolist(), "point_labels": [int(v) for v in self.point_labels]}


def objects_from_labels(labels: np.ndarray, min_area: int = 1) -> list[np.ndarray]:
    """The objects of an instance label image: one ``H x W`` bool mask per non-zero id (in
    increasing id order), each its largest 8-connected piece, pieces of fewer than ``min_area``
    pixels dropped.

    Args:
        labels: ``H x W`` integer labels (0 background).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2D H x W image, got shape {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be integers (instance ids), got dtype {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and int(labels.min()) < 0:
        raise ValueError(f"labels must be instance ids >= 0 (0 background), got {int(labels.min())}: "
                         "relabel the objects with positive ids")
    out = []
    for idx, sl in enumerate(ndi.find_objects(labels.astype(np.int64, copy=False)), 1):
        if sl is None:
            continue
        m = labels[sl] == idx
        cc, n = ndi.label(m, structure=np.ones((3, 3), bool))
        if n > 1:
            sizes = np.bincount(cc.ravel())[1:]
            m = cc == (int(np.argmax(sizes)) + 1)
        if int(m.sum()) < min_area:
            continue
        full = np.zeros(labels.shape, bool)
        full[sl] = m
        out.append(full)
    return out
