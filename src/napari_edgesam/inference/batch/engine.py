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

Files are written atomically (:mod:`napari_edgesam._atomic`), the label image first, so a
record saying ``"ok"`` always has its label image. The record carries the content identities of
what it was made from and what it wrote (``identity``: the image's size, mtime and SHA-256, the
SHA-256 of the prompts that apply to it, the SHA-256 of the label file). An image is skipped
(unless ``overwrite``) only when its record says ``"ok"``, was made with the same result-relevant
parameters (threads, backend and device do not count), the image and its prompts are unchanged
and the label file is the one written; anything changed, missing or damaged is done again.

Before the first image the output folder is created and a test file written there
(:func:`~napari_edgesam._atomic.check_writable`), and temporary files left by a killed earlier
run are removed. A failing image (unreadable, invalid prompt with its CSV row, a failing write)
is recorded with its error and the run goes on. The run writes ``report.json`` and
``report.csv``: one row per image (skipped images keep their earlier results) and one row per
ignored folder entry (not an image, a folder, a broken link), with the reason.

The pieces: :mod:`.config` (what a run is asked, what it answers), :mod:`.resume`
(content identities, what may be skipped), :mod:`.prompts` (prompt mode),
:mod:`.image` (one image: the model once per process, segment, write, record); this module
runs the images.

:func:`~.image.process_one` is a plain top-level function of picklable arguments, loading the model once
per worker process, so it can be shipped to Dask workers as is.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from ..._atomic import OutputWriteError, check_writable, remove_stale_temps
from ..._atomic import describe_write_error as _write_failure
from .config import MODES, REPORT_COLUMNS, BatchConfig, BatchProgress, BatchReport
from .image import check_predictor, get_predictor, process_one
from .io import (
    IMAGE_SUFFIXES,
    find_inputs,
    output_keys,
    write_csv,
    write_json,
)
from .prompt_csv import unmatched_images
from .prompts import PromptError, check_prompts, segment_prompts
from .resume import (
    is_batch_output,
    output_paths,
    previous_record,
    same_result_parameters,
    skipped_record,
)

__all__ = [
    "MODES", "REPORT_COLUMNS", "BatchConfig", "BatchProgress", "BatchReport", "PromptError", "check_prompts",
    "get_predictor", "output_paths", "previous_record", "process_one", "run_batch", "same_result_parameters",
    "segment_prompts", "write_report",
]

logger = logging.getLogger(__name__)


