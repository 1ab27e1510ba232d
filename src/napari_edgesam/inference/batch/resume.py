"""Resuming a batch run: where an image's outputs go, and whether an earlier record still holds.

A record holds (``identity``) the content identities of what it was made from and what it
wrote: the image (size, mtime, SHA-256; a zarr store: a hash of its file list), the prompts that
apply to it, the model/prior files given as paths, and the label file (size, SHA-256).
:func:`previous_record` accepts a record only if all of these, and the result-relevant
parameters, are unchanged; a touched copy (same bytes, other mtime) still counts as unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .prompt_csv import prompt_identity, prompts_for_image

if TYPE_CHECKING:
    from .config import BatchConfig

logger = logging.getLogger("napari_edgesam.inference.batch.engine")


def output_paths(out_dir: str | os.PathLike, key: str) -> tuple[Path, Path]:
    """``(<out>/<key>_labels.tif, <out>/<key>.json)``."""
    out = Path(out_dir)
    return out / f"{key}_labels.tif", out / f"{key}.json"


#: Parameters that do not change the result: a record made with other values still counts.
_RESULT_NEUTRAL = ("overwrite", "num_threads", "backend", "device")


def same_result_parameters(old: dict | None, new: dict) -> bool:
    """Whether a record's ``parameters`` would give the same labels as ``new`` (both from
    :meth:`BatchConfig.parameters`; thread count, backend, device and overwrite are ignored)."""
    if not isinstance(old, dict):
        return False
    strip = lambda d: {k: v for k, v in d.items() if k not in _RESULT_NEUTRAL}  # noqa: E731
    return strip(json_round_trip(old)) == strip(json_round_trip(new))


def json_round_trip(d: dict) -> dict:
    """``d`` as it reads back from a JSON record (tuples become lists)."""
    return json.loads(json.dumps(d, default=str))


# -- content identities -----------------------------------------------------------------------
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _store_listing(path: Path) -> str:
    """SHA-256 of a folder's (zarr store's) file list with sizes and mtimes."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            st = os.stat(os.path.join(root, name))
            rel = os.path.relpath(os.path.join(root, name), path)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def image_identity(path: str | os.PathLike) -> dict:
    """What identifies an input's content: ``{"size", "mtime_ns", "sha256"}`` for a file,
    ``{"listing"}`` (SHA-256 of the file names, sizes and mtimes) for a zarr store."""
    p = Path(path)
    if p.is_dir():
        return {"listing": _store_listing(p)}
    st = p.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(p)}


def same_image(old: object, path: str | os.PathLike) -> bool:
    """Whether ``path`` still holds the content ``old`` (an :func:`image_identity`) describes;
    a file with another mtime but the same size and SHA-256 (a copy) counts as the same."""
    if not isinstance(old, dict):
        return False
    p = Path(path)
    try:
        if "listing" in old:
            return p.is_dir() and _store_listing(p) == old["listing"]
        st = p.stat()
        if st.st_size != old.get("size"):
            return False
        return st.st_mtime_ns == old.get("mtime_ns") or sha256_file(p) == old.get("sha256")
    except OSError:
        return False


def labels_identity(path: str | os.PathLike) -> dict:
    """``{"size", "sha256"}`` of a written label file."""
    return {"size": Path(path).stat().st_size, "sha256": sha256_file(path)}


def same_labels(old: object, path: str | os.PathLike) -> bool:
    """Whether the label file is still the one the record wrote (size and SHA-256)."""
    if not isinstance(old, dict):
        return False
    try:
        return Path(path).stat().st_size == old.get("size") and sha256_file(path) == old.get("sha256")
    except OSError:
        return False


def prompts_identity(config: BatchConfig, image: str | os.PathLike) -> str | None:
    """SHA-256 of the prompts that apply to ``image`` (mode ``"prompts"``; None otherwise)."""
    if config.mode != "prompts":
        return None
    return prompt_identity(prompts_for_image(config.prompts, Path(image)))


