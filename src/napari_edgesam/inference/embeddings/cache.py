"""A bounded, thread-safe cache of image embeddings, with an optional on-disk layer.

Keys are strings built by :func:`~napari_edgesam.inference.embeddings.keys.embedding_key` (model,
content signature of the image, plane, normalisation: see :mod:`.keys`, whose names
are re-exported here), so a changed image, plane or contrast never reuses a stale embedding.

Embeddings are stored in ``dtype`` (float16 by default: 2 MiB per slice instead of 4 MiB);
:meth:`EmbeddingCache.get` returns them in that dtype (read-only), which the predictor
accepts as is. An embedding's granularity-prior proposals (:attr:`ImageEmbedding.proposals`,
tagged with the prior that made them) travel with it, in memory and on disk. With ``disk_dir``
every entry is also written to one ``.npz`` file per key, atomically, and a memory miss falls
back to disk. The disk layer is bounded too (``max_disk_bytes``, 10 GiB by default): after a
write, the least recently used files (by modification time; a read refreshes it) are deleted
until the folder fits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..core.predictor import ImageEmbedding
from ..prior import ProposalSet
from .keys import (  # re-exported: the keys of this cache
    data_signature,
    embedding_key,
    key_prefix,
)

__all__ = ["DEFAULT_MAX_DISK_BYTES", "DISK_FORMAT_VERSION", "EmbeddingCache", "data_signature", "embedding_key",
           "key_prefix"]

logger = logging.getLogger(__name__)

#: Version of the on-disk format; files of another version are ignored (and deleted), except
#: version 1 (before proposals were stored), read as embeddings without proposals.
DISK_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_PARTIAL_SUFFIX = ".part"  # files being written; never matched by "*.npz"
#: Default budget of the disk layer (~5000 fp16 slices).
DEFAULT_MAX_DISK_BYTES = 10 << 30


# -- cache -----------------------------------------------------------------------------------
class EmbeddingCache:
    """LRU cache of :class:`ImageEmbedding` by string key, bounded by bytes.

    Args:
        max_bytes: memory budget for the stored features; least recently used entries are
            evicted to stay under it (an entry larger than the budget is not kept in memory).
        dtype: storage dtype of the features (``np.float16`` halves memory; or ``np.float32``).
        disk_dir: optional folder for a persistent layer: one ``.npz`` per key (features in
            float16, sizes, the key, a format version, and the proposals of a prior loaded
            from a file, with its tag; those of a prior built in memory stay in memory),
            written atomically; memory misses
            are read from there; unreadable, damaged or crafted files (and features with
            NaN or inf) are deleted with a warning, so the caller computes the embedding again.
            Non-finite embeddings are never stored.
        max_disk_bytes: budget of the disk layer; least recently used files beyond it are
            deleted after each write (the file just written is always kept).

    All methods are safe to call from several threads.
    """

    def __init__(
        self,
        max_bytes: int = 1 << 30,
        dtype: np.dtype | type = np.float16,
        disk_dir: str | Path | None = None,
        max_disk_bytes: int = DEFAULT_MAX_DISK_BYTES,
    ) -> None:
        if int(max_bytes) < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        if int(max_disk_bytes) < 0:
            raise ValueError(f"max_disk_bytes must be >= 0, got {max_disk_bytes}")
        self.max_disk_bytes = int(max_disk_bytes)
        self._disk_bytes: int | None = None  # measured at the first write
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float16), np.dtype(np.float32)):
            raise ValueError(f"dtype must be float16 or float32, got {self.dtype}")
        self.max_bytes = int(max_bytes)
        self.disk_dir = None if disk_dir is None else Path(disk_dir)
        if self.disk_dir is not None:
            if self.disk_dir.exists() and not self.disk_dir.is_dir():
                raise ValueError(f"the embedding cache folder {self.disk_dir} is a file, not a folder")
            try:
                self.disk_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ValueError(f"cannot create the embedding cache folder {self.disk_dir}: "
                                 f"{err.strerror or err}") from None
        self._entries: OrderedDict[str, ImageEmbedding] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    # -- memory ------------------------------------------------------------------------------
    def get(self, key: str) -> ImageEmbedding | None:
        """The embedding stored under ``key`` (memory, then disk) or None."""
        with self._lock:
            emb = self._entries.get(key)
            if emb is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return emb
        emb = self._read_disk(key)
        with self._lock:
            if emb is None:
                self.misses += 1
                return None
            self.hits += 1
            self._insert(key, emb)
        return emb

    def put(self, key: str, embedding: ImageEmbedding) -> None:
        """Store ``embedding`` under ``key`` (converted to the cache's dtype)."""
        if not isinstance(key, str):
            raise TypeError(f"cache keys are strings, got {type(key).__name__}")
        if not isinstance(embedding, ImageEmbedding):
            raise TypeError(f"expected an ImageEmbedding, got {type(embedding).__name__}")
        stored = self._frozen(embedding)
        if not np.isfinite(stored.features).all():  # NaN from the model, or beyond float16's range
            logger.warning(
                "not caching the embedding %s: its features hold NaN or inf%s", key,
                " in float16" if np.isfinite(embedding.features).all() else "",
            )
            return
        with self._lock:
            self._insert(key, stored)
        if self.disk_dir is not None:
            self._write_disk(key, stored)

    def _frozen(self, emb: ImageEmbedding) -> ImageEmbedding:
        with np.errstate(over="ignore"):  # beyond float16's range: inf, refused by the callers
            features = np.array(emb.features, dtype=self.dtype, copy=True)
        features.flags.writeable = False
        proposals = emb.proposals if isinstance(emb.proposals, ProposalSet) else None
        return ImageEmbedding(features, tuple(emb.original_size), tuple(emb.input_size), proposals)

    def _insert(self, key: str, emb: ImageEmbedding) -> None:
        """Insert and evict; the caller holds the lock."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._nbytes -= old.nbytes
        if emb.nbytes > self.max_bytes:
            logger.debug("embedding %s (%d bytes) exceeds the cache budget; not kept in memory", key, emb.nbytes)
            return
        self._entries[key] = emb
        self._nbytes += emb.nbytes
        while self._nbytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._nbytes -= evicted.nbytes

    def __contains__(self, key: object) -> bool:
        with self._lock:
            if key in self._entries:
                return True
        return isinstance(key, str) and self.disk_dir is not None and self.disk_path(key).exists()

    def __len__(self) -> int:
        """Number of entries held in memory."""
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes of features held in memory."""
        with self._lock:
            return self._nbytes

    def keys(self) -> list[str]:
        """Keys held in memory, least recently used first."""
        with self._lock:
            return list(self._entries)

    def clear(self, disk: bool = False) -> None:
        """Empty the memory layer (and the disk layer with ``disk=True``)."""
        with self._lock:
            self._entries.clear()
            self._nbytes = 0
        if disk and self.disk_dir is not None:
            self._disk_bytes = None
            for path in self.disk_dir.glob("*.npz"):
                path.unlink(missing_ok=True)
            for path in self.disk_dir.glob(f".*{_PARTIAL_SUFFIX}"):  # left by a crash
                path.unlink(missing_ok=True)

    def discard(self, prefix: str, disk: bool = False) -> int:
        """Drop every entry whose key starts with ``prefix`` (e.g. after the contrast changed).

        With ``disk=True`` the matching files are deleted too (each file is opened to read
        its key). Returns the number of memory entries dropped.
        """
        with self._lock:
            doomed = [k for k in self._entries if k.startswith(prefix)]
            for k in doomed:
                self._nbytes -= self._entries.pop(k).nbytes
        if disk and self.disk_dir is not None:
            self._disk_bytes = None
            for path in self.disk_dir.glob("*.npz"):
                try:
                    with np.load(path, allow_pickle=False) as z:
                        key = str(z["key"])
                except Exception:  # unreadable: nothing to keep
                    key = prefix
                if key.startswith(prefix):
                    path.unlink(missing_ok=True)
        return len(doomed)

    # -- disk --------------------------------------------------------------------------------
    def disk_path(self, key: str) -> Path:
        """The file that holds ``key`` on disk (RuntimeError without ``disk_dir``)."""
        if self.disk_dir is None:
            raise RuntimeError("this cache has no disk layer: create it with disk_dir=...")
        return self.disk_dir / (hashlib.sha1(key.encode()).hexdigest() + ".npz")

    def _write_disk(self, key: str, emb: ImageEmbedding) -> None:
        path = self.disk_path(key)
        from ..._atomic import atomic_open

        proposals = {}
        if emb.proposals is not None and emb.proposals.tag is not None:  # a prior from a file
            p = emb.proposals
            proposals = {"proposal_boxes": p.boxes, "proposal_scores": p.scores, "proposal_tag": np.str_(p.tag)}
        try:
            size_before = path.stat().st_size if path.exists() else 0
            with atomic_open(path, "wb", suffix=_PARTIAL_SUFFIX, fsync=False) as f:
                np.savez(
                    f,
                    version=np.int64(DISK_FORMAT_VERSION),
                    key=np.str_(key),
                    features=emb.features.astype(np.float16),
                    original_size=np.asarray(emb.original_size, np.int64),
                    input_size=np.asarray(emb.input_size, np.int64),
                    **proposals,
                )
        except OSError as err:
            logger.warning("could not write the embedding cache file %s: %s", path, err)
            return
        self._account_disk(path, size_before)

    def _account_disk(self, written: Path, replaced_bytes: int) -> None:
        """Keep the disk layer within ``max_disk_bytes`` after writing ``written``."""
        with self._lock:
            if self._disk_bytes is None:
                self._disk_bytes = self.disk_bytes()
            else:
                self._disk_bytes += _size(written) - replaced_bytes
            if self._disk_bytes <= self.max_disk_bytes:
                return
            # over budget: measure again (other processes may share the folder) and evict
            files = []
            for path in self.disk_dir.glob("*.npz"):
                try:
                    st = path.stat()
                except OSError:
                    continue
                files.append((st.st_mtime, st.st_size, path))
            total = sum(size for _, size, _ in files)
            for _, size, path in sorted(files, key=lambda f: f[0]):
                if total <= self.max_disk_bytes:
                    break
                if path == written:
                    continue
                try:
                    path.unlink()
                except OSError:
                    continue
                total -= size
                logger.debug("embedding cache: evicted %s from disk", path.name)
            self._disk_bytes = total

    def disk_bytes(self) -> int:
        """Bytes of the ``.npz`` files in the disk layer (0 without one)."""
        if self.disk_dir is None:
            return 0
        return sum(_size(p) for p in self.disk_dir.glob("*.npz"))

    def _read_disk(self, key: str) -> ImageEmbedding | None:
        if self.disk_dir is None:
            return None
        path = self.disk_path(key)
        if not path.is_file():  # missing, or something else (a folder) in the way: a miss
            return None
        try:
            if _magic(path) != b"PK\x03\x04":  # numpy would call anything else "pickled data"
                raise ValueError("not an embedding cache file (damaged, or another kind of file)")
            with np.load(path, allow_pickle=False) as z:
                version = _scalar(z["version"], "version")
                if version not in _READABLE_VERSIONS:
                    raise ValueError(f"format version {version}, expected {DISK_FORMAT_VERSION}")
                stored_key = z["key"]
                if stored_key.shape != () or stored_key.dtype.kind != "U" or str(stored_key) != key:
                    raise ValueError("the file holds another key")
                features = z["features"]
                original_size = _size_pair(z["original_size"], "original_size")
                input_size = _size_pair(z["input_size"], "input_size")
                proposals = _proposals(z, original_size) if "proposal_tag" in z.files else None
            if features.ndim != 4 or features.shape[0] != 1 or features.dtype.kind != "f" or features.size == 0:
                raise ValueError(f"features of shape {features.shape} and dtype {features.dtype}")
            emb = self._frozen(ImageEmbedding(features, original_size, input_size, proposals))
            if not np.isfinite(emb.features).all():
                raise ValueError("the features hold NaN or inf")
        except FileNotFoundError:
            return None
        except Exception as err:  # noqa: BLE001 - any damage or crafted content: discard, recompute
            logger.warning("ignoring and deleting unreadable embedding cache file %s: %s", path, err)
            try:
                path.unlink(missing_ok=True)
            except OSError as gone:  # e.g. a read-only folder: it stays a miss
                logger.warning("could not delete %s: %s", path, gone)
            return None
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:  # e.g. a read-only folder: the order of eviction is all that suffers
            pass
        return emb


def _magic(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(4)


def _scalar(value: np.ndarray, name: str) -> int:
    if value.shape != () or value.dtype.kind not in "iu":
        raise ValueError(f"{name} is not an integer")
    return int(value)


def _size_pair(value: np.ndarray, name: str) -> tuple[int, int]:
    if value.shape != (2,) or value.dtype.kind not in "iu" or (value < 1).any():
        raise ValueError(f"{name} is not two positive integers")
    return int(value[0]), int(value[1])


def _proposals(z, original_size: tuple[int, int]) -> ProposalSet:
    """The proposals stored in an opened cache file (ValueError if damaged)."""
    tag = z["proposal_tag"]
    if tag.shape != () or tag.dtype.kind != "U":
        raise ValueError("the proposals' tag is not a string")
    boxes, scores = z["proposal_boxes"], z["proposal_scores"]
    if boxes.dtype.kind != "f" or scores.dtype.kind != "f":
        raise ValueError("the proposals are not float arrays")
    return ProposalSet(boxes, scores, original_size, str(tag))  # checks shapes and finiteness


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
