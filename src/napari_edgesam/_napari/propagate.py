"""Runs 3D propagation jobs in a cancellable worker (Qt side).

The controller builds a :class:`~napari_edgesam.interactive.propagation_job.PropagationJob` and
applies what comes back; this runner only runs it: one job at a time, in a worker, relaying
its progress and each accepted slice to the main thread. It knows nothing of the controller.
"""

from __future__ import annotations

import logging
import threading

from qtpy.QtCore import QObject, Signal

from ..inference.volume.propagation import propagate_objects
from ..interactive.propagation_job import PropagateFn, PropagationJob
from .workers import Relay, error_reporter, start_worker

logger = logging.getLogger(__name__)


class PropagationRunner(QObject):
    """Runs one :class:`PropagationJob` at a time in a worker.

    Signals (main thread): ``progress(done, total)``; ``partial((job, obj, z, mask))`` for each
    accepted slice as it comes; ``completed((job, results, cancelled))`` at the end, with
    ``results`` None when the job failed (the error is reported, and ``message`` says so);
    ``message(text)``. ``propagate_fn`` can be replaced (same signature as
    :func:`~napari_edgesam.inference.volume.propagation.propagate_objects`), e.g. by tests.
    """

    progress = Signal(int, int)
    partial = Signal(object)
    completed = Signal(object)
    message = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.propagate_fn: PropagateFn = propagate_objects
        self._cancel = threading.Event()
        self._worker = None
        self._relay = Relay(self)
        self._relay.progressed.connect(self.progress)
        self._relay.itemed.connect(self.partial)

    @property
    def running(self) -> bool:
        return self._worker is not None

    def cancel(self) -> None:
        """Stop after the current slice; what was found so far is still reported."""
        self._cancel.set()

    def run(self, job: PropagationJob, predictor) -> bool:
        """Start ``job`` with ``predictor`` in a worker; False (with a message) if one runs."""
        if self.running:
            self.message.emit("a propagation is already running")
            return False
        cancel = self._cancel = threading.Event()
        relay, propagate = self._relay, self.propagate_fn

        def work():
            return job.run(predictor, propagate=propagate, cancel=cancel, progress=relay.progress,
                           on_slice=lambda obj, z, mask: relay.item((job, obj, z, mask)))

        self._worker = start_worker(work, on_result=lambda results: self._end(job, results, cancel),
                                    on_error=lambda err: self._failed(job, err, cancel))
        return True

    def _end(self, job: PropagationJob, results, cancel: threading.Event) -> None:
        self._worker = None
        self.completed.emit((job, results, cancel.is_set()))

    def _failed(self, job: PropagationJob, err: BaseException, cancel: threading.Event) -> None:
        self._worker = None
        error_reporter("EdgeSAM propagation")(err)
        self.message.emit(f"propagation failed: {err}")
        self.completed.emit((job, None, cancel.is_set()))
