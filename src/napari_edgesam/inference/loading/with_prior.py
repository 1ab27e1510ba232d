"""Load a model with the granularity prior stored beside it: what the widget, the demo and
scripts call to get a predictor ready for one-click segmentation (no Qt, no napari)."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

#: Why a model has no granularity prior, when nothing is stored beside it.
NO_PRIOR_REASON = ("no granularity prior beside this model; train one with "
                   "`napari-edgesam train prior`")


def load_predictor(name_or_path: str, backend: str = "auto", device: str = "auto", *,
                   allow_download: bool = True, **backend_options):
    """Load a model (as ``load_model``) and attach the granularity prior stored beside its
    weights file (``find_prior``), if any. A prior that cannot be used (e.g. a ``.prior.pth``
    for an ONNX model) leaves the model without one: it still loads. ``backend_options`` go
    to the backend (e.g. ``num_threads``).

    Returns:
        ``(predictor, reason)``: ``reason`` is "" when ``predictor.prior`` is set, otherwise
        why there is none (for the user).
    """
    from ..prior import find_prior, load_prior
    from .api import load_model

    predictor = load_model(name_or_path, backend=backend, device=device, allow_download=allow_download,
                           **backend_options)
    from ..prior.files import encoder_file

    source = getattr(predictor, "source_path", None)
    running = encoder_file(predictor)  # e.g. the int8 encoder: its int8 prior comes first
    path = find_prior(running) if running is not None else None
    if path is None and source is not None:
        path = find_prior(source)
    if path is None:
        return predictor, NO_PRIOR_REASON
    try:
        predictor.prior = load_prior(path, predictor, device=device)
    except Exception as err:  # any broken prior file: the model itself is fine
        logger.warning("could not load the granularity prior %s: %s", path, err)
        return predictor, f"the granularity prior {path.name} beside this model cannot be used: {err}"
    logger.info("granularity prior %s attached to %s", path.name, predictor.model_name)
    return predictor, ""