# -- the run ----------------------------------------------------------------------------------
def run_batch(
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: BatchConfig | None = None,
    *,
    pattern: str = "*",
    progress: BatchProgress | None = None,
    cancel=None,
    scheduler=None,
    predictor=None,
) -> BatchReport:
    """Process many images; see the module docstring for outputs, skipping and the report.

    Args:
        inputs: image files, zarr stores and/or folders (searched with ``pattern``; entries
            that are not images are listed in the report as ignored).
        out_dir: output folder (created and checked with a test write before the first image:
            :class:`~napari_edgesam._atomic.UnwritableFolderError` if it cannot be written).
        progress: ``progress(done, total, record)`` after every image.
        cancel: an object with ``is_set()`` (e.g. ``threading.Event``): stops after the current
            image (in process) or cancels the pending tasks (Dask).
        scheduler: None (this process), a Dask scheduler address such as ``"tcp://host:8786"``,
            or a ``distributed.Client``: one task per image.
        predictor: in-process only: use this predictor instead of loading ``config.model``.
    """
    config = BatchConfig() if config is None else config
    t0 = time.perf_counter()
    if not isinstance(out_dir, (str, os.PathLike)) or not os.fspath(out_dir).strip():  # '' would be the cwd
        raise ValueError(f"out_dir must name an output folder, got {out_dir!r}")
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    found = find_inputs(inputs, pattern)
    outputs = [p for p in found.images if is_batch_output(p, out_dir)]  # out_dir inside (or = ) an input
    paths = [p for p in found.images if p not in outputs]
    ignored = [{"input": str(q), "key": "", "status": "ignored", "error": reason, "n_objects": 0, "seconds": 0.0}
               for q, reason in [*found.ignored, *((p, "a label image this batch wrote") for p in outputs)]]
    for row in ignored[:20]:
        logger.warning("ignored %s: %s", row["input"], row["error"])
    if len(ignored) > 20:
        logger.warning("... and %d more ignored entries (see report.csv)", len(ignored) - 20)
    if not paths:
        listed = "; ".join(f"{r['input']}: {r['error']}" for r in ignored[:3])
        raise ValueError(f"no images found in {', '.join(str(i) for i in inputs)} (pattern {pattern!r}); "
                         f"supported: {', '.join(IMAGE_SUFFIXES)}, .zarr" + (f"; ignored {listed}" if listed else ""))
    if config.mode == "prompts" and not Path(config.prompts).exists():
        raise FileNotFoundError(f"prompt file or folder not found: {config.prompts}")
    if config.mode == "prompts":  # prompt rows for an image that is not among the inputs: said, not dropped
        try:
            stray = unmatched_images(config.prompts, paths)
        except ValueError:
            stray = []  # a CSV that cannot be read is reported per image
        for n, (name, where) in enumerate(stray):
            reason = (f"prompt rows for image {name!r} ({where}) match no input image (by file name or stem); "
                      "check the name's spelling and case")
            if n < 10:
                logger.warning("%s", reason)
            elif n == 10:
                logger.warning("... and %d more image names of %s that match no input (see report.csv)",
                               len(stray) - 10, config.prompts)
            ignored.append({"input": str(config.prompts), "key": name, "status": "ignored", "error": reason,
                            "n_objects": 0, "seconds": 0.0})
    out = check_writable(out_dir)  # before the first image, not after the last
    for name in ("report.json", "report.csv"):  # a folder of that name would fail only at the end
        if (out / name).is_dir():
            raise OutputWriteError(_write_failure(out / name, IsADirectoryError(errno.EISDIR, "Is a directory")))
    remove_stale_temps(out)  # left by a killed earlier run
    config = replace(config, out_dir=str(out))
    keys = output_keys(paths)
    _check_no_input_overwritten(paths, keys, out)
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
        old = None if config.overwrite else previous_record(out, key, params, image=p, config=config)
        if old is not None:
            finish(i, skipped_record(p, key, old))
        else:
            todo.append((i, p, key))
    cancelled = False
    failed = True
    try:
        if scheduler is None:
            cancelled = _run_here(todo, config, predictor, cancel, finish)
        else:
            cancelled = _run_dask(todo, config, scheduler, cancel, finish)
        failed = False
    finally:
        for i, p, key in todo:
            if i not in records:
                records[i] = {"input": str(p), "key": key, "status": "cancelled", "error": None,
                              "n_objects": 0, "seconds": 0.0}
        report = BatchReport([records[i] for i in sorted(records)], out, time.perf_counter() - t0, cancelled,
                             ignored)
        try:
            write_report(report)
        except OSError as err:
            if not failed:  # else the run's own error is the one to see
                raise OutputWriteError(_write_failure(out / "report.csv", err)) from None
            logger.error("%s", _write_failure(out / "report.csv", err))
    return report




def _check_no_input_overwritten(paths: Sequence[Path], keys: Sequence[str], out: Path) -> None:
    """ValueError before any work if an output file would replace an input image (an output
    folder holding the inputs, with e.g. ``a.tif`` and ``a_labels.tif`` among them)."""
    def where(p: Path) -> str:
        try:
            return os.path.realpath(p)
        except OSError:
            return os.path.abspath(p)

    inputs = {where(p): p for p in paths}
    for p, key in zip(paths, keys, strict=True):
        for target in output_paths(out, key):
            victim = inputs.get(where(target))
            if victim is not None:
                raise ValueError(f"the output {target} of {p} would overwrite the input image {victim}: "
                                 "choose an output folder that holds no input images")


def _run_here(todo, config, predictor, cancel, finish) -> bool:
    if todo:  # fail early (bad model path, no prior) rather than per image
        predictor = predictor if predictor is not None else get_predictor(config)
        check_predictor(predictor, config)
    for i, p, key in todo:
        if cancel is not None and cancel.is_set():
            return True
        record = process_one(p, config, key, predictor=predictor, cancel=cancel, resume_checked=True)
        finish(i, record)
        if record["status"] == "cancelled":
            return True
    return False


def _run_dask(todo, config, scheduler, cancel, finish) -> bool:
    from distributed import Client, wait

    own = isinstance(scheduler, str)
    client = Client(scheduler) if own else scheduler
    try:
        futures = {client.submit(process_one, str(p), config, key, resume_checked=True, pure=False): (i, p, key)
                   for i, p, key in todo}
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
    """``report.json`` (summary, records, ignored entries) and ``report.csv`` (one row per image,
    then one ``ignored`` row per folder entry that is not an image) in ``out_dir``, atomically."""
    records = [{k: v for k, v in r.items() if k not in ("traceback", "identity")} for r in report.records]
    write_json(report.out_dir / "report.json", {"summary": report.summary, "records": records,
                                               "ignored": report.ignored})
    write_csv(report.out_dir / "report.csv", records + report.ignored, REPORT_COLUMNS)
