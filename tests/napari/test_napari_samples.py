"""The sample images: deterministic, realistic types and shapes, nuclei where promised."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_edgesam._napari import samples
from napari_edgesam.datasets import synthetic_nuclei_2d, synthetic_nuclei_3d


def _objects(image: np.ndarray) -> int:
    fg = image > np.percentile(image, 50) + 3 * np.std(image[image < np.percentile(image, 50)])
    return ndimage.label(ndimage.binary_opening(fg))[1]


def test_nuclei_2d_is_uint16_deterministic_with_many_nuclei():
    (data, meta, kind), = samples.nuclei_2d()
    again = samples.nuclei_2d()[0][0]
    assert kind == "image" and meta["name"] == "nuclei 2D"
    assert data.dtype == np.uint16 and data.ndim == 2
    np.testing.assert_array_equal(data, again)
    assert not np.array_equal(data, samples.make_nuclei_2d(seed=1))
    # the sample is the shared generator's image; its ground truth tells what is in it
    image, labels = synthetic_nuclei_2d(seed=samples.SEED, shape=data.shape, n_nuclei=40)
    np.testing.assert_array_equal(data, image)
    assert 20 <= labels.max() <= 45
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.max() > 2.5 * sizes.min()  # nuclei of varied size
    assert data[labels > 0].mean() > 2 * data[labels == 0].mean()  # bright nuclei on a dark background
    assert 10 <= _objects(data) <= 60


def test_nuclei_3d_is_a_stack_with_nuclei_across_slices():
    (data, meta, _), = samples.nuclei_3d()
    assert data.dtype == np.uint16 and data.ndim == 3 and data.shape[0] >= 16
    np.testing.assert_array_equal(data, samples.nuclei_3d()[0][0])
    image, labels = synthetic_nuclei_3d(seed=samples.SEED, shape=data.shape, n_nuclei=20)
    np.testing.assert_array_equal(data, image)
    assert labels.max() >= 10
    z_extent = [s[0].stop - s[0].start for s in ndimage.find_objects(labels) if s is not None]
    assert max(z_extent) >= 4  # ellipsoids span several slices
    assert meta["scale"][0] > meta["scale"][1]


def test_cell_is_scikit_image_cell():
    (data, meta, kind), = samples.cell()
    assert data.shape == (660, 550) and data.dtype == np.uint8 and meta["name"] == "cell"
