"""Sample data for napari's File > Open Sample menu (deterministic, generated offline).

Each function returns napari ``LayerData`` tuples: ``[(data, {"name": ...}, "image")]``.
"""

from __future__ import annotations

import numpy as np

from ..datasets import synthetic_nuclei_2d, synthetic_nuclei_3d

#: Seed of every generated sample.
SEED = 2024


def make_nuclei_2d(shape: tuple[int, int] = (384, 512), count: int = 40, seed: int = SEED) -> np.ndarray:
    """Fluorescence-like nuclei, ``H x W`` uint16 (see :func:`napari_edgesam.datasets.synthetic_nuclei_2d`)."""
    return synthetic_nuclei_2d(seed=seed, shape=shape, n_nuclei=count)[0]


def make_nuclei_3d(shape: tuple[int, int, int] = (24, 192, 192), count: int = 20, seed: int = SEED) -> np.ndarray:
    """A stack of ellipsoid nuclei, ``Z x Y x X`` uint16 (nuclei span several slices)."""
    return synthetic_nuclei_3d(seed=seed, shape=shape, n_nuclei=count)[0]


def nuclei_2d() -> list[tuple]:
    """Synthetic 2D nuclei (uint16)."""
    return [(make_nuclei_2d(), {"name": "nuclei 2D"}, "image")]


def nuclei_3d() -> list[tuple]:
    """Synthetic 3D nuclei stack (Z x Y x X, uint16)."""
    return [(make_nuclei_3d(), {"name": "nuclei 3D", "scale": (2.0, 1.0, 1.0)}, "image")]


def cell() -> list[tuple]:
    """scikit-image's ``cell`` (a phase-contrast image, 660 x 550 uint8)."""
    try:
        from skimage import data
    except ImportError as err:  # scikit-image is optional for the plugin
        raise ImportError("the 'cell' sample needs scikit-image: pip install scikit-image") from err
    return [(data.cell(), {"name": "cell"}, "image")]
