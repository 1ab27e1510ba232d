"""Batch processing widget: a folder of images -> label TIFFs + JSON records + a run report.

A thin front end to :func:`napari_edgesam.inference.batch.engine.run_batch` (the same engine as the
``napari-edgesam batch`` CLI): the widget's values become ``(inputs, out_dir, BatchConfig,
pattern)`` in :meth:`BatchWidget.arguments`, the run happens in a worker thread, and each
finished image appears in the report table with its status or error. Modes: automatic from a
point grid, automatic from the model's prior boxes (offered only when the model has a prior
beside its weights), or prompts from CSV files.
"""

from __future__ import annotations

import logging
from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
    Table,
)
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..inference.automatic.boxes import BoxAutomaticConfig
from ..inference.automatic.grid import AutomaticConfig
from ..inference.batch.engine import BatchConfig, BatchReport, run_batch
from .automatic_widget import (
    MODE_BOXES,
    MODE_GRID,
    MODE_TOOLTIP,
    MODEL_TOOLTIP,
    PriorModeChoice,
    failure_message,
    model_status,
)
from .text import default_model, wrapping
from .workers import CancellableRunner

logger = logging.getLogger(__name__)

MODE_AUTO, MODE_PROMPTS = MODE_GRID, "prompts from CSV"
#: widget mode -> ``BatchConfig.mode``
CONFIG_MODES = {MODE_GRID: "auto", MODE_BOXES: "boxes", MODE_PROMPTS: "prompts"}
REPORT_COLUMNS = ("status", "objects", "seconds", "error")


