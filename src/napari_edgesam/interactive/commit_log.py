"""The objects a user committed in a session, kept as adaptation data (no Qt, no napari, no torch).

Every commit of the interactive widget adds, per committed object and plane, the mask that was
written into the target labels, the prompts that made it (on the plane the user prompted;
None on planes filled by 3D propagation) and a reference to the plane image the model saw.
Undoing a commit removes its objects again. Adaptation (:mod:`napari_edgesam.training.adapt`)
and the annotation export read the log through :meth:`AnnotationLog.snapshot`.

Images are kept as zero-argument callables that return the plane as the model saw it
(``H x W x 3`` uint8 RGB, already normalised), so a commit on a large stack costs no pixel
conversion on the GUI thread; they are called once, in a worker, when the log is used.
Masks are ``H x W`` bool in the plane's (row, col) frame; prompts are
:class:`~napari_edgesam.interactive.session.ObjectPrompt` in (x, y) pixels of the plane.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from .session import ObjectPrompt

logger = logging.getLogger(__name__)

#: A plane image: called (in a worker) it returns ``H x W x 3`` uint8 RGB, what the encoder saw.
ImageSource = Callable[[], np.ndarray]


@dataclass(frozen=True)
class AnnotatedObject:
    """One committed object on one plane.

    Attributes:
        image_key: the key of its plane image in the log (:meth:`AnnotationLog.image`).
        mask: ``H x W`` bool, the committed pixels on that plane.
        prompts: the prompts that made it (None where 3D propagation made it).
        label: the id it got in the target labels.
        commit: the serial number of the commit it belongs to (1, 2, ...).
        labels_now: returns the plane's ``H x W`` target labels as they are now (the user may
            have corrected the object with the brush), or None when the target is gone.
    """

    image_key: str
    mask: np.ndarray
    prompts: ObjectPrompt | None
    label: int
    commit: int
    labels_now: Callable[[], np.ndarray | None] | None = field(default=None, compare=False, repr=False)

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    def current(self, min_area: int = 1) -> AnnotatedObject | None:
        """The object as the target labels hold it now: its pixels there (brush corrections
        included), None if it was erased (fewer than ``min_area`` pixels left); itself when the
        target is gone or cannot be read."""
        if self.labels_now is None:
            return self
        try:
            labels = self.labels_now()
        except (ValueError, IndexError) as err:  # the layer's data changed shape
            logger.debug("object %d: the target cannot be read again (%s): its committed mask is used", self.label, err)
            return self
        if labels is None or np.shape(labels) != self.mask.shape:
            return self
        mask = np.asarray(labels) == self.label
        if np.count_nonzero(mask) < min_area:
            return None
        return replace(self, mask=mask)


@dataclass(frozen=True)
class Snapshot:
    """The log at one moment: ``images`` maps every ``image_key`` used by ``objects`` to its source."""

    images: dict[str, ImageSource]
    objects: tuple[AnnotatedObject, ...]

    @property
    def n_objects(self) -> int:
        return len(self.objects)

    @property
    def n_images(self) -> int:
        return len(self.images)

    def current(self, min_area: int = 1) -> Snapshot:
        """The objects as the target labels hold them now (:meth:`AnnotatedObject.current`:
        corrected ones with their new pixels, erased ones left out); call it in a worker."""
        objects = tuple(o for o in (obj.current(min_area) for obj in self.objects) if o is not None)
        used = {o.image_key for o in objects}
        return Snapshot({k: v for k, v in self.images.items() if k in used}, objects)

    def load_images(self) -> dict[str, np.ndarray]:
        """Every plane image as ``H x W x 3`` uint8 (slow for many planes: call it in a worker)."""
        out = {}
        for key, source in self.images.items():
            rgb = np.asarray(source())
            if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
                raise ValueError(f"the image source of {key!r} gave {rgb.dtype} {rgb.shape}, "
                                 "not H x W x 3 uint8")
            out[key] = rgb
        return out


class AnnotationLog:
    """The committed objects of a session, in commit order. Thread-safe.

    Objects smaller than ``min_area`` pixels are not kept (a stray click's speck teaches nothing).
    """

    def __init__(self, min_area: int = 4) -> None:
        self.min_area = int(min_area)
        self._images: dict[str, ImageSource] = {}
        self._objects: list[AnnotatedObject] = []
        # id(commit record) -> (weak reference to it, serial): an id reused by a later record never matches
        self._commits: dict[int, tuple[Callable[[], object], int]] = {}
        self._serial = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    @property
    def n_commits(self) -> int:
        """Commits that added objects and were not undone."""
        with self._lock:
            return len({o.commit for o in self._objects})

    def add_commit(self, record: object, planes: list[tuple]) -> int:
        """Add the objects of one commit; returns how many were kept.

        Args:
            record: the session's commit record (its identity links :meth:`undo_commit` to it).
            planes: per plane ``(image_key, image_source, {label: H x W bool mask},
                {label: prompts})``, optionally followed by ``labels_now`` (see
                :class:`AnnotatedObject`); an image key seen before keeps its first source.
        """
        added = 0
        with self._lock:
            self._serial += 1
            serial = self._serial
            for key, source, masks, prompts, *rest in planes:
                labels_now = rest[0] if rest else None
                for label, mask in masks.items():
                    mask = np.asarray(mask, bool)
                    if mask.ndim != 2:
                        raise ValueError(f"object {label}: the mask must be 2D (H x W), got shape {mask.shape}")
                    if np.count_nonzero(mask) < self.min_area:
                        continue
                    self._images.setdefault(key, source)
                    self._objects.append(AnnotatedObject(key, mask, prompts.get(label), int(label), serial, labels_now))
                    added += 1
            self._commits[id(record)] = (_reference(record), serial)
        return added

    def undo_commit(self, record: object) -> int:
        """Remove the objects of the commit ``record`` (undone); returns how many were removed."""
        with self._lock:
            ref, serial = self._commits.pop(id(record), (None, None))
            if ref is None or ref() is not record:
                return 0
            before = len(self._objects)
            self._objects = [o for o in self._objects if o.commit != serial]
            used = {o.image_key for o in self._objects}
            self._images = {k: v for k, v in self._images.items() if k in used}
            return before - len(self._objects)

    def clear(self) -> None:
        with self._lock:
            self._images.clear()
            self._objects.clear()
            self._commits.clear()

    def snapshot(self) -> Snapshot:
        """The objects now (later commits do not change it)."""
        with self._lock:
            return Snapshot(dict(self._images), tuple(self._objects))


def _reference(obj: object) -> Callable[[], object]:
    """A weak reference to ``obj`` (a strong one for objects that take none)."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def annotated_images(snapshot: Snapshot, prefix: str = "plane") -> list:
    """The snapshot as :class:`~napari_edgesam.interactive.annotations.AnnotatedImage` items for
    :func:`~napari_edgesam.interactive.annotations.export_annotations`: per plane, its image as
    the model saw it (``H x W`` uint8 when grey, else ``H x W x 3``), its committed objects as
    ``H x W`` labels with their ids (a later commit wins where two overlap), and the prompts
    of the objects that have them. Loads the images: call it in a worker."""
    from .annotations import AnnotatedImage, ObjectPrompts

    snapshot = snapshot.current()
    images = snapshot.load_images()
    out = []
    for i, (key, rgb) in enumerate(images.items()):
        objects = [o for o in snapshot.objects if o.image_key == key]
        if not objects:
            continue
        grey = bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))
        labels = np.zeros(rgb.shape[:2], np.uint32)
        prompts = {}
        for o in objects:
            labels[o.mask] = o.label
            p = o.prompts
            if p is not None and (p.box is not None or len(p.points)):
                prompts[o.label] = ObjectPrompts(o.label, p.box, p.points, p.labels)
        present = set(np.unique(labels).tolist())
        out.append(AnnotatedImage(f"{prefix}-{i + 1:03d}", rgb[..., 0] if grey else rgb, labels,
                                  [p for label, p in prompts.items() if label in present]))
    return out
