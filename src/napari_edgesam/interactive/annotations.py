"""Annotations as data: a session's images, committed labels and the prompts that made them,
written as a training folder and read back; saved prompts replayed on an image. No Qt.

The folder (what ``train finetune`` reads as ``data.images``/``data.labels``, and ``train
adapt`` as ``--images``/``--labels``)::

    FOLDER/images/<name>.tif     the plane (H x W, or H x W x C)
    FOLDER/labels/<name>.tif     its instance labels (H x W, 0 background)
    FOLDER/prompts.json          {"format": "napari-edgesam-annotations", "version": 1,
                                  "images": {"<name>": {"shape": [H, W], "objects": [
                                      {"id": 3, "box": [x0, y0, x1, y1] | null,
                                       "points": [[x, y], ...], "point_labels": [1, 0, ...]}]}}}

Coordinates are ``(x, y)`` pixels of the plane, boxes ``(x0, y0, x1, y1)``. Every file is
written atomically (``prompts.json`` last, so a folder with it is complete).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._atomic import atomic_write, atomic_write_text
from .session import ObjectPrompt, Session

FORMAT = "napari-edgesam-annotations"
PROMPTS_FILE = "prompts.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class ObjectPrompts:
    """The prompts that made object ``id`` of a labels image.

    Attributes:
        id: the object's label value.
        box: ``(x0, y0, x1, y1)`` or None.
        points: ``N x 2`` (x, y); point_labels: ``N`` (1 positive, 0 negative).
    """

    id: int
    box: np.ndarray | None = None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    def __post_init__(self) -> None:
        self.id = int(self.id)
        if self.id < 1:
            raise ValueError(f"an object's id must be >= 1, got {self.id}")
        self.box = None if self.box is None else np.asarray(self.box, np.float32).reshape(4)
        self.points = np.asarray(self.points, np.float32).reshape(-1, 2)
        self.point_labels = np.asarray(self.point_labels, np.int64).reshape(-1)
        if len(self.points) != len(self.point_labels):
            raise ValueError(f"object {self.id}: {len(self.points)} points but {len(self.point_labels)} point labels")
        if self.box is None and not len(self.points):
            raise ValueError(f"object {self.id} has no prompt (neither a box nor a point)")

    def to_json(self) -> dict:
        return {"id": self.id, "box": None if self.box is None else [float(v) for v in self.box],
                "points": [[float(x), float(y)] for x, y in self.points],
                "point_labels": [int(v) for v in self.point_labels]}

    @classmethod
    def from_json(cls, obj: dict) -> ObjectPrompts:
        if not isinstance(obj, dict) or "id" not in obj:
            raise ValueError(f"an object's prompts must be a mapping with an 'id', got {obj!r}")
        return cls(obj["id"], obj.get("box"), obj.get("points") or np.zeros((0, 2)),
                   obj.get("point_labels") or np.zeros((0,), np.int64))


@dataclass
class AnnotatedImage:
    """One annotated plane: ``image`` (``H x W`` or ``H x W x C``), ``labels`` (``H x W``
    instance ids) and the prompts of its objects."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    prompts: list[ObjectPrompts] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"invalid annotation name {self.name!r}: use letters, digits, '.', '_' and '-'")
        self.image = np.asarray(self.image)
        self.labels = np.asarray(self.labels)
        if self.image.ndim not in (2, 3) or self.labels.ndim != 2 or self.image.shape[:2] != self.labels.shape:
            raise ValueError(f"{self.name}: image {self.image.shape} and labels {self.labels.shape} must be one "
                             "plane (H x W or H x W x C) and its H x W labels")
        if self.labels.dtype.kind not in "iu":
            raise ValueError(f"{self.name}: labels must be integers, got {self.labels.dtype}")


def _write_tif(path: Path, array: np.ndarray) -> None:
    import tifffile

    atomic_write(path, lambda tmp: tifffile.imwrite(tmp, array))


