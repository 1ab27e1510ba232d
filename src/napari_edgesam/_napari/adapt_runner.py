"""Runs one :class:`~napari_edgesam._napari.adapt_job.AdaptJob` at a time in its own thread and
reports on the Qt thread.

The job gets a dedicated thread, not one of Qt's pool: it lasts up to a minute, and the
pool's few threads must stay free for the decoder and the embeddings the user's clicks need.
"""

from __future__ import annotations

import logging
import threading

from qtpy.QtCore import QObject, Signal

from .adapt_job import AdaptJob, AdaptOutcome

logger = logging.getLogger(__name__)


class AdaptRunner(QObject):
    """Signals (Qt thread): ``progressed(fraction, eta_seconds)`` during a run, ``finished(job,
    AdaptOutcome)`` at its end (cancelled and failed runs included)."""

    progressed = Signal(float, float)
    finished = Signal(object, object)
    _ended = Signal(object, object)  # from the run's thread (queued to the Qt thread)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self.job: AdaptJob | None = None
        self._ended.connect(self._done)

    @property
    def busy(self) -> bool:
        """A run is in flight."""
        return self._thread is not None

    def start(self, job: AdaptJob) -> bool:
        """Run ``job`` unless a run is in flight (then False)."""
        if self._thread is not None:
            return False
        self._cancel = threading.Event()
        self.job = job
        self._thread = threading.Thread(target=self._run, args=(job, self._cancel), daemon=True,
                                        name="napari-edgesam-adapt")
        self._thread.start()
        return True

    def cancel(self) -> None:
        """Stop the run after its current step (the model stays as it is)."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run's thread ends (shutdown and tests); True if it did."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _run(self, job: AdaptJob, cancel: threading.Event) -> None:
        outcome = job.run(cancel, self._emit_progress)
        try:
            self._ended.emit(job, outcome)
        except RuntimeError:  # the widget was deleted meanwhile
            logger.debug("adaptation ended after its widget was closed: %s", outcome.message)

    def _emit_progress(self, fraction: float, eta: float) -> None:
        try:
            self.progressed.emit(float(fraction), float(eta))
        except RuntimeError:
            pass

    def _done(self, job: AdaptJob, outcome: AdaptOutcome) -> None:
        """On the Qt thread: not busy any more, then ``finished`` (in one event, so no slot
        and no check in between sees a finished run as busy, or its outcome missing)."""
        if job is self.job:
            self._thread = None
            self.job = None
        self.finished.emit(job, outcome)
