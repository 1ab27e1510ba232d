"""The "Adapt to my annotations" panel of the interactive widget.

It adapts the model in use to the objects committed so far (and, if ticked, to a labels layer
of the current image), shows progress and the remaining time, and adopts the adapted model only
when it is better on held-out objects; Revert goes back to the base model, Save keeps the
adapted one as a named model, Export writes the annotations as a training folder. The work runs
in :mod:`~napari_edgesam._napari.adapt_job` (Qt-free) and :mod:`~napari_edgesam._napari.adapt_runner`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from napari.layers import Labels
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ..interactive.annotations import export_annotations
from ..interactive.commit_log import annotated_images
from . import names
from .adapt_job import (
    DEFAULT_PARAMS,
    DEFAULT_SECONDS,
    MIN_OBJECTS,
    AdaptJob,
    AdaptOutcome,
    AdaptRequest,
    ModelSwap,
    adapt_api,
    too_few_message,
    torch_missing_reason,
)
from .adapt_runner import AdaptRunner
from .annotation_capture import labels_planes
from .rows import row
from .text import one_line, wrapping
from .workers import start_worker

logger = logging.getLogger(__name__)

_NO_LABELS = "(no labels layer)"
#: Progress bar resolution.
_STEPS = 1000


class AdaptPanel(QWidget):
    """Adapt / Cancel / Revert / Save / Export for an
    :class:`~napari_edgesam._napari.controller.InteractiveController`.

    Args:
        controller: the controller whose committed objects and predictor are used.
        model_panel: the widget's model list (a saved model is added and selected there), or None.
        api: the adaptation module (default :mod:`napari_edgesam.training.adapt`; tests pass another).
    """

    def __init__(self, controller, model_panel=None, api=None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.viewer = controller.viewer
        self.model_panel = model_panel
        self._api = api
        self.swap = ModelSwap()
        self.runner = AdaptRunner(self)
        self.last_outcome: AdaptOutcome | None = None
        #: What runs each adaptation step (None: the adaptation's own thread; see AdaptJob).
        self.step_runner = None
        self._commits_since = 0
        self._build()
        self._connect()
        self.disabled_reason = "" if api is not None else torch_missing_reason()
        self._set_available(not self.disabled_reason)
        self._refresh_labels_choices()
        self._show_counts()

    # -- layout ------------------------------------------------------------------------------
    def _build(self) -> None:
        self.counts = wrapping(QLabel(""))
        self.use_labels = QCheckBox("also learn from")
        self.labels_layer = QComboBox()
        self.labels_layer.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.labels_layer.setMinimumContentsLength(8)
        self.seconds = QSpinBox()
        self.seconds.setRange(5, 3600)
        self.seconds.setValue(int(DEFAULT_SECONDS))
        self.seconds.setSuffix(" s")
        self.adapt = QPushButton("Adapt to my annotations")
        self.cancel = QPushButton("Cancel")
        self.cancel.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, _STEPS)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.result = wrapping(QLabel(""))
        self.revert = QPushButton("Revert to base model")
        self.revert.setEnabled(False)
        self.name = QLineEdit()
        self.name.setPlaceholderText("name of the adapted model")
        self.save = QPushButton("Save as named model...")
        self.save.setEnabled(False)
        self.export = QPushButton("Export annotations...")
        self.auto = QCheckBox("adapt after every")
        self.auto_every = QSpinBox()
        self.auto_every.setRange(1, 1000)
        self.auto_every.setValue(10)
        self.auto_every.setSuffix(" commits")
        tips = {
            self.use_labels: "Also adapt to every object of this labels layer (e.g. Cellpose output) on the "
                             "current image (every plane of a stack).",
            self.seconds: "Time budget of one adaptation.",
            self.adapt: "Fine-tune the model's decoder on your committed objects (a part is held out: the "
                        "adapted model is used only if it is better on them). Clicks keep working meanwhile.",
            self.cancel: "Stop adapting; the model stays as it is.",
            self.revert: "Go back to the model you loaded.",
            self.save: "Save the adapted model (weights + card) into the model cache under this name: it then "
                       "appears in every model list.",
            self.export: "Write the images, committed labels and prompts of this session as a training folder "
                         "(for 'napari-edgesam train finetune' / 'train adapt').",
            self.auto: "Adapt in the background after every N commits.",
        }
        for widget, tip in tips.items():
            widget.setToolTip(tip)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow(self.counts)
        form.addRow(row(self.use_labels, self.labels_layer))
        form.addRow("Time budget", self.seconds)
        form.addRow(row(self.adapt, self.cancel))
        form.addRow(self.progress)
        form.addRow(self.result)
        form.addRow(self.revert)
        form.addRow(row(self.name, self.save))
        form.addRow(self.export)
        form.addRow(row(self.auto, self.auto_every))

    def _connect(self) -> None:
        c = self.controller
        self.adapt.clicked.connect(lambda: self.start())
        self.cancel.clicked.connect(self.cancel_adaptation)
        self.revert.clicked.connect(self.revert_model)
        self.save.clicked.connect(lambda: self.save_model(self.name.text()))
        self.export.clicked.connect(self._export_clicked)
        self.runner.progressed.connect(self._progressed)
        self.runner.finished.connect(self._finished)
        c.committed.connect(self._committed)
        c.model_changed.connect(self._model_changed)
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved):
            ev.connect(self._refresh_labels_choices)

    def _set_available(self, available: bool) -> None:
        """Enable the panel, or disable it with the reason as its tooltip (torch missing)."""
        for w in (self.use_labels, self.labels_layer, self.seconds, self.adapt, self.name,
                  self.auto, self.auto_every):  # the export needs no torch
            w.setEnabled(available)
            if not available:
                w.setToolTip(self.disabled_reason)
        if not available:
            self.setToolTip(self.disabled_reason)
            self.result.setText(self.disabled_reason)

    # -- state shown -------------------------------------------------------------------------
    def _show_counts(self) -> None:
        snap = self.controller.annotations.snapshot()
        self.counts.setText(f"{snap.n_objects} committed object(s) on {snap.n_images} plane(s)")

    def _labels_layers(self) -> list[Labels]:
        return [layer for layer in self.viewer.layers
                if isinstance(layer, Labels) and layer.name != names.PREVIEW_LAYER]

    def _refresh_labels_choices(self, event=None) -> None:
        current = self.labels_layer.currentText()
        self.labels_layer.clear()
        layers = [layer.name for layer in self._labels_layers()]
        self.labels_layer.addItems(layers or [_NO_LABELS])
        if current in layers:
            self.labels_layer.setCurrentText(current)

    def _committed(self, record) -> None:
        self._show_counts()
        self._commits_since += 1
        if (self.auto.isChecked() and self._commits_since >= self.auto_every.value() and not self.runner.busy
                and not self.disabled_reason and len(self.controller.annotations) >= MIN_OBJECTS):
            self.start(background=True)

    def _model_changed(self, _name: str) -> None:
        self.swap.model_loaded(self.controller.predictor)
        self.revert.setEnabled(self.swap.using_adapted)
        self.save.setEnabled(self.swap.result is not None and not self.disabled_reason)
        self._show_counts()

    # -- adapt -------------------------------------------------------------------------------
    def request(self) -> AdaptRequest:
        """What :meth:`start` adapts to; ValueError (one line) when it cannot."""
        c = self.controller
        if c.predictor is None:
            raise ValueError("load a model first")
        labels = ()
        if self.use_labels.isChecked():
            layers = {layer.name: layer for layer in self._labels_layers()}
            layer = layers.get(self.labels_layer.currentText())
            if layer is None:
                raise ValueError("no labels layer to learn from: add one or untick 'also learn from'")
            view = c.current_view()
            if view is None:
                raise ValueError("choose an image layer (in a 2D view) for the labels layer")
            labels = tuple(labels_planes(view, layer.data, c.embeddings))
        snap = c.annotations.snapshot()
        if not labels:
            message = too_few_message(snap.n_objects)
            if message:
                raise ValueError(message)
        return AdaptRequest(snap, labels, max_seconds=float(self.seconds.value()), params=DEFAULT_PARAMS,
                            embedding_of=self._embedding_lookup())

    def _embedding_lookup(self):
        """``image_key -> cached embedding or None``, for keys of the model in use's encoder only
        (image keys are embedding cache keys, which start with the encoder's model name)."""
        service = self.controller.embeddings
        if service.embedder is None:
            return None
        prefix, cache = service.embedder.model_name + "|", service.cache
        return lambda key: cache.get(key) if key.startswith(prefix) else None

    def start(self, background: bool = False) -> bool:
        """Start adapting the model in use (False, with the reason shown, if it cannot start)."""
        if self.disabled_reason:
            self.result.setText(self.disabled_reason)
            return False
        if self.runner.busy:
            return False
        try:
            request = self.request()
        except ValueError as err:
            self.result.setText(one_line(err))
            return False
        self._commits_since = 0
        job = AdaptJob(self.controller.predictor, request, api=self._api, run_step=self.step_runner)
        self.runner.start(job)
        self.adapt.setEnabled(False)
        self.cancel.setEnabled(True)
        self.progress.setValue(0)
        self.progress.setFormat("preparing...")
        where = " in the background" if background else ""
        self.result.setText(f"adapting{where} to {request.n_committed} committed object(s)"
                            + (f" and {len(request.labels)} labels plane(s)" if request.labels else "")
                            + "; clicks keep working")
        return True

    def cancel_adaptation(self) -> None:
        if self.runner.busy:
            self.runner.cancel()
            self.result.setText("cancelling...")

    def _progressed(self, fraction: float, eta: float) -> None:
        self.progress.setValue(int(round(min(max(fraction, 0.0), 1.0) * _STEPS)))
        self.progress.setFormat(f"%p% - {max(eta, 0.0):.0f} s left")

    def _finished(self, job: AdaptJob, outcome: AdaptOutcome) -> None:
        self.last_outcome = outcome
        self.adapt.setEnabled(not self.disabled_reason)
        self.cancel.setEnabled(False)
        self.progress.setFormat("")
        self.progress.setValue(_STEPS if outcome.result is not None else 0)
        c = self.controller
        if c.closed:
            return
        message = outcome.message
        if outcome.accepted:
            if c.predictor is not job.predictor:
                message = "the model changed while adapting: the adapted model was dropped"
            else:
                predictor = self.swap.adopt(outcome.result)
                c.set_predictor(predictor, same_encoder=job.request.params in ("decoder", "head"))
                if not self.name.text().strip():
                    self.name.setText(_default_name(predictor, job.predictor))
        self.result.setText(message)
        c.status.emit(message)

    def revert_model(self) -> None:
        """Use the base model again (one click)."""
        if not self.swap.using_adapted:
            return
        base = self.swap.revert()
        self.controller.set_predictor(base, same_encoder=True)
        self.result.setText(f"back to the base model {getattr(base, 'model_name', '')}".rstrip())

    # -- save and export ---------------------------------------------------------------------
    def save_model(self, name: str):
        """Save the last adapted model as ``name`` in the model cache (in a worker); it is then
        added to the model list and selected. Returns the worker (None if nothing to save)."""
        name = name.strip()
        if self.swap.result is None:
            self.result.setText("nothing to save: adapt first (only an adaptation that passed the held-out check is kept)")
            return None
        if not name:
            self.result.setText("type a name for the adapted model first")
            return None
        api = self._api or adapt_api()
        self.save.setEnabled(False)
        self.result.setText(f"saving {name}...")

        def saved(path) -> None:
            self.save.setEnabled(True)
            self.result.setText(f"saved as '{name}' ({path}): it is in the model list")
            if self.model_panel is not None:
                self.model_panel.refresh_models(select=name)

        def failed(err: BaseException) -> None:
            self.save.setEnabled(True)
            self.result.setText(f"could not save '{name}': {one_line(err)}")

        return start_worker(api.save_adapted, self.swap.result, name, on_result=saved, on_error=failed)

    def _export_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export annotations into a folder")
        if folder:
            self.export_to(folder)

    def export_to(self, folder: str | Path):
        """Write this session's images (as the model saw them), committed labels and prompts into
        ``folder`` as a training folder (:func:`~napari_edgesam.interactive.annotations.export_annotations`;
        in a worker). Returns the worker (None if nothing is committed)."""
        snap = self.controller.annotations.snapshot()
        if not snap.n_objects:
            self.result.setText("nothing to export: commit objects first")
            return None
        self.result.setText(f"exporting {snap.n_objects} object(s) to {folder}...")

        def job():
            return export_annotations(folder, annotated_images(snap))

        def done(path) -> None:
            self.result.setText(f"exported {snap.n_objects} object(s) on {snap.n_images} plane(s) to {path or folder}")

        def failed(err: BaseException) -> None:
            self.result.setText(f"could not export the annotations: {one_line(err)}")

        return start_worker(job, on_result=done, on_error=failed)

    def close_panel(self) -> None:
        """Stop a running adaptation (widget closing)."""
        self.runner.cancel()
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved):
            try:
                ev.disconnect(self._refresh_labels_choices)
            except (TypeError, ValueError, RuntimeError):
                pass


def _default_name(adapted, base) -> str:
    name = str(getattr(base, "model_name", "model") or "model")
    return f"{name}-adapted"
