"""Cache keys of image embeddings: a content signature of the data, the plane, the normalisation.

Keys are strings built by :func:`embedding_key` from the model name, a content signature of
the image (:func:`data_signature`), the index of the 2D plane and the intensity
normalisation, so a changed image, plane or contrast never reuses a stale embedding;
:func:`key_prefix` names all keys of one image (to discard them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np

#: Arrays up to this size are hashed completely by :func:`data_signature`.
FULL_HASH_BYTES = 64 * 1024 * 1024
_SAMPLE_PLANES = 32
_SAMPLE_ELEMENTS_PER_PLANE = 1 << 16
_KEY_SEPARATOR = "|"


def data_signature(array: object, *, full: bool = False) -> str:
    """A fast content hash of an array (numpy, dask, zarr ... anything indexable).

    Hashes the shape, the dtype and the data: all bytes when the array is smaller than
    :data:`FULL_HASH_BYTES` (64 MiB), otherwise up to 32 evenly spaced planes along the first
    axis, each subsampled with a stride (so lazy arrays load only what is sampled). A large
    array edited in a spot the sample misses keeps its signature; the caller should drop its
    keys when it knows the data changed (:meth:`EmbeddingCache.discard`).

    With ``full`` every byte is hashed whatever the size (for in-memory arrays that can be
    edited in place, e.g. a napari layer's numpy data).

    Returns:
        32 hex characters (blake2b, 16 bytes).
    """
    shape = tuple(int(s) for s in np.shape(array))
    dtype = getattr(array, "dtype", None)
    dtype = np.dtype(dtype) if dtype is not None else np.asarray(array).dtype
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((shape, dtype.str)).encode())
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if full or nbytes <= FULL_HASH_BYTES or len(shape) == 0:
        h.update(np.ascontiguousarray(np.asarray(array)).reshape(-1).view(np.uint8).data)
        return h.hexdigest()
    planes = np.unique(np.linspace(0, shape[0] - 1, min(shape[0], _SAMPLE_PLANES)).astype(np.int64))
    rest = shape[1:]
    per_plane = int(np.prod(rest, dtype=np.int64)) if rest else 1
    step = max(1, int(np.ceil((per_plane / _SAMPLE_ELEMENTS_PER_PLANE) ** (1.0 / max(len(rest), 1)))))
    strided = tuple(slice(None, None, step) for _ in rest)
    for i in planes:
        sample = np.ascontiguousarray(np.asarray(array[(int(i), *strided)]))
        h.update(int(i).to_bytes(8, "little"))
        h.update(sample.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def _canonical(value: object) -> str:
    """A stable text form of a normalisation setting; floats rounded to 6 significant digits."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return str(bool(value)) if value is not None else "None"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format(float(value) + 0.0, ".6g")
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, slice):
        parts = (value.start, value.stop, value.step)
        return ":" if parts == (None, None, None) else ":".join("" if p is None else str(int(p)) for p in parts)
    if isinstance(value, Mapping):
        items = sorted((str(k), _canonical(v)) for k, v in value.items())
        return "{" + ",".join(f"{k}={v}" for k, v in items) + "}"
    if isinstance(value, np.ndarray):
        return _canonical(value.tolist())
    if isinstance(value, Iterable):
        return "(" + ",".join(_canonical(v) for v in value) + ")"
    raise TypeError(f"cannot use {type(value).__name__} {value!r} in a cache key; use numbers, strings or tuples")


def _escape(text: str) -> str:
    return str(text).replace("%", "%25").replace(_KEY_SEPARATOR, "%7C")


def key_prefix(model_name: str, signature: str, normalisation: object = None) -> str:
    """The prefix shared by all keys of one image (and, if given, one normalisation).

    ``cache.discard(key_prefix(model, sig))`` drops every plane of that image;
    ``cache.discard(key_prefix(model, sig, old_norm))`` only those embedded with ``old_norm``.
    """
    prefix = f"{_escape(model_name)}{_KEY_SEPARATOR}{_escape(signature)}{_KEY_SEPARATOR}"
    if normalisation is not None:
        prefix += f"{_canonical(normalisation)}{_KEY_SEPARATOR}"
    return prefix


def embedding_key(
    model_name: str, signature: str, index: tuple[int, ...], normalisation: object = ()
) -> str:
    """Cache key of the embedding of one 2D plane.

    Args:
        model_name: the predictor's model name (embeddings differ between models).
        signature: :func:`data_signature` of the whole layer data.
        index: index of the plane in the data, e.g. ``(z,)`` or the tuple from
            :func:`~napari_edgesam.coords.plane_index` (``slice(None)`` on the
            displayed axes, written ``:``).
        normalisation: contrast limits, gamma, channel ... (a tuple or a dict); floats are
            rounded to 6 significant digits so identical settings give identical keys.
    Returns:
        ``"model|signature|normalisation|index"``.
    """
    if not isinstance(index, tuple):
        index = (index,)
    for i in index:
        if not isinstance(i, (int, np.integer, slice)):
            raise TypeError(f"index entries must be integers or slices, got {i!r} in {index!r}")
    return key_prefix(model_name, signature, normalisation) + _canonical(index)