class BatchWidget(QWidget):
    """Segment every image of a folder (automatic from a point grid or prior boxes, or prompts
    from CSV files).

    Args:
        napari_viewer: the viewer (used for notifications only).
        predictor: use this predictor instead of loading the model named in the widget.
    """

    def __init__(self, napari_viewer, predictor=None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._predictor = predictor
        self._rows: list[tuple[str, list]] = []
        self.last_report: BatchReport | None = None

        self.folder = FileEdit(label="input folder", mode="d")
        self.pattern = LineEdit(label="pattern", value="*", tooltip="e.g. *.tif; .tif .tiff .png .jpg .zarr are read")
        self.mode = ComboBox(label="mode", choices=list(CONFIG_MODES), value=MODE_GRID,
                             tooltip=MODE_TOOLTIP + "; prompts from CSV: the objects given in prompt files")
        self.prompts = FileEdit(label="prompts", mode="r", filter="*.csv",
                                tooltip="a prompt CSV (napari-edgesam format, or a napari Points/Shapes "
                                        "CSV export), or a folder of <image stem>.csv files")
        self.output = FileEdit(label="output folder", mode="d")
        model, why = (None, "") if predictor is not None else default_model()
        self.model = LineEdit(label="model", value=model or "edgesam", tooltip=MODEL_TOOLTIP)
        self.points_per_side = SpinBox(label="points per side", value=AutomaticConfig().points_per_side, min=1, max=256)
        self.max_proposals = SpinBox(label="max boxes", value=BoxAutomaticConfig().max_proposals, min=1,
                                     max=100_000, tooltip="decode at most this many prior boxes per image (or tile)")
        self.overwrite = CheckBox(label="overwrite", value=False, tooltip="redo images whose outputs exist")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value=model_status(model, why) if predictor is None else "")
        wrapping(self.status.native)
        self.report = Table(value=[], columns=list(REPORT_COLUMNS))
        self.form = Container(widgets=[
            self.folder, self.pattern, self.mode, self.prompts, self.output, self.model,
            self.points_per_side, self.max_proposals, self.overwrite,
            Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
            self.progress, self.status, self.report,
        ])
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        self._runner = CancellableRunner(self.run_button, self.cancel_button, self.progress, self.status,
                                         on_result=self._on_done, on_error=self._on_error,
                                         on_item=self._on_record, parent=self)

        self.mode.changed.connect(self._update_visibility)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.mode_choice = PriorModeChoice(self.mode, self.model, lambda: self._predictor, self._update_visibility)

    @property
    def _worker(self):
        """The running worker, None when idle."""
        return self._runner.worker

    def _update_visibility(self, _=None) -> None:
        self.prompts.visible = self.mode.value == MODE_PROMPTS
        self.points_per_side.visible = self.mode.value == MODE_GRID
        self.max_proposals.visible = self.mode.value == MODE_BOXES

    # -- the core arguments --------------------------------------------------------------------
    @staticmethod
    def _path(edit: FileEdit) -> Path | None:
        value = edit.value
        return None if value is None or str(value) in ("", ".") else Path(value)

    def arguments(self) -> tuple[list[Path], Path, BatchConfig, str]:
        """``(inputs, out_dir, config, pattern)`` for :func:`run_batch`; ValueError if incomplete."""
        folder, out = self._path(self.folder), self._path(self.output)
        if folder is None or not folder.exists():
            raise ValueError(f"choose an existing input folder (got {str(folder or '') or 'nothing'})")
        if out is None:
            raise ValueError("choose an output folder")
        mode = CONFIG_MODES[self.mode.value]
        prompts = None
        if mode == "prompts":
            prompts = self._path(self.prompts)
            if prompts is None or not prompts.exists():
                raise ValueError("choose a prompt CSV file (or a folder of per-image CSV files)")
        self.mode_choice.check()
        config = BatchConfig(
            mode=mode, prompts=None if prompts is None else str(prompts), model=self.mode_choice.model_name,
            automatic=AutomaticConfig(points_per_side=int(self.points_per_side.value)),
            boxes=BoxAutomaticConfig(max_proposals=int(self.max_proposals.value)),
            prior="auto" if mode == "boxes" else None, overwrite=bool(self.overwrite.value),
        )
        return [folder], out, config, self.pattern.value.strip() or "*"

    # -- running -------------------------------------------------------------------------------
    def run(self, _=None):
        """Start the batch in a worker thread; returns the worker (None if the input is invalid)."""
        return self._runner.start_from(self.arguments, self._task)

    def _task(self, arguments: tuple):
        """The worker function running :func:`run_batch` on ``arguments`` (main thread: also
        clears the report table)."""
        inputs, out, config, pattern = arguments
        predictor = self._predictor
        self._rows = []
        self.report.value = {"data": [], "index": [], "columns": list(REPORT_COLUMNS)}

        def work(relay, cancel) -> BatchReport:
            return run_batch(inputs, out, config, pattern=pattern, cancel=cancel, predictor=predictor,
                             progress=lambda d, t, r: relay.item((d, t, r)))

        return work

    def cancel(self, _=None) -> None:
        """Stop after the image being processed."""
        self._runner.cancel("cancelling after the current image…")

    def _on_record(self, item: tuple[int, int, dict]) -> None:
        done, total, record = item
        self.progress.max = max(total, 1)
        self.progress.value = done
        seconds = record.get("seconds")
        self._rows.append((Path(record["input"]).name, [
            record["status"], record.get("n_objects", 0),
            "" if seconds is None else f"{float(seconds):.2f}", record.get("error") or "",
        ]))
        self.report.value = {"data": [r for _, r in self._rows], "index": [n for n, _ in self._rows],
                             "columns": list(REPORT_COLUMNS)}
        self.status.value = f"{done}/{total}: {Path(record['input']).name} {record['status']}"

    def _on_done(self, report: BatchReport) -> None:
        self.last_report = report
        s = report.summary
        self.status.value = (f"{s['ok']} ok, {s['skipped']} skipped, {s['error']} failed"
                             + (f", {s['cancelled']} cancelled" if s["cancelled"] else "")
                             + f" — report in {report.out_dir}")
        if s["error"]:
            from napari.utils.notifications import show_warning

            show_warning(f"EdgeSAM batch: {s['error']} image(s) failed; see {report.out_dir / 'report.csv'}")

    def _on_error(self, err: Exception) -> None:
        from napari.utils.notifications import show_error

        message = failure_message(err, "batch run")
        self.status.value = f"failed: {message}"
        show_error(f"EdgeSAM batch failed: {message}")
