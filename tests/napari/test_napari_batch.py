"""The batch widget: folder in, labels + records + report out, through the shared engine."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tifffile

from _helpers import (
    BoxOraclePredictor,
    LabelOraclePredictor,
    ThresholdPrior,
    matched_ious,
    run_widget,
    synthetic_instances,
)

pytest.importorskip("napari")
from napari_edgesam._napari.batch_widget import MODE_BOXES, MODE_GRID, MODE_PROMPTS, BatchWidget  # noqa: E402


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    truths = {}
    for i in range(3):
        image, truth = synthetic_instances((160, 160), n=4, rmin=12, rmax=20, seed=20 + i)
        tifffile.imwrite(d / f"img{i}.tif", image)
        truths[f"img{i}"] = truth
    return d, truths


@pytest.fixture()
def widget(make_napari_viewer, qtbot):
    w = BatchWidget(make_napari_viewer(), predictor=LabelOraclePredictor())
    w.points_per_side.value = 12
    qtbot.addWidget(w)
    return w


def test_batch_widget_runs_skips_and_reports_errors(widget, folder, tmp_path, qtbot):
    d, truths = folder
    out = tmp_path / "out"
    widget.folder.value, widget.output.value = d, out
    inputs, out_dir, config, pattern = widget.arguments()
    assert inputs == [d] and out_dir == out and config.mode == "auto" and config.automatic.points_per_side == 12
    run_widget(widget, qtbot)
    assert widget.report.shape == (3, 4) and widget.report.row_headers == ("img0.tif", "img1.tif", "img2.tif")
    assert [row[0] for row in widget.report.data.to_list()] == ["ok"] * 3
    assert widget.progress.value == 3 and "3 ok" in widget.status.value
    for key, truth in truths.items():
        assert (matched_ious(truth, tifffile.imread(out / f"{key}_labels.tif")) > 0.8).all()
        assert json.loads((out / f"{key}.json").read_text())["status"] == "ok"
    (d / "img3.tif").write_bytes(b"not a tiff")
    run_widget(widget, qtbot)
    assert [row[0] for row in widget.report.data.to_list()] == ["skipped"] * 3 + ["error"]
    assert "1 failed" in widget.status.value and widget.last_report.count("error") == 1
    assert json.loads((out / "report.json").read_text())["summary"]["skipped"] == 3


def test_batch_widget_prompt_mode_with_napari_points_csv(widget, folder, tmp_path, qtbot):
    d, truths = folder
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for key, truth in truths.items():
        r, c = np.argwhere(truth == 1).mean(0)
        (prompts / f"{key}_points.csv").write_text(f"index,axis-0,axis-1\n0,{r},{c}\n")
    widget.folder.value, widget.output.value = d, tmp_path / "out"
    widget.mode.value = MODE_PROMPTS
    assert not widget.prompts.native.isHidden() and widget.points_per_side.native.isHidden()
    with pytest.raises(ValueError, match="prompt"):
        widget.arguments()
    widget.prompts.value = prompts
    run_widget(widget, qtbot)
    for key, truth in truths.items():
        labels = tifffile.imread(tmp_path / "out" / f"{key}_labels.tif")
        assert ((labels == 1) == (truth == 1)).all()


class SlowOracle(LabelOraclePredictor):
    def encode_rgb(self, rgb, **kwargs):
        time.sleep(0.3)
        return super().encode_rgb(rgb, **kwargs)


def test_batch_widget_cancel_and_validation(widget, folder, tmp_path, qtbot):
    d, _ = folder
    assert widget.run() is None and "input folder" in widget.status.value
    widget.folder.value = d
    with pytest.raises(ValueError, match="output"):
        widget.arguments()
    widget.output.value = tmp_path / "out"
    widget._predictor = SlowOracle()
    worker = widget.run()
    widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    assert worker is not None
    statuses = [r["status"] for r in widget.last_report.records]
    assert statuses.count("cancelled") >= 2 and widget.last_report.cancelled
    assert "cancelled" in widget.status.value


def test_batch_widget_prior_boxes_mode(make_napari_viewer, folder, tmp_path, qtbot):
    d, truths = folder
    prior = ThresholdPrior()
    widget = BatchWidget(make_napari_viewer(), predictor=BoxOraclePredictor(prior=prior))
    qtbot.addWidget(widget)
    combo = widget.mode.native
    assert combo.model().item(combo.findText(MODE_BOXES)).isEnabled()
    widget.folder.value, widget.output.value = d, tmp_path / "out"
    widget.mode.value = MODE_BOXES
    assert widget.points_per_side.native.isHidden() and not widget.max_proposals.native.isHidden()
    widget.max_proposals.value = 40
    _, _, config, _ = widget.arguments()
    assert config.mode == "boxes" and config.prior == "auto" and config.boxes.max_proposals == 40
    run_widget(widget, qtbot)
    assert [row[0] for row in widget.report.data.to_list()] == ["ok"] * 3 and prior.calls == 3
    for key, truth in truths.items():
        assert (matched_ious(truth, tifffile.imread(tmp_path / "out" / f"{key}_labels.tif")) > 0.85).all()
        record = json.loads((tmp_path / "out" / f"{key}.json").read_text())
        assert record["mode"] == "boxes" and record["prior"] == "auto"
        assert record["parameters"]["boxes"]["max_proposals"] == 40 and "automatic" not in record["parameters"]


def test_batch_widget_prior_boxes_needs_a_prior(widget, folder, tmp_path):
    d, _ = folder
    combo = widget.mode.native
    item = combo.model().item(combo.findText(MODE_BOXES))
    assert not item.isEnabled() and "granularity prior" in item.toolTip()  # the oracle has no prior
    widget.folder.value, widget.output.value = d, tmp_path / "out"
    widget.mode.value = MODE_BOXES
    with pytest.raises(ValueError, match="prior"):
        widget.arguments()
    widget.mode.value = MODE_GRID
    assert widget.arguments()[2].mode == "auto"
