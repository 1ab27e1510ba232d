"""The automatic segmentation widget in a napari viewer (with the oracle predictor stub)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from _helpers import (
    BoxOraclePredictor,
    LabelOraclePredictor,
    ThresholdPrior,
    matched_ious,
    run_widget,
    synthetic_instances,
)
from napari_edgesam.inference.automatic.boxes import BoxAutomaticConfig

pytest.importorskip("napari")
from napari_edgesam._napari.automatic_widget import (  # noqa: E402
    LABELS_LAYER,
    MODE_BOXES,
    MODE_GRID,
    REGION_BOX,
    REGION_VISIBLE,
    STACK_ALL,
    AutomaticWidget,
    region_from_corners,
    region_from_shape,
)


@pytest.fixture()
def viewer_and_widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, truth = synthetic_instances((256, 256), n=8, rmin=12, rmax=24, seed=4)
    viewer.add_image(image, name="cells")
    widget = AutomaticWidget(viewer, predictor=LabelOraclePredictor())
    widget.points_per_side.value = 16
    qtbot.addWidget(widget)
    return viewer, widget, truth


def test_whole_image_into_a_labels_layer(viewer_and_widget, qtbot):
    viewer, widget, truth = viewer_and_widget
    assert widget.image_layer.value is viewer.layers["cells"]
    run_widget(widget, qtbot)
    labels = viewer.layers[LABELS_LAYER].data
    assert labels.shape == truth.shape
    assert (matched_ious(truth, labels) > 0.8).all()
    assert widget.status.value.endswith("objects") and widget.run_button.enabled
    run_widget(widget, qtbot)  # a second run reuses the layer
    assert [layer.name for layer in viewer.layers].count(LABELS_LAYER) == 1


def test_box_region_keeps_objects_elsewhere(viewer_and_widget, qtbot):
    viewer, widget, truth = viewer_and_widget
    shapes = viewer.add_shapes([np.array([[0, 0], [0, 128], [128, 128], [128, 0]])], shape_type="rectangle", name="box")
    widget.region.value = REGION_BOX
    widget.box_layer.value = shapes
    assert not widget.box_layer.native.isHidden()
    req = widget.request()
    assert req.region == (0, 0, 128, 128)
    run_widget(widget, qtbot)
    labels = viewer.layers[LABELS_LAYER].data
    assert not labels[128:, :].any() and not labels[:, 128:].any()
    inside = [i for i in range(1, truth.max() + 1) if (truth == i)[:128, :128].sum() == (truth == i).sum()]
    assert all(matched_ious(np.where(truth == i, i, 0), labels)[i - 1] > 0.8 for i in inside)


def test_stack_all_slices_merged_in_3d(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    zz, yy, xx = np.mgrid[:5, :96, :96]
    truth = (((zz - 2) * 6) ** 2 + (yy - 40) ** 2 + (xx - 50) ** 2 <= 24**2).astype(np.int32)
    viewer.add_image((truth * 150).astype(np.uint8), name="stack")
    widget = AutomaticWidget(viewer, predictor=LabelOraclePredictor())
    qtbot.addWidget(widget)
    widget.points_per_side.value = 8
    assert not widget.stack.native.isHidden()
    viewer.dims.set_point(0, 3)
    req = widget.request()
    assert req.z == 3 and req.image.shape == (96, 96)
    run_widget(widget, qtbot)
    data = viewer.layers[LABELS_LAYER].data
    assert data.shape == (5, 96, 96) and data[3].any() and not data[0].any()
    widget.stack.value = STACK_ALL
    run_widget(widget, qtbot)
    data = viewer.layers[LABELS_LAYER].data
    assert ((data > 0) == (truth > 0)).all() and data.max() == 1


class SlowOracle(LabelOraclePredictor):
    def encode_rgb(self, rgb, **kwargs):
        time.sleep(0.5)
        return super().encode_rgb(rgb, **kwargs)


def test_cancel_and_errors_reach_the_status(viewer_and_widget, qtbot):
    viewer, widget, _ = viewer_and_widget
    widget._predictor = SlowOracle()
    worker = widget.run()
    assert not widget.run_button.enabled and widget.cancel_button.enabled
    widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=30_000)
    assert worker is not None and widget.status.value == "cancelled" and LABELS_LAYER not in viewer.layers
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=5000)
    widget.image_layer.value = None
    assert widget.run() is None and "image layer" in widget.status.value


def test_region_helpers_convert_rowcol_to_xy():
    assert region_from_corners(np.array([[0, 10, 20], [0, 49, 99]])) == (20, 10, 100, 50)
    assert region_from_corners(np.array([[5, 5], [5, 5]])) is None
    assert region_from_shape(np.array([[3, 10, 20], [3, 40, 60]])) == (20, 10, 60, 40)


def test_visible_region_is_read_from_the_layer(viewer_and_widget):
    viewer, widget, _ = viewer_and_widget
    widget.region.value = REGION_VISIBLE
    layer = viewer.layers["cells"]
    layer.corner_pixels = np.array([[10, 20], [100, 200]])
    assert widget.request().region == (20, 10, 201, 101)


# -- the prior-box mode -----------------------------------------------------------------------
def test_prior_boxes_mode_segments_with_the_prior(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, truth = synthetic_instances((256, 256), n=8, rmin=12, rmax=24, seed=4)
    viewer.add_image(image, name="cells")
    prior = ThresholdPrior()
    predictor = BoxOraclePredictor(prior=prior)
    widget = AutomaticWidget(viewer, predictor=predictor)
    qtbot.addWidget(widget)
    assert _boxes_item(widget).isEnabled()
    assert widget.mode.value == MODE_BOXES  # a model with a prior starts in prior-box mode
    assert not widget.score.native.isHidden() and widget.points_per_side.native.isHidden()
    widget.mode.value = MODE_GRID  # the user's choice ...
    assert widget.score.native.isHidden() and not widget.points_per_side.native.isHidden()
    widget.mode_choice.update()
    assert widget.mode.value == MODE_GRID  # ... is kept
    widget.mode.value = MODE_BOXES
    assert not widget.score.native.isHidden() and widget.points_per_side.native.isHidden()
    assert widget.stability.value == BoxAutomaticConfig().stability_thresh
    widget.max_proposals.value = 50
    assert not widget.zoom.native.isHidden() and widget.zoom.value  # zoom on small objects: on by default
    widget.zoom.value = False
    config = widget.request().config
    assert isinstance(config, BoxAutomaticConfig) and config.max_proposals == 50 and not config.zoom
    widget.zoom.value = True
    run_widget(widget, qtbot)
    labels = viewer.layers[LABELS_LAYER].data
    assert (matched_ious(truth, labels) > 0.85).all() and labels.max() == truth.max()
    assert prior.calls == 1 and predictor.prompts >= truth.max()
    assert widget.progress.value == widget.progress.max and widget.status.value == f"{truth.max()} objects"


def test_prior_boxes_disabled_without_a_prior(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    widget = AutomaticWidget(viewer, predictor=LabelOraclePredictor())  # no prior
    qtbot.addWidget(widget)
    item = _boxes_item(widget)
    assert not item.isEnabled() and "granularity prior" in item.toolTip()
    widget.mode.value = MODE_BOXES  # forced programmatically: refused with the reason
    viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    assert widget.run() is None and "prior" in widget.status.value
    # without an injected predictor the model's files decide
    named = AutomaticWidget(viewer)
    qtbot.addWidget(named)
    named.model.value = "edgesam-nuclei"  # ships edge_sam_nuclei.prior.pth
    assert _boxes_item(named).isEnabled()
    named.mode.value = MODE_BOXES
    model = tmp_path / "mine.pth"
    model.write_bytes(b"never loaded")
    named.model.value = str(model)
    assert not _boxes_item(named).isEnabled() and named.mode.value == MODE_GRID
    assert str(tmp_path / "mine.prior.pth") in _boxes_item(named).toolTip()


def test_prior_boxes_cancel(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, _ = synthetic_instances((160, 160), n=4, rmin=12, rmax=20, seed=1)
    viewer.add_image(np.stack([image] * 6), name="stack")
    widget = AutomaticWidget(viewer, predictor=SlowBoxOracle(prior=ThresholdPrior()))
    qtbot.addWidget(widget)
    widget.mode.value = MODE_BOXES
    widget.stack.value = STACK_ALL
    worker = widget.run()
    assert worker is not None and widget.cancel_button.enabled
    widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=30_000)
    assert widget.status.value == "cancelled" and LABELS_LAYER not in viewer.layers
    assert widget.run_button.enabled and not widget.cancel_button.enabled


class SlowBoxOracle(BoxOraclePredictor):
    def encode_rgb(self, rgb, **kwargs):
        time.sleep(0.3)
        return super().encode_rgb(rgb, **kwargs)


def _boxes_item(widget):
    combo = widget.mode.native
    return combo.model().item(combo.findText(MODE_BOXES))
