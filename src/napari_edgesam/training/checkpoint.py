"""Training checkpoints: atomic writes, safe reads, and the model config they carry.

A training checkpoint is a dict of plain data and tensors (readable with
``torch.load(weights_only=True)``)::

    {"format": FORMAT, "phase": str, "model": EdgeSAM state dict (official key names),
     "model_config": {"arch": "edgesam", "img_size": int, "upsample_mode": str},
     "config": TrainConfig.to_dict(), "optimizer": ..., "scaler": ..., "step": int,
     "epoch": int, "step_in_epoch": int, "rng": {...}}

``step`` counts optimizer steps done; ``epoch``/``step_in_epoch`` say where the next step starts.

``last.pt`` is the newest checkpoint; the one it replaced is kept as ``previous.pt``, so a
damaged ``last.pt`` falls back to it (:func:`load_resume_checkpoint`).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..model.build import CheckpointError, check_finite, read_checkpoint

logger = logging.getLogger(__name__)

FORMAT = "napari-edgesam-train/1"
LAST_NAME = "last.pt"
#: The checkpoint ``last.pt`` replaced (the fallback when ``last.pt`` is damaged).
PREVIOUS_NAME = "previous.pt"
#: Temporary files of :func:`atomic_torch_save` / :func:`atomic_write_text` (``.<name>.<random>.tmp``).
_TEMP_PATTERN = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")
_UNSAFE_FIX = (
    "napari-edgesam training checkpoints hold only tensors and plain data, so this file was "
    "not written by it or was altered: use another checkpoint, or delete it to start afresh."
)
REQUIRED_KEYS = ("format", "model", "model_config", "step", "epoch", "step_in_epoch")


def make_readable(fd: int) -> None:
    """``mkstemp`` creates owner-only files; give the file the usual 0644 (POSIX only)."""
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o644)


def atomic_torch_save(obj: Any, path: str | os.PathLike, keep_previous: str | os.PathLike | None = None) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` onto ``path``.

    With ``keep_previous``, an existing ``path`` is first moved there (so a crash between the
    two renames leaves the old file as ``keep_previous`` and no ``path``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    make_readable(fd)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
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


def save_training_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Validate the keys of a training-checkpoint dict and write it atomically."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"training checkpoint state lacks {missing}")
    path = Path(path)
    previous = path.with_name(PREVIOUS_NAME) if path.name == LAST_NAME else None
    return atomic_torch_save(dict(state), path, keep_previous=previous)


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only=True``); :class:`CheckpointError` if it is not one."""
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


def resume_candidates(out_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints a run in ``out_dir`` can resume from: ``last.pt``, ``previous.pt``, then
    the epoch checkpoints, newest first."""
    out_dir = Path(out_dir)
    epochs = sorted(out_dir.glob("epoch_*.pt"), reverse=True)
    return [p for p in (out_dir / LAST_NAME, out_dir / PREVIOUS_NAME, *epochs) if p.is_file()]


def load_resume_checkpoint(out_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to resume from: ``last.pt``, or, when it is damaged, the loadable one
    with the most steps among ``previous.pt`` and the epoch checkpoints (with a warning).

    Returns None when there is none; raises :class:`CheckpointError` when there are some but
    none loads.
    """
    candidates = resume_candidates(out_dir)
    if not candidates:
        return None
    failures = []
    best: tuple[Path, dict] | None = None
    for path in candidates:
        try:
            ckpt = load_training_checkpoint(path)
        except CheckpointError as err:
            failures.append(f"{path.name}: {err}")
            continue
        if path.name == LAST_NAME:
            return path, ckpt
        if best is None or int(ckpt["step"]) > int(best[1]["step"]):
            best = (path, ckpt)
    if best is None:
        raise CheckpointError(
            f"no checkpoint in {out_dir} can be resumed from:\n" + "\n".join(failures)
            + "\nDelete them (or use another run.out_dir, or run.resume=false) to start afresh."
        )
    logger.warning(
        "%s; resuming from %s (step %d) instead", "; ".join(failures) or f"{LAST_NAME} is missing",
        best[0], int(best[1]["step"]),
    )
    return best


def remove_temp_files(out_dir: str | os.PathLike) -> int:
    """Delete the temporary files that atomic writes interrupted by a kill left in ``out_dir``;
    returns their number. Call it only while no other process writes there."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return 0
    removed = 0
    for path in out_dir.iterdir():
        if _TEMP_PATTERN.match(path.name) and path.is_file():
            try:
                size = path.stat().st_size
                path.unlink()
            except OSError:
                continue
            removed += 1
            logger.info("removed %s (%d bytes) left by an interrupted write", path, size)
    return removed
