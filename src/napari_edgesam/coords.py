"""napari's coordinate conventions, and the only conversions to the core's.

napari addresses data as (row, column) pairs and nD indices (plane, row, column); the prediction
core speaks (x, y) pixels of a 2D image. Both the napari glue and the batch engine (which reads
napari's points CSVs) convert here: :func:`rowcol_to_xy` and, for nD layers, :func:`plane_index`
/ :func:`get_plane`. No Qt, no napari import.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rowcol_to_xy(rowcol: np.ndarray) -> np.ndarray:
    """napari ``... x 2`` (row, column) -> ``... x 2`` (x, y). The only such conversion here."""
    arr = np.asarray(rowcol, np.float64)
    if arr.shape[-1] != 2:
        raise ValueError(f"expected (row, column) pairs in the last axis; got shape {arr.shape}")
    return arr[..., ::-1].copy()


def _check_displayed(ndim: int, displayed: Sequence[int]) -> tuple[int, int]:
    axes = tuple(int(a) for a in displayed)
    if len(axes) != 2 or axes[0] == axes[1] or not all(0 <= a < ndim for a in axes):
        raise ValueError(
            f"displayed must be two different axes in [0, {ndim}), got {tuple(displayed)}"
        )
    return axes


def plane_index(ndim: int, displayed: tuple[int, int], current_step: tuple[int, ...]) -> tuple:
    """Index of the displayed 2D plane in an ``ndim``-dimensional array.

    Args:
        ndim: number of (non-channel) axes of the data: 2 (YX), 3 (ZYX or TYX), 4 (TZYX) ...
        displayed: the two displayed axes (napari's ``viewer.dims.displayed`` for 2D views).
        current_step: the position on every axis, in data indices (``viewer.dims.current_step``
            mapped to the layer).
    Returns:
        ``ndim`` entries: ``slice(None)`` on the displayed axes, the integer step elsewhere.
        E.g. ``plane_index(4, (2, 3), (5, 7, 0, 0)) == (5, 7, slice(None), slice(None))``.
    """
    if len(current_step) != ndim:
        raise ValueError(f"current_step must have {ndim} entries, got {len(current_step)}")
    axes = _check_displayed(ndim, displayed)
    return tuple(slice(None) if a in axes else int(current_step[a]) for a in range(ndim))


def get_plane(data, index: tuple, displayed: tuple[int, int]) -> np.ndarray:
    """The 2D plane ``data[index]`` as rows x cols (x trailing channel axes) in the order of
    ``displayed``: transposed when ``displayed[0] > displayed[1]`` (e.g. napari's YZ view
    with ``displayed == (2, 1)``)."""
    ndim = len(index)
    axes = _check_displayed(ndim, displayed)
    plane = np.asarray(data[index])
    return np.swapaxes(plane, 0, 1) if axes[0] > axes[1] else plane
