"""Watches the image layer being segmented and the viewer's dims (Qt side).

It tells the controller when what the model sees may have changed: the view (slice, axis
order, 2D/3D) or the contrast/gamma stopped changing (``settled``, debounced), or the layer's
pixels may differ (``pixels_changed``: a new ``data``, or ``layer.refresh()`` after an
in-place edit in the same view).
"""

from __future__ import annotations

from qtpy.QtCore import QObject, QTimer, Signal

#: Milliseconds of calm after a contrast/gamma change before the plane is embedded again.
CONTRAST_DEBOUNCE_MS = 300
#: Milliseconds of calm after a slice change before the new plane is embedded.
SLICE_DEBOUNCE_MS = 80


def single_shot(parent: QObject, ms: int, slot) -> QTimer:
    """A single-shot timer of ``ms`` calling ``slot`` (restarting it postpones the call)."""
    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.setInterval(ms)
    timer.timeout.connect(slot)
    return timer


class ImageWatch(QObject):
    """Events of one viewer and of the image layer it is told to watch.

    Signals: ``settled()`` (the view or the contrast/gamma stopped changing),
    ``pixels_changed(layer)`` (the watched layer's pixels may have changed).
    """

    settled = Signal()
    pixels_changed = Signal(object)

    def __init__(self, viewer, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.layer = None
        self._drawn_at: tuple | None = None
        self._slice_timer = single_shot(self, SLICE_DEBOUNCE_MS, self.settled)
        self._contrast_timer = single_shot(self, CONTRAST_DEBOUNCE_MS, self.settled)
        for ev in self._dims_events():
            ev.connect(self._view_changed)

    def _dims_events(self) -> tuple:
        dims = self.viewer.dims.events
        return dims.current_step, dims.order, dims.ndisplay

    def watch(self, layer) -> None:
        """Watch ``layer`` (None: no layer) instead of the previous one."""
        if self.layer is not None and layer is not self.layer:
            for ev in (self.layer.events.contrast_limits, self.layer.events.gamma):
                ev.disconnect(self._contrast_changed)
            self.layer.events.data.disconnect(self._data_changed)
            self.layer.events.set_data.disconnect(self._redrawn)
        if layer is not None and layer is not self.layer:
            layer.events.contrast_limits.connect(self._contrast_changed)
            layer.events.gamma.connect(self._contrast_changed)
            layer.events.data.connect(self._data_changed)
            layer.events.set_data.connect(self._redrawn)
        self._drawn_at = self._view_state()
        self.layer = layer

    def stop(self) -> None:
        """Disconnect from the viewer and the layer; pending notifications are dropped."""
        for ev in self._dims_events():
            ev.disconnect(self._view_changed)
        self.watch(None)
        self._slice_timer.stop()
        self._contrast_timer.stop()

    def _view_changed(self, event=None) -> None:
        self._slice_timer.start()

    def _contrast_changed(self, event=None) -> None:
        self._contrast_timer.start()

    def _data_changed(self, event=None) -> None:
        if self.layer is not None:
            self.pixels_changed.emit(self.layer)

    def _view_state(self) -> tuple:
        dims = self.viewer.dims
        return tuple(dims.current_step), tuple(dims.order), dims.ndisplay

    def _redrawn(self, event=None) -> None:
        """napari redrew the layer. After a slice change that is all; in the same view
        (``layer.refresh()`` after an in-place edit such as ``layer.data[...] = ...``) the
        pixels may have changed: ``pixels_changed`` is emitted, so the content signature is
        computed again before any embedding is looked up (an embedding of other pixels is never
        served)."""
        state = self._view_state()
        if state != self._drawn_at:
            self._drawn_at = state
            return
        self._data_changed()
