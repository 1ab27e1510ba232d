"""Training checkpoints: atomic writes, safe reads, and the model config they carry.

A training checkpoint is a dict of plain data and tensors (readable with
``torch.load(weights_only=True)``)::

    {"format": FORMAT, "phase": str, "model": EdgeSAM state dict (official key names),
     "model_config": {"arch": "edgesam", "img_size": int, "upsample_mode": str},
     "config": TrainConfig.to_dict(), "optimizer": ..., "scaler": ..., "step": int,
     "epoch": int, "step_in_epoch": int, "rng": {...}}

``step`` counts optimizer steps done; ``epoch``/``step_in_epoch`` say where the next step starts.
``last.pt`` is the newest; the one it replaced is kept as ``previous.pt`` (the fallback when
``last.pt`` is damaged: :func:`napari_edgesam.training.resume.load_resume_checkpoint`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..model.build import CheckpointError, read_checkpoint

FORMAT = "napari-edgesam-train/1"
LAST_NAME = "last.pt"
REQUIRED_KEYS = ("format", "model", "model_config", "step", "epoch", "step_in_epoch")


def make_readable(fd: int) -> None:
    """``mkstemp`` creates owner-only files; give the file the usual 0644 (POSIX only)."""
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o644)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    make_readable(fd)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write text atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    make_readable(fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def rng_state() -> dict[str, Any]:
    """The global torch RNG states (CPU and every CUDA device)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state` (CUDA states only where CUDA is available)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


#: The checkpoint that ``last.pt`` replaced (the fallback when ``last.pt`` is damaged).
PREVIOUS_NAME = "previous.pt"
_UNSAFE_FIX = (
    "napari-edgesam training checkpoints hold only tensors and plain data, so this file was "
    "not written by it or was altered: use another checkpoint, or delete it to start afresh."
)


def save_training_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Validate the keys of a training-checkpoint dict and write it atomically.

    An existing ``last.pt`` is first renamed ``previous.pt`` (a kill during the write leaves
    ``previous.pt`` and no ``last.pt``, from which a resumed run starts).
    """
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"training checkpoint state lacks {missing}")
    path = Path(path)
    if path.name == LAST_NAME and path.is_file():
        os.replace(path, path.with_name(PREVIOUS_NAME))
    return atomic_torch_save(dict(state), path)


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only=True``); :class:`CheckpointError` if it is
    not one, is damaged, or holds NaN/inf weights."""
    from ..model.build import check_finite

    obj = read_checkpoint(path, unsafe_fix=_UNSAFE_FIX)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a napari-edgesam training checkpoint (format {FORMAT!r}); "
            "to start from plain EdgeSAM weights use model.checkpoint instead"
        )
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"training checkpoint {path} lacks {missing}")
    if not isinstance(obj["model"], Mapping):
        raise CheckpointError(f"training checkpoint {path} has no model state dict")
    check_finite(obj["model"], f"training checkpoint {path}")
    return obj


def is_training_checkpoint(obj: object) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def find_resume_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """``out_dir/last.pt`` if it exists, else None."""
    path = Path(out_dir) / LAST_NAME
    return path if path.is_file() else None
