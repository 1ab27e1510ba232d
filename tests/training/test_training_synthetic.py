"""The rich synthetic generator: solid one-piece labels, the stated size regimes, seeds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_edgesam.training.synthetic import (
    KINDS,
    REGIMES,
    rich_nuclei_labels,
    rich_synthetic_nuclei,
)


def assert_consistent(labels):
    ids = np.unique(labels[labels > 0])
    assert np.array_equal(ids, np.arange(1, ids.size + 1))  # 1..n, none missing
    for k, sl in enumerate(ndi.find_objects(labels), 1):
        m = labels[sl] == k
        assert ndi.label(m)[1] == 1, f"label {k} is in several pieces"
        assert np.array_equal(ndi.binary_fill_holes(m), m), f"label {k} has a hole"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("regime", ["tiny", "medium", "mixture"])
def test_labels_are_solid_single_components(regime, kind):
    image, labels, info = rich_synthetic_nuclei(np.random.default_rng(7), (256, 320), regime, kind)
    assert image.dtype == np.float32 and np.isfinite(image).all()
    assert labels.dtype == np.uint16 and image.shape == labels.shape and labels.shape[1] == 320
    assert info["regime"] == regime and info["kind"] == kind and info["n"] == labels.max() > 3
    assert len(info["radii"]) == info["n"]
    assert_consistent(labels)
    # nuclei are brighter than the background
    assert image[labels > 0].mean() > image[labels == 0].mean()


@pytest.mark.parametrize("regime", list(REGIMES))
def test_size_regimes_give_the_stated_radii(regime):
    lo, hi = REGIMES[regime]
    side = {"large": 1024, "huge": 2048}.get(regime, 384)
    image, labels, info = rich_synthetic_nuclei(np.random.default_rng(3), (side, side), regime, "plane")
    assert_consistent(labels)
    radii = info["radii"]
    assert len(radii) == labels.max()
    assert radii.min() >= lo and radii.max() <= hi
    # the shapes have the drawn size: sparse, unclumped objects away from the border
    labels, radii = rich_nuclei_labels(np.random.default_rng(4), (side, side), (lo, hi), coverage=0.1, clump_probability=0.0)
    measured, drawn = [], []
    for k, sl in enumerate(ndi.find_objects(labels), 1):
        if sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == side or sl[1].stop == side:
            continue
        ring = ndi.binary_dilation(labels[sl] == k, iterations=2) & (labels[sl] != k)
        if (labels[sl][ring] > 0).any():
            continue  # trimmed by a neighbour
        measured.append(np.sqrt((labels == k).sum() / np.pi))
        drawn.append(radii[k - 1])
    assert len(measured) >= 2
    ratio = np.array(measured) / np.array(drawn)
    assert np.all((ratio > 0.8) & (ratio < 1.2)), ratio
    assert lo * 0.8 <= np.median(measured) <= hi * 1.1


def test_clumps_touch_and_sizes_mix():
    _, labels, info = rich_synthetic_nuclei(np.random.default_rng(11), (384, 384), "small", "plane")
    # touching pairs: 4-neighbours with two different ids
    a, b = labels[:, :-1], labels[:, 1:]
    touching = (a > 0) & (b > 0) & (a != b)
    assert touching.sum() > 20
    _, _, mix = rich_synthetic_nuclei(np.random.default_rng(11), (512, 512), "mixture", "plane")
    assert mix["radii"].max() / mix["radii"].min() > 6


def test_seeded_and_validated():
    a = rich_synthetic_nuclei(np.random.default_rng(5), (128, 128))
    b = rich_synthetic_nuclei(np.random.default_rng(5), (128, 128))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2]["regime"] == b[2]["regime"]
    with pytest.raises(ValueError, match="size regime"):
        rich_synthetic_nuclei(np.random.default_rng(0), (64, 64), "giant")
    with pytest.raises(ValueError, match="kind"):
        rich_synthetic_nuclei(np.random.default_rng(0), (64, 64), "tiny", "volume")
