"""Registry and downloader of EdgeSAM model weight files.

The EdgeSAM weights are released under the NTU S-Lab License 1.0 (non-commercial use
only).  They are never bundled with this package: each user downloads them into a local
cache (``NAPARI_EDGESAM_CACHE`` or the platform cache directory).  Full SHA-256 sums of
the upstream files are not published, so the sum is recorded at the first use of a file
that then *loaded* successfully (``confirm_loaded``, called by the model loaders) and
verified on every later use ("trust on first use"); a right-size but damaged file is never
recorded, so a good copy put in its place later is accepted. A sum can also be pinned, in
which case it is verified at the first download too.

This module does no network access at import time and must not import torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pooch

from ...cachedir import CACHE_ENV, cache_dir

logger = logging.getLogger(__name__)

HASHES_FILE = "recorded_sha256.json"
KINDS = ("pth", "onnx_encoder", "onnx_decoder", "onnx_encoder_int8")

EDGESAM_LICENCE = (
    "EdgeSAM weights: NTU S-Lab License 1.0 - non-commercial use only. "
    "See https://github.com/chongzhou96/EdgeSAM/blob/master/LICENSE"
)
_PRIMARY = "https://huggingface.co/spaces/chongzhou/EdgeSAM/resolve/main/weights/"
_MIRROR = "https://huggingface.co/chongzhou/EdgeSAM/resolve/main/"


class WeightFileError(ValueError):
    """A weight file exists but has the wrong size or SHA-256 sum."""


class WeightsUnavailableError(RuntimeError):
    """A weight file is not in the cache and could not be downloaded."""


@dataclass(frozen=True)
class WeightFile:
    """One weight file: downloadable from ``urls`` or shipped at ``local_path``."""

    filename: str
    size: int | None = None
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    licence: str = ""
    local_path: Path | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A named model with its weight files per format (see :data:`KINDS`)."""

    name: str
    description: str
    files: dict[str, WeightFile] = field(default_factory=dict)
    licence: str = ""
    #: Refining an object with the previous decode's low-res logits as ``mask_input`` makes
    #: its masks better (SAM's interactive use). False for a model whose mask path lost to
    #: decoding without it: interactive refinements then decode without the logits
    #: (``EdgeSamPredictor.refine_with_mask_input``).
    mask_input_refines: bool = True


#: name -> model; built once, at import, by :func:`_build_registry` (users add theirs with
#: :func:`register_model`).
MODEL_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec, *, overwrite: bool = False) -> None:
    """Add ``spec`` to :data:`MODEL_REGISTRY` (``ValueError`` if the name is taken)."""
    unknown = set(spec.files) - set(KINDS)
    if unknown:
        raise ValueError(f"model {spec.name!r}: unknown file kinds {sorted(unknown)}")
    if spec.name in MODEL_REGISTRY and not overwrite:
        raise ValueError(f"model {spec.name!r} is already registered")
    MODEL_REGISTRY[spec.name] = spec


def _hosted(filename: str, size: int) -> WeightFile:
    return WeightFile(filename, size, (_PRIMARY + filename, _MIRROR + filename),
                      licence=EDGESAM_LICENCE)


def _edgesam_spec(name: str, stem: str, description: str) -> ModelSpec:
    return ModelSpec(name, description, {
        "pth": _hosted(f"{stem}.pth", 38_807_540),
        "onnx_encoder": _hosted(f"{stem}_encoder.onnx", 22_098_300),
        "onnx_decoder": _hosted(f"{stem}_decoder.onnx", 15_937_006),
    }, EDGESAM_LICENCE)


def _packaged_spec(name: str, entry: dict, root: Path) -> ModelSpec | None:
    """The spec of a model shipped in the package (``napari_edgesam.models``) from the files
    installed under ``root``; None when none is (ONNX files count only as a pair)."""
    found = {}
    for kind, rel in entry["files"].items():
        path = root / rel
        if path.is_file():
            found[kind] = WeightFile(filename=path.name, size=path.stat().st_size, local_path=path,
                                     licence=entry["file_licence"])
    if not {"onnx_encoder", "onnx_decoder"} <= set(found):
        found.pop("onnx_encoder", None)
        found.pop("onnx_decoder", None)
        found.pop("onnx_encoder_int8", None)
    if "onnx_encoder_int8" in found and not _gate_passed(entry.get("int8_gate")):
        # an int8 encoder is used only when its accuracy gate held (napari_edgesam.export.int8_gate)
        found.pop("onnx_encoder_int8")
    if not found:
        return None
    return ModelSpec(name=name, description=entry["description"], files=found, licence=entry["licence"],
                     mask_input_refines=entry.get("mask_input_refines", True))


