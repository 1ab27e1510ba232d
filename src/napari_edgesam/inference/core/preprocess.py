"""Image preparation for EdgeSAM, in numpy only (no torch).

Pipeline: any 2D microscopy image -> RGB ``uint8`` (intensity normalisation) -> resize of the
longest side to 1024 (bilinear, like the official predictor) -> normalise -> zero-pad to
``1 x 3 x 1024 x 1024`` float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from ...constants import IMG_SIZE, PIXEL_MEAN, PIXEL_STD

#: Default percentiles used to stretch non-uint8 images when no contrast limits are given.
DEFAULT_PERCENTILES = (0.5, 99.5)


#: Bytes of float64 scratch per chunk of rows in :func:`to_rgb_uint8` (memory stays a small
#: multiple of the input; results do not depend on it).
CHUNK_BYTES = 4 << 20


#: A last axis up to this length (and shorter than the other two) is taken for channels when
#: no ``channel_axis`` is given; a first axis only up to 4 (a longer one looks like a Z stack).
MAX_GUESSED_CHANNELS = 16


def _check_array(image: object) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(
            f"image has complex values (dtype {arr.dtype}); pass a real image, e.g. np.abs(image) "
            "for the magnitude or image.real"
        )
    if arr.dtype.kind not in "iuf":  # (timedelta64 counts as an integer for numpy)
        raise TypeError(f"image must hold integer or floating-point numbers, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"image must be 2D (H, W) or 2D with channels (H, W, C); got shape {arr.shape}. "
            "For stacks, pass one slice at a time."
        )
    if arr.size == 0 or min(arr.shape[:2] if arr.ndim == 3 else arr.shape) < 1:
        raise ValueError(f"image is empty (shape {arr.shape})")
    return arr


def check_gamma(gamma: object) -> float:
    """``gamma`` as a float; ``ValueError`` unless it is a finite number > 0."""
    try:
        g = float(gamma)
    except (TypeError, ValueError):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}") from None
    if not np.isfinite(g) or g <= 0:
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    return g


def _two_numbers(values: object, what: str) -> tuple[float, float]:
    """``values`` as two finite floats ``(low, high)`` with ``low <= high``; ValueError otherwise."""
    try:
        lo, hi = (float(v) for v in values)  # also refuses complex, None, strings like "ab"
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be two numbers (low, high), got {values!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
        raise ValueError(f"{what} must be finite with low <= high, got {values!r}")
    return lo, hi


def check_percentiles(percentiles: object) -> tuple[float, float]:
    """``percentiles`` as ``(low, high)`` with ``0 <= low < high <= 100`` (ValueError otherwise:
    ``(99, 1)`` would turn every image black)."""
    lo, hi = _two_numbers(percentiles, "percentiles")
    if not 0.0 <= lo < hi <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}")
    return lo, hi


def _channels_last(arr: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """Return ``H x W x C`` (C >= 1)."""
    if arr.ndim == 2:
        return arr[..., None]
    if channel_axis is None:
        last = arr.shape[-1]
        if last <= 4 or (last <= MAX_GUESSED_CHANNELS and last < min(arr.shape[:2])):
            channel_axis = -1
        elif arr.shape[0] <= 4:
            channel_axis = 0
        else:
            raise ValueError(
                f"cannot tell the channel axis of an image of shape {arr.shape}: it looks like a "
                "3D volume. Pass a single 2D slice, or channel_axis=..."
            )
    if not -arr.ndim <= channel_axis < arr.ndim:
        raise ValueError(f"channel_axis {channel_axis} is out of range for shape {arr.shape}")
    out = np.moveaxis(arr, channel_axis, -1)
    if min(out.shape[:2]) < 1:
        raise ValueError(f"image is empty (shape {arr.shape})")
    return out


def _rows_per_chunk(arr: np.ndarray) -> int:
    per_row = max(1, int(np.prod(arr.shape[1:])) * 8)
    return max(1, CHUNK_BYTES // per_row)


_F32_MAX = float(np.finfo(np.float32).max)


def _work_dtype(x: np.ndarray) -> type:
    """float32, or float64 for float data with finite values past float32's range (e.g. 1e300,
    which would become inf in float32 and then count as missing). Scans float64 input in chunks."""
    if x.dtype.kind != "f" or x.dtype.itemsize <= 4:
        return np.float32
    rows = _rows_per_chunk(x)
    for r0 in range(0, x.shape[0], rows):
        c = np.abs(x[r0 : r0 + rows])
        if (c[np.isfinite(c)] > _F32_MAX).any():
            return np.float64
    return np.float32


def _percentile_limits(x: np.ndarray, percentiles: Sequence[float], work: type = np.float32) -> tuple | None:
    """Percentiles of the finite values of ``x`` (in ``work``, float32 unless the values need
    float64), or None if there are none.

    The finite values are gathered chunk by chunk into one buffer that is then partitioned in
    place: 4 bytes per value (8 for float64 beyond float32's range: no more than the input).
    """
    buf = np.empty(x.size, work)
    n = 0
    rows = _rows_per_chunk(x)
    check = np.issubdtype(x.dtype, np.floating)
    for r0 in range(0, x.shape[0], rows):
        c = x[r0 : r0 + rows].astype(work)
        if check:
            c = c[np.isfinite(c)]
        buf[n : n + c.size] = c.reshape(-1)
        n += c.size
    if n == 0:
        return None
    return tuple(np.percentile(buf[:n], percentiles, overwrite_input=True))


def _stretch_params(
    x: np.ndarray, limits: Sequence[float] | None, percentiles: Sequence[float]
) -> tuple | None:
    """``(lo, scale, f, work)`` mapping ``x`` to [0, 1] as ``(x * f - lo * f) * scale`` computed
    in the float type ``work``; None when ``x`` has no finite value."""
    work = _work_dtype(x)
    if limits is None:
        found = _percentile_limits(x, percentiles, work)
        if found is None:
            return None
        lo, hi = found
    else:
        if np.ndim(limits) != 1 or len(limits) != 2:
            raise ValueError(f"contrast_limits must be (low, high), got {limits!r}")
        lo, hi = _two_numbers(limits, "contrast_limits")
    # ``(x - lo) * scale`` maps [lo, hi] to [0, 1]; for a span past float64's range (e.g. -1e308
    # to 1e308) x, lo and hi are halved first (``f``) so that the span is finite
    with np.errstate(over="ignore"):
        f = 1.0 if np.isfinite(np.float64(hi) - np.float64(lo)) else 0.5
    scale = 1.0 / (hi * f - lo * f) if hi > lo else 0.0
    return lo, scale, f, work


def _stretch_chunk(x: np.ndarray, params: tuple | None, gamma: float) -> np.ndarray:
    """Map one chunk to [0, 1] with ``params`` from :func:`_stretch_params`; NaN/inf -> low."""
    if params is None:
        return np.zeros(x.shape, np.float32)
    lo, scale, f, work = params
    x = x.astype(work, copy=False)
    finite = np.isfinite(x)
    with np.errstate(over="ignore", invalid="ignore"):  # a huge range: clipped below
        y = np.clip((np.where(finite, x, lo) * f - lo * f) * scale, 0.0, 1.0)
    if gamma != 1.0:
        y = y**gamma
    return y


def to_rgb_uint8(
    image: np.ndarray,
    *,
    channel_axis: int | None = None,
    channel: int | None = None,
    contrast_limits: Sequence[float] | None = None,
    gamma: float = 1.0,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> np.ndarray:
    """Convert a 2D image (grey, RGB(A) or multi-channel) to ``H x W x 3`` uint8.

    Intensity normalisation:
      - ``uint8`` data without ``contrast_limits`` and ``gamma == 1`` is used as is
        (this is what the official predictor expects for RGB photographs);
      - otherwise intensities are mapped linearly from ``contrast_limits`` (e.g. the napari
        layer's, so the model sees what the user sees) or, if not given, from the
        ``percentiles`` of the finite values, to 0..255, clipped, then ``gamma`` is applied.
        NaN and inf become the low limit.
    Channels: without ``channel_axis``, a last axis of up to 4 (or up to 16 and shorter than
    the other two) holds the channels, else a first axis of up to 4.
    ``channel=k`` segments channel ``k`` (as grey); otherwise 1 channel is grey,
    3 channels are RGB, 4 are RGBA (alpha dropped), 2 or >4 channels are averaged after
    per-channel normalisation (a composite; each channel of a ``uint8`` image without
    ``contrast_limits`` and gamma is taken as is, i.e. the composite is the channel mean).

    The conversion runs in chunks of rows: besides the input and the output, memory holds a
    float32 copy of the finite values (for the percentiles) and a few MiB of scratch.

    Args:
        image: ``H x W`` or ``H x W x C`` (or ``C x H x W`` with ``channel_axis=0``); any real
            integer or float dtype (complex images are refused). 1-pixel-wide images are fine.
        gamma: a finite number > 0.
    Returns:
        ``H x W x 3`` uint8.
    """
    gamma = check_gamma(gamma)
    percentiles = check_percentiles(percentiles)
    arr = _channels_last(_check_array(image), channel_axis)
    n_channels = arr.shape[-1]
    if channel is not None and (isinstance(channel, bool) or not isinstance(channel, (int, np.integer))):
        raise ValueError(f"channel must be an integer (a channel index), got {channel!r}")
    if channel is not None:
        if not -n_channels <= channel < n_channels:
            raise ValueError(f"channel {channel} does not exist; the image has {n_channels} channels")
        arr = arr[..., channel : channel + 1] if channel >= 0 else arr[..., [channel]]
        n_channels = 1
    if n_channels == 4:
        arr, n_channels = arr[..., :3], 3
    joint = n_channels in (1, 3)
    plain_uint8 = arr.dtype == np.uint8 and contrast_limits is None and gamma == 1.0
    if plain_uint8 and joint:
        out = arr if n_channels == 3 else np.repeat(arr, 3, axis=-1)
        return np.ascontiguousarray(out)
    h, w = arr.shape[:2]
    rows = _rows_per_chunk(arr)
    if joint:
        params = _stretch_params(arr, contrast_limits, percentiles)
        out = np.empty((h, w, 3), np.uint8)
        for r0 in range(0, h, rows):
            y = _stretch_chunk(arr[r0 : r0 + rows], params, gamma)
            out[r0 : r0 + rows] = np.round(y * 255.0).astype(np.uint8)  # broadcasts grey to RGB
        return out
    # composite of per-channel normalisations
    limits = (0.0, 255.0) if plain_uint8 else contrast_limits
    params = [_stretch_params(arr[..., c], limits, percentiles) for c in range(n_channels)]
    out = np.empty((h, w, 3), np.uint8)
    for r0 in range(0, h, rows):
        chunk = arr[r0 : r0 + rows]
        y = np.mean([_stretch_chunk(chunk[..., c], params[c], gamma) for c in range(n_channels)], axis=0)
        out[r0 : r0 + rows] = np.round(y * 255.0).astype(np.uint8)[..., None]
    return out


def resized_shape(original_size: tuple[int, int], target: int = IMG_SIZE) -> tuple[int, int]:
    """``(h, w)`` after scaling the longest side to ``target`` (each side ``int(x*s + 0.5)``,
    at least 1: a 1 x 5000 image becomes 1 x 1024)."""
    h, w = original_size
    scale = target / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def resize_longest_side(rgb: np.ndarray, target: int = IMG_SIZE) -> np.ndarray:
    """Bilinear resize of an ``H x W x 3`` uint8 image so its longest side is ``target``.

    One channel at a time (PIL's result is the same as for the RGB image; PIL keeps an RGB
    image at 4 bytes per pixel, one channel at 1).
    """
    new_h, new_w = resized_shape(rgb.shape[:2], target)
    if (new_h, new_w) == rgb.shape[:2]:
        return rgb
    out = np.empty((new_h, new_w, rgb.shape[2]), np.uint8)
    for c in range(rgb.shape[2]):
        band = Image.fromarray(np.ascontiguousarray(rgb[..., c]))
        out[..., c] = np.asarray(band.resize((new_w, new_h), Image.BILINEAR))
        del band
    return out


def _normalisation_lut() -> np.ndarray:
    """``3 x 256`` float32: ``(v - mean[c]) / std[c]`` for every uint8 value ``v``, computed with
    the same float32 operations as on the image, so a look-up gives the same bits."""
    values = np.arange(256, dtype=np.float32)[None, :]
    mean = np.asarray(PIXEL_MEAN, np.float32)[:, None]
    std = np.asarray(PIXEL_STD, np.float32)[:, None]
    return np.ascontiguousarray((values - mean) / std, np.float32)


_LUT = _normalisation_lut()


def normalize_and_pad(resized: np.ndarray, size: int = IMG_SIZE) -> np.ndarray:
    """``h x w x 3`` uint8 (longest side <= size) -> normalised, zero-padded ``1 x 3 x size x size``.

    One table look-up per pixel and channel (``_LUT``), ~3x faster than converting and
    normalising a float copy (which a whole stack does once per slice); identical values.
    """
    h, w = resized.shape[:2]
    out = np.zeros((1, 3, size, size), np.float32)
    if resized.dtype != np.uint8:  # e.g. augmented training images: the float path
        x = resized.astype(np.float32).transpose(2, 0, 1)
        mean = np.asarray(PIXEL_MEAN, np.float32)[:, None, None]
        out[0, :, :h, :w] = (x - mean) / np.asarray(PIXEL_STD, np.float32)[:, None, None]
        return out
    for c in range(3):
        np.take(_LUT[c], resized[..., c], out=out[0, c, :h, :w])
    return out


def prepare_input(rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 ``H x W x 3`` -> (model input ``1 x 3 x 1024 x 1024``, resized ``(h, w)``)."""
    resized = resize_longest_side(rgb)
    return normalize_and_pad(resized), resized.shape[:2]


def scale_coords(
    coords: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int]
) -> np.ndarray:
    """Map ``... x 2`` (x, y) pixel coordinates of the original image to the 1024 input frame."""
    coords = np.asarray(coords, np.float32).copy()
    coords[..., 0] *= input_size[1] / original_size[1]
    coords[..., 1] *= input_size[0] / original_size[0]
    return coords
