"""What the interactive widget's buttons and shortcuts do: point polarity, the drawing
tools, commit and undo, embedding a whole stack.

:class:`PromptActions` is a part of :class:`~napari_edgesam._napari.controller.InteractiveController`
(a mixin): it uses only the controller's public interface (``prompt_layers``, ``preview_layer``,
``target_layer``, ``current_view``, ``edgesam_layers``, ``session``, ``annotations``, ``embeddings``, ``clear`` and the ``status``/``polarity_changed``/``committed`` signals).
"""

from __future__ import annotations

from napari.utils.notifications import show_info

from . import layers as L
from .annotation_capture import capture_commit
from .workers import error_reporter


class PromptActions:
    """The controller's user actions (see the module docstring for what they rely on)."""

    def toggle_polarity(self) -> bool:
        """Switch new points between positive and negative; returns True if now positive."""
        points, _ = self.prompt_layers()
        positive = not L.is_positive(points)
        L.set_positive(points, positive)
        self.polarity_changed.emit(positive)
        return positive

    def draw_box(self) -> None:
        """Select the boxes layer with its rectangle tool (the next drag on the canvas draws a box)."""
        self._select_tool(1, "add_rectangle", "drag a box around an object (layer '{}'); 'Add points' to click again")

    def add_points(self) -> None:
        """Select the points layer in add mode (the next click on the canvas adds a point)."""
        self._select_tool(0, "add", "click to add points (layer '{}')")

    def _select_tool(self, which: int, mode: str, message: str) -> None:
        if self.image_layer is None:
            self.status.emit("choose an image layer first")
            return
        layer = self.prompt_layers()[which]
        self.edgesam_layers.select_tool(layer, mode)
        self.status.emit(message.format(layer.name))

    def commit(self):
        """Write the preview objects into the target labels (new ids) and clear the prompts."""
        preview = self.preview_layer(create=False)
        if preview is None or not preview.data.any():
            self.status.emit("nothing to commit: the preview is empty")
            return None
        target = self.target_layer(create=True)
        view = self.current_view()
        objects = self._objects(view.plane)[0] if view is not None else []
        try:
            record = self.session.commit(preview.data, target.data, handle=target,
                                         overwrite=self.overwrite, keep_ids=self.keep_ids)
        except (ValueError, TypeError) as err:
            self.status.emit(f"cannot commit into '{target.name}': {err}")
            error_reporter("EdgeSAM commit")(err)
            return None
        if record is not None:  # kept as training data for adaptation
            capture_commit(self.annotations, self.embeddings, view, objects, record, preview.data, target.data,
                           resolve=self._layer_data)
        target.refresh()
        if record.ids:
            target.selected_label = max(record.ids.values())
        self.clear()
        self.status.emit(f"committed object(s) {sorted(record.ids.values())} into '{target.name}'")
        self.committed.emit(record)
        return record

    def _layer_data(self, layer):
        """The data of ``layer`` while it is in the viewer, else None."""
        return layer.data if layer in self.viewer.layers else None

    def undo_commit(self) -> None:
        """Restore the target labels as they were before the last commit."""
        try:
            record = self.session.undo(self._layer_data)
        except RuntimeError as err:
            self.status.emit(str(err))
            return
        record.target.refresh()
        self.annotations.undo_commit(record)
        self.status.emit(f"undid the commit of object(s) {sorted(record.ids.values())}")

    def precompute(self) -> None:
        """Embed every slice of the stack in the background (progress on ``embedding_busy``)."""
        view = self.current_view()
        if view is None or self.predictor is None:
            self.status.emit("load a model and choose an image first")
            return
        try:
            self.embeddings.precompute(view)
        except ValueError as err:
            show_info(str(err))