def _gate_passed(gate: object) -> bool:
    """Whether a recorded int8 gate (``{"mean_iou", "threshold", ...}``) held."""
    try:
        return float(gate["mean_iou"]) >= float(gate["threshold"]) >= 0.97  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return False


def _build_registry() -> None:
    """The one place the registry is built: EdgeSAM's released models (downloaded on first use)
    and the models shipped in the package whose files are installed (stat calls, no network)."""
    register_model(_edgesam_spec("edgesam", "edge_sam", "EdgeSAM (RepViT encoder, SA-1B distilled)"))
    register_model(_edgesam_spec("edgesam-3x", "edge_sam_3x", "EdgeSAM-3x (3x longer distillation)"))
    from ... import models

    for name, entry in models.PACKAGED.items():
        spec = _packaged_spec(name, entry, models.PACKAGED_DIR)
        if spec is not None:
            register_model(spec)


#: Sub-folder of the cache that holds adapted models (``<name>.pth`` + ``<name>.json`` card,
#: + ``<name>.prior.pth`` when the base had a prior), written by
#: ``napari_edgesam.training.adapt.save_adapted``.
ADAPTED_SUBDIR = "adapted"
#: The card's ``format`` value that marks an adapted model.
ADAPTED_FORMAT = "napari-edgesam-adapted"
#: Names of the registered adapted models (refreshed from the cache).
_ADAPTED: set[str] = set()


def adapted_dir() -> Path:
    """Where adapted models are saved: ``<cache>/adapted`` (not created)."""
    return cache_dir() / ADAPTED_SUBDIR


def _adapted_spec(card_path: Path) -> ModelSpec | None:
    """The spec of the adapted model whose card is ``card_path`` (None when it is not one,
    or its ``.pth`` is missing)."""
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pth = card_path.with_suffix(".pth")
    if not isinstance(card, dict) or card.get("format") != ADAPTED_FORMAT or not pth.is_file():
        return None
    base = card.get("base_model") or {}
    after = (card.get("heldout_after") or {}).get("mean")
    before = (card.get("heldout_before") or {}).get("mean")
    figures = f", held-out IoU {before:.2f} -> {after:.2f}" if isinstance(after, float) and isinstance(before, float) else ""
    description = (f"adapted from {base.get('name') or base.get('file') or 'a model'} on {card.get('objects', '?')} "
                   f"objects of {card.get('images', '?')} images{figures} ({card.get('created', '')})")
    licence = str(card.get("licence") or "")
    wf = WeightFile(filename=pth.name, size=pth.stat().st_size, local_path=pth, licence=licence)
    return ModelSpec(card_path.stem, description, {"pth": wf}, licence,
                     mask_input_refines=bool(card.get("mask_input_refines", True)))


def refresh_adapted_models() -> list[str]:
    """Register the adapted models saved in :func:`adapted_dir` (and drop those whose files
    are gone); a name taken by another registered model is skipped with a warning. Reads
    only that folder (no network). Returns the adapted names now registered."""
    try:
        cards = sorted(adapted_dir().glob("*.json"))
    except OSError:
        cards = []
    found = {}
    for card in cards:
        spec = _adapted_spec(card)
        if spec is not None:
            found[spec.name] = spec
    for name in list(_ADAPTED):
        if name not in found:
            MODEL_REGISTRY.pop(name, None)
            _ADAPTED.discard(name)
    for name, spec in found.items():
        if name in MODEL_REGISTRY and name not in _ADAPTED:
            logger.warning("adapted model %s is not registered: the name is taken by another model", name)
            continue
        register_model(spec, overwrite=True)
        _ADAPTED.add(name)
    return sorted(_ADAPTED)


_build_registry()
refresh_adapted_models()


