"""Bad input gets a clear error; microscopy dtypes and layouts work."""

from __future__ import annotations

import numpy as np
import pytest

from napari_edgesam.inference.core.predictor import EdgeSamPredictor, ImageEmbedding


@pytest.fixture()
def predictor(golden_predictor, edge_golden):
    golden_predictor.set_embedding(
        ImageEmbedding(edge_golden["image_embeddings"], (300, 400), (768, 1024))
    )
    return golden_predictor


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"point_coords": [[10, 10]], "point_labels": [2]}, "0 .negative. or 1"),
        ({"point_coords": [[10, 10]], "point_labels": [1, 0]}, "shape \\(1,\\)"),
        ({"point_coords": [10, 10], "point_labels": [1]}, "shape \\(N, 2\\)"),
        ({"point_coords": [[np.nan, 10]], "point_labels": [1]}, "NaN"),
        ({"point_coords": [[500, 10]], "point_labels": [1]}, "outside the image .width 400, height 300"),
        ({"point_coords": [[10, -3]], "point_labels": [1]}, "outside the image"),
        ({"point_coords": [[10, 10]]}, "point_labels are required"),
        ({"point_labels": [1]}, "without point_coords"),
        ({"box": [200, 10, 100, 50]}, "x0 <= x1"),
        ({"box": [10, 10, 100]}, "shape \\(4,\\)"),
        ({"box": [10, 10, 100, 400]}, "outside the image"),
        ({"box": [10, 10, np.inf, 40]}, "NaN or inf"),
        ({}, "at least one point"),
        ({"box": [10, 10, 50, 50], "num_multimask_outputs": 2}, "1, 3 or 4"),
        ({"box": [10, 10, 50, 50], "mask_input": np.zeros((64, 64))}, "mask_input must be"),
    ],
)
def test_bad_prompts(predictor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict(**kwargs)


def test_predict_before_set_image(golden_predictor):
    p = EdgeSamPredictor(golden_predictor.backend)
    with pytest.raises(RuntimeError, match="call set_image"):
        p.predict(box=[0, 0, 5, 5])
    with pytest.raises(TypeError, match="ImageEmbedding"):
        p.set_embedding(np.zeros((1, 256, 64, 64)))


@pytest.mark.parametrize(
    "image,err,match",
    [
        (np.zeros((0, 10)), ValueError, "empty"),
        (np.zeros((10,)), ValueError, "must be 2D"),
        (np.zeros((8, 10, 10, 3)), ValueError, "must be 2D"),
        (np.zeros((20, 30, 30)), ValueError, "3D volume"),
        (np.array([["a", "b"]]), TypeError, "dtype"),
    ],
)
def test_bad_images(golden_predictor, image, err, match):
    with pytest.raises(err, match=match):
        golden_predictor.encode(image)


def test_box_on_edges_and_empty_point_list(predictor):
    masks, scores, low = predictor.predict(box=[0, 0, 400, 300])
    assert masks.shape == (1, 300, 400)
    masks2, _, _ = predictor.predict(point_coords=np.zeros((0, 2)), point_labels=[], box=[0, 0, 400, 300])
    np.testing.assert_array_equal(masks, masks2)


def test_segment_rule(predictor, golden_cases):
    """Points: the most stable of 4 candidates; boxes: token 0; holes filled and only the
    prompted piece kept unless asked not to."""
    from napari_edgesam.inference.core.postprocess import (
        clip_to_box,
        fill_holes,
        keep_prompted_pieces,
        stability_score,
    )

    c = golden_cases["point1"]
    raw = {"fill_holes": False, "one_piece": False}
    mask, stab, low = predictor.segment(c["point_coords"], c["point_labels"], **raw)
    m4, _, low4 = predictor.predict(c["point_coords"], c["point_labels"], num_multimask_outputs=4)
    best = int(np.argmax(stability_score(low4)))
    np.testing.assert_array_equal(mask, m4[best])
    np.testing.assert_array_equal(predictor.segment(c["point_coords"], c["point_labels"], one_piece=False)[0],
                                  fill_holes(m4[best]))
    tidy = keep_prompted_pieces(fill_holes(m4[best]), c["point_coords"], c["point_labels"])
    np.testing.assert_array_equal(predictor.segment(c["point_coords"], c["point_labels"])[0], tidy)
    for k in range(4):
        np.testing.assert_array_equal(
            predictor.segment(c["point_coords"], c["point_labels"], candidate=k, **raw)[0], m4[k])
    box = golden_cases["box"]["box"]
    mbox, _, _ = predictor.segment(box=box, clip_box=False, **raw)
    np.testing.assert_array_equal(mbox, predictor.predict(box=box)[0][0])
    # by default the box's mask ends at the box (widened by a pixel and 2%)
    np.testing.assert_array_equal(predictor.segment(box=box, **raw)[0], clip_to_box(mbox, box))


def test_predict_batch_equals_single(predictor, golden_cases):
    boxes = np.array([[60, 45, 260, 205], [10, 10, 100, 120], [200, 100, 390, 290]], np.float32)
    out = predictor.predict_batch(boxes=boxes)
    assert out.masks.shape == (3, 1, 300, 400)
    for i, b in enumerate(boxes):
        m, s, low = predictor.predict(box=b)
        np.testing.assert_allclose(out.low_res_logits[i], low, atol=1e-4)
        np.testing.assert_allclose(out.scores[i], s, atol=1e-5)
    pts = np.array([[[200, 150]], [[100, 75]]], np.float32)
    out = predictor.predict_batch(point_coords=pts, point_labels=np.ones((2, 1)), num_multimask_outputs=4, upscale=False)
    assert out.masks is None and out.low_res_logits.shape == (2, 4, 256, 256)
    with pytest.raises(ValueError, match="same batch size"):
        predictor.predict_batch(point_coords=pts, point_labels=np.ones((2, 1)), boxes=boxes)