def export_annotations(folder: str | os.PathLike, items: Sequence[AnnotatedImage], *,
                       overwrite: bool = False) -> Path:
    """Write ``items`` as a training folder (see the module docstring); returns the folder.

    Raises:
        ValueError: no items, two items with one name, or (without ``overwrite``) a folder
            that already holds annotations.
    """
    folder = Path(folder)
    items = list(items)
    if not items:
        raise ValueError("nothing to export: no annotated image")
    names = [it.name for it in items]
    if len(set(names)) != len(names):
        raise ValueError(f"annotation names must differ, got {names}")
    if (folder / PROMPTS_FILE).exists() and not overwrite:
        raise ValueError(f"{folder} already holds annotations ({PROMPTS_FILE}): choose another folder "
                         "or pass overwrite=True")
    record = {"format": FORMAT, "version": 1, "images": {}}
    for it in items:
        labels = it.labels.astype(np.uint32 if int(it.labels.max(initial=0)) > 65535 else np.uint16)
        _write_tif(folder / "images" / f"{it.name}.tif", it.image)
        _write_tif(folder / "labels" / f"{it.name}.tif", labels)
        record["images"][it.name] = {"shape": list(it.labels.shape), "objects": [p.to_json() for p in it.prompts]}
    atomic_write_text(folder / PROMPTS_FILE, json.dumps(record, indent=1))
    return folder


def read_prompts(folder: str | os.PathLike) -> dict[str, list[ObjectPrompts]]:
    """name -> the saved prompts of its objects, from ``FOLDER/prompts.json`` (or that file)."""
    path = Path(folder)
    path = path / PROMPTS_FILE if path.is_dir() else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no saved prompts: {path} does not exist") from None
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("images"), dict):
        raise ValueError(f"{path} is not a napari-edgesam annotations file (format {FORMAT!r})")
    out = {}
    for name, entry in data["images"].items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{path}: invalid image name {name!r} (letters, digits, '.', '_' and '-' only)")
        objects = entry.get("objects", []) if isinstance(entry, dict) else None
        if not isinstance(objects, list):
            raise ValueError(f"{path}: image {name!r} must be a mapping with an 'objects' list, got {entry!r:.80}")
        try:
            out[name] = [ObjectPrompts.from_json(o) for o in objects]
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: image {name!r}: bad object prompts ({err})") from None
    return out


def read_annotations(folder: str | os.PathLike) -> list[AnnotatedImage]:
    """The images, labels and prompts of a folder written by :func:`export_annotations`."""
    import tifffile

    folder = Path(folder)
    prompts = read_prompts(folder)
    out = []
    for name, objs in prompts.items():
        img_path, lab_path = folder / "images" / f"{name}.tif", folder / "labels" / f"{name}.tif"
        for p in (img_path, lab_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p} is listed in {folder / PROMPTS_FILE} but missing")
        try:
            image, labels = tifffile.imread(img_path), tifffile.imread(lab_path)
        except (ValueError, OSError) as err:
            raise ValueError(f"cannot read the annotation {name!r} in {folder} ({err})") from None
        out.append(AnnotatedImage(name, image, labels, objs))
    return out


def replay_prompts(predictor, image: np.ndarray, prompts: Sequence[ObjectPrompts | dict], *,
                   fill_holes: bool = True, embedding=None, **normalisation) -> np.ndarray:
    """Segment ``image`` (``H x W`` or ``H x W x C``) again from saved prompts, object by
    object, as the interactive session decodes them (a single click takes the granularity
    prior's box when the predictor has a prior). Later objects do not overwrite earlier ones.

    Args:
        prompts: :class:`ObjectPrompts` (or their JSON dicts); each object's mask gets its ``id``.
        embedding: the image's embedding if known (else ``predictor.encode(image, **normalisation)``).

    Returns:
        ``H x W`` labels (uint32 when an id exceeds 65535, else uint16).
    """
    objs = [p if isinstance(p, ObjectPrompts) else ObjectPrompts.from_json(p) for p in prompts]
    emb = embedding if embedding is not None else predictor.encode(np.asarray(image), **normalisation)
    h, w = emb.original_size
    dtype = np.uint32 if any(o.id > 65535 for o in objs) else np.uint16
    labels = np.zeros((h, w), dtype)
    session = Session(fill_holes=fill_holes)
    for i, o in enumerate(objs):
        obj = ObjectPrompt(o.points, o.point_labels, o.box)
        try:
            result = session.decode(predictor, emb, ("replay", i), [obj], proposals=emb.proposals)
        except ValueError as err:
            raise ValueError(f"object {o.id}'s saved prompts: {err}") from None
        mask = np.asarray(result.objects[0].mask, bool)
        labels[mask & (labels == 0)] = o.id
    return labels
