"""The Qt-free session model: prompt grouping, EdgeSAM's decoding rules, commit and undo."""

from __future__ import annotations

import numpy as np
import pytest

from napari_edgesam.interactive.session import ObjectPrompt, Session, group_prompts


@pytest.fixture(scope="module")
def embedded(golden_predictor):
    """The golden predictor's embedding of a small synthetic image (computed once)."""
    rng = np.random.default_rng(3)
    img = rng.normal(500, 50, (96, 128))
    img[30:60, 40:80] += 900
    return golden_predictor.encode(img.astype(np.uint16))


def _point(x, y, label=1):
    return np.array([[x, y]], np.float32), np.array([label])


# -- grouping -----------------------------------------------------------------------------------
def test_points_without_boxes_form_one_object():
    objs, ignored = group_prompts(np.array([[5, 6], [7, 8]]), np.array([1, 0]), [])
    assert len(objs) == 1 and ignored == 0
    np.testing.assert_array_equal(objs[0].labels, [1, 0])
    assert objs[0].box is None and objs[0].n_items == 2


def test_each_box_is_an_object_with_the_points_inside_it():
    boxes = [np.array([0, 0, 10, 10]), np.array([20, 20, 40, 40])]
    pts = np.array([[5, 5], [30, 30], [35, 22], [100, 100]])
    objs, ignored = group_prompts(pts, np.array([1, 1, 0, 1]), boxes)
    assert [len(o.points) for o in objs] == [1, 2]
    np.testing.assert_array_equal(objs[1].labels, [1, 0])
    assert ignored == 1
    assert objs[0].anchor != objs[1].anchor


def test_no_prompts_no_objects():
    assert group_prompts(np.empty((0, 2)), np.empty(0), []) == ([], 0)
    with pytest.raises(ValueError, match="labels"):
        group_prompts(np.zeros((2, 2)), np.zeros(3), [])


# -- decoding (golden weights: arbitrary but deterministic masks) --------------------------------
def test_point_prompt_matches_segment_and_refinement_reuses_logits(golden_predictor, embedded):
    session = Session()
    pts, labels = _point(60, 45)
    first = session.decode(golden_predictor, embedded, "p", [ObjectPrompt(pts, labels)])
    mask, score, low = golden_predictor.segment(pts, labels, embedding=embedded)
    res = first.objects[0]
    np.testing.assert_array_equal(res.mask, mask)
    assert res.score == pytest.approx(score)
    np.testing.assert_allclose(res.low_res, low, atol=1e-5)
    np.testing.assert_array_equal(first.labels, mask.astype(np.uint16))
    assert res.candidate in range(4)

    # a second point refines the same object: the previous logits are the mask input
    pts2, labels2 = np.vstack([pts, [[20, 80]]]), np.array([1, 0])
    second = session.decode(golden_predictor, embedded, "p", [ObjectPrompt(pts2, labels2)])
    expected, _, _ = golden_predictor.segment(pts2, labels2, mask_input=low[None], embedding=embedded)
    np.testing.assert_array_equal(second.objects[0].mask, expected)

    # removing the point again decodes from scratch (no stale mask input)
    assert session.mask_input_for("p", 0, ObjectPrompt(pts, labels)) is None
    third = session.decode(golden_predictor, embedded, "p", [ObjectPrompt(pts, labels)])
    np.testing.assert_array_equal(third.objects[0].mask, mask)


def test_refinement_without_mask_input_for_models_whose_mask_path_loses(golden_predictor, embedded, monkeypatch):
    """``refine_with_mask_input = False`` (set by ``load_model`` for the shipped model): a second
    point decodes from the prompts alone."""
    predictor = golden_predictor
    monkeypatch.setattr(predictor, "refine_with_mask_input", False)
    session = Session()
    pts, labels = _point(60, 45)
    session.decode(predictor, embedded, "p", [ObjectPrompt(pts, labels)])
    pts2, labels2 = np.vstack([pts, [[20, 80]]]), np.array([1, 0])
    second = session.decode(predictor, embedded, "p", [ObjectPrompt(pts2, labels2)])
    np.testing.assert_array_equal(second.objects[0].mask, golden_predictor.segment(pts2, labels2, embedding=embedded)[0])


def test_the_model_spec_decides_whether_refinements_use_mask_input(golden_predictor, monkeypatch):
    import dataclasses

    from napari_edgesam.inference.loading import weights
    from napari_edgesam.inference.loading.api import load_model

    # the shipped v2 trains its mask path in the loop: refinements pass the previous logits
    assert load_model("edgesam-nuclei", backend="onnxruntime").refine_with_mask_input is True
    spec = weights.MODEL_REGISTRY["edgesam-nuclei"]
    monkeypatch.setitem(weights.MODEL_REGISTRY, "edgesam-nuclei", dataclasses.replace(spec, mask_input_refines=False))
    assert load_model("edgesam-nuclei", backend="onnxruntime").refine_with_mask_input is False
    assert golden_predictor.refine_with_mask_input is True  # any other model: SAM's use


