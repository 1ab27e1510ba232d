"""Automatic segmentation widget: every object of an image (or of the visible area, or of a
box), in a background thread with progress and cancel; the result goes into a labels layer.

Two modes: a grid of point prompts (any model), or the boxes of the model's granularity prior
("prior boxes": offered only when the model has a prior beside its weights).

The widget only reads layers into an :class:`AutomaticRequest` (a plain object), runs
:func:`run_request` (no Qt) in a worker thread and writes the labels back on the main thread.
The mode choice (:class:`PriorModeChoice`) is shared with the batch widget.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..inference.automatic.boxes import BoxAutomaticConfig
from ..inference.automatic.common import Cancelled
from ..inference.automatic.grid import AutomaticConfig
from ..inference.automatic.modes import AnyAutomaticConfig, segment_automatic_any
from ..inference.loading.model_prior import find_model_prior, missing_prior_message
from .layers import rectangle_to_box, rows_cols_to_xy
from .text import default_model, one_line, wrapping
from .workers import CancellableRunner

logger = logging.getLogger(__name__)

LABELS_LAYER = "EdgeSAM automatic"
REGION_WHOLE, REGION_VISIBLE, REGION_BOX = "whole image", "visible area", "box (Shapes layer)"
STACK_SLICE, STACK_ALL = "current slice", "all slices (merged in 3D)"
MODE_GRID, MODE_BOXES = "point grid", "prior boxes"
MODE_TOOLTIP = ("point grid: a grid of point prompts, works with any model; prior boxes: the boxes "
                "proposed by the model's granularity prior (box head), far fewer decoder calls")


MODEL_TOOLTIP = ("model name or .pth/.onnx path; by default the best model on this machine (official "
                 "weights in the cache, else the shipped edgesam-nuclei); a registered name that is not "
                 "cached is downloaded when you press Run")


def model_status(model: str | None, why: str) -> str:
    """The status line of a widget that loads its model by name: which one and why."""
    if model is None:
        return f"no model on this machine: {why}"
    return f"model {why}"


def failure_message(err: BaseException, what: str) -> str:
    """One line for a failed run (no traceback in the log unless it is a bug)."""
    from ..inference.loading.weights import WeightFileError, WeightsUnavailableError

    if isinstance(err, (WeightsUnavailableError, WeightFileError, ValueError, OSError, RuntimeError)):
        logger.warning("%s failed: %s", what, one_line(err))
        logger.debug("%s failed", what, exc_info=err)
    else:  # unexpected: keep the traceback for the bug report
        logger.error("%s failed", what, exc_info=err)
    return one_line(err)


# -- the mode choice (shared with the batch widget) ----------------------------------------------
def prior_available(predictor, model: str) -> bool:
    """Whether prior-box mode can run: the given predictor carries a prior, or (no predictor)
    the named model has a prior beside its weights."""
    if predictor is not None:
        return getattr(predictor, "prior", None) is not None
    return find_model_prior(model) is not None


class PriorModeChoice:
    """Keeps the :data:`MODE_BOXES` entry of a mode combo box in step with the model: enabled
    only when the model (or the widget's injected predictor) has a granularity prior; otherwise
    disabled, with a tooltip saying how to get one, and the choice falls back to :data:`MODE_GRID`.
    Until the user picks a mode, a model with a prior gets :data:`MODE_BOXES` (on the held-out
    nuclei F1@0.5 0.838 against the grid's 0.351, in 0.99 s against 7.6 s:
    ``benchmarks/bench_prior_automatic.py``).

    Args:
        mode: the mode combo box (with a :data:`MODE_BOXES` entry).
        model: the model name/path line edit (re-checked when it changes).
        predictor: returns the injected predictor, or None when the model is loaded by name.
        on_update: called after every check (e.g. to update the visible parameters).
    """

    def __init__(self, mode: ComboBox, model: LineEdit, predictor, on_update=None) -> None:
        self.mode, self.model, self._predictor, self._on_update = mode, model, predictor, on_update
        self.user_chose = False  # the user picked a mode: it is not changed for them any more
        self._setting = False
        mode.changed.connect(self._chosen)
        model.changed.connect(self.update)
        self.update()

    def _chosen(self, _=None) -> None:
        if not self._setting:
            self.user_chose = True

    def _set(self, value: str) -> None:
        self._setting = True
        try:
            self.mode.value = value
        finally:
            self._setting = False

    @property
    def model_name(self) -> str:
        return self.model.value.strip() or "edgesam"

    @property
    def available(self) -> bool:
        return prior_available(self._predictor(), self.model_name)

    def check(self) -> None:
        """ValueError saying how to get a prior when prior boxes are chosen without one."""
        if self.mode.value == MODE_BOXES and not self.available:
            raise ValueError(missing_prior_message(self.model_name))

    def update(self, _=None) -> None:
        available = self.available
        index = self.mode.native.findText(MODE_BOXES)
        item = self.mode.native.model().item(index) if index >= 0 else None
        if item is not None:
            item.setEnabled(available)
            item.setToolTip("" if available else missing_prior_message(self.model_name))
        if not available and self.mode.value == MODE_BOXES:
            self._set(MODE_GRID)
        elif available and not self.user_chose and self.mode.value == MODE_GRID:
            self._set(MODE_BOXES)
        if self._on_update is not None:
            self._on_update()


@dataclass
class AutomaticRequest:
    """What one run needs, read from the viewer.

    ``image``: ``H x W [x C]`` (one plane) or ``Z x H x W [x C]`` when ``all_slices``;
    ``region``: ``(x0, y0, x1, y1)`` pixels or None; ``z``: the slice index for a single plane of
    a stack (where to write the result), else None.
    """

    image: np.ndarray
    config: AnyAutomaticConfig
    all_slices: bool = False
    region: tuple[float, float, float, float] | None = None
    z: int | None = None
    normalisation: dict = field(default_factory=dict)


def run_request(predictor, request: AutomaticRequest, progress=None, cancel=None) -> np.ndarray:
    """Labels for ``request`` in its config's mode: ``H x W`` for one plane, ``Z x H x W`` for
    all slices (prior boxes: ``predictor.prior`` must be set)."""
    return segment_automatic_any(predictor, request.image, request.config, stack=request.all_slices,
                                 region=request.region, normalisation=request.normalisation,
                                 progress=progress, cancel=cancel)


def region_from_corners(corners: np.ndarray) -> tuple[float, float, float, float] | None:
    """napari ``corner_pixels`` of the two displayed (row, column) axes -> ``(x0, y0, x1, y1)``."""
    c = np.asarray(corners, np.float64)[:, -2:]
    if not np.isfinite(c).all() or (c[1] - c[0]).min() < 2:
        return None
    (x0, y0), (x1, y1) = rows_cols_to_xy(c).astype(float)
    return x0, y0, x1 + 1, y1 + 1


def region_from_shape(vertices: np.ndarray) -> tuple[float, float, float, float]:
    """Bounding box ``(x0, y0, x1, y1)`` of a napari shape's ``N x D`` (…, row, column) vertices."""
    return tuple(float(v) for v in rectangle_to_box(np.asarray(vertices)[:, -2:]))


class AutomaticWidget(QWidget):
    """Automatic segmentation of the selected image layer.

    Args:
        napari_viewer: the viewer.
        predictor: use this predictor instead of loading the model named in the widget.
    """

    def __init__(self, napari_viewer, predictor=None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._predictor = predictor
        self._loaded: dict[tuple[str, bool], object] = {}

        d, b = AutomaticConfig(), BoxAutomaticConfig()
        self.image_layer = ComboBox(label="image", choices=self._image_layers, nullable=True)
        model, why = (None, "") if predictor is not None else default_model()
        self.model = LineEdit(label="model", value=model or "edgesam", tooltip=MODEL_TOOLTIP)
        self.mode = ComboBox(label="mode", choices=[MODE_GRID, MODE_BOXES], value=MODE_GRID, tooltip=MODE_TOOLTIP)
        self.points_per_side = SpinBox(label="points per side", value=d.points_per_side, min=1, max=256)
        self.score = FloatSpinBox(label="box score ≥", value=b.score_thresh, min=0, max=1, step=0.05,
                                  tooltip="minimum proposal score of a prior box")
        self.max_proposals = SpinBox(label="max boxes", value=b.max_proposals, min=1, max=100_000,
                                     tooltip="decode at most this many boxes per image (or tile)")
        self.zoom = CheckBox(label="zoom in on small objects", value=b.zoom,
                             tooltip="when the objects are small in the model's 1024 px view, segment the "
                                     "image again in zoomed tiles (more accurate masks, one encoder pass per tile)")
        self.stability = FloatSpinBox(label="stability ≥", value=d.stability_thresh, min=0, max=1, step=0.01)
        self.min_area = SpinBox(label="min area (px)", value=d.min_area, min=0, max=10**7)
        self.max_area = FloatSpinBox(label="max area (fraction)", value=d.max_area_fraction, min=0.01, max=1, step=0.05)
        self.nms = FloatSpinBox(label="NMS box IoU", value=d.nms_thresh, min=0.05, max=1, step=0.05)
        self.region = ComboBox(label="region", choices=[REGION_WHOLE, REGION_VISIBLE, REGION_BOX], value=REGION_WHOLE)
        self.box_layer = ComboBox(label="box layer", choices=self._shapes_layers, nullable=True)
        self.stack = ComboBox(label="stack", choices=[STACK_SLICE, STACK_ALL], value=STACK_SLICE)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value=model_status(model, why) if predictor is None else "")
        wrapping(self.status.native)
        self.form = Container(widgets=[
            self.image_layer, self.model, self.mode, self.points_per_side, self.score, self.max_proposals,
            self.zoom, self.stability, self.min_area, self.max_area, self.nms, self.region, self.box_layer, self.stack,
            Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
            self.progress, self.status,
        ])
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addStretch()
        self._runner = CancellableRunner(self.run_button, self.cancel_button, self.progress, self.status,
                                         on_result=self._write_result, on_error=self._on_error,
                                         on_progress=self._on_progress, parent=self)

        self.run_button.changed.connect(self.run)
        self.mode.changed.connect(self._on_mode)
        self.cancel_button.changed.connect(self.cancel)
        self.region.changed.connect(self._update_visibility)
        self.image_layer.changed.connect(self._update_visibility)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self._refresh_layers()
        self.mode_choice = PriorModeChoice(self.mode, self.model, lambda: self._predictor, self._update_visibility)

    @property
    def _worker(self):
        """The running worker, None when idle."""
        return self._runner.worker

    # -- mode ------------------------------------------------------------------------------------
    def _on_mode(self, _=None) -> None:
        default = BoxAutomaticConfig() if self.mode.value == MODE_BOXES else AutomaticConfig()
        self.stability.value = default.stability_thresh
        self._update_visibility()

    # -- layers ----------------------------------------------------------------------------
    def _image_layers(self, _=None) -> list:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _shapes_layers(self, _=None) -> list:
        from napari.layers import Shapes

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Shapes)]

    def _refresh_layers(self, _event=None) -> None:
        self.image_layer.reset_choices()
        self.box_layer.reset_choices()
        for combo in (self.image_layer, self.box_layer):
            choices = [c for c in combo.choices if c is not None]
            if combo.value is None and choices:
                combo.value = choices[-1]
        self._update_visibility()

    def _is_stack(self, layer) -> bool:
        return layer is not None and layer.ndim - (1 if layer.rgb else 0) >= 3

    def _update_visibility(self, _=None) -> None:
        self.box_layer.visible = self.region.value == REGION_BOX
        self.stack.visible = self._is_stack(self.image_layer.value)
        boxes = self.mode.value == MODE_BOXES
        for widget, visible in ((self.points_per_side, not boxes), (self.max_area, not boxes),
                                (self.score, boxes), (self.max_proposals, boxes), (self.zoom, boxes)):
            widget.visible = visible

    # -- the request -------------------------------------------------------------------------
    def config(self) -> AnyAutomaticConfig:
        """The selected mode's configuration (:class:`AutomaticConfig` or :class:`BoxAutomaticConfig`)."""
        shared = {"stability_thresh": float(self.stability.value), "min_area": int(self.min_area.value),
                  "hole_area": int(self.min_area.value), "nms_thresh": float(self.nms.value)}
        if self.mode.value == MODE_BOXES:
            return BoxAutomaticConfig(score_thresh=float(self.score.value),
                                      max_proposals=int(self.max_proposals.value), zoom=bool(self.zoom.value),
                                      **shared)
        return AutomaticConfig(points_per_side=int(self.points_per_side.value),
                               max_area_fraction=float(self.max_area.value), **shared)

    def request(self) -> AutomaticRequest:
        """Read the selected layer, region and parameters (main thread)."""
        layer = self.image_layer.value
        if layer is None:
            raise ValueError("choose an image layer first")
        self.mode_choice.check()
        stack = self._is_stack(layer)
        if stack and layer.ndim - (1 if layer.rgb else 0) > 3:
            raise ValueError(f"layer {layer.name!r} has {layer.ndim} dimensions; only 2D images and 3D stacks are supported")
        norm = {} if layer.rgb else {"contrast_limits": tuple(float(v) for v in layer.contrast_limits)}
        all_slices = stack and self.stack.value == STACK_ALL
        data = layer.data[0] if layer.multiscale else layer.data  # full resolution
        z = None
        if stack and not all_slices:
            z = int(round(float(layer.world_to_data(self.viewer.dims.point)[0])))
            z = min(max(z, 0), data.shape[0] - 1)
            image = np.asarray(data[z])
        else:
            image = np.asarray(data)
        return AutomaticRequest(image, self.config(), all_slices, self._region(layer), z, norm)

    def _region(self, layer):
        if self.region.value == REGION_VISIBLE:
            return region_from_corners(layer.corner_pixels)
        if self.region.value == REGION_BOX:
            shapes = self.box_layer.value
            if shapes is None or not len(shapes.data):
                raise ValueError("draw a box in a Shapes layer and choose it as the box layer")
            selected = sorted(shapes.selected_data) or [len(shapes.data) - 1]
            return region_from_shape(shapes.data[selected[0]])
        return None

    # -- running -----------------------------------------------------------------------------
    def _get_predictor(self, boxes: bool):
        """The injected predictor, or the named model (with its prior in prior-box mode),
        loaded once (worker thread)."""
        if self._predictor is not None:
            return self._predictor
        name = self.mode_choice.model_name
        if (name, boxes) not in self._loaded:
            from ..inference.loading.api import load_model

            predictor = load_model(name, prior="auto" if boxes else None)
            if boxes and predictor.prior is None:
                raise ValueError(missing_prior_message(name))
            self._loaded[(name, boxes)] = predictor
        return self._loaded[(name, boxes)]

    def run(self, _=None):
        """Start a run in a worker thread; returns the worker (or None if the input is invalid)."""
        return self._runner.start_from(self.request, self._task)

    def _task(self, request: AutomaticRequest):
        """The worker function for ``request``."""
        layer = self.image_layer.value
        boxes = isinstance(request.config, BoxAutomaticConfig)

        def work(relay, cancel):
            labels = run_request(self._get_predictor(boxes), request, relay.progress, cancel)
            return layer, request, labels

        return work

    def cancel(self, _=None) -> None:
        self._runner.cancel()

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = min(done, total)

    def _on_error(self, err: Exception) -> None:
        from napari.utils.notifications import show_error

        if isinstance(err, Cancelled):
            self.status.value = "cancelled"
            return
        message = failure_message(err, "automatic segmentation")
        self.status.value = f"failed: {message}"
        show_error(f"EdgeSAM automatic segmentation failed: {message}")

    def _write_result(self, result: tuple) -> None:
        """Put the labels of ``(image layer, request, labels)`` into the result layer: the whole
        plane/volume, or only the region (objects elsewhere are kept; new ids follow the
        existing ones)."""
        image_layer, request, labels = result
        data0 = image_layer.data[0] if image_layer.multiscale else image_layer.data
        shape = tuple(data0.shape[: image_layer.ndim])
        existing = self.viewer.layers[LABELS_LAYER] if LABELS_LAYER in self.viewer.layers else None
        if existing is not None and tuple(existing.data.shape) == shape:
            data = np.asarray(existing.data)
        else:
            if existing is not None:  # a result of another image: replace it
                self.viewer.layers.remove(existing)
                existing = None
            data = np.zeros(shape, np.uint32)
        target = data[request.z] if request.z is not None else data
        if request.region is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in request.region)
            window = (..., slice(max(y0, 0), y1), slice(max(x0, 0), x1))
            offset = int(data.max())
            target[window] = np.where(labels[window] > 0, labels[window] + offset, 0)
        else:
            target[...] = labels
        if existing is not None:
            existing.data = data
            existing.refresh()
        else:
            self.viewer.add_labels(data, name=LABELS_LAYER, scale=image_layer.scale[: len(shape)],
                                   translate=image_layer.translate[: len(shape)])
        n = int(len(np.unique(labels)) - (labels == 0).any())
        self.progress.value = self.progress.max
        self.status.value = f"{n} objects"