def sha256_of(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise_sha(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip().lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"not a SHA-256 hex digest: {value!r}")
    return value


def verify_weight_file(path: str | os.PathLike[str], *, expected_size: int | None = None,
                       expected_sha256: str | None = None) -> str:
    """Check that ``path`` exists, is non-empty and matches size/hash; return its SHA-256.

    Used both for cached downloads and for user-supplied ``.pth``/``.onnx`` files.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"weight file {path} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    advice = f"Delete {path} and download it again."
    size = path.stat().st_size
    if size == 0:
        raise WeightFileError(f"weight file {path} is empty. {advice}")
    if expected_size is not None and size != expected_size:
        raise WeightFileError(f"weight file {path} has size {size} bytes, expected "
                              f"{expected_size} (truncated or wrong file?). {advice}")
    found = sha256_of(path)
    expected = _normalise_sha(expected_sha256)
    if expected is not None and found != expected:
        raise WeightFileError(f"weight file {path} has SHA-256 {found}, expected {expected} "
                              f"(corrupted or changed file?). {advice}")
    return found


def _load_hashes() -> dict[str, str]:
    try:
        data = json.loads((cache_dir() / HASHES_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable hash record %s: %s", cache_dir() / HASHES_FILE, exc)
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _record_hash(filename: str, sha256: str) -> None:
    """Store ``sha256`` for ``filename`` in the cache's JSON record, atomically."""
    hashes = _load_hashes()
    hashes[filename] = sha256
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    from ..._atomic import atomic_write_text

    atomic_write_text(directory / HASHES_FILE, json.dumps(hashes, indent=1, sort_keys=True))


#: Files handed out by :func:`fetch_weight` whose hash is not recorded yet:
#: resolved path -> (filename, sha256, size, mtime_ns) when it was hashed.
_UNCONFIRMED: dict[str, tuple[str, str, int, int]] = {}
_UNCONFIRMED_LOCK = threading.Lock()


def _remember_unconfirmed(filename: str, path: Path, sha256: str) -> None:
    st = path.stat()
    with _UNCONFIRMED_LOCK:
        _UNCONFIRMED[str(path.resolve())] = (filename, sha256, st.st_size, st.st_mtime_ns)


def confirm_loaded(*paths: str | os.PathLike[str]) -> None:
    """Record the SHA-256 of weight files that have just loaded successfully.

    Only files handed out unrecorded by :func:`fetch_weight` (a download or a file placed in
    the cache by hand) and unchanged since they were hashed are recorded; anything else is
    ignored, so loaders may call this for every file they read.
    """
    for p in paths:
        path = Path(p)
        key = str(path.resolve())
        with _UNCONFIRMED_LOCK:
            entry = _UNCONFIRMED.pop(key, None)
        if entry is None:
            continue
        filename, sha, size, mtime_ns = entry
        try:
            st = path.stat()
        except OSError:
            continue
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            logger.warning("%s changed while it was loaded; its SHA-256 is not recorded", path)
            continue
        if _load_hashes().get(filename) is None:
            logger.info("recording SHA-256 of %s (first successful load)", path)
            _record_hash(filename, sha)


def _env_pin(filename: str) -> str | None:
    """Pinned sum from ``NAPARI_EDGESAM_SHA256_<FILENAME>`` (non-alphanumerics -> ``_``)."""
    return os.environ.get("NAPARI_EDGESAM_SHA256_" + re.sub(r"\W", "_", filename).upper())


def get_weight_file(model_name: str, kind: str) -> WeightFile:
    """Registry lookup with a helpful ``ValueError`` for unknown names/kinds."""
    if model_name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model {model_name!r}; known: {sorted(MODEL_REGISTRY)}")
    files = MODEL_REGISTRY[model_name].files
    if kind not in files:
        raise ValueError(f"model {model_name!r} has no {kind!r} file; available: {sorted(files)}")
    return files[kind]


def _download(wf: WeightFile, target: Path, pinned: str | None, progress: bool) -> Path:
    failures: list[str] = []
    mismatch = False
    try:  # a cache path below a file, or unwritable, is not "offline"
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WeightsUnavailableError(
            f"cannot create the weights cache folder {target.parent} for {wf.filename} "
            f"({err.strerror or err}): set {CACHE_ENV} to a folder you can write") from None
    known_hash = f"sha256:{pinned}" if pinned else None
    for url in wf.urls:
        logger.info("downloading %s from %s", wf.filename, url)
        try:
            got = Path(pooch.retrieve(url, known_hash=known_hash, fname=wf.filename,
                                      path=target.parent, progressbar=progress))
            sha = verify_weight_file(got, expected_size=wf.size, expected_sha256=pinned)
        except Exception as exc:  # network, HTTP, or content problems: try the next URL
            failures.append(f"  {url}: {type(exc).__name__}: {exc}")
            # ValueError here = wrong size/hash (ours or pooch's); drop the bad file.
            if isinstance(exc, ValueError) and not isinstance(exc, OSError):
                mismatch = True
                target.unlink(missing_ok=True)
            continue
        _remember_unconfirmed(wf.filename, got, sha)  # recorded once it has loaded
        if wf.licence:
            logger.info("%s", wf.licence)
        return got
    detail = "\n".join(failures)
    logger.debug("download of %s failed:\n%s", wf.filename, detail)
    hint = (f"download it by hand and put it at {target} "
            f"(or set {CACHE_ENV} to a folder that holds {wf.filename})")
    if mismatch:
        raise WeightFileError(f"downloaded {wf.filename} failed verification:\n{detail}\n{hint}")
    # one line: the GUI and the CLI show it as it is (the per-URL details are logged above)
    reasons = sorted({f.split(": ", 2)[1] for f in failures if f.count(": ") >= 2})
    raise WeightsUnavailableError(
        f"could not download weight file {wf.filename} (offline? {', '.join(reasons) or 'no URL worked'} "
        f"from {' and '.join(wf.urls)}): {hint}.")


def fetch_weight(model_name: str, kind: str, *, progress: bool = True,
                 allow_download: bool = True, sha256: str | None = None) -> Path:
    """Return the local path of ``kind`` (``"pth"``, ``"onnx_encoder"``, ``"onnx_decoder"``)
    of ``model_name``, downloading it into :func:`cache_dir` if needed.

    A cached file is verified against its size and its pinned (``sha256`` argument,
    ``NAPARI_EDGESAM_SHA256_<FILENAME>`` env var, or registry) or recorded SHA-256. A file
    without a recorded sum gets one when the caller reports it loaded (:func:`confirm_loaded`).
    Raises :class:`WeightFileError` on a mismatch and :class:`WeightsUnavailableError`
    when the file is missing and cannot be downloaded (``allow_download=False`` never
    touches the network).
    """
    wf = get_weight_file(model_name, kind)
    pinned = _normalise_sha(sha256 or _env_pin(wf.filename) or wf.sha256)
    if wf.local_path is not None:
        verify_weight_file(wf.local_path, expected_size=wf.size, expected_sha256=pinned)
        return Path(wf.local_path)
    target = cache_dir() / wf.filename
    if target.exists():
        recorded = _load_hashes().get(wf.filename)
        found = verify_weight_file(target, expected_size=wf.size,
                                   expected_sha256=pinned or recorded)
        if recorded is None:  # recorded by confirm_loaded once it has loaded
            _remember_unconfirmed(wf.filename, target, found)
        return target
    if not allow_download or not wf.urls:
        raise WeightsUnavailableError(
            f"weight file {wf.filename} is not in the cache and downloading is "
            f"{'disabled' if wf.urls else 'not possible (no URL)'}. URLs: {', '.join(wf.urls) or '-'}. "
            f"Download it by hand and put it at {target} "
            f"(or set {CACHE_ENV} to a directory that contains {wf.filename}).")
    return _download(wf, target, pinned, progress)


def list_models() -> list[dict]:
    """Describe registered models and which of their files are present locally (no network);
    adapted models saved in the cache since are registered first."""
    refresh_adapted_models()
    out = []
    for spec in MODEL_REGISTRY.values():
        files = {}
        for kind, wf in spec.files.items():
            path = Path(wf.local_path) if wf.local_path is not None else cache_dir() / wf.filename
            files[kind] = {"filename": wf.filename, "size": wf.size,
                           "cached": path.is_file(), "path": str(path) if path.is_file() else None}
        out.append({"name": spec.name, "description": spec.description,
                    "licence": spec.licence, "formats": list(spec.files), "files": files})
    return out
