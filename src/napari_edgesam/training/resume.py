"""Where a training run resumes: the newest loadable checkpoint of its folder, after removing
what a killed run left behind.

``last.pt`` is used when it loads; when it is damaged (or missing after a kill between the two
renames of a save), the loadable one with the most steps among ``previous.pt`` and the epoch
checkpoints, with a warning.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from ..model.build import CheckpointError
from .checkpoint import LAST_NAME, PREVIOUS_NAME, load_training_checkpoint

logger = logging.getLogger(__name__)

#: Temporary files of atomic writes: ``.<name>.<random>.tmp`` (mkstemp) and
#: ``.<name>.<pid>.<hex>.tmp``. A pid-aware cleaner (napari_edgesam._atomic.remove_stale_temps,
#: on the branch that adds the shared atomic-write helper) can replace
#: :func:`remove_temp_files` once both are merged.
_TEMP_PATTERN = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


def resume_candidates(out_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints a run in ``out_dir`` can resume from: ``last.pt``, ``previous.pt``, then
    the epoch checkpoints, newest first."""
    out_dir = Path(out_dir)
    epochs = sorted(out_dir.glob("epoch_*.pt"), reverse=True)
    return [p for p in (out_dir / LAST_NAME, out_dir / PREVIOUS_NAME, *epochs) if p.is_file()]


def load_resume_checkpoint(out_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """``(path, checkpoint)`` to resume from: ``last.pt``, or, when it is damaged or missing,
    the loadable checkpoint with the most steps among ``previous.pt`` and the epoch
    checkpoints (with a warning that names what failed).

    Returns None when the folder holds no checkpoint; raises :class:`CheckpointError` when it
    holds some but none loads.
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
    """Delete the temporary files that atomic writes interrupted by a kill left in ``out_dir``
    (e.g. a 68 MB ``.last.pt.*.tmp``); returns their number. Call it only while no other
    process writes there (a training run owns its folder)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return 0
    removed = 0
    for path in out_dir.iterdir():
        if not _TEMP_PATTERN.match(path.name) or not path.is_file():
            continue
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            continue
        removed += 1
        logger.info("removed %s (%d bytes), left by an interrupted write", path, size)
    return removed
