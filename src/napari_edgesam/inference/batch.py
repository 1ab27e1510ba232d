"""The batch engine shared by the napari batch widget, the CLI and Dask clusters.

``run_batch`` finds the images, skips those already done, processes the rest one by one (in
this process, or one task per image on a Dask cluster) and writes a run report. Each image
gives, in ``out_dir``:

* ``<key>_labels.tif``: the instance labels (``Y x X``, or ``Z x Y x X`` for stacks);
* ``<key>.json``: the record (input, status, mode, model, prior, parameters, timing, number of
  objects).

Modes: ``"auto"`` (automatic segmentation from a point grid), ``"boxes"`` (automatic
segmentation from the boxes of the model's granularity prior), ``"prompts"`` (prompts from CSV
files). Stacks are segmented per slice and merged in 3D in both automatic modes; large images
are tiled.

Files are written atomically, the label image first, so a record saying ``"ok"`` always has its
label image; an image is skipped when both exist and the record says ``"ok"`` (unless
``overwrite``). A failing image is recorded with its error and the run goes on. The run writes
``report.json`` and ``report.csv``.

:func:`process_one` is a plain top-level function of picklable arguments, loading the model once
per worker process, so it can be shipped to Dask workers as is.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .automatic import AutomaticConfig
from .automatic_boxes import BoxAutomaticConfig
from .automatic_common import Cancelled
from .automatic_modes import (
    AnyAutomaticConfig,
    find_model_prior,
    missing_prior_message,
    segment_automatic_any,
)
from .io import (
    ImageData,
    ObjectPrompt,
    discover_inputs,
    output_keys,
    prompts_for_image,
    read_image,
    write_csv,
    write_json,
    write_labels,
)
from .tiling import TiledImage

logger = logging.getLogger(__name__)

MODES = ("auto", "boxes", "prompts")
REPORT_COLUMNS = ("input", "key", "status", "n_objects", "seconds", "error")

#: ``progress(done, total, record)`` after every image (skipped ones included).
BatchProgress = Callable[[int, int, dict], None]


@dataclass(frozen=True)
class BatchConfig:
    """Everything a worker needs to process one image (picklable).

    Attributes:
        mode: ``"auto"`` (automatic segmentation from a point grid), ``"boxes"`` (automatic
            segmentation from the granularity prior's boxes) or ``"prompts"`` (prompts from CSV files).
        prompts: a prompt CSV, or a folder of per-image CSVs (mode ``"prompts"``); see
            :mod:`napari_edgesam.inference.io` for the formats.
        model: a registered model name or a ``.pth``/``.onnx`` path (see ``load_model``).
        backend / device: passed to ``load_model``.
        automatic: point-grid parameters (mode ``"auto"``; also used for tiling in prompt mode).
        boxes: prior-box parameters (mode ``"boxes"``).
        prior: mode ``"boxes"``: a ``.prior.pth``/``.prior.onnx`` path, or ``"auto"`` (the
            default there) for the prior stored beside the model file; must be None otherwise.
        channel: segment this channel of multi-channel images (default: composite/RGB).
        merge_iou: IoU linking per-slice objects of stacks into 3D objects (automatic mode).
        overwrite: process images even if their outputs exist.
        out_dir: where outputs go (``run_batch`` fills it in).
        num_threads: torch intra-op threads per worker (default: torch's choice).
        fill_holes: fill interior holes of every object (prompt mode; the automatic modes use
            their config's ``fill_holes``); False keeps them.
        autozoom: prompt mode: segment each object in a crop embedded at the scale the model
            handles best (:mod:`napari_edgesam.inference.autozoom`) instead of tiles.
    """

    mode: str = "auto"
    prompts: str | None = None
    model: str = "edgesam"
    backend: str = "auto"
    device: str = "auto"
    automatic: AutomaticConfig = field(default_factory=AutomaticConfig)
    boxes: BoxAutomaticConfig = field(default_factory=BoxAutomaticConfig)
    prior: str | None = None
    channel: int | None = None
    merge_iou: float = 0.3
    overwrite: bool = False
    out_dir: str = ""
    num_threads: int | None = None
    fill_holes: bool = True
    autozoom: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "prompts" and not self.prompts:
            raise ValueError("mode 'prompts' needs a prompt CSV file or folder (prompts=...)")
        if not isinstance(self.automatic, AutomaticConfig):
            raise TypeError(f"automatic must be an AutomaticConfig, got {type(self.automatic).__name__}")
        if not isinstance(self.boxes, BoxAutomaticConfig):
            raise TypeError(f"boxes must be a BoxAutomaticConfig, got {type(self.boxes).__name__}")
        if self.mode == "boxes":
            object.__setattr__(self, "prior", os.fspath(self.prior) if self.prior is not None else "auto")
        elif self.prior is not None:
            raise ValueError(f"prior={self.prior!r} is only used by mode 'boxes' (mode is {self.mode!r})")
        if not 0.0 < self.merge_iou <= 1.0:
            raise ValueError(f"merge_iou must be in (0, 1], got {self.merge_iou}")

    @property
    def automatic_config(self) -> AnyAutomaticConfig:
        """The configuration of this mode's automatic segmentation (``boxes`` or ``automatic``)."""
        return self.boxes if self.mode == "boxes" else self.automatic

    def parameters(self) -> dict:
        """What the record stores as the run's parameters (without the other mode's)."""
        d = asdict(self)
        d.pop("out_dir")
        if self.mode == "boxes":
            d.pop("automatic")
        else:
            d.pop("boxes")
            d.pop("prior")
        return d

    def prior_path(self) -> str | None:
        """The prior file mode ``"boxes"`` uses (``"auto"`` resolved beside the model), if known."""
        if self.mode != "boxes":
            return None
        path = find_model_prior(self.model) if self.prior == "auto" else self.prior
        return None if path is None else str(path)


@dataclass
class BatchReport:
    """Result of :func:`run_batch`: one record per image, in input order."""

    records: list[dict]
    out_dir: Path
    seconds: float
    cancelled: bool = False

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.records)

    @property
    def summary(self) -> dict:
        return {s: self.count(s) for s in ("ok", "skipped", "error", "cancelled")} | {
            "total": len(self.records), "seconds": round(self.seconds, 3), "cancelled_run": self.cancelled,
        }


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
            from .api import load_model

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
def output_paths(out_dir: str | os.PathLike, key: str) -> tuple[Path, Path]:
    """``(<out>/<key>_labels.tif, <out>/<key>.json)``."""
    out = Path(out_dir)
    return out / f"{key}_labels.tif", out / f"{key}.json"


#: Parameters that do not change the result: a record made with other values still counts.
_RESULT_NEUTRAL = ("overwrite", "num_threads", "backend", "device")


def same_result_parameters(old: dict | None, new: dict) -> bool:
    """Whether a record's ``parameters`` would give the same labels as ``new`` (both from
    :meth:`BatchConfig.parameters`; thread count, backend, device and overwrite are ignored)."""
    if not isinstance(old, dict):
        return False
    strip = lambda d: {k: v for k, v in d.items() if k not in _RESULT_NEUTRAL}  # noqa: E731
    return strip(json_round_trip(old)) == strip(json_round_trip(new))


def json_round_trip(d: dict) -> dict:
    """``d`` as it reads back from a JSON record (tuples become lists)."""
    import json

    return json.loads(json.dumps(d, default=str))


def previous_record(out_dir: str | os.PathLike, key: str, parameters: dict | None = None) -> dict | None:
    """The record of an earlier successful run of ``key``, or None if it must be (re)done.

    With ``parameters`` (:meth:`BatchConfig.parameters` of this run), a record made with
    other result-relevant parameters (another mode, model, prior, thresholds...) does not count:
    the image is processed again and its outputs replaced.
    """
    import json

    labels, record = output_paths(out_dir, key)
    if not (labels.is_file() and record.is_file()):
        return None
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("status") != "ok":
        return None
    if parameters is not None and not same_result_parameters(data.get("parameters"), parameters):
        logger.info("%s: the earlier outputs were made with other parameters; processing it again", key)
        return None
    return data


def _normalisation(image: ImageData, config: BatchConfig) -> dict:
    norm = {}
    if image.has_channels:
        norm["channel_axis"] = -1
        if config.channel is not None:
            norm["channel"] = config.channel
    elif config.channel is not None:
        raise ValueError(f"channel={config.channel} was given but the image has no channel axis")
    return norm


def segment_prompts(predictor, image: ImageData, prompts: Sequence[ObjectPrompt], config: BatchConfig) -> np.ndarray:
    """Labels ``[Z] x Y x X`` (uint32) with object ``k`` (1-based, in prompt order) painted
    from its prompts; later objects are painted over earlier ones."""
    norm = _normalisation(image, config)
    shape = image.data.shape[: 3 if image.is_stack else 2]
    labels = np.zeros(shape, np.uint32)
    by_plane: dict[int | None, list[tuple[int, ObjectPrompt]]] = {}
    for k, obj in enumerate(prompts, start=1):
        if image.is_stack and obj.z is None:
            raise ValueError(f"object {obj.name!r} has no z but the image is a stack of {shape[0]} slices")
        if obj.z is not None and not (image.is_stack and 0 <= obj.z < shape[0]):
            raise ValueError(f"object {obj.name!r} is on slice z={obj.z}, which the image (shape {shape}) does not have")
        by_plane.setdefault(obj.z if image.is_stack else None, []).append((k, obj))
    tile = config.automatic.tile_size
    for z, objects in by_plane.items():
        plane = image.data[z] if z is not None else image.data
        out = labels[z] if z is not None else labels
        if config.autozoom:
            from .autozoom import AutoZoom

            zoom = AutoZoom(predictor, plane, **norm)
            for k, obj in objects:
                out[zoom.segment(obj.points, obj.labels, obj.box, fill_holes=config.fill_holes).mask] = k
            continue
        tiled = TiledImage(predictor, plane, tile or max(plane.shape[:2]), config.automatic.tile_overlap, **norm)
        for k, obj in objects:
            region = tiled.segment(obj.points, obj.labels, obj.box, fill_holes=config.fill_holes)
            h, w = region.mask.shape
            out[region.y0 : region.y0 + h, region.x0 : region.x0 + w][region.mask] = k
    return labels


def _segment(predictor, image: ImageData, path: Path, config: BatchConfig, cancel) -> np.ndarray:
    if config.mode == "prompts":
        prompts = prompts_for_image(config.prompts, path)
        if not prompts:
            raise ValueError(f"no prompts for {path.name} in {config.prompts}")
        return segment_prompts(predictor, image, prompts, config)
    return segment_automatic_any(predictor, image.data, config.automatic_config, stack=image.is_stack,
                                 normalisation=_normalisation(image, config), merge_iou=config.merge_iou,
                                 cancel=cancel)


def process_one(path: str | os.PathLike, config: BatchConfig, key: str | None = None, *,
                predictor=None, cancel=None) -> dict:
    """Segment one image and write its outputs into ``config.out_dir``; never raises for a
    bad image (the error goes into the returned record, ``status == "error"``).

    Args:
        path: the image (see :func:`~napari_edgesam.inference.io.read_image`).
        config: the run's configuration; ``config.out_dir`` must be set.
        key: output name (default: the image's stem).
        predictor: use this predictor instead of loading ``config.model``.
        cancel: an object with ``is_set()``; a cancelled image is not written.
    Returns:
        the record (also written as ``<key>.json`` unless cancelled).
    """
    from .io import image_stem

    if not config.out_dir:
        raise ValueError("config.out_dir is empty: set it, or call run_batch(inputs, out_dir, config)")
    p = Path(path)
    key = key or image_stem(p)
    labels_path, record_path = output_paths(config.out_dir, key)
    record = {"input": str(p), "key": key, "status": "ok", "error": None, "n_objects": 0,
              "labels": labels_path.name, "mode": config.mode, "model": config.model}
    if config.mode == "boxes":
        record |= {"prior": config.prior, "prior_path": config.prior_path()}
    if not config.overwrite and (old := previous_record(config.out_dir, key, config.parameters())) is not None:
        return record | {"status": "skipped", "n_objects": old.get("n_objects", 0), "seconds": 0.0}
    t0 = time.perf_counter()
    timing = {}
    try:
        predictor = predictor if predictor is not None else get_predictor(config)
        check_predictor(predictor, config)
        timing["model_s"] = time.perf_counter() - t0
        image = read_image(p)
        timing["read_s"] = time.perf_counter() - t0 - timing["model_s"]
        t1 = time.perf_counter()
        labels = _segment(predictor, image, p, config, cancel)
        timing["segment_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        write_labels(labels_path, labels)
        timing["write_s"] = time.perf_counter() - t2
        record |= {"n_objects": int(len(np.unique(labels)) - (labels == 0).any()),
                   "shape": list(labels.shape), "backend": predictor.backend.name,
                   "model_name": getattr(predictor, "model_name", config.model)}
    except Cancelled:
        return record | {"status": "cancelled", "seconds": time.perf_counter() - t0}
    except Exception as err:  # noqa: BLE001 - one bad image must not stop the batch
        logger.warning("%s failed: %s", p, err)
        record |= {"status": "error", "error": f"{type(err).__name__}: {err}",
                   "traceback": traceback.format_exc(limit=8)}
    from .. import __version__

    record |= {"seconds": round(time.perf_counter() - t0, 4),
               "timing": {k: round(v, 4) for k, v in timing.items()},
               "parameters": config.parameters(), "version": __version__,
               "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        write_json(record_path, record)
    except OSError as err:
        record |= {"status": "error", "error": f"cannot write {record_path}: {err}"}
    return record


# -- the run ----------------------------------------------------------------------------------
def run_batch(
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: BatchConfig = BatchConfig(),
    *,
    pattern: str = "*",
    progress: BatchProgress | None = None,
    cancel=None,
    scheduler=None,
    predictor=None,
) -> BatchReport:
    """Process many images; see the module docstring for outputs, skipping and the report.

    Args:
        inputs: image files, zarr stores and/or folders (searched with ``pattern``).
        out_dir: output folder (created).
        progress: ``progress(done, total, record)`` after every image.
        cancel: an object with ``is_set()`` (e.g. ``threading.Event``): stops after the current
            image (in process) or cancels the pending tasks (Dask).
        scheduler: None (this process), a Dask scheduler address such as ``"tcp://host:8786"``,
            or a ``distributed.Client``: one task per image.
        predictor: in-process only: use this predictor instead of loading ``config.model``.
    """
    t0 = time.perf_counter()
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    paths = discover_inputs(inputs, pattern)
    if not paths:
        raise ValueError(f"no images found in {[str(i) for i in inputs]} (pattern {pattern!r}); "
                         "supported: .tif, .tiff, .png, .jpg, .jpeg, .zarr")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = replace(config, out_dir=str(out))
    keys = output_keys(paths)
    records: dict[int, dict] = {}
    todo = []
    done = 0

    def finish(i: int, record: dict) -> None:
        nonlocal done
        records[i] = record
        done += 1
        if progress is not None:
            progress(done, len(paths), record)

    params = config.parameters()
    for i, (p, key) in enumerate(zip(paths, keys, strict=True)):
        old = None if config.overwrite else previous_record(out, key, params)
        if old is not None:
            finish(i, {"input": str(p), "key": key, "status": "skipped", "error": None,
                       "n_objects": old.get("n_objects", 0), "seconds": 0.0})
        else:
            todo.append((i, p, key))
    cancelled = False
    try:
        if scheduler is None:
            cancelled = _run_here(todo, config, predictor, cancel, finish)
        else:
            cancelled = _run_dask(todo, config, scheduler, cancel, finish)
    finally:
        for i, p, key in todo:
            if i not in records:
                records[i] = {"input": str(p), "key": key, "status": "cancelled", "error": None,
                              "n_objects": 0, "seconds": 0.0}
        report = BatchReport([records[i] for i in sorted(records)], out, time.perf_counter() - t0, cancelled)
        write_report(report)
    return report


def _run_here(todo, config, predictor, cancel, finish) -> bool:
    if todo:  # fail early (bad model path, no prior) rather than per image
        predictor = predictor if predictor is not None else get_predictor(config)
        check_predictor(predictor, config)
    for i, p, key in todo:
        if cancel is not None and cancel.is_set():
            return True
        record = process_one(p, config, key, predictor=predictor, cancel=cancel)
        finish(i, record)
        if record["status"] == "cancelled":
            return True
    return False


def _run_dask(todo, config, scheduler, cancel, finish) -> bool:
    from distributed import Client, wait

    own = isinstance(scheduler, str)
    client = Client(scheduler) if own else scheduler
    try:
        futures = {client.submit(process_one, str(p), config, key, pure=False): (i, p, key) for i, p, key in todo}
        pending = set(futures)
        while pending:
            if cancel is not None and cancel.is_set():
                client.cancel(list(pending))
                return True
            try:
                finished, _ = wait(list(pending), timeout=0.5, return_when="FIRST_COMPLETED")
            except TimeoutError:
                continue
            for fut in sorted(finished, key=lambda f: futures[f][0]):
                pending.discard(fut)
                i, p, key = futures[fut]
                try:
                    record = fut.result()
                except Exception as err:  # noqa: BLE001 - a lost worker, an unpicklable result
                    record = {"input": str(p), "key": key, "status": "error", "n_objects": 0,
                              "error": f"{type(err).__name__}: {err}", "seconds": 0.0}
                finish(i, record)
        return False
    finally:
        if own:
            client.close()


def write_report(report: BatchReport) -> None:
    """``report.json`` (summary + records) and ``report.csv`` (one row per image) in ``out_dir``."""
    records = [{k: v for k, v in r.items() if k != "traceback"} for r in report.records]
    write_json(report.out_dir / "report.json", {"summary": report.summary, "records": records})
    write_csv(report.out_dir / "report.csv", records, REPORT_COLUMNS)
