"""3D propagation from the interactive widget: the controller builds a
:class:`~napari_edgesam.interactive.propagation_job.PropagationJob` from what is on screen, a
:class:`~napari_edgesam._napari.propagate.PropagationRunner` runs it in a worker, and the slices
and the result come back into the preview.

:class:`PropagationActions` is a part of
:class:`~napari_edgesam._napari.controller.InteractiveController` (a mixin): it uses the
controller's public interface (``current_view``, ``preview_layer``, ``target_layer``,
``prompt_layers``, ``embeddings``, ``predictor``, ``propagation``, ``propagation_options``,
``generation``, ``keep_ids``, ``overwrite`` and the ``status``/``propagated``/``propagation_summary`` signals).
"""

from __future__ import annotations

from ..interactive import stack
from ..interactive.propagation_job import PropagationJob, choose_seeds
from . import layers as L


class PropagationActions:
    """Start a propagation and show what it returns (see the module docstring)."""

    def propagate(self, direction: str = "both") -> bool:
        """Follow the preview objects (or the target's selected label) along the stack, in a
        worker; the slices stream into the preview. False (with a status message) when there
        is nothing to do. ``direction``: ``"both"``, ``"forward"`` or ``"backward"``."""
        if self.propagation.running:
            self.status.emit("a propagation is already running")
            return False
        job = self.propagation_job(direction)
        if job is None:
            return False
        if job.keep_ids:
            self.keep_ids = dict(job.keep_ids)
        self.status.emit(f"propagating {len(job.seeds)} object(s) {direction}...")
        return self.propagation.run(job, self.predictor)

    def propagation_job(self, direction: str = "both") -> PropagationJob | None:
        """The propagation of what is on screen now (None, with a status message, if none)."""
        view = self.current_view()
        if view is None or self.predictor is None:
            self.status.emit("load a model and choose an image first")
            return None
        plane, axis = view.plane, view.plane.stack_axis
        if axis is None:
            self.status.emit("propagation needs a stack (Z x Y x X): this image is 2D")
            return None
        preview, target = self.preview_layer(), self.target_layer()
        seeds, keep_ids = choose_seeds(
            preview.data, plane, axis, lambda: L.prompted_positions(*self.prompt_layers(), plane, axis),
            None if target is None else target.data, 0 if target is None else int(target.selected_label))
        if not seeds:
            self.status.emit("nothing to propagate: segment an object (or select a committed label) first")
            return None
        if not keep_ids and self.keep_ids:  # the preview holds a committed label propagated before
            keep_ids = {p: t for p, t in self.keep_ids.items() if p in seeds}
        embeddings = self.embeddings
        # committed labels stay theirs (unless the user overwrites): propagated masks do not take them
        protected = None if target is None or self.overwrite or target.data.shape != preview.data.shape \
            else target.data
        return PropagationJob(plane, axis, seeds, lambda z: embeddings.embed_now(view, plane.at(axis, z)),
                              direction, self.generation, keep_ids, self.propagation_options, preview, protected)

    def _propagated_slice(self, item: tuple) -> None:
        job, obj, z, mask = item
        if job.generation == self.generation and job.write_slice(job.preview.data, obj, z, mask):
            job.preview.refresh()

    def _propagation_done(self, out: tuple) -> None:
        job, results, cancelled = out
        if results is None or job.generation != self.generation:
            self.propagated.emit(None)
            return
        job.write_results(job.preview.data, results)
        job.preview.refresh()
        job.preview.metadata["edgesam_propagation"] = stack.score_table(results)
        self.propagation_summary.emit(stack.summarise(results))
        self.status.emit("propagation finished" + (" (cancelled)" if cancelled else ""))
        self.propagated.emit(results)
