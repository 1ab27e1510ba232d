"""One image of a batch run (for :mod:`.engine`): the model, loaded once per process, segments
the image and its label image and record are written into ``config.out_dir``.

:func:`process_one` is a plain top-level function of picklable arguments, so it can be shipped
to Dask workers as is; it never raises for a bad image (the error goes into its record).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..._atomic import OutputWriteError
from ..._atomic import describe_write_error as _write_failure
from ..automatic.common import Cancelled
from ..automatic.modes import segment_automatic_any
from ..loading.model_prior import missing_prior_message
from .config import BatchConfig
from .io import ImageData, output_keys, read_image, write_json, write_labels
from .prompt_csv import CsvObject, prompt_identity, prompts_for_image
from .prompts import PromptError, normalisation, segment_prompts
from .resume import (
    image_identity,
    labels_identity,
    model_files_identity,
    output_paths,
    previous_record,
    skipped_record,
)

#: the batch engine's one logger (as :mod:`.resume`): the CLI filters its per-image errors
logger = logging.getLogger("napari_edgesam.inference.batch.engine")


# -- the model, once per process --------------------------------------------------------------
_MODELS: dict[tuple, object] = {}
_MODELS_LOCK = threading.Lock()


def get_predictor(config: BatchConfig):
    """The predictor for ``config`` (loaded once per process and reused by later tasks); in
    mode ``"boxes"`` with its granularity prior (ValueError saying how to get one if missing)."""
    prior = config.prior if config.mode == "boxes" else None
    key = (config.model, config.backend, config.device, config.num_threads, prior)
    with _MODELS_LOCK:
        if key not in _MODELS:
            from ..loading.api import load_model

            if prior not in (None, "auto") and not Path(prior).is_file():
                raise FileNotFoundError(f"prior file {prior} not found (model {config.model!r})")
            options = {} if config.num_threads is None else {"num_threads": config.num_threads}
            predictor = load_model(config.model, backend=config.backend, device=config.device, prior=prior,
                                   **options)
            check_predictor(predictor, config)
            _MODELS[key] = predictor
            logger.info("loaded model %s (%s)", config.model, predictor.backend.name)
        return _MODELS[key]


def check_predictor(predictor, config: BatchConfig) -> None:
    """ValueError if mode ``"boxes"`` gets a predictor without a granularity prior."""
    if config.mode == "boxes" and getattr(predictor, "prior", None) is None:
        raise ValueError(f"mode 'boxes': {missing_prior_message(config.model)}")




# -- one image --------------------------------------------------------------------------------
def _segment_with(predictor, image: ImageData, path: Path, prompts: Sequence[CsvObject], config: BatchConfig,
                  cancel) -> np.ndarray:
    if not prompts:
        raise PromptError(f"no prompts for {path.name} in {config.prompts}")
    return segment_prompts(predictor, image, prompts, config)


def _segment(predictor, image: ImageData, path: Path, config: BatchConfig, cancel) -> np.ndarray:
    if config.mode == "prompts":
        return _segment_with(predictor, image, path, prompts_for_image(config.prompts, path), config, cancel)
    return segment_automatic_any(predictor, image.data, config.automatic_config, stack=image.is_stack,
                                 normalisation=normalisation(image, config), merge_iou=config.merge_iou,
                                 cancel=cancel)


def process_one(path: str | os.PathLike, config: BatchConfig, key: str | None = None, *,
                predictor=None, cancel=None, resume_checked: bool = False) -> dict:
    """Segment one image and write its outputs into ``config.out_dir``; never raises for a
    bad image (the error goes into the returned record, ``status == "error"``).

    Args:
        path: the image (see :func:`~napari_edgesam.inference.batch.io.read_image`).
        config: the run's configuration; ``config.out_dir`` must be set.
        key: output name (default: the image's stem).
        predictor: use this predictor instead of loading ``config.model``.
        cancel: an object with ``is_set()``; a cancelled image is not written.
        resume_checked: the caller already found that the image must be (re)done.
    Returns:
        the record (also written as ``<key>.json`` unless cancelled).
    """
    if not config.out_dir:
        raise ValueError("config.out_dir is empty: set it, or call run_batch(inputs, out_dir, config)")
    p = Path(path)
    key = key or output_keys([p])[0]
    labels_path, record_path = output_paths(config.out_dir, key)
    record = {"input": str(p), "key": key, "status": "ok", "error": None, "n_objects": 0,
              "labels": labels_path.name, "mode": config.mode, "model": config.model}
    if config.mode == "boxes":
        record |= {"prior": config.prior, "prior_path": config.prior_path()}
    if not (config.overwrite or resume_checked) and (
            old := previous_record(config.out_dir, key, config.parameters(), image=p, config=config)) is not None:
        return skipped_record(p, key, old)
    t0 = time.perf_counter()
    timing = {}
    identity: dict = {}
    try:
        predictor = predictor if predictor is not None else get_predictor(config)
        check_predictor(predictor, config)
        timing["model_s"] = time.perf_counter() - t0
        if not p.exists():
            raise FileNotFoundError(f"image not found: {p}")
        identity["image"] = image_identity(p)  # before reading: a change while reading is redone later
        identity["model_files"] = model_files_identity(config)
        image = read_image(p)
        timing["read_s"] = time.perf_counter() - t0 - timing["model_s"]
        t1 = time.perf_counter()
        if config.mode == "prompts":
            prompts = prompts_for_image(config.prompts, p)
            identity["prompts"] = prompt_identity(prompts)
            labels = _segment_with(predictor, image, p, prompts, config, cancel)
            present = np.zeros(len(prompts) + 1, bool)
            present[np.unique(labels[labels <= len(prompts)])] = True
            empty = [obj.name for k, obj in enumerate(prompts, start=1) if not present[k]]
            record["n_prompted"] = len(prompts)
            if empty:  # said, not silent: e.g. a tiny box, or covered by a later object
                record["empty_objects"] = empty
                logger.warning("%s: %d of %d prompted objects came out empty: %s", p, len(empty), len(prompts),
                               ", ".join(map(str, empty[:10])))
        else:
            labels = _segment(predictor, image, p, config, cancel)
        timing["segment_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        try:
            write_labels(labels_path, labels)
            identity["labels"] = labels_identity(labels_path)
        except OSError as err:
            raise OutputWriteError(_write_failure(labels_path, err)) from None
        timing["write_s"] = time.perf_counter() - t2
        record |= {"n_objects": int(len(np.unique(labels)) - (labels == 0).any()),
                   "shape": list(labels.shape), "backend": predictor.backend.name,
                   "model_name": getattr(predictor, "model_name", config.model)}
    except Cancelled:
        return record | {"status": "cancelled", "seconds": time.perf_counter() - t0}
    except Exception as err:  # noqa: BLE001 - one bad image must not stop the batch
        logger.warning("%s failed: %s", p, _error_text(err), extra={"batch_image_error": True})
        record |= {"status": "error", "error": _error_text(err), "labels": None,
                   "traceback": traceback.format_exc(limit=8)}
    from ... import __version__

    record |= {"seconds": round(time.perf_counter() - t0, 4),
               "timing": {k: round(v, 4) for k, v in timing.items()},
               "parameters": config.parameters(), "version": __version__,
               "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "identity": identity}
    try:
        write_json(record_path, record)
    except OSError as err:
        logger.warning("%s: %s", p, _write_failure(record_path, err), extra={"batch_image_error": True})
        record |= {"status": "error", "error": _write_failure(record_path, err)}
    return record


def _error_text(err: BaseException) -> str:
    """One line for a record: the message alone for our own clear errors, else with the type."""
    from .io import ImageReadError

    if isinstance(err, (PromptError, ImageReadError, OutputWriteError)):
        return str(err)
    if isinstance(err, ValueError) and str(err):  # ours say what is wrong (as the CLI prints them)
        return " ".join(str(err).split())
    if isinstance(err, OSError) and err.strerror and err.filename:
        return f"{err.filename}: {err.strerror}"
    if isinstance(err, FileNotFoundError):
        return str(err)
    return f"{type(err).__name__}: {err}"
