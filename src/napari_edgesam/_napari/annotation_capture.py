"""What a commit adds to the session's :class:`~napari_edgesam.interactive.commit_log.AnnotationLog`
(and what a labels layer offers to adaptation): plane images as the model saw them, masks, prompts.

Runs on the Qt thread at commit time, so it only reads label planes (cheap); the plane images
are converted to RGB later, in a worker (:meth:`Snapshot.load_images`).
"""

from __future__ import annotations

import logging

import numpy as np

from ..inference.core.preprocess import to_rgb_uint8
from ..interactive.planes import Plane
from ..interactive.session import ObjectPrompt
from .embedding import ImageView

logger = logging.getLogger(__name__)


def image_key(embeddings, view: ImageView, plane: Plane) -> str:
    """A key naming ``plane`` of ``view`` as the model sees it (data, plane, normalisation): the
    embedding cache key when the data signature is known, else one built from the array's identity."""
    key = None
    try:
        key = embeddings.key(view, plane)
    except RuntimeError:  # no model yet
        pass
    if key is not None:
        return key
    norm = ",".join(f"{k}={v}" for k, v in sorted(view.normalisation.items()))
    return f"array{id(view.data)}|{norm}|{plane.key}"


def image_source(view: ImageView, plane: Plane):
    """A callable giving ``plane`` of ``view`` as ``H x W x 3`` uint8, normalised as the encoder sees it."""
    return lambda: to_rgb_uint8(view.image(plane), **view.normalisation)


def touched_planes(view: ImageView, region: tuple[slice, ...]) -> list[Plane]:
    """The current plane and, along the stack axis, every other plane in the commit's
    bounding box ``region`` (3D propagation fills several slices at once)."""
    plane = view.plane
    axis = plane.stack_axis
    if axis is None or axis >= len(region):
        return [plane]
    span = region[axis]
    planes = [plane.at(axis, z) for z in range(span.start or 0, span.stop or plane.shape[axis])]
    return planes if any(p.key == plane.key for p in planes) else [plane, *planes]


def capture_commit(log, embeddings, view: ImageView | None, objects: list[ObjectPrompt], record,
                   preview: np.ndarray, target: np.ndarray, resolve=None) -> int:
    """Add the objects of a commit to ``log``; returns how many were kept.

    Args:
        view: the image view (current plane) at commit time; None: nothing is recorded.
        objects: the prompt objects of the current plane (preview id ``i + 1`` is ``objects[i]``).
        record: the session's :class:`~napari_edgesam.interactive.session.CommitRecord`.
        preview, target: the preview and target label data after the commit (nD, same shape).
        resolve: ``resolve(record.target)`` gives the target's label data now (None once it is
            gone): adaptation then reads the objects again, with the user's brush corrections.
    """
    if view is None or record is None or not record.ids:
        return 0
    planes = []
    for plane in touched_planes(view, record.region):
        shown = plane.read_labels(preview)
        written = plane.read_labels(target)
        masks, prompts = {}, {}
        for pid, tid in record.ids.items():
            mask = (shown == pid) & (written == tid)  # what was written (existing labels may be kept)
            if not mask.any():
                continue
            masks[tid] = mask
            if plane.key == view.plane.key and 0 < pid <= len(objects):
                prompts[tid] = objects[pid - 1]
        if masks:
            labels_now = None
            if resolve is not None:
                def labels_now(plane=plane, handle=record.target):
                    data = resolve(handle)
                    return None if data is None else plane.read_labels(data)
            planes.append((image_key(embeddings, view, plane), image_source(view, plane), masks, prompts, labels_now))
    return log.add_commit(record, planes)


def labels_planes(view: ImageView, labels: np.ndarray, embeddings, max_planes: int = 64) -> list[tuple]:
    """``(image_key, image_source, labels_source)`` for the planes of a labels layer: the current
    plane of a 2D image, or the planes along the stack axis (at most ``max_planes``, evenly
    spread). Nothing is read here (planes without labels are skipped when they are read, in a
    worker). ``labels`` must have the image's spatial shape."""
    plane = view.plane
    if tuple(np.shape(labels)) != tuple(plane.shape):
        raise ValueError(f"the labels layer has shape {tuple(np.shape(labels))} but the image {tuple(plane.shape)}; "
                         "choose a labels layer made for this image")
    axis = plane.stack_axis
    planes = [plane] if axis is None else [plane.at(axis, z) for z in range(plane.shape[axis])]
    found = planes
    if len(found) > max_planes:
        found = [found[int(i)] for i in np.linspace(0, len(found) - 1, max_planes).round()]
    return [(image_key(embeddings, view, p), image_source(view, p), (lambda p=p: p.read_labels(labels)))
            for p in found]
