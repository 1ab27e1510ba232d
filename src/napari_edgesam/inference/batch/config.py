"""What a batch run is asked to do (:class:`BatchConfig`, picklable for Dask workers) and what
it answers (:class:`BatchReport`); see :mod:`napari_edgesam.inference.batch.engine`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..automatic.boxes import BoxAutomaticConfig
from ..automatic.grid import AutomaticConfig
from ..automatic.modes import AnyAutomaticConfig
from ..loading.model_prior import find_model_prior

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
            :mod:`napari_edgesam.inference.batch.io` for the formats.
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
        num_threads: inference threads per worker, any backend (default: the runtime's choice).
        fill_holes: fill interior holes of every object (prompt mode; the automatic modes use
            their config's ``fill_holes``); False keeps them.
        one_piece: prompt mode: keep only the piece of each object's mask that its prompt points
            at (:func:`~napari_edgesam.inference.core.postprocess.keep_prompted_pieces`); False keeps
            every piece.
        autozoom: prompt mode: segment each object in a crop embedded at the scale the model
            handles best (:mod:`napari_edgesam.inference.core.autozoom`) instead of tiles.
        clip_box: prompt mode: a box's mask ends at the box, widened by a pixel and 2% of its
            side (:func:`~napari_edgesam.inference.core.postprocess.clip_to_box`); False keeps
            what lies outside.
        box_centre: prompt mode: a box without positive points is decoded again with its centre
            as a positive point when its first mask holds the centre (``EdgeSamPredictor.segment``);
            False decodes the box alone.
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
    one_piece: bool = True
    autozoom: bool = False
    clip_box: bool = True
    box_centre: bool = True

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
        if self.channel is not None and (isinstance(self.channel, bool)
                                         or not isinstance(self.channel, (int, np.integer))):
            raise ValueError(f"channel must be None or an integer (a channel index), got {self.channel!r}")
        if not isinstance(self.model, (str, os.PathLike)) or not os.fspath(self.model).strip():
            raise ValueError(f"model must be a model name or a .pth/.onnx path, got {self.model!r}")
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
    #: folder entries that are not images: ``{"input": path, "reason": why}``
    ignored: list[dict] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.records)

    @property
    def summary(self) -> dict:
        return {s: self.count(s) for s in ("ok", "skipped", "error", "cancelled")} | {
            "total": len(self.records), "ignored": len(self.ignored), "seconds": round(self.seconds, 3),
            "cancelled_run": self.cancelled,
        }


