"""The model chooser: registered model or custom file, backend, device, and a Load button.
The chosen model is loaded with the granularity prior stored beside it by
:func:`napari_edgesam.inference.loading.with_prior.load_predictor` (Qt-free; re-exported here, see model_loading.py)."""

from __future__ import annotations

import logging

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from ..inference.loading.api import why_model
from ..inference.loading.with_prior import NO_PRIOR_REASON, load_predictor  # noqa: F401 - model_loading imports it from here
from . import names
from .text import default_model, wrapping
from .workers import start_worker

logger = logging.getLogger(__name__)


def registered_models() -> list[str]:
    """Names of the registered models (no network)."""
    from ..inference.loading.api import list_models

    return [m["name"] for m in list_models()]


def cached_models() -> list[str]:
    """Registered models whose weights are already on this machine (no network); the shipped
    fallback models (e.g. ``edgesam-nuclei``) come after downloaded or user-registered ones."""
    from ..inference.loading.api import list_models
    from ..models import PACKAGED

    out = []
    for m in list_models():
        files = m["files"]
        torch_ready = files.get("pth", {}).get("cached", False)
        onnx_ready = all(files.get(k, {}).get("cached", False) for k in ("onnx_encoder", "onnx_decoder"))
        if torch_ready or onnx_ready:
            out.append(m["name"])
    return sorted(out, key=lambda name: name in PACKAGED)


def available_devices() -> list[str]:
    """``auto`` and ``cpu``, plus ``cuda`` / ``mps`` when torch sees them (imports torch)."""
    from ..inference.loading.api import torch_available

    devices = ["auto", "cpu"]
    if not torch_available():
        return devices
    import torch

    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


class ModelPanel(QWidget):
    """Emits ``load_requested(name_or_path, backend, device)`` when Load is pressed, and
    ``autoload_requested(name)`` from :meth:`autoload` when a registered model is cached."""

    load_requested = Signal(str, str, str)
    autoload_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = QComboBox()
        try:
            self.model.addItems(registered_models())
        except Exception as err:  # a broken registry must not break the widget
            logger.warning("could not list the registered models: %s", err)
        self.model.addItem(names.CUSTOM_MODEL_CHOICE)
        self.path = QLineEdit()
        self.path.setPlaceholderText("path to a .pth or encoder .onnx file")
        self.browse = QPushButton("...")
        self.browse.setMaximumWidth(30)
        path_row = QWidget()
        row = QHBoxLayout(path_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.path)
        row.addWidget(self.browse)
        self._path_row = path_row
        self.backend = QComboBox()
        self.backend.addItems(names.BACKEND_CHOICES)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu"])
        self.load = QPushButton("Load model")
        self.message = wrapping(QLabel("no model loaded"))
        self.message.setTextInteractionFlags(self.message.textInteractionFlags() | _selectable())

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Model", self.model)
        self._path_label = QLabel("File")
        form.addRow(self._path_label, path_row)
        form.addRow("Backend", self.backend)
        form.addRow("Device", self.device)
        form.addRow(self.load)
        form.addRow(self.message)
        for widget, tip in ((self.model, "model"), (self.backend, "backend"), (self.device, "device"),
                            (self.load, "load")):
            widget.setToolTip(names.TOOLTIPS[tip])

        self.model.currentTextChanged.connect(self._model_changed)
        self.browse.clicked.connect(self._browse)
        self.load.clicked.connect(self._load_clicked)
        self._model_changed(self.model.currentText())
        start_worker(available_devices, on_result=self._set_devices, context="EdgeSAM device check")

    def autoload(self) -> str | None:
        """Select the first registered model whose weights are cached and ask to load it
        (never downloads). Returns its name, or None."""
        try:
            cached = cached_models()  # downloaded or registered before shipped ones
            name, why = (cached[0], why_model(cached[0])) if cached else default_model()
        except Exception as err:
            logger.warning("could not check the model cache: %s", err)
            return None
        if name is None:
            self.message.setText(f"no model loaded: choose one and press Load model (registered models "
                                 f"are downloaded once); {why}")
            return None
        self.model.setCurrentText(name)
        self.message.setText(f"loading {why}...")
        logger.info("loading the default model %s", why)
        self.autoload_requested.emit(name)
        return name

    def refresh_models(self, select: str | None = None) -> None:
        """List the registered models again (e.g. after an adapted model was saved) and select
        ``select`` if given and listed; the current choice is kept otherwise."""
        current = select or self.model.currentText()
        try:
            models = registered_models()
        except Exception as err:  # a broken registry must not break the widget
            logger.warning("could not list the registered models: %s", err)
            return
        self.model.blockSignals(True)
        try:
            self.model.clear()
            self.model.addItems(models)
            self.model.addItem(names.CUSTOM_MODEL_CHOICE)
        finally:
            self.model.blockSignals(False)
        self.model.setCurrentText(current if current in models or current == names.CUSTOM_MODEL_CHOICE
                                  else self.model.itemText(0))
        self._model_changed(self.model.currentText())

    def _set_devices(self, devices: list[str]) -> None:
        current = self.device.currentText()
        self.device.clear()
        self.device.addItems(devices)
        if current in devices:
            self.device.setCurrentText(current)

    def _model_changed(self, text: str) -> None:
        custom = text == names.CUSTOM_MODEL_CHOICE
        self._path_row.setVisible(custom)
        self._path_label.setVisible(custom)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "EdgeSAM model file", "", "Models (*.pth *.pt *.onnx)")
        if path:
            self.path.setText(path)

    def choice(self) -> str:
        """The registered name or the custom path (ValueError if the path is empty)."""
        if self.model.currentText() != names.CUSTOM_MODEL_CHOICE:
            return self.model.currentText()
        path = self.path.text().strip()
        if not path:
            raise ValueError("choose a .pth or .onnx file for the custom model")
        return path

    def _load_clicked(self) -> None:
        try:
            choice = self.choice()
        except ValueError as err:
            self.message.setText(str(err))
            return
        self.load_requested.emit(choice, self.backend.currentText(), self.device.currentText())

    def set_message(self, text: str) -> None:
        self.message.setText(text)


def _selectable():
    from qtpy.QtCore import Qt

    return Qt.TextInteractionFlag.TextSelectableByMouse
