"""COCO RLE (SA-1B masks) decoded and encoded in numpy."""

from __future__ import annotations

import numpy as np
import pytest

from napari_edgesam.training.rle import (
    decode_counts,
    decode_rle,
    encode_counts,
    encode_rle,
    mask_to_runs,
    rle_area,
)


def test_decode_hand_encoded_strings():
    # "13": runs [1, 3] -> column-major [0, 1, 1, 1] -> [[0, 1], [1, 1]]
    mask = decode_rle({"size": [2, 2], "counts": "13"})
    np.testing.assert_array_equal(mask, [[False, True], [True, True]])
    # 40 needs two 5-bit groups: 'X' (8 | more) then '1'; the 4th run is stored as 2 - 40 = -38: "jN"
    assert decode_counts("5X13jN") == [5, 40, 3, 2]
    assert encode_counts([5, 40, 3, 2]) == "5X13jN"


def test_uncompressed_counts_and_fortran_order():
    # 2 x 3 mask, column-major: col0 = [1, 0], col1 = [1, 1], col2 = [0, 0]
    mask = decode_rle({"size": [2, 3], "counts": [0, 1, 1, 2, 2]})
    np.testing.assert_array_equal(mask, [[1, 1, 0], [0, 1, 0]])


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 48)])
def test_round_trip_random_masks(shape):
    rng = np.random.default_rng(sum(shape))
    for density in (0.0, 0.1, 0.5, 1.0):
        mask = rng.random(shape) < density
        rle = encode_rle(mask)
        assert rle["size"] == list(shape)
        np.testing.assert_array_equal(decode_rle(rle), mask)
        assert rle_area(rle) == int(mask.sum())


def test_runs_start_with_background():
    assert mask_to_runs(np.array([[True], [True], [False]])) == [0, 2, 1]


def test_corrupt_rle_raises():
    with pytest.raises(ValueError, match="cover"):
        decode_rle({"size": [3, 3], "counts": "13"})
    with pytest.raises(ValueError, match="truncated"):
        decode_counts("X")  # a continuation group with nothing after it
    with pytest.raises(ValueError, match="size"):
        decode_rle({"counts": "13"})
