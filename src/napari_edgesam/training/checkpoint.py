"""Training checkpoints: atomic writes, safe reads, and the model config they carry.

A training checkpoint is a dict of plain data and tensors (readable with
``torch.load(weights_only=True)``)::

    {"format": FORMAT, "phase": str, "model": EdgeSAM state dict (official key names),
     "model_config": {"arch": "edgesam", "img_size": int, "upsample_mode": str},
     "config": TrainConfig.to_dict(), "optimizer": ..., "scaler": ..., "step": int,
     "epoch": int, "step_in_epoch": int, "rng": {...}}

``step`` counts optimizer steps done; ``epoch``/``step_in_epoch`` say where the next step starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_open
from .._atomic import atomic_write_text as _atomic_write_text
from ..model.build import CheckpointError, read_checkpoint

FORMAT = "napari-edgesam-train/1"
LAST_NAME = "last.pt"
REQUIRED_KEYS = ("format", "model", "model_config", "step", "epoch", "step_in_epoch")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` onto ``path``
    (see :mod:`napari_edgesam._atomic`: fsync, permissions from the umask)."""
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)
    return path


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write text atomically (see :mod:`napari_edgesam._atomic`)."""
    return _atomic_write_text(path, text)


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


def save_training_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Validate the keys of a training-checkpoint dict and write it atomically."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"training checkpoint state lacks {missing}")
    return atomic_torch_save(dict(state), path)


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only=True``); :class:`CheckpointError` if it is not one."""
    obj = read_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a napari-edgesam training checkpoint (format {FORMAT!r}); "
            "to start from plain EdgeSAM weights use model.checkpoint instead"
        )
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"training checkpoint {path} lacks {missing}")
    return obj


def is_training_checkpoint(obj: object) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def find_resume_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """``out_dir/last.pt`` if it exists, else None."""
    path = Path(out_dir) / LAST_NAME
    return path if path.is_file() else None
