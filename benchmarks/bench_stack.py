"""Whole stacks: time to embed every slice of a Z x 512 x 512 stack, per backend.

What "Precompute stack" in the widget does (``SliceEmbedder.precompute`` with the memory cache
and each slice's own normalisation), on a synthetic nuclei stack, with the shipped model on
each path. Target (issue #15): a 100-slice 512 x 512 stack in <= 20 s. Paths: ``auto`` (what
``load_model`` picks: OpenVINO with the int8 encoder when OpenVINO is installed), ``openvino``
with the float32 encoder, ``onnxruntime`` and ``torch``. The paths run one after another,
each on all slices, after one warm-up slice (the machine's noise hits them alike only roughly:
rerun on a quiet machine for figures to quote).

    python benchmarks/bench_stack.py [--slices 100] [--paths auto openvino-fp32 onnxruntime torch] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import table  # noqa: E402

PATHS = ("auto", "openvino-fp32", "onnxruntime", "torch")


def stack(n: int, size: int = 512) -> np.ndarray:
    from napari_edgesam.datasets import synthetic_nuclei_2d

    return np.stack([synthetic_nuclei_2d(seed=100 + z % 10, shape=(size, size))[0] for z in range(n)])


def load(path: str):
    from napari_edgesam import load_model

    if path == "openvino-fp32":
        return load_model("edgesam-nuclei", backend="openvino", int8=False, allow_download=False)
    return load_model("edgesam-nuclei", backend=path, allow_download=False)


def embed_stack(predictor, volume: np.ndarray) -> tuple[float, int]:
    """Seconds to embed every slice of ``volume`` into a fresh memory cache, and the count."""
    from napari_edgesam.inference.embeddings.cache import EmbeddingCache
    from napari_edgesam.inference.embeddings.slices import SliceEmbedder

    embedder = SliceEmbedder(predictor, EmbeddingCache(max_bytes=len(volume) * 5 * 2**20))
    t = time.perf_counter()
    n = embedder.precompute(volume, lambda z: embedder.key("bench", (z,)))
    return time.perf_counter() - t, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    ap.add_argument("--quick", action="store_true", help="20 slices, extrapolated to 100")
    args = ap.parse_args()
    n = 20 if args.quick else args.slices
    volume = stack(n)
    rows = []
    for path in args.paths:
        try:
            predictor = load(path)
        except (ImportError, ValueError) as err:
            print(f"({path} skipped: {err})")
            continue
        predictor.encode(volume[0])  # warm-up: compile, trace, first-call allocations
        seconds, count = embed_stack(predictor, volume)
        assert count == n, (count, n)
        per = seconds / n
        name = f"{path} ({predictor.backend.name}{', int8' if predictor.model_name.endswith('-int8') else ''})"
        rows.append([name, f"{per * 1000:.0f}", f"{seconds:.1f}", f"{per * 100:.1f}",
                     "yes" if per * 100 <= 20 else "no"])
    print(f"{n} slices of 512 x 512 (synthetic nuclei), SliceEmbedder.precompute, memory cache\n")
    print(table(rows, ["path", "ms / slice", f"{n} slices s", "100 slices s", "<= 20 s"]))


if __name__ == "__main__":
    main()
