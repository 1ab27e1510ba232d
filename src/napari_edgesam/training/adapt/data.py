"""The data of one adaptation: the planes (or their embeddings) and the committed objects.

No torch here. The planes are 2D images as the predictor takes them (``H x W`` grey or
``H x W x C``); a plane whose embedding is already known (the GUI's cache) can be given as an
:class:`~napari_edgesam.inference.core.predictor.ImageEmbedding` instead, keyed the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ...inference.core.predictor import ImageEmbedding
from .objects import AdaptObject, objects_from_labels, plane_key


@dataclass
class AdaptData:
    """Planes and objects.

    Attributes:
        images: image_key -> plane (``H x W`` or ``H x W x C``, any dtype).
        embeddings: image_key -> a precomputed :class:`ImageEmbedding` of that plane (from the
            same base model; the plane itself may then be absent).
        objects: the committed objects; each ``image_key`` must be in ``images`` or ``embeddings``.
        normalisation: keyword arguments for ``predictor.encode`` (contrast limits, channel axis...).
    """

    images: dict[str, np.ndarray] = field(default_factory=dict)
    embeddings: dict[str, ImageEmbedding] = field(default_factory=dict)
    objects: list[AdaptObject] = field(default_factory=list)
    normalisation: dict = field(default_factory=dict)

    def add_image(self, image: np.ndarray, embedding: ImageEmbedding | None = None) -> str:
        """Add a plane (and optionally its embedding); returns its key."""
        image = np.asarray(image)
        if image.ndim not in (2, 3):
            raise ValueError(f"an adaptation image must be a 2D plane (H x W or H x W x C), got shape {image.shape}")
        key = plane_key(image)
        self.images[key] = image
        if embedding is not None:
            self.embeddings[key] = embedding
        return key

    def add_labels(self, key: str, labels: np.ndarray, min_area: int = 16) -> int:
        """Add every object of the instance labels ``labels`` (``H x W``) of plane ``key``;
        returns how many were added (objects under ``min_area`` pixels are skipped)."""
        shape = self.plane_shape(key)
        labels = np.asarray(labels)
        if labels.shape != shape:
            raise ValueError(f"labels of shape {labels.shape} do not match their image's {shape} (H x W)")
        masks = objects_from_labels(labels, min_area=min_area)
        self.objects.extend(AdaptObject(key, m) for m in masks)
        return len(masks)

    def plane_shape(self, key: str) -> tuple[int, int]:
        """``(H, W)`` of plane ``key``."""
        if key in self.images:
            return tuple(int(s) for s in self.images[key].shape[:2])
        if key in self.embeddings:
            return tuple(int(s) for s in self.embeddings[key].original_size)
        raise KeyError(f"no image with key {key!r} in the adaptation data")

    @property
    def image_keys(self) -> list[str]:
        """Keys of the planes that hold objects, in first-seen order."""
        return list(dict.fromkeys(o.image_key for o in self.objects))

    def check(self) -> None:
        """ValueError naming the problem when an object has no plane or a wrong-size mask."""
        for i, obj in enumerate(self.objects):
            if obj.image_key not in self.images and obj.image_key not in self.embeddings:
                raise ValueError(f"object {i} lies on image {obj.image_key!r}, which is not in the data")
            if obj.mask.shape != self.plane_shape(obj.image_key):
                raise ValueError(f"object {i}'s mask {obj.mask.shape} does not match its image "
                                 f"{self.plane_shape(obj.image_key)} (H x W)")

    def limited(self, max_objects: int | None, seed: int = 0) -> AdaptData:
        """A copy with at most ``max_objects`` objects (a seeded random choice, spread over the
        images), the same planes and embeddings."""
        if max_objects is None or len(self.objects) <= max_objects:
            return AdaptData(dict(self.images), dict(self.embeddings), list(self.objects), dict(self.normalisation))
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(self.objects), size=max_objects, replace=False))
        objects = [self.objects[i] for i in pick]
        keys = {o.image_key for o in objects}
        return AdaptData({k: v for k, v in self.images.items() if k in keys},
                         {k: v for k, v in self.embeddings.items() if k in keys}, objects, dict(self.normalisation))

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[np.ndarray, np.ndarray]], predictor=None, *,
                   min_area: int = 16, embed: bool | None = None, **normalisation) -> AdaptData:
        """Data from ``(image, labels)`` pairs: ``image`` ``H x W`` or ``H x W x C``, ``labels``
        ``H x W`` instance ids (0 background); objects under ``min_area`` pixels are skipped.
        With a ``predictor`` the planes are embedded now (``embed=False``: later, by
        :meth:`Adapter.prepare`). ``normalisation`` goes to ``predictor.encode``."""
        data = cls(normalisation=dict(normalisation))
        for image, labels in pairs:
            key = data.add_image(image)
            data.add_labels(key, labels, min_area=min_area)
        if embed is None:
            embed = predictor is not None
        if embed:
            if predictor is None:
                raise ValueError("embed=True needs the predictor")
            data.embed_missing(predictor)
        return data

    def embed_missing(self, predictor, progress=None) -> int:
        """Embed every plane holding objects whose embedding is not known yet (with the
        predictor's prior, so the embeddings carry its proposals); returns how many."""
        todo = [k for k in self.image_keys if k not in self.embeddings]
        for i, key in enumerate(todo):
            if key not in self.images:
                raise ValueError(f"image {key!r} has neither pixels nor an embedding")
            self.embeddings[key] = predictor.encode(self.images[key], **self.normalisation)
            if progress is not None:
                progress(i + 1, len(todo))
        return len(todo)

    def hashes(self) -> dict[str, int]:
        """image_key -> number of objects on it (for the model card)."""
        out: dict[str, int] = {}
        for o in self.objects:
            out[o.image_key] = out.get(o.image_key, 0) + 1
        return out


