"""The layers the interactive controller works with in one viewer (napari side): the prompt
points and boxes and the preview labels, created in the image layer's frame when first needed,
with the shortcuts bound and prompt edits reported.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from napari.layers import Image, Labels, Points, Shapes

from . import layers as L
from . import names
from .keys import ShortcutBinder


class EdgeSamLayers:
    """The EdgeSAM prompt and preview layers of one viewer.

    Args:
        viewer: the napari viewer.
        keys: binds the shortcuts on every layer handed out.
        on_prompts_edited: called with napari's event whenever a prompt layer's data changes.
    """

    def __init__(self, viewer, keys: ShortcutBinder, on_prompts_edited: Callable[[object], None]) -> None:
        self.viewer = viewer
        self._keys = keys
        self._on_edit = on_prompts_edited
        self._points: Points | None = None
        self._boxes: Shapes | None = None

    def prompts(self, image: Image) -> tuple[Points, Shapes]:
        """The (points, boxes) prompt layers for ``image``, created (or recreated in its frame) if needed."""
        points = L.get_or_create_points(self.viewer, image)
        boxes = L.get_or_create_boxes(self.viewer, image)
        for old, new in ((self._points, points), (self._boxes, boxes)):
            if old is not new:
                new.events.data.connect(self._on_edit)
                self._keys.bind(new)
        self._points, self._boxes = points, boxes
        return points, boxes

    def preview(self, image: Image, create: bool = True) -> Labels | None:
        """The "EdgeSAM preview" labels layer of ``image``'s shape; without ``create``, None
        unless it exists with that shape."""
        if not create:
            layer = self.viewer.layers[names.PREVIEW_LAYER] if names.PREVIEW_LAYER in self.viewer.layers else None
            ok = isinstance(layer, Labels) and tuple(layer.data.shape) == L.spatial_shape(image)
            return layer if ok else None
        layer = L.get_or_create_labels(self.viewer, names.PREVIEW_LAYER, image, np.uint16)
        L.style_preview(layer)
        self._keys.bind(layer)
        return layer

    def remove_prompts(self) -> None:
        """Remove every point and box from the prompt layers handed out so far."""
        if self._points is not None and len(self._points.data):
            self._points.data = np.empty((0, self._points.ndim))
        if self._boxes is not None and self._boxes.nshapes:
            self._boxes.data = []

    def select_tool(self, layer: Points | Shapes, mode: str) -> None:
        """Make ``layer`` active with its ``mode`` tool (the next click or drag uses it)."""
        self.viewer.layers.selection.active = layer
        layer.mode = mode
