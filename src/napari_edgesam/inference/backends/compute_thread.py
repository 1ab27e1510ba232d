"""One thread for all torch inference of the process.

PyTorch's CPU kernels run on an OpenMP thread team, and libgomp gives every *calling* thread
its own team. When the GUI's workers (embedding, prefetch, decoding, propagation) call torch
from several threads, the teams compete for the same cores: measured on 2 cores, a decoder
call took 30 ms from a second thread against 21 ms when one thread makes all the calls.
:func:`run` therefore hands torch work to one long-lived thread and waits for the result;
calls made on that thread (nested ones included) run directly.

A script that runs all its torch work on one thread anyway (e.g. its own torch code on the main
thread next to ours) can keep everything there: set ``NAPARI_EDGESAM_TORCH_THREAD=0`` or
:data:`ENABLED` to False.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

#: False: torch calls run on the calling thread (env ``NAPARI_EDGESAM_TORCH_THREAD=0``).
ENABLED = os.environ.get("NAPARI_EDGESAM_TORCH_THREAD", "1") != "0"

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_thread: threading.Thread | None = None


def _remember_thread() -> None:
    global _thread
    _thread = threading.current_thread()


def _get_executor() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(1, thread_name_prefix="napari-edgesam-torch",
                                           initializer=_remember_thread)
        return _executor


def on_compute_thread() -> bool:
    """Whether the calling thread is the compute thread."""
    return _thread is not None and threading.current_thread() is _thread


def run(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` on the compute thread (directly if already there or disabled);
    exceptions propagate to the caller."""
    if not ENABLED or on_compute_thread():
        return fn(*args, **kwargs)
    return _get_executor().submit(fn, *args, **kwargs).result()