def test_box_prompt_uses_token_zero(golden_predictor, embedded):
    session = Session()
    box = np.array([30, 20, 90, 70], np.float32)
    out = session.decode(golden_predictor, embedded, "b", [ObjectPrompt(np.empty((0, 2), np.float32), np.empty(0, int), box)])
    expected, score, _ = golden_predictor.segment(box=box, embedding=embedded)
    np.testing.assert_array_equal(out.objects[0].mask, expected)
    assert out.objects[0].candidate is None
    assert session.cycle_candidate("b") is None  # boxes have one mask only


def test_cycle_candidate_walks_through_the_four_masks(golden_predictor, embedded):
    session = Session()
    pts, labels = _point(60, 45)
    obj = ObjectPrompt(pts, labels)
    start = session.decode(golden_predictor, embedded, "c", [obj]).objects[0].candidate
    seen = [start]
    for _ in range(3):
        chosen = session.cycle_candidate("c")
        res = session.decode(golden_predictor, embedded, "c", [obj]).objects[0]
        assert res.candidate == chosen == (seen[-1] + 1) % 4
        expected, _, _ = golden_predictor.segment(pts, labels, candidate=chosen, embedding=embedded)
        np.testing.assert_array_equal(res.mask, expected)
        seen.append(chosen)
    assert sorted(seen) == [0, 1, 2, 3]
    # a new object starts again from the most stable candidate
    other = ObjectPrompt(*_point(10, 10))
    assert session.decode(golden_predictor, embedded, "c", [other]).objects[0].candidate == \
        Session().decode(golden_predictor, embedded, "x", [other]).objects[0].candidate


# -- commit and undo -----------------------------------------------------------------------------
def _labels_with_existing():
    target = np.zeros((20, 30), np.uint16)
    target[2:6, 2:6] = 3
    target[10:14, 10:14] = 7
    return target


def test_commit_gives_new_ids_and_preserves_existing_objects():
    target = _labels_with_existing()
    before = target.copy()
    preview = np.zeros_like(target)
    preview[8:16, 8:20] = 1  # overlaps object 7
    preview[0:3, 25:28] = 2
    session = Session()
    record = session.commit(preview, target, handle="layer")
    assert record.ids == {1: 8, 2: 9}
    assert np.all(target[preview == 1][before[preview == 1] == 0] == 8)
    assert np.all(target[before == 7] == 7), "existing object overwritten"
    assert np.all(target[before == 3] == 3)
    assert np.all(target[preview == 2] == 9)
    assert session.can_undo
    assert session.undo(lambda handle: target if handle == "layer" else None) is record
    np.testing.assert_array_equal(target, before)
    assert not session.can_undo


def test_commit_overwrite_and_keep_ids():
    target = _labels_with_existing()
    preview = np.zeros_like(target)
    preview[8:16, 8:20] = 1
    Session().commit(preview, target, overwrite=True)
    assert np.all(target[preview == 1] == 8)
    target = _labels_with_existing()
    Session().commit(preview, target, keep_ids={1: 7})
    assert np.all(target[preview == 1] == 7)


def test_commit_errors_and_empty_preview():
    session = Session()
    target = np.zeros((4, 4), np.uint8)
    assert session.commit(np.zeros((4, 4), np.uint8), target) is None
    with pytest.raises(ValueError, match="shape"):
        session.commit(np.ones((4, 5), np.uint8), target)
    full = np.full((4, 4), 255, np.uint8)
    full[0, 0] = 0
    preview = np.zeros((4, 4), np.uint8)
    preview[0, 0] = 1
    with pytest.raises(ValueError, match="dtype"):
        session.commit(preview, full)
    with pytest.raises(RuntimeError, match="commit"):
        session.undo(lambda h: None)


def test_undo_restores_several_commits_in_reverse_order():
    target = np.zeros((10, 10), np.uint32)
    session = Session()
    states = [target.copy()]
    for k in range(3):
        preview = np.zeros_like(target)
        preview[k * 3 : k * 3 + 4, 2:8] = 1
        session.commit(preview, target)
        states.append(target.copy())
    assert target.max() == 3
    for expected in reversed(states[:-1]):
        session.undo(lambda h: target)
        np.testing.assert_array_equal(target, expected)
