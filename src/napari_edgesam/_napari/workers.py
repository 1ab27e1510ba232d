"""Background work for the widgets: nothing slow ever runs on the Qt thread.

Functions run in napari thread workers (Qt's global thread pool); their results, progress and
errors come back to the main thread through Qt signals, where the callbacks run. Errors are
shown as napari notifications.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from napari.qt.threading import FunctionWorker
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, QThreadPool, QTimer, Signal

logger = logging.getLogger(__name__)

T = TypeVar("T")


def error_reporter(context: str) -> Callable[[BaseException], None]:
    """A callback that logs ``err`` and shows ``"{context}: {err}"`` as a napari error."""

    def report(err: BaseException) -> None:
        logger.debug("%s failed", context, exc_info=err)
        show_error(f"{context}: {err}")

    return report


def start_worker(
    fn: Callable,
    *args,
    on_result: Callable | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    context: str = "EdgeSAM",
    **kwargs,
) -> FunctionWorker:
    """Run ``fn(*args, **kwargs)`` in a thread; callbacks run on the main thread."""
    worker = FunctionWorker(fn, *args, **kwargs)
    if on_result is not None:
        worker.returned.connect(on_result)
    worker.errored.connect(on_error or error_reporter(context))
    if on_finished is not None:
        worker.finished.connect(on_finished)
    worker.start()
    return worker


class Relay(QObject):
    """Carries calls from worker threads to the main thread (queued Qt signals).

    ``progress(done, total)`` and ``item(value)`` may be called from any thread; connect
    main-thread slots to :attr:`progressed` and :attr:`itemed`.
    """

    progressed = Signal(int, int)
    itemed = Signal(object)

    def progress(self, done: int, total: int) -> None:
        self.progressed.emit(int(done), int(total))

    def item(self, value: object) -> None:
        self.itemed.emit(value)


class LatestRunner(QObject):
    """Runs ``fn(*args)`` in a worker, one call at a time; requests made while one runs are
    coalesced so that only the newest runs next (prompt edits, slice changes).

    Args:
        fn: the function to run in the thread.
        on_result: main-thread callback with ``fn``'s return value.
        context: prefix of error messages.
        min_interval_ms: a request arriving sooner than this after the previous start waits
            (a debounce for bursts of events); the first request after a pause runs at once.
    """

    #: Emitted on the main thread after each run (result applied or error shown).
    done = Signal()

    def __init__(self, fn: Callable, on_result: Callable, context: str, min_interval_ms: int = 0,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._fn, self._on_result, self._context = fn, on_result, context
        self._pending: tuple | None = None
        self._worker: FunctionWorker | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(min_interval_ms))
        self._timer.timeout.connect(self._start_pending)

    @property
    def busy(self) -> bool:
        """A run is in flight or waiting."""
        return self._worker is not None or self._pending is not None

    @property
    def has_pending(self) -> bool:
        """A newer request waits for the running one."""
        return self._pending is not None

    def request(self, *args) -> None:
        """Ask for ``fn(*args)``; replaces any request that has not started yet."""
        self._pending = args
        if self._worker is None and not self._timer.isActive():
            self._start_pending()

    def cancel_pending(self) -> None:
        """Forget the request that has not started yet (a running one finishes)."""
        self._pending = None

    def _start_pending(self) -> None:
        if self._pending is None or self._worker is not None:
            return
        args, self._pending = self._pending, None
        self._worker = start_worker(
            self._fn, *args, on_result=self._on_result, on_error=error_reporter(self._context),
            on_finished=self._finished,
        )
        if self._timer.interval() > 0:
            self._timer.start()

    def _finished(self) -> None:
        self._worker = None
        self.done.emit()
        if self._pending is not None and not self._timer.isActive():
            self._start_pending()


class CancellableRunner(QObject):
    """One cancellable run at a time for a widget with Run and Cancel buttons (automatic
    segmentation, batch processing).

    :meth:`start` runs ``fn(relay, cancel)`` in a worker thread: ``relay`` (a :class:`Relay`)
    carries ``progress(done, total)`` and ``item(value)`` calls to ``on_progress`` /
    ``on_item`` on the main thread, ``cancel`` is a ``threading.Event`` set by :meth:`cancel`.
    While it runs the Run button is disabled and the Cancel button enabled; ``on_result`` or
    ``on_error`` gets the outcome on the main thread, then the buttons are restored and
    :attr:`worker` is None again.

    Args:
        run_button, cancel_button: anything with an ``enabled`` attribute (magicgui buttons).
        progress_bar, status: anything with a ``value`` (magicgui ProgressBar, Label): reset to
            0 and "running…" when a run starts; ``status`` also shows input errors and cancelling.
    """

    def __init__(self, run_button, cancel_button, progress_bar, status, *, on_result: Callable,
                 on_error: Callable[[BaseException], None], on_progress: Callable[[int, int], None] | None = None,
                 on_item: Callable | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._buttons = (run_button, cancel_button)
        self._progress_bar, self._status = progress_bar, status
        self._on_result, self._on_error = on_result, on_error
        self.relay = Relay(self)
        if on_progress is not None:
            self.relay.progressed.connect(on_progress)
        if on_item is not None:
            self.relay.itemed.connect(on_item)
        self.cancel_event = threading.Event()
        self.worker: FunctionWorker | None = None
        self._set_running(False)

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(self, fn: Callable) -> FunctionWorker:
        """Run ``fn(relay, cancel)`` unless a run is in flight (then that run's worker is returned)."""
        if self.worker is not None:
            return self.worker
        self.cancel_event.clear()
        self._set_running(True)
        self._progress_bar.value = 0
        self._status.value = "running…"
        self.worker = start_worker(fn, self.relay, self.cancel_event, on_result=self._on_result,
                                   on_error=self._on_error, on_finished=self._finished)
        return self.worker

    def start_from(self, read: Callable[[], T], make_task: Callable[[T], Callable]) -> FunctionWorker | None:
        """Read a widget's inputs and start the task they describe.

        Returns the running worker if a run is in flight; None (after showing the error as a
        napari notification and in ``status``) if ``read()`` raises ``ValueError``; else the
        worker of ``make_task(inputs)`` (a ``fn(relay, cancel)``).
        """
        if self.worker is not None:
            return self.worker
        try:
            inputs = read()
        except ValueError as err:
            from .text import one_line

            show_error(one_line(err))
            self._status.value = one_line(err)
            return None
        return self.start(make_task(inputs))

    def cancel(self, message: str = "cancelling…") -> None:
        """Ask the running ``fn`` to stop (it checks the event) and say so in ``status``."""
        self.cancel_event.set()
        self._status.value = message

    def _set_running(self, running: bool) -> None:
        run, cancel = self._buttons
        run.enabled, cancel.enabled = not running, running

    def _finished(self) -> None:
        self.worker = None
        self._set_running(False)


def wait_for_workers(timeout_ms: int = 30_000) -> bool:
    """Block until every thread-pool job has finished (for shutdown and tests)."""
    return QThreadPool.globalInstance().waitForDone(int(timeout_ms))


#: Objects kept alive by :func:`keep_alive_while` until their workers end.
_KEPT: set = set()


def keep_alive_while(obj: QObject, busy: Callable[[], bool], interval_ms: int = 100) -> None:
    """Hold a reference to ``obj`` while ``busy()`` is True (polled on the main thread every
    ``interval_ms``): a closed object whose workers still run never reports to deleted Qt objects."""
    if not busy():
        return
    _KEPT.add(obj)
    timer = QTimer(obj)

    def check() -> None:
        if not busy():
            timer.stop()
            _KEPT.discard(obj)

    timer.setInterval(interval_ms)
    timer.timeout.connect(check)
    timer.start()
