"""The "Interactive segmentation" dock widget: controls for an :class:`InteractiveController`."""

from __future__ import annotations

import logging

from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from . import layers as L
from . import names
from .adapt_panel import AdaptPanel
from .controller import InteractiveController
from .model_panel import ModelPanel
from .rows import row
from .text import wrapping

logger = logging.getLogger(__name__)



def _close_with(widget: QWidget, controller: InteractiveController, viewer) -> None:
    """Close ``controller`` when ``widget`` or the viewer's main window is destroyed (closing
    the viewer deletes its dock widgets without a close event)."""

    def close(*_) -> None:
        controller.close()

    widget.destroyed.connect(close)
    window = getattr(getattr(viewer, "window", None), "_qt_window", None)
    if window is not None:
        window.destroyed.connect(close)


def _button(text: str, tip: str) -> QPushButton:
    b = QPushButton(text)
    b.setToolTip(names.TOOLTIPS[tip])
    return b


class InteractiveWidget(QWidget):
    """Point/box prompts -> live preview -> commit into a labels layer; 3D propagation.

    Args:
        napari_viewer: the viewer to work in.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        # no Qt parent: the controller must outlive the widget until its workers end (closing the
        # viewer deletes the widget; the controller closes itself then, see _close_with)
        self.controller = InteractiveController(napari_viewer)
        _close_with(self, self.controller, napari_viewer)
        self.model_panel = ModelPanel()
        self.adapt_panel = AdaptPanel(self.controller, self.model_panel)
        runner = self.adapt_panel.runner  # an adaptation in flight stops when the widget goes
        self.destroyed.connect(lambda *_: runner.cancel())
        self._updating = False
        self._build()
        self._connect()
        self._refresh_layer_choices()
        self.model_panel.autoload()  # a cached registered model starts without a click

    # -- public API --------------------------------------------------------------------------
    def set_predictor(self, predictor) -> None:
        """Use an already-built predictor (skips loading)."""
        self.controller.set_predictor(predictor)

    @property
    def predictor(self):
        return self.controller.predictor

    # -- layout ------------------------------------------------------------------------------
    def _build(self) -> None:
        self.image = QComboBox()
        self.channel_axis = QComboBox()
        self.channel = QComboBox()
        self.target = QComboBox()
        self.overwrite = QCheckBox("overwrite existing labels")
        self.autozoom = QCheckBox(names.AUTOZOOM_TEXT)
        self.autozoom.setChecked(True)
        self.autozoom.setToolTip(names.AUTOZOOM_TIP)
        self.whole_object = QCheckBox(names.WHOLE_OBJECT_TEXT)
        self.whole_object.setEnabled(False)
        self.whole_object.setToolTip(names.NO_MODEL_TIP)
        self.polarity = _button("New points: positive", "polarity")
        self.candidate = _button("Next candidate", "candidate")
        self.commit = _button("Commit", "commit")
        self.clear = _button("Clear", "clear")
        self.undo = _button("Undo commit", "undo")
        self.hint = wrapping(QLabel(names.PROMPT_HINT))
        self.add_points = _button("Add points", "add_points")
        self.draw_box = _button(f"Draw box ({names.shortcut_for('draw_box').key.replace('-', '+')})", "draw_box")
        self.status = wrapping(QLabel(""))
        self.embed_bar = QProgressBar()
        self.embed_bar.setVisible(False)
        self.embed_bar.setRange(0, 0)
        self.precompute = _button("Precompute volume", "precompute")
        self.cancel_precompute = _button("Cancel", "cancel_precompute")
        self.precompute_bar = QProgressBar()
        self.cache_dir = QLineEdit()
        self.cache_dir.setPlaceholderText("memory only")
        self.cache_browse = QPushButton("...")
        self.cache_browse.setMaximumWidth(30)
        self.direction = QComboBox()
        self.direction.addItems(list(names.DIRECTION_CHOICES))
        self.propagate = _button("Propagate", "propagate")
        self.cancel_propagation = _button("Cancel", "cancel_propagation")
        self.propagation_bar = QProgressBar()
        self.quality = wrapping(QLabel(""))
        self.shortcuts = wrapping(QLabel(names.shortcuts_text()))
        for combo in (self.image, self.channel_axis, self.channel, self.target, self.direction):
            # long layer names must not widen the dock
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(8)
        for w, tip in ((self.image, "image"), (self.channel_axis, "channel_axis"), (self.channel, "channel"),
                       (self.target, "target"), (self.overwrite, "overwrite"), (self.cache_dir, "cache_dir"),
                       (self.direction, "direction")):
            w.setToolTip(names.TOOLTIPS[tip])

        model_box = QGroupBox("Model")
        QVBoxLayout(model_box).addWidget(self.model_panel)
        seg_box = QGroupBox("Segment")
        form = QFormLayout(seg_box)
        form.addRow("Image", self.image)
        form.addRow("Channel axis", self.channel_axis)
        form.addRow("Channel", self.channel)
        form.addRow("Target", self.target)
        form.addRow(self.overwrite)
        form.addRow(self.autozoom)
        form.addRow(self.whole_object)
        form.addRow(self.hint)
        form.addRow(row(self.add_points, self.draw_box))
        form.addRow(row(self.polarity, self.candidate))
        form.addRow(row(self.commit, self.clear, self.undo))
        form.addRow(self.embed_bar)
        form.addRow(self.status)
        stack_box = QGroupBox("Stack")
        sform = QFormLayout(stack_box)
        sform.addRow(row(self.precompute, self.cancel_precompute))
        sform.addRow(self.precompute_bar)
        sform.addRow("Cache dir", row(self.cache_dir, self.cache_browse))
        sform.addRow("Direction", self.direction)
        sform.addRow(row(self.propagate, self.cancel_propagation))
        sform.addRow(self.propagation_bar)
        sform.addRow(self.quality)
        adapt_box = QGroupBox("Adapt to my annotations")
        QVBoxLayout(adapt_box).addWidget(self.adapt_panel)
        keys_box = QGroupBox("Shortcuts")
        QVBoxLayout(keys_box).addWidget(self.shortcuts)
        # The groups sit in a vertical scroll area: on a short screen the dock scrolls instead of
        # squeezing the wrapped labels (the prompt hint was cut to two half lines at 1000 px).
        inner = QWidget()
        layout = QVBoxLayout(inner)
        for box in (model_box, seg_box, stack_box, adapt_box, keys_box):
            layout.addWidget(box)
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(inner)
        # as wide as the content needs (the scroll area alone would let the dock cut it off)
        scroll.setMinimumWidth(inner.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 16)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

    def _connect(self) -> None:
        c = self.controller
        self.model_panel.load_requested.connect(c.load_model)
        self.model_panel.autoload_requested.connect(lambda name: c.load_model(name, only_if_none=True))
        c.model_changed.connect(self._model_ready)
        c.prior_changed.connect(self._show_prior)
        self.whole_object.toggled.connect(c.set_use_prior)
        self.autozoom.toggled.connect(c.set_autozoom)
        c.status.connect(self._status)
        c.polarity_changed.connect(self._show_polarity)
        c.target_changed.connect(self._target_created)
        c.embedding_busy.connect(self._embedding_busy)
        c.embeddings.precompute_progress.connect(self._bar(self.precompute_bar))
        c.propagation.progress.connect(self._bar(self.propagation_bar))
        c.propagation_summary.connect(self.quality.setText)
        self.polarity.clicked.connect(c.toggle_polarity)
        self.candidate.clicked.connect(c.cycle_candidate)
        self.commit.clicked.connect(c.commit)
        self.clear.clicked.connect(c.clear)
        self.add_points.clicked.connect(c.add_points)
        self.draw_box.clicked.connect(c.draw_box)
        self.undo.clicked.connect(c.undo_commit)
        self.precompute.clicked.connect(c.precompute)
        self.cancel_precompute.clicked.connect(c.embeddings.cancel_precompute)
        self.cache_dir.editingFinished.connect(lambda: c.embeddings.set_cache_dir(self.cache_dir.text().strip() or None))
        self.cache_browse.clicked.connect(self._browse_cache)
        self.propagate.clicked.connect(lambda: c.propagate(names.DIRECTION_CHOICES[self.direction.currentText()]))
        self.cancel_propagation.clicked.connect(c.propagation.cancel)
        self.overwrite.toggled.connect(lambda on: setattr(c, "overwrite", bool(on)))
        self.image.currentIndexChanged.connect(self._image_chosen)
        self.channel_axis.currentIndexChanged.connect(self._channel_chosen)
        self.channel.currentIndexChanged.connect(self._channel_chosen)
        self.target.currentIndexChanged.connect(self._target_chosen)
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved):
            ev.connect(self._refresh_layer_choices)

    # -- callbacks ---------------------------------------------------------------------------
    def _status(self, text: str) -> None:
        self.status.setText(text)
        if text.startswith("could not load"):
            self.model_panel.set_message(text)

    def _model_ready(self, name: str) -> None:
        prior = ", with its granularity prior" if self.controller.prior_available else ""
        self.model_panel.set_message(f"model '{name}' ready{prior}")

    def _show_prior(self, available: bool, reason: str) -> None:
        """Enable the whole-object option when the model has a prior; otherwise say why not."""
        self.whole_object.blockSignals(True)  # showing the state is not the user's choice
        try:
            self.whole_object.setEnabled(available)
            self.whole_object.setChecked(available and self.controller.use_prior)
            self.whole_object.setToolTip(names.WHOLE_OBJECT_TIP if available else reason)
        finally:
            self.whole_object.blockSignals(False)

    def _show_polarity(self, positive: bool) -> None:
        self.polarity.setText(f"New points: {'positive' if positive else 'negative'}")

    def _embedding_busy(self, on: bool, text: str) -> None:
        self.embed_bar.setVisible(on)
        if on:
            self.status.setText(text)

    @staticmethod
    def _bar(bar: QProgressBar):
        def update(done: int, total: int) -> None:
            bar.setRange(0, max(total, 1))
            bar.setValue(done)

        return update

    def _browse_cache(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Embedding cache folder")
        if path:
            self.cache_dir.setText(path)
            self.controller.embeddings.set_cache_dir(path)

    def _layers(self, kind):
        return [layer for layer in self.viewer.layers if isinstance(layer, kind)]

    def _refresh_layer_choices(self, event=None) -> None:
        if self.controller.closed:
            return
        self._updating = True
        try:
            images = [layer for layer in self._layers(Image)]
            current = self.controller.image_layer
            self.image.clear()
            self.image.addItems([layer.name for layer in images])
            if current in images:
                self.image.setCurrentIndex(images.index(current))
            targets = [layer for layer in self._layers(Labels) if layer.name != names.PREVIEW_LAYER]
            chosen = self.controller.target
            self.target.clear()
            self.target.addItems([names.NEW_LABELS_CHOICE] + [layer.name for layer in targets])
            if chosen in targets:
                self.target.setCurrentIndex(1 + targets.index(chosen))
        finally:
            self._updating = False
        self._image_chosen()
        self._target_chosen()

    def _image_chosen(self, *_) -> None:
        if self._updating:
            return
        images = self._layers(Image)
        i = self.image.currentIndex()
        layer = images[i] if 0 <= i < len(images) else None
        self._fill_channel_axes(layer)
        self._channel_chosen()

    def _fill_channel_axes(self, layer: Image | None) -> None:
        self._updating = True
        try:
            previous = self.channel_axis.currentText()
            self.channel_axis.clear()
            self.channel_axis.addItem(names.NO_CHANNEL_AXIS)
            if layer is not None and not layer.rgb and layer.ndim > 2:
                for axis in range(layer.ndim - 2):
                    self.channel_axis.addItem(f"axis {axis} ({L.image_data(layer).shape[axis]})")
            self.channel_axis.setCurrentText(previous)
        finally:
            self._updating = False

    def _channel_chosen(self, *_) -> None:
        if self._updating:
            return
        images = self._layers(Image)
        i = self.image.currentIndex()
        layer = images[i] if 0 <= i < len(images) else None
        axis_text = self.channel_axis.currentText()
        axis = None if axis_text in ("", names.NO_CHANNEL_AXIS) else int(axis_text.split()[1])
        n_channels = 0
        if layer is not None:
            shape = L.image_data(layer).shape
            n_channels = int(shape[-1]) if layer.rgb else (int(shape[axis]) if axis is not None else 0)
        self._updating = True
        try:
            previous = self.channel.currentText()
            self.channel.clear()
            self.channel.addItem(names.COMPOSITE_CHANNEL)
            self.channel.addItems([str(c) for c in range(n_channels)])
            self.channel.setCurrentText(previous)
            self.channel.setEnabled(n_channels > 0)
        finally:
            self._updating = False
        text = self.channel.currentText()
        channel = None if text in ("", names.COMPOSITE_CHANNEL) else int(text)
        self.controller.set_image_layer(layer, axis, channel)

    def _target_chosen(self, *_) -> None:
        if self._updating:
            return
        targets = [layer for layer in self._layers(Labels) if layer.name != names.PREVIEW_LAYER]
        i = self.target.currentIndex() - 1
        self.controller.target = targets[i] if 0 <= i < len(targets) else None

    def _target_created(self, layer) -> None:
        self._refresh_layer_choices()

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.adapt_panel.close_panel()
        self.controller.close()
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved):
            ev.disconnect(self._refresh_layer_choices)
        super().closeEvent(event)
