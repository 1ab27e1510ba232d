"""Run logging on rank 0: ``log.jsonl``, optional TensorBoard scalars, tqdm progress bars."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def truncate_log(path: Path, last_step: int) -> int:
    """Drop the records of ``path`` (``log.jsonl``) with a step after ``last_step`` (and any
    unreadable line, e.g. one cut by a kill); rewritten atomically. Returns the number dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            dropped += 1
            continue
        if step <= last_step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        from .checkpoint import atomic_write_text

        atomic_write_text("".join(f"{ln}\n" for ln in kept), path)
        logger.info("%s: dropped %d records after step %d (the run resumes there)", path, dropped, last_step)
    return dropped


def progress_bar(enabled: bool, total: int, initial: int, epoch: int):
    """A tqdm bar over the steps of one epoch (None when disabled)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}", unit="step", dynamic_ncols=True)


class RunLogger:
    """``log.jsonl`` lines and, if installed and wanted, TensorBoard scalars (rank 0 only).

    ``resume_step``: the step the run starts after (0 for a fresh run); records of later steps
    already in ``log.jsonl`` (logged after the checkpoint a resumed run starts from, or by an
    earlier run in the same folder) are dropped, so every step appears once.
    """

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.path = out_dir / "log.jsonl"
        self.writer = None
        if enabled:
            truncate_log(self.path, resume_step)
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.debug("tensorboard is not installed: logging to %s only", self.path)
            else:
                self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, step: int, epoch: int, lr: float, grad_norm: float, seconds: float, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "epoch": epoch, "lr": lr, "grad_norm": grad_norm, "sec_per_step": seconds, **metrics}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        logger.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float)))
        if self.writer is not None:
            for k, v in record.items():
                if k not in ("step", "epoch"):
                    self.writer.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
