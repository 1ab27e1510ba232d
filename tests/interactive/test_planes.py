"""Planes of nD layers and the stack helpers of 3D propagation (plain numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_edgesam.inference.volume.propagation import PropagationResult
from napari_edgesam.interactive.planes import Plane
from napari_edgesam.interactive.stack import object_ids, seeds_from_labels, summarise, write_object


@pytest.fixture()
def volume():
    return np.arange(4 * 5 * 6).reshape(4, 5, 6)


def test_xy_plane_of_a_stack(volume):
    plane = Plane.from_view(volume.shape, (1, 2), (2.4, 0, 0))
    assert plane.position == (2, 0, 0) and plane.stack_axis == 0 and plane.size == (5, 6)
    np.testing.assert_array_equal(plane.take(volume), volume[2])
    assert plane.key != plane.at(0, 3).key
    assert plane.contains(np.array([[2.3, 1, 1], [2.6, 1, 1]])).tolist() == [True, False]
    np.testing.assert_array_equal(plane.rows_cols(np.array([[2, 3, 4]])), [[3, 4]])


def test_transposed_and_orthogonal_views(volume):
    yx = Plane.from_view(volume.shape, (2, 1), (2, 0, 0))  # rows = X, cols = Y (napari transpose)
    np.testing.assert_array_equal(yx.take(volume), volume[2].T)
    assert yx.key != Plane.from_view(volume.shape, (1, 2), (2, 0, 0)).key
    xz = Plane.from_view(volume.shape, (0, 2), (0, 4, 0))  # an orthogonal view
    np.testing.assert_array_equal(xz.take(volume), volume[:, 4, :])
    assert xz.stack_axis == 1
    labels = np.zeros(volume.shape, np.uint8)
    mask = np.zeros(yx.size, bool)
    mask[1, 2] = True  # row = x 1, col = y 2
    yx.write(labels, mask.astype(np.uint8) * 5)
    assert np.argwhere(labels).tolist() == [[2, 2, 1]] and labels[2, 2, 1] == 5
    np.testing.assert_array_equal(yx.read_labels(labels), mask * 5)


def test_channel_axis_and_rgb():
    data = np.random.default_rng(0).integers(0, 100, (3, 2, 5, 6))  # Z, C, Y, X
    plane = Plane.from_view(data.shape, (2, 3), (1, 0, 0, 0), channel_axis=1)
    assert plane.slice_axes == (0,) and plane.stack_axis == 0
    img = plane.take(data)
    assert img.shape == (5, 6, 2)
    np.testing.assert_array_equal(img[..., 1], data[1, 1])
    labels = np.zeros(data.shape, np.uint16)
    plane.write(labels, np.full((5, 6), 4))
    assert np.all(labels[1] == 4) and labels.sum() == 4 * 2 * 30  # written on both channels
    rgb = np.zeros((7, 8, 3), np.uint8)
    rgb[..., 2] = 9
    flat = Plane.from_view((7, 8), (0, 1), (0, 0))
    assert flat.take(rgb).shape == (7, 8, 3) and flat.stack_axis is None
    with pytest.raises(ValueError, match="channel axis"):
        Plane((3, 4, 5), (1, 2), (0, 0, 0), channel_axis=2)


def test_plane_errors(volume):
    plane = Plane.from_view(volume.shape, (1, 2), (0, 0, 0))
    with pytest.raises(ValueError, match="slider axis"):
        plane.at(1, 0)
    with pytest.raises(ValueError, match="outside"):
        plane.at(0, 9)
    with pytest.raises(ValueError, match="displayed"):
        Plane((4, 5), (0, 0), (0, 0))
    with pytest.raises(ValueError, match="fit"):
        plane.write(np.zeros(volume.shape), np.zeros((2, 2)))


def test_seeds_from_labels_and_write_back():
    labels = np.zeros((6, 10, 10), np.uint8)
    labels[1, 2:5, 2:5] = 1
    labels[2, 2:6, 2:6] = 1
    labels[4, 6:9, 6:9] = 2
    plane = Plane.from_view(labels.shape, (1, 2), (0, 0, 0))
    assert object_ids(labels, plane, 0) == [1, 2]
    seeds = seeds_from_labels(labels, plane, 0, [1, 2])
    assert sorted(seeds[1]) == [1, 2] and sorted(seeds[2]) == [4]
    assert seeds[1][2].sum() == 16
    only = seeds_from_labels(labels, plane, 0, [1, 2], only_slices={2})
    assert sorted(only[1]) == [2] and sorted(only[2]) == [4]  # object 2 was not prompted: all its slices
    renamed = seeds_from_labels(labels, plane, 0, [2], rename={2: 1})
    assert list(renamed) == [1]
    new = np.zeros((10, 10), bool)
    new[0:2, 0:2] = True
    write_object(labels, plane, 0, 1, 2, new)
    assert (labels[2] == 1).sum() == 4 and labels[2, 0, 0] == 1 and labels[1].sum() == 9


def test_summary_names_range_weakest_slice_and_stops():
    res = PropagationResult(masks={z: np.ones((2, 2), bool) for z in (3, 4, 5)},
                            scores={3: 0.8, 4: 1.0, 5: 0.7}, stopped={"forward": "low stability"}, seeded=(4,))
    text = summarise({1: res})
    assert "slices 3-5" in text and "0.70 at z=5" in text and "forward: low stability" in text
    assert "per slice: 3:0.80 4:seed 5:0.70" in text


def test_boxes_drawn_past_the_image_edge_are_clipped():
    from napari.layers import Shapes

    from napari_edgesam._napari.layers import add_box, boxes_on_plane

    plane = Plane.from_view((3, 50, 80), (1, 2), (1, 0, 0))
    shapes = Shapes(ndim=3)
    add_box(shapes, plane, (-5, 10, 30, 60))  # past the left and bottom edges
    add_box(shapes, plane, (90, 10, 120, 20))  # wholly outside: left out
    add_box(shapes, plane, (5, 5, 20, 25))
    boxes = boxes_on_plane(shapes, plane)
    np.testing.assert_allclose(boxes, [[0, 10, 30, 50], [5, 5, 20, 25]])
    assert boxes_on_plane(shapes, plane.at(0, 2)) == []
