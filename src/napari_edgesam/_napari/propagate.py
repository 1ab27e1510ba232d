"""3D propagation from the interactive widget: a cancellable worker that streams its slices
into the preview layer.

Which objects: every object in the preview (seeds: the slices the user prompted if the object
is there, else every slice it is on); with an empty preview, the target layer's selected label
(committed earlier), whose propagated copy is committed back under the same id.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import TYPE_CHECKING

from qtpy.QtCore import QObject, Signal

from ..inference.propagation import propagate_objects
from . import layers as L
from . import stack
from .workers import Relay, error_reporter, start_worker

if TYPE_CHECKING:
    from .controller import InteractiveController

logger = logging.getLogger(__name__)


class PropagationRunner(QObject):
    """Runs :func:`~napari_edgesam.inference.propagation.propagate_objects` for a controller.

    Signals: ``progress(done, total)``, ``summary(text)``, ``finished(results or None)``.
    ``propagate_fn`` can be replaced (same signature) e.g. by tests.
    """

    progress = Signal(int, int)
    summary = Signal(str)
    finished = Signal(object)

    def __init__(self, controller: InteractiveController, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.propagate_fn = propagate_objects
        self.options: dict = {}
        self._cancel = threading.Event()
        self._worker = None
        self._relay = Relay(self)
        self._relay.progressed.connect(self.progress)
        self._relay.itemed.connect(self._partial)
        self._job: tuple | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None

    def cancel(self) -> None:
        """Stop after the current slice; what was found so far stays in the preview."""
        self._cancel.set()

    def start(self, direction: str = "both") -> bool:
        """Propagate the preview objects (or the target's selected label) along the stack.

        Returns False (with a status message) when there is nothing to do.
        """
        c = self.controller
        if self.running:
            c.status.emit("a propagation is already running")
            return False
        view = c.current_view()
        if view is None or c.predictor is None:
            c.status.emit("load a model and choose an image first")
            return False
        plane, axis = view.plane, view.plane.stack_axis
        if axis is None:
            c.status.emit("propagation needs a stack (Z x Y x X): this image is 2D")
            return False
        preview = c.preview_layer()
        ids = stack.object_ids(preview.data, plane, axis)
        if ids:
            points, boxes = c.prompt_layers()
            seeds = stack.seeds_from_labels(preview.data, plane, axis, ids,
                                            only_slices=L.prompted_positions(points, boxes, plane, axis))
        else:
            target = c.target_layer()
            label = int(target.selected_label) if target is not None else 0
            seeds = {}
            if label > 0 and target.data.shape == preview.data.shape:
                seeds = stack.seeds_from_labels(target.data, plane, axis, [label], rename={label: 1})
            if seeds:
                c.keep_ids = {1: label}
        if not seeds:
            c.status.emit("nothing to propagate: segment an object (or select a committed label) first")
            return False
        self._cancel = threading.Event()
        self._job = (c._generation, preview, plane, axis, {o: set(s) for o, s in seeds.items()})
        predictor = copy.copy(c.predictor)

        def get_embedding(z: int):
            return c.embeddings.embed_now(view, plane.at(axis, z))

        def job():
            return self.propagate_fn(
                predictor, get_embedding, seeds, plane.shape[axis], direction=direction,
                cancel=self._cancel, progress=self._relay.progress,
                on_result=lambda obj, z, mask, score: self._relay.item((obj, z, mask)), **self.options,
            )

        c.status.emit(f"propagating {len(seeds)} object(s) {direction}...")
        self._worker = start_worker(job, on_result=self._done, on_error=self._failed)
        return True

    def _current(self) -> bool:
        return self._job is not None and self._job[0] == self.controller._generation

    def _partial(self, item) -> None:
        if not self._current():
            return
        _, preview, plane, axis, seeded = self._job
        obj, z, mask = item
        if z not in seeded.get(obj, ()):
            stack.write_object(preview.data, plane, axis, obj, z, mask)
            preview.refresh()

    def _done(self, results) -> None:
        self._worker = None
        if not self._current():
            self.finished.emit(None)
            return
        _, preview, plane, axis, seeded = self._job
        for obj, res in results.items():
            for z, mask in res.masks.items():
                if z not in seeded.get(obj, ()):
                    stack.write_object(preview.data, plane, axis, obj, z, mask)
        preview.refresh()
        preview.metadata["edgesam_propagation"] = stack.score_table(results)
        text = stack.summarise(results)
        self.summary.emit(text)
        self.controller.status.emit("propagation finished" + (" (cancelled)" if self._cancel.is_set() else ""))
        self.finished.emit(results)

    def _failed(self, err: BaseException) -> None:
        self._worker = None
        error_reporter("EdgeSAM propagation")(err)
        self.controller.status.emit(f"propagation failed: {err}")
        self.finished.emit(None)
