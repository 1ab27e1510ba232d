"""The interactive widget in a real napari viewer (2D): prompts -> preview -> commit -> undo.

The golden predictor gives arbitrary but deterministic masks, so the tests check structure:
the preview is what ``predictor.segment`` returns for the same prompt on the cached
embedding, commits copy it into the target under a new id, undo restores the pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
from app_model.types import KeyBinding

from _helpers import CountingBackend
from napari_edgesam._napari import layers as L
from napari_edgesam._napari import names
from napari_edgesam._napari.interactive_widget import InteractiveWidget
from napari_edgesam._napari.samples import make_nuclei_2d
from napari_edgesam.inference.core.predictor import EdgeSamPredictor

TIMEOUT = 120_000  # ms; the shared CI machine can be slow


@pytest.fixture()
def predictor(golden_predictor):
    return EdgeSamPredictor(CountingBackend(golden_predictor.backend), "golden")


@pytest.fixture()
def widget(make_napari_viewer, predictor, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(make_nuclei_2d((96, 128), count=6, seed=5), name="nuclei")
    w = InteractiveWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.autozoom.setChecked(False)  # boxes on the whole plane: previews equal predictor.segment's
    w.set_predictor(predictor)
    yield w
    w.controller.close()
    qtbot.waitUntil(lambda: not w.controller._decode.busy and not w.controller.embeddings.busy_embedding,
                    timeout=TIMEOUT)


def wait_embedded(qtbot, c):
    qtbot.waitUntil(lambda: c.embeddings.lookup(c.current_view()) is not None, timeout=TIMEOUT)


def expected_mask(c, predictor, **prompt):
    """``predictor.segment`` on the cached embedding of the current plane."""
    return predictor.segment(**prompt, embedding=c.embeddings.lookup(c.current_view()))


def add_point_and_wait(qtbot, c, xy, positive=True):
    points, _ = c.prompt_layers()
    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT) as blocker:
        L.add_point(points, c.current_plane(), xy, positive)
    return blocker.args[0]


def test_prompt_layers_and_shortcuts_are_created(widget):
    c, viewer = widget.controller, widget.viewer
    points, boxes = c.prompt_layers()
    assert points.name == names.POINTS_LAYER and boxes.name == names.BOXES_LAYER
    for provider in (viewer, points, boxes):
        for sc in names.SHORTCUTS:
            assert KeyBinding.from_str(sc.key.replace("-", "+")) in {KeyBinding.validate(k) for k in provider.keymap}
    text = widget.shortcuts.text()
    assert all(sc.key.replace("-", "+") in text for sc in names.SHORTCUTS)
    # the polarity shortcut works from the points layer
    binding = next(v for k, v in points.keymap.items() if str(k) == "Shift+N")
    assert L.is_positive(points)
    binding(points)
    assert not L.is_positive(points)
    assert widget.polarity.text().endswith("negative")


def test_shortcuts_do_not_clash_with_napari_defaults():
    from napari.utils.shortcuts import default_shortcuts

    ours = {KeyBinding.from_str(sc.key.replace("-", "+")) for sc in names.SHORTCUTS}
    napari_keys = {KeyBinding.validate(k) for keys in default_shortcuts.values() for k in keys}
    assert not ours & napari_keys
    assert len(ours) == len(names.SHORTCUTS)


def test_point_prompts_preview_commit_undo(widget, predictor, qtbot):
    c, viewer = widget.controller, widget.viewer
    wait_embedded(qtbot, c)
    result = add_point_and_wait(qtbot, c, (60, 40))
    mask, score, low = expected_mask(c, predictor, point_coords=np.array([[60, 40]]), point_labels=np.array([1]))
    preview = viewer.layers[names.PREVIEW_LAYER]
    assert mask.any()
    np.testing.assert_array_equal(preview.data > 0, mask)
    assert result.objects[0].score == pytest.approx(score)

    # a negative point refines the same object, reusing the low-res logits as mask input
    add_point_and_wait(qtbot, c, (20, 70), positive=False)
    refined, _, _ = expected_mask(c, predictor, point_coords=np.array([[60, 40], [20, 70]]),
                                  point_labels=np.array([1, 0]), mask_input=low[None])
    np.testing.assert_array_equal(preview.data > 0, refined)

    # commit into a new "EdgeSAM labels" layer, id 1; prompts and preview are cleared
    record = c.commit()
    target = viewer.layers[names.LABELS_LAYER]
    assert record.ids == {1: 1}
    np.testing.assert_array_equal(target.data == 1, refined)
    assert len(c.prompt_layers()[0].data) == 0 and not preview.data.any()
    assert widget.target.currentText() == names.LABELS_LAYER

    # a second object gets id 2 and keeps object 1
    result2 = add_point_and_wait(qtbot, c, (100, 80))
    second = result2.labels > 0
    before = target.data.copy()
    assert c.commit().ids == {1: 2}
    assert np.all(target.data[refined] == 1)
    assert np.all(target.data[second & ~refined] == 2)
    c.undo_commit()
    np.testing.assert_array_equal(target.data, before)
    c.undo_commit()
    assert not target.data.any()


def test_box_prompt_commit_into_existing_labels(widget, predictor, qtbot):
    c, viewer = widget.controller, widget.viewer
    existing = np.zeros((96, 128), np.int32)
    existing[10:30, 10:30] = 4
    existing[50:90, 90:120] = 9
    cellpose = viewer.add_labels(existing.copy(), name="cellpose")
    widget.target.setCurrentText("cellpose")
    assert c.target is cellpose
    wait_embedded(qtbot, c)
    box = (5.0, 5.0, 100.0, 70.0)
    _, boxes = c.prompt_layers()
    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT):
        L.add_box(boxes, c.current_plane(), box)
    mask, _, _ = expected_mask(c, predictor, box=np.array(box))
    np.testing.assert_array_equal(viewer.layers[names.PREVIEW_LAYER].data > 0, mask)
    assert widget.status.text().startswith("object 1: stability")
    record = c.commit()
    assert record.ids == {1: 10}
    data = cellpose.data
    np.testing.assert_array_equal(data[existing > 0], existing[existing > 0])  # preserved
    np.testing.assert_array_equal(data == 10, mask & (existing == 0))
    c.undo_commit()
    np.testing.assert_array_equal(cellpose.data, existing)

    # with "overwrite" the object replaces existing labels
    widget.overwrite.setChecked(True)
    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT):
        L.add_box(boxes, c.current_plane(), box)
    c.commit()
    np.testing.assert_array_equal(cellpose.data == 10, mask)


def test_candidate_cycling_and_clear(widget, predictor, qtbot):
    c, viewer = widget.controller, widget.viewer
    wait_embedded(qtbot, c)
    first = add_point_and_wait(qtbot, c, (60, 40)).objects[0].candidate
    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT) as blocker:
        binding = next(v for k, v in viewer.keymap.items() if str(k) == "Shift+M")
        binding(viewer)
    res = blocker.args[0].objects[0]
    assert res.candidate == (first + 1) % 4
    mask, _, _ = expected_mask(c, predictor, point_coords=np.array([[60, 40]]), point_labels=np.array([1]),
                               candidate=res.candidate)
    np.testing.assert_array_equal(viewer.layers[names.PREVIEW_LAYER].data > 0, mask)
    c.clear()
    assert len(c.prompt_layers()[0].data) == 0
    assert not viewer.layers[names.PREVIEW_LAYER].data.any()


def test_deleting_the_prompts_clears_the_preview(widget, qtbot):
    c, viewer = widget.controller, widget.viewer
    wait_embedded(qtbot, c)
    add_point_and_wait(qtbot, c, (60, 40))
    points, _ = c.prompt_layers()
    points.selected_data = {0}
    points.remove_selected()
    qtbot.waitUntil(lambda: not viewer.layers[names.PREVIEW_LAYER].data.any(), timeout=TIMEOUT)


def test_contrast_change_re_embeds_what_the_user_sees(widget, predictor, golden_predictor, qtbot):
    c, viewer = widget.controller, widget.viewer
    image = viewer.layers["nuclei"]
    wait_embedded(qtbot, c)
    qtbot.waitUntil(lambda: not c.embeddings.busy_embedding, timeout=TIMEOUT)
    backend = predictor.backend
    assert backend.encodes == 1
    add_point_and_wait(qtbot, c, (60, 40))
    old_limits = tuple(image.contrast_limits)
    old_key = c.embeddings.key(c.current_view())
    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT):  # re-embedded, then re-decoded
        image.contrast_limits = (old_limits[0], old_limits[0] + 0.3 * (old_limits[1] - old_limits[0]))
        image.gamma = 0.7
    assert backend.encodes == 2, "one debounced re-embed for two changes"
    view = c.current_view()
    assert view.normalisation["gamma"] == pytest.approx(0.7)
    assert c.embeddings.key(view) != old_key
    # the embedding is of the image as displayed
    expected = golden_predictor.encode(image.data, contrast_limits=view.normalisation["contrast_limits"], gamma=0.7)
    np.testing.assert_allclose(c.embeddings.lookup(view).features, expected.features, atol=2e-2, rtol=1e-2)
    # back to the old display: served from the cache, no encoder call
    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT):
        image.contrast_limits = old_limits
        image.gamma = 1.0
    assert backend.encodes == 2


def test_multichannel_layer_with_channel_choice(make_napari_viewer, predictor, qtbot):
    viewer = make_napari_viewer()
    img = make_nuclei_2d((64, 80), count=4, seed=9)
    stack = np.stack([img, img[::-1], (img // 2)]).astype(np.float32)  # C x Y x X, float
    viewer.add_image(stack, name="channels")
    w = InteractiveWidget(viewer)
    w.set_predictor(predictor)
    c = w.controller
    w.channel_axis.setCurrentIndex(1)  # "axis 0 (3)"
    w.channel.setCurrentText("1")
    assert (c.channel_axis, c.channel) == (0, 1)
    view = c.current_view()
    assert view.image().shape == (64, 80, 3)
    assert view.normalisation["channel"] == 1 and view.normalisation["channel_axis"] == -1
    wait_embedded(qtbot, c)
    add_point_and_wait(qtbot, c, (40, 30))
    preview = viewer.layers[names.PREVIEW_LAYER]
    assert preview.data.shape == stack.shape
    np.testing.assert_array_equal(preview.data[0], preview.data[2])  # one object on every channel
    c.close()
    qtbot.waitUntil(lambda: not c._decode.busy and not c.embeddings.busy_embedding, timeout=TIMEOUT)


def test_rgb_layer(make_napari_viewer, predictor, qtbot):
    viewer = make_napari_viewer()
    grey = make_nuclei_2d((64, 80), count=4, seed=2)
    rgb = np.stack([grey // 256, grey // 512, np.zeros_like(grey)], -1).astype(np.uint8)
    layer = viewer.add_image(rgb, name="rgb")
    assert layer.rgb
    w = InteractiveWidget(viewer)
    w.set_predictor(predictor)
    c = w.controller
    assert w.channel.isEnabled() and w.channel.count() == 4  # composite + 3 channels
    view = c.current_view()
    assert view.image().shape == (64, 80, 3) and view.normalisation["channel_axis"] == -1
    wait_embedded(qtbot, c)
    add_point_and_wait(qtbot, c, (40, 30))
    assert viewer.layers[names.PREVIEW_LAYER].data.shape == (64, 80)
    c.close()
    qtbot.waitUntil(lambda: not c._decode.busy and not c.embeddings.busy_embedding, timeout=TIMEOUT)


def test_load_model_failure_is_reported(widget, qtbot, tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    panel = widget.model_panel
    panel.model.setCurrentText(names.CUSTOM_MODEL_CHOICE)
    panel.path.setText(str(bad))
    with qtbot.waitSignal(widget.controller.status, timeout=TIMEOUT,
                          check_params_cb=lambda text: text.startswith("could not load")):
        panel.load.click()
    assert "could not load" in panel.message.text()
    assert widget.predictor is not None  # the working model stays


def test_load_model_from_a_checkpoint(widget, golden_checkpoint, qtbot):
    panel = widget.model_panel
    panel.model.setCurrentText(names.CUSTOM_MODEL_CHOICE)
    panel.backend.setCurrentText("torch")
    panel.device.setCurrentText("cpu")
    panel.path.setText(str(golden_checkpoint))
    with qtbot.waitSignal(widget.controller.model_changed, timeout=TIMEOUT):
        panel.load.click()
    assert widget.predictor.model_name.startswith("edge_sam-")  # stem + hash prefix
    assert "ready" in panel.message.text()


@pytest.fixture()
def cached_golden_model(monkeypatch, golden_checkpoint):
    """A registered model whose weights are on this machine (the golden checkpoint)."""
    from napari_edgesam.inference.loading import weights

    spec = weights.ModelSpec("test-golden", "golden weights", {"pth": weights.WeightFile(
        golden_checkpoint.name, local_path=golden_checkpoint)})
    monkeypatch.setitem(weights.MODEL_REGISTRY, "test-golden", spec)
    return spec


def test_a_cached_registered_model_loads_at_start(make_napari_viewer, cached_golden_model, qtbot):
    viewer = make_napari_viewer()
    w = InteractiveWidget(viewer)
    assert w.model_panel.model.currentText() == "test-golden"
    qtbot.waitUntil(lambda: w.predictor is not None, timeout=TIMEOUT)
    assert w.predictor.model_name == "test-golden"
    qtbot.waitUntil(lambda: "ready" in w.model_panel.message.text(), timeout=TIMEOUT)


def test_start_up_loading_never_replaces_a_chosen_model(make_napari_viewer, cached_golden_model, predictor, qtbot):
    from napari_edgesam._napari.workers import wait_for_workers

    viewer = make_napari_viewer()
    w = InteractiveWidget(viewer)  # starts loading test-golden in the background
    w.set_predictor(predictor)
    assert wait_for_workers(TIMEOUT)
    qtbot.wait(500)  # deliver the loader's result
    assert w.predictor is predictor
