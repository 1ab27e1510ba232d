"""Run logging on rank 0: ``log.jsonl``, optional TensorBoard scalars, tqdm progress bars."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def progress_bar(enabled: bool, total: int, initial: int, epoch: int):
    """A tqdm bar over the steps of one epoch (None when disabled)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}", unit="step", dynamic_ncols=True)


class RunLogger:
    """``log.jsonl`` lines and, if installed and wanted, TensorBoard scalars (rank 0 only)."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / "log.jsonl"
        self.writer = None
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
