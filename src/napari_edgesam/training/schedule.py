"""Per-step learning-rate schedule: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CosineSchedule:
    """``lr(step)`` for ``step`` in ``0 .. total_steps`` (optimizer steps, 0-based).

    Warm-up: ``warmup_start_lr -> base_lr`` linearly over ``warmup_steps``; then
    ``min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2`` with ``t`` going 0 -> 1 over the
    remaining steps. Steps past ``total_steps`` keep ``min_lr``. The schedule is a pure function
    of the step, so resuming only needs the step counter.
    """

    base_lr: float
    min_lr: float
    total_steps: int
    warmup_steps: int = 0
    warmup_start_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                f"warmup_steps must be in 0..total_steps ({self.total_steps}), got {self.warmup_steps}"
            )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            frac = step / self.warmup_steps
            return self.warmup_start_lr + (self.base_lr - self.warmup_start_lr) * frac
        decay_steps = self.total_steps - self.warmup_steps
        if decay_steps <= 0:
            return self.min_lr
        t = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (groups may carry an ``lr_scale``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
