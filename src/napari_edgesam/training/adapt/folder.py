"""Adaptation data from a folder of images and instance labels (matched by file stem, as
``train finetune`` reads them), e.g. one written by
:func:`napari_edgesam.interactive.annotations.export_annotations`. No torch here.

A file may hold one plane (``H x W``, or ``H x W x C`` with C <= 4 channels) with ``H x W``
labels, or a stack (``Z x H x W``) with ``Z x H x W`` labels: every plane holding objects is
then a plane of its own. When the folder's parent holds the ``prompts.json`` of an export, the
prompts that made each object are attached to it (the adaptation samples its own prompts from
the masks; the saved ones are kept for the record).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..records import find_records, read_array
from .data import AdaptData
from .objects import AdaptObject

logger = logging.getLogger(__name__)


def _planes(image: np.ndarray, labels: np.ndarray, name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    if labels.ndim == 2 and image.shape[:2] == labels.shape and image.ndim in (2, 3):
        if image.ndim == 3 and image.shape[2] > 4:
            raise ValueError(f"{name}: image {image.shape} with 2D labels {labels.shape}: expected H x W x C with "
                             "C <= 4 channels")
        return [(image, labels)]
    if labels.ndim == 3 and image.shape == labels.shape:
        return [(image[z], labels[z]) for z in range(labels.shape[0]) if labels[z].any()]
    raise ValueError(f"{name}: image {image.shape} and labels {labels.shape} do not match (one plane H x W "
                     "[x C] with H x W labels, or a Z x H x W stack with Z x H x W labels)")


def data_from_folder(images: str | os.PathLike, labels: str | os.PathLike, *, min_area: int = 16,
                     **normalisation) -> AdaptData:
    """:class:`AdaptData` from ``images`` and ``labels`` folders (matched by stem, with the
    suffixes ``train finetune`` accepts: ``x``, ``x_labels``, ``x_masks`` ...).

    Raises:
        FileNotFoundError / ValueError: a missing folder, no matching pairs, mismatched shapes,
            or no object at all.
    """
    records = [r for r in find_records(DataConfig(images=str(images), labels=str(labels))) if r.labels is not None]
    saved = _saved_prompts(Path(images))
    data = AdaptData(normalisation=dict(normalisation))
    for rec in records:
        image, lab = read_array(rec.image), read_array(rec.labels, labels=True)
        if lab.dtype.kind not in "iu":
            raise ValueError(f"{rec.labels}: labels must be integers (instance ids), got {lab.dtype}")
        if lab.dtype.kind == "i" and lab.size and int(lab.min()) < 0:
            raise ValueError(f"{rec.labels}: labels must be instance ids >= 0 (0 background), got {int(lab.min())}")
        prompts = {p.id: p for p in saved.get(Path(rec.key).name, [])}
        for plane, plane_labels in _planes(image, lab, str(rec.image)):
            key = data.add_image(plane)
            start = len(data.objects)
            ids = [int(v) for v in np.unique(plane_labels) if v > 0]
            data.add_labels(key, plane_labels, min_area=min_area)
            if prompts and plane_labels.ndim == 2:
                _attach(data.objects[start:], plane_labels, ids, prompts)
    if not data.objects:
        raise ValueError(f"no object of at least {min_area} pixels in the labels of {labels}")
    return data


def _attach(objects: list[AdaptObject], labels: np.ndarray, ids: list[int], prompts: dict) -> None:
    for obj in objects:
        ident = int(np.bincount(labels[obj.mask].ravel()).argmax())
        p = prompts.get(ident)
        if p is not None:
            obj.box, obj.points, obj.point_labels = p.box, p.points, p.point_labels


def _saved_prompts(images: Path) -> dict:
    from ...interactive.annotations import PROMPTS_FILE, read_prompts

    path = images.parent / PROMPTS_FILE
    if not path.is_file():
        return {}
    try:
        return read_prompts(path)
    except ValueError as err:  # the saved prompts are kept for the record only: the labels are the data
        logger.warning("%s; going on without the saved prompts", err)
        return {}