_MODEL_IDS: dict[tuple, dict] = {}


def model_files_identity(config: BatchConfig) -> dict:
    """Identities of the model (and prior) *files* the run uses when they are given as paths
    (``{"model": ..., "prior": ...}``, :func:`image_identity` of each; hashed once per process):
    a retrained checkpoint saved over the same path makes the images be done again. Registered
    model names are identified by their name (in the parameters)."""
    out = {}
    prior = config.prior_path() if config.mode == "boxes" else None
    for role, name in (("model", config.model), ("prior", prior)):
        if name is None or not Path(name).is_file():
            continue
        st = Path(name).stat()
        key = (os.path.abspath(name), st.st_size, st.st_mtime_ns)
        if key not in _MODEL_IDS:
            _MODEL_IDS[key] = image_identity(name)
        out[role] = _MODEL_IDS[key]
    return out


def _same_model_files(old: object, config: BatchConfig) -> bool:
    now = model_files_identity(config)
    old = old if isinstance(old, dict) else {}
    if set(now) != set(old):
        return False
    return all(isinstance(old[k], dict) and old[k].get("size") == now[k]["size"]
               and old[k].get("sha256") == now[k]["sha256"] for k in now)


def previous_record(out_dir: str | os.PathLike, key: str, parameters: dict | None = None, *,
                    image: str | os.PathLike | None = None, config: BatchConfig | None = None) -> dict | None:
    """The record of an earlier successful run of ``key``, or None if it must be (re)done.

    With ``parameters`` (:meth:`BatchConfig.parameters` of this run), a record made with
    other result-relevant parameters (another mode, model, prior, thresholds...) does not count.
    With ``image`` (and ``config`` in prompt mode) the record must also carry the content
    identity of this image (and of its prompts) as they are now. The label file must always be
    the one the record wrote (same size and SHA-256): a damaged or replaced one is redone.
    """
    labels, record = output_paths(out_dir, key)
    if not (labels.is_file() and record.is_file()):
        return None
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("status") != "ok":
        return None
    if parameters is not None and not same_result_parameters(data.get("parameters"), parameters):
        logger.info("%s: the earlier outputs were made with other parameters; processing it again", key)
        return None
    identity = data.get("identity")
    if not isinstance(identity, dict):
        logger.info("%s: the earlier record has no content identity; processing it again", key)
        return None
    if not same_labels(identity.get("labels"), labels):
        logger.warning("%s: %s is not the file the earlier run wrote (damaged or replaced); processing it "
                       "again", key, labels)
        return None
    if config is not None and not _same_model_files(identity.get("model_files"), config):
        logger.info("%s: the model file %s changed since the earlier run; processing it again", key, config.model)
        return None
    if image is not None:
        if not same_image(identity.get("image"), image):
            logger.info("%s: the image %s changed since the earlier run; processing it again", key, image)
            return None
        if config is not None and config.mode == "prompts":
            try:
                current = prompts_identity(config, image)
            except (OSError, ValueError):
                return None  # processing it reports the error
            if current != identity.get("prompts"):
                logger.info("%s: its prompts changed since the earlier run; processing it again", key)
                return None
    return data


def skipped_record(path: str | os.PathLike, key: str, old: dict) -> dict:
    """The report row of a skipped image: the earlier run's results, status ``"skipped"``."""
    return {"input": str(path), "key": key, "status": "skipped", "error": None,
            "n_objects": old.get("n_objects", 0), "seconds": old.get("seconds", 0.0),
            "finished": old.get("finished"), "labels": old.get("labels")}



def is_batch_output(path: Path, out_dir: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``<key>_labels.tif`` written into ``out_dir`` by a batch run."""
    name = path.name
    if not name.endswith("_labels.tif"):
        return False
    try:
        if path.parent.resolve() != Path(out_dir).resolve():
            return False
    except OSError:
        return False
    return (path.parent / f"{name[: -len('_labels.tif')]}.json").is_file()
