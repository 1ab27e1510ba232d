"""Loading a model for the interactive controller in the background (Qt side): the model and
the granularity prior beside it load in a worker, then go to ``set_predictor``; a failure is
reported in one line (status and napari notification)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from napari.utils.notifications import show_error

from .model_panel import load_predictor
from .text import one_line
from .workers import start_worker

logger = logging.getLogger(__name__)


def load_in_background(
    name_or_path: str,
    set_predictor: Callable[[object, str], None],
    status: Callable[[str], None],
    *,
    backend: str = "auto",
    device: str = "auto",
    allow_download: bool = True,
    wanted: Callable[[], bool] = lambda: True,
):
    """Load ``name_or_path`` (:func:`~napari_edgesam._napari.model_panel.load_predictor`) in a
    worker, then call ``set_predictor(predictor, prior_reason)`` on the main thread if
    ``wanted()`` still says so. Progress and failures go to ``status``; returns the worker."""

    def loaded(result) -> None:
        if not wanted():
            return
        try:
            set_predictor(*result)
        except RuntimeError as err:  # the widget was destroyed while the model loaded
            if "deleted" not in str(err):
                raise
            logger.debug("model %s loaded after its widget was closed", name_or_path)

    def failed(err: BaseException) -> None:
        message = one_line(err)
        logger.warning("could not load the model: %s", message)
        logger.debug("model loading failed", exc_info=err)
        status(f"could not load the model: {message}")
        show_error(f"EdgeSAM could not load the model: {message}")

    status(f"loading {name_or_path}...")
    return start_worker(load_predictor, name_or_path, backend=backend, device=device,
                        allow_download=allow_download, on_result=loaded, on_error=failed)
