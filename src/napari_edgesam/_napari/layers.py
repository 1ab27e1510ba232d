"""Get-or-create the plugin's napari layers, and read prompts out of them.

This is the only place that converts napari's ``(row, col)`` data coordinates into the core's
``(x, y)`` pixel coordinates. Prompt layers are created with the image layer's ``ndim`` and
transform, so their data coordinates are the image's pixel indices.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Layer, Points, Shapes

from ..coords import rowcol_to_xy
from ..interactive.planes import Plane
from . import names
from .embedding import ImageView


# -- coordinates -----------------------------------------------------------------------------
def rows_cols_to_xy(rows_cols: np.ndarray) -> np.ndarray:
    """``N x 2`` (row, col) -> ``N x 2`` (x, y) float32 (via the core's one conversion)."""
    return rowcol_to_xy(np.asarray(rows_cols, np.float32).reshape(-1, 2)).astype(np.float32)


def xy_to_rows_cols(xy: np.ndarray) -> np.ndarray:
    """``N x 2`` (x, y) -> ``N x 2`` (row, col) float32."""
    return rows_cols_to_xy(xy)


def rectangle_to_box(rows_cols: np.ndarray) -> np.ndarray:
    """Corners of a napari rectangle (``4 x 2`` (row, col)) -> box ``(x0, y0, x1, y1)``."""
    xy = rows_cols_to_xy(rows_cols)
    return np.array([*xy.min(0), *xy.max(0)], np.float32)


def box_to_rectangle(box: np.ndarray) -> np.ndarray:
    """Box ``(x0, y0, x1, y1)`` -> ``4 x 2`` (row, col) corners of a napari rectangle."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], np.float32)


# -- reading the image -----------------------------------------------------------------------
def image_data(layer: Image):
    """The full-resolution data of an image layer (level 0 of a multiscale pyramid)."""
    return layer.data[0] if layer.multiscale else layer.data


def spatial_shape(layer: Image) -> tuple[int, ...]:
    """Shape of the layer's data without an RGB axis."""
    shape = tuple(int(s) for s in image_data(layer).shape)
    return shape[:-1] if layer.rgb else shape


def current_position(viewer, layer: Layer) -> tuple[float, ...]:
    """The viewer's current point in ``layer``'s data coordinates."""
    return tuple(float(v) for v in layer.world_to_data(viewer.dims.point))


def displayed_axes(viewer, layer: Layer) -> tuple[int, int]:
    """The layer's data axes shown as (rows, cols) in a 2D view."""
    offset = viewer.dims.ndim - layer.ndim
    rows, cols = viewer.dims.displayed[-2:]
    return rows - offset, cols - offset


def current_plane(viewer, layer: Image, channel_axis: int | None = None) -> Plane:
    """The plane of ``layer`` that the viewer shows."""
    return Plane.from_view(spatial_shape(layer), displayed_axes(viewer, layer),
                           current_position(viewer, layer), channel_axis)


def image_view(layer: Image, plane: Plane, channel: int | None = None) -> ImageView:
    """What the encoder should see of ``plane``: the layer's data normalised with its current
    contrast limits and gamma; channels (RGB or a channel axis) last, ``channel`` or a composite."""
    norm = {"contrast_limits": tuple(float(v) for v in layer.contrast_limits), "gamma": float(layer.gamma)}
    extra: tuple[int, ...] = ()
    if layer.rgb:
        extra = (int(image_data(layer).shape[-1]),)
    elif plane.channel_axis is not None:
        extra = (plane.shape[plane.channel_axis],)
    if extra:
        norm["channel_axis"] = -1
        norm["channel"] = channel
    return ImageView(image_data(layer), plane, norm, extra)


# -- prompt layers ---------------------------------------------------------------------------
def _same_frame(layer: Layer, like: Layer) -> bool:
    return layer.ndim == like.ndim and np.allclose(layer.scale, like.scale) and np.allclose(layer.translate, like.translate)


def _find(viewer, name: str, kind: type) -> Layer | None:
    layer = viewer.layers[name] if name in viewer.layers else None
    return layer if isinstance(layer, kind) else None


def _replace(viewer, layer: Layer | None) -> None:
    if layer is not None:
        viewer.layers.remove(layer)


def _add(viewer, layer: Layer, activate: bool) -> None:
    """Add ``layer``; unless ``activate``, the active layer stays what it was (so a new
    preview layer does not turn the next click into a paint stroke)."""
    previous = viewer.layers.selection.active
    viewer.add_layer(layer)
    if not activate and previous is not None and previous in viewer.layers:
        viewer.layers.selection.active = previous


def get_or_create_points(viewer, like: Image) -> Points:
    """The "EdgeSAM points" layer in ``like``'s frame (created, or recreated if its frame differs)."""
    layer = _find(viewer, names.POINTS_LAYER, Points)
    if layer is not None and _same_frame(layer, like) and names.POSITIVE_FEATURE in layer.features:
        return layer
    _replace(viewer, layer)
    layer = Points(
        np.empty((0, like.ndim)), ndim=like.ndim, name=names.POINTS_LAYER,
        scale=like.scale, translate=like.translate,
        features=pd.DataFrame({names.POSITIVE_FEATURE: pd.Series([], dtype=bool)}),
        face_color=names.POSITIVE_FEATURE,
        face_color_cycle={True: names.POSITIVE_COLOR, False: names.NEGATIVE_COLOR},
        border_color="white", size=names.POINT_SIZE,
    )
    layer.feature_defaults = {names.POSITIVE_FEATURE: True}
    _add(viewer, layer, activate=True)
    layer.mode = "add"  # ready to click
    return layer


def get_or_create_boxes(viewer, like: Image) -> Shapes:
    """The "EdgeSAM boxes" layer (rectangles) in ``like``'s frame."""
    layer = _find(viewer, names.BOXES_LAYER, Shapes)
    if layer is not None and _same_frame(layer, like):
        return layer
    _replace(viewer, layer)
    layer = Shapes(
        ndim=like.ndim, name=names.BOXES_LAYER, scale=like.scale, translate=like.translate,
        shape_type="rectangle", edge_color=names.BOX_EDGE_COLOR, face_color="transparent",
        edge_width=2,
    )
    _add(viewer, layer, activate=False)
    layer.mode = "add_rectangle"  # ready to drag a box once selected
    return layer


def get_or_create_labels(viewer, name: str, like: Image, dtype=np.uint32) -> Labels:
    """A labels layer called ``name`` with ``like``'s spatial shape and frame."""
    shape = spatial_shape(like)
    layer = _find(viewer, name, Labels)
    if layer is not None and tuple(layer.data.shape) == shape and _same_frame(layer, like):
        return layer
    _replace(viewer, layer)
    layer = Labels(np.zeros(shape, dtype), name=name, scale=like.scale, translate=like.translate)
    _add(viewer, layer, activate=False)
    return layer


def style_preview(layer: Labels) -> None:
    """Draw the preview as outlines in one colour (:data:`~names.PREVIEW_COLOR`), unlike the
    filled, multi-coloured committed objects."""
    from napari.utils.colormaps import DirectLabelColormap

    if layer.contour != names.PREVIEW_CONTOUR:
        layer.contour = names.PREVIEW_CONTOUR
    if not isinstance(layer.colormap, DirectLabelColormap) or layer.metadata.get("edgesam_preview_style") != 1:
        layer.colormap = DirectLabelColormap(color_dict={None: names.PREVIEW_COLOR, 0: "transparent"})
        layer.metadata["edgesam_preview_style"] = 1


def set_positive(points: Points, positive: bool) -> None:
    """Make new points positive (True) or negative (False)."""
    points.feature_defaults = {names.POSITIVE_FEATURE: bool(positive)}


def is_positive(points: Points) -> bool:
    """Whether new points are positive."""
    return bool(points.feature_defaults[names.POSITIVE_FEATURE].iloc[0])


def add_point(points: Points, plane: Plane, xy: tuple[float, float], positive: bool = True) -> None:
    """Add a prompt point at ``(x, y)`` of ``plane`` (API for scripts, tests and the demo)."""
    coords = np.array(plane.position, float)
    coords[list(plane.displayed)] = xy_to_rows_cols(np.asarray(xy))[0]
    previous = is_positive(points)
    set_positive(points, positive)
    points.add(coords[None])
    set_positive(points, previous)


def add_box(shapes: Shapes, plane: Plane, box: tuple[float, float, float, float]) -> None:
    """Add a rectangle for the box ``(x0, y0, x1, y1)`` on ``plane``."""
    corners = np.tile(np.asarray(plane.position, float), (4, 1))
    corners[:, list(plane.displayed)] = box_to_rectangle(np.asarray(box))
    shapes.add_rectangles(corners)


# -- reading prompts -------------------------------------------------------------------------
def points_on_plane(points: Points, plane: Plane) -> tuple[np.ndarray, np.ndarray]:
    """Prompt points on ``plane``: ``N x 2`` (x, y) float32 and ``N`` labels (1 / 0)."""
    data = np.asarray(points.data)
    if data.size == 0:
        return np.empty((0, 2), np.float32), np.empty(0, np.int64)
    keep = plane.contains(data)
    positive = np.asarray(points.features[names.POSITIVE_FEATURE], bool) if len(points.features) == len(data) \
        else np.ones(len(data), bool)
    return rows_cols_to_xy(plane.rows_cols(data[keep])), positive[keep].astype(np.int64)


def boxes_on_plane(shapes: Shapes, plane: Plane) -> list[np.ndarray]:
    """Rectangles (and any other shape, by its bounding box) on ``plane`` as ``(x0, y0, x1, y1)``,
    clipped to the image: a box drawn past the image's edge means "up to the edge" (one that
    lies wholly outside the image is left out)."""
    h, w = plane.size
    boxes = []
    for vertices in shapes.data:
        vertices = np.asarray(vertices)
        if len(vertices) and plane.contains(vertices).all():
            box = rectangle_to_box(plane.rows_cols(vertices))
            clipped = np.clip(box, 0, np.float32([w, h, w, h])).astype(box.dtype)
            if clipped[2] > clipped[0] and clipped[3] > clipped[1]:
                boxes.append(clipped)
    return boxes


def prompted_positions(points: Points, shapes: Shapes, plane: Plane, axis: int) -> set[int]:
    """Positions along ``axis`` holding prompts, in ``plane``'s other slider positions."""
    found: set[int] = set()
    coords = [np.asarray(points.data)] + [np.asarray(v) for v in shapes.data]
    for c in coords:
        if c.size == 0:
            continue
        for z in {int(round(v)) for v in c[:, axis]}:
            if 0 <= z < plane.shape[axis] and plane.at(axis, z).contains(c).any():
                found.add(z)
    return found
