"""Shared helpers for the benchmark scripts: a model with the official architecture and
deterministic weights (same cost as the released EdgeSAM), and interleaved timing."""

from __future__ import annotations

import importlib.util
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden"


def golden_state_dict():
    """The official state-dict layout filled with the golden recipe (no download)."""
    import torch

    spec = importlib.util.spec_from_file_location("golden_weights", GOLDEN / "golden_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    layout = json.loads((GOLDEN / "edge_sam_state_dict.json").read_text())
    return mod.fill_state_dict(
        {k: v["shape"] for k, v in layout.items()}, {k: getattr(torch, v["dtype"]) for k, v in layout.items()}
    )


def interleaved(fns: dict[str, Callable[[], object]], rounds: int = 5, warmup: int = 1) -> dict[str, dict]:
    """Time each function ``rounds`` times, round-robin so machine noise hits all alike.

    Returns ``{name: {"median": s, "min": s}}``.
    """
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    return {k: {"median": statistics.median(v), "min": min(v)} for k, v in times.items()}


def matmul_peak_gflops(dtype=None, n: int = 2048, reps: int = 5) -> float:
    """Measured dense matmul throughput of this machine (GFLOP/s) for ``dtype``."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = " | ".join(f"{{:{w}}}" for w in widths)
    line = "-+-".join("-" * w for w in widths)
    return "\n".join([fmt.format(*header), line, *[fmt.format(*map(str, r)) for r in rows]])
