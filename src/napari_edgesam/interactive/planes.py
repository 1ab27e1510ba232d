"""The 2D plane of an nD layer that the user looks at (plain numpy, no napari).

A :class:`Plane` says which two data axes are displayed (as rows and columns, in napari's
display order), where the other axes stand, and which axis (if any) holds channels. It reads
the plane out of image data (``rows x cols`` or ``rows x cols x C``) and writes 2D masks back
into label data of the same nD shape (broadcast over the channel axis, if any).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..coords import plane_index


@dataclass(frozen=True)
class Plane:
    """One displayed plane.

    Attributes:
        shape: shape of the layer's data (spatial axes; an RGB axis excluded).
        displayed: ``(row_axis, col_axis)`` data axes, in display order.
        position: integer index on every axis (ignored on the displayed and channel axes).
        channel_axis: data axis holding channels, or None.
    """

    shape: tuple[int, ...]
    displayed: tuple[int, int]
    position: tuple[int, ...]
    channel_axis: int | None = None

    def __post_init__(self) -> None:
        ndim = len(self.shape)
        if len(self.position) != ndim:
            raise ValueError(f"position must have {ndim} entries, got {self.position}")
        if self.channel_axis is not None and not 0 <= self.channel_axis < ndim:
            raise ValueError(f"channel_axis {self.channel_axis} is outside [0, {ndim})")
        if self.channel_axis in self.displayed:
            raise ValueError(f"the channel axis {self.channel_axis} cannot be a displayed axis {self.displayed}")
        plane_index(ndim, self.displayed, self.position)  # validates the displayed axes

    @classmethod
    def from_view(
        cls,
        shape: Sequence[int],
        displayed: Sequence[int],
        position: Sequence[float],
        channel_axis: int | None = None,
    ) -> Plane:
        """Build from napari-derived values: ``position`` may be fractional or out of range
        (it is rounded and clipped to the data)."""
        shape = tuple(int(s) for s in shape)
        pos = tuple(int(np.clip(np.round(p), 0, s - 1)) for p, s in zip(position, shape, strict=True))
        return cls(shape, (int(displayed[0]), int(displayed[1])), pos, channel_axis)

    # -- geometry ----------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> tuple[int, int]:
        """``(rows, cols)`` of the plane."""
        return self.shape[self.displayed[0]], self.shape[self.displayed[1]]

    @property
    def slice_axes(self) -> tuple[int, ...]:
        """Axes that are neither displayed nor channels (slider axes: Z, T ...)."""
        return tuple(a for a in range(self.ndim) if a not in self.displayed and a != self.channel_axis)

    @property
    def stack_axis(self) -> int | None:
        """The axis that 3D propagation and precomputation walk along: the last slider axis
        (Z in T x Z x Y x X), or None for a 2D image."""
        axes = self.slice_axes
        return axes[-1] if axes else None

    @property
    def index(self) -> tuple:
        """Data index of the plane: ``slice(None)`` on displayed (and channel) axes."""
        base = plane_index(self.ndim, self.displayed, self.position)
        if self.channel_axis is None:
            return base
        return tuple(slice(None) if a == self.channel_axis else v for a, v in enumerate(base))

    @property
    def key_index(self) -> tuple:
        """The index used in embedding cache keys (:attr:`index`)."""
        return self.index

    @property
    def key(self) -> tuple:
        """A hashable identity of the plane: :attr:`index` with None for each slice, plus the
        displayed axes (so an XZ and an XY view differ)."""
        return (*(None if isinstance(v, slice) else v for v in self.index), self.displayed)

    def at(self, axis: int, value: int) -> Plane:
        """The same view with the slider ``axis`` moved to ``value``."""
        if axis not in self.slice_axes:
            raise ValueError(f"axis {axis} is not a slider axis of this plane ({self.slice_axes})")
        if not 0 <= value < self.shape[axis]:
            raise ValueError(f"position {value} is outside [0, {self.shape[axis]}) on axis {axis}")
        pos = list(self.position)
        pos[axis] = int(value)
        return replace(self, position=tuple(pos))

    def contains(self, coords: np.ndarray) -> np.ndarray:
        """Which of ``N x ndim`` data coordinates lie on this plane (within half a step on
        every slider axis; the channel axis is ignored)."""
        coords = np.asarray(coords, dtype=float).reshape(-1, self.ndim)
        keep = np.ones(len(coords), bool)
        for a in self.slice_axes:
            keep &= np.abs(coords[:, a] - self.position[a]) < 0.5
        return keep

    def rows_cols(self, coords: np.ndarray) -> np.ndarray:
        """``N x ndim`` data coordinates -> ``N x 2`` (row, col) on this plane."""
        coords = np.asarray(coords, dtype=float).reshape(-1, self.ndim)
        return coords[:, list(self.displayed)]

    # -- data --------------------------------------------------------------------------------
    def _to_view(self, block: np.ndarray) -> np.ndarray:
        """``data[self.index]`` (axes ascending) -> rows x cols (x channels) view."""
        kept = [a for a in range(self.ndim) if isinstance(self.index[a], slice)]
        order = [kept.index(self.displayed[0]), kept.index(self.displayed[1])]
        if self.channel_axis is not None:
            order.append(kept.index(self.channel_axis))
        order += [i for i in range(block.ndim) if i not in order]  # e.g. an RGB axis
        return np.transpose(block, order)

    def take(self, data) -> np.ndarray:
        """The plane of ``data`` (numpy, dask, zarr ...) as ``rows x cols`` (``x C`` with a
        channel or RGB axis)."""
        if len(np.shape(data)) < self.ndim:
            raise ValueError(f"data of shape {np.shape(data)} has fewer than {self.ndim} axes")
        return np.ascontiguousarray(self._to_view(np.asarray(data[self.index])))

    def write(self, labels: np.ndarray, values: np.ndarray, where: np.ndarray | None = None) -> None:
        """Write ``rows x cols`` ``values`` into this plane of ``labels`` (in place), only where
        ``where`` is True if given; repeated along the channel axis."""
        block = np.array(labels[self.index], copy=True)
        view = self._to_view(block)
        values = np.asarray(values)
        if values.shape != self.size:
            raise ValueError(f"values of shape {values.shape} do not fit the plane {self.size}")
        if view.ndim == 3:
            values = values[..., None]
            where = None if where is None else np.asarray(where)[..., None]
        if where is None:
            view[...] = values
        else:
            np.copyto(view, np.broadcast_to(values, view.shape).astype(view.dtype), where=np.broadcast_to(where, view.shape))
        labels[self.index] = block

    def read_labels(self, labels: np.ndarray) -> np.ndarray:
        """The ``rows x cols`` labels of this plane (channel 0 of a channel axis)."""
        view = self._to_view(np.asarray(labels[self.index]))
        return np.ascontiguousarray(view[..., 0] if view.ndim == 3 else view)
