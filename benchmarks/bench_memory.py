"""Peak memory of ``set_image`` + ``segment`` (one point) against the size of the input image.

Each row runs in a fresh process: the golden-weight EdgeSAM on the torch backend is built and
warmed up on a small image first, then the image is created and the peak is measured over
``set_image(image)`` + ``segment([[x, y]], [1])`` in two ways:

* tracemalloc: numpy's allocations (preprocessing, resize output, upscaled mask), not torch's
  or PIL's;
* RSS: the rise of the process's peak resident memory (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``; Linux only) over the resident memory before the call: everything,
  including the encoder's activations, which do not depend on the image size (see the small
  image's row).

Both are given as a multiple of the input's size (issue 12 target: <= 6x for 8000 x 8000 uint16).

    python benchmarks/bench_memory.py [--sizes 8000 4000 1000] [--dtype uint16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import golden_state_dict, table  # noqa: E402


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(size: int, dtype: str) -> dict:
    import torch

    from napari_edgesam.inference.backends import compute_thread
    from napari_edgesam.inference.backends.torch_backend import TorchBackend
    from napari_edgesam.inference.core.predictor import EdgeSamPredictor
    from napari_edgesam.model import build_edge_sam

    compute_thread.ENABLED = False  # a one-thread script: torch runs on the main thread
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    predictor = EdgeSamPredictor(TorchBackend(build_edge_sam(golden_state_dict()), "cpu"))
    warm = np.random.default_rng(0).integers(0, 4000, (300, 400)).astype(dtype)
    predictor.set_image(warm)
    predictor.segment([[200, 150]], [1])
    predictor.reset_image()

    rng = np.random.default_rng(1)
    image = np.empty((size, size), dtype)
    for r in range(0, size, 1024):  # filled in pieces: no full-size temporary before the measure
        image[r : r + 1024] = rng.integers(0, 4000, (min(1024, size - r), size))
    rss_before = _status_kb("VmRSS")
    clean = _reset_peak_rss()
    tracemalloc.start()
    t = time.perf_counter()
    predictor.set_image(image)
    t_set = time.perf_counter() - t
    t = time.perf_counter()
    mask, score, _ = predictor.segment([[size / 2, size / 2]], [1])
    t_seg = time.perf_counter() - t
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm = _status_kb("VmHWM")
    return {
        "size": size, "dtype": dtype, "input_bytes": image.nbytes, "traced_peak": traced,
        "rss_peak_rise": (hwm - rss_before) * 1024 if clean else None,
        "set_image_s": t_set, "segment_s": t_seg, "mask_shape": list(mask.shape),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8000, 4000, 1000])
    ap.add_argument("--dtype", default="uint16")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dtype)))
        return
    rows = []
    for size in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(size), "--dtype", args.dtype],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        mb = r["input_bytes"] / 1e6
        rss = r["rss_peak_rise"]
        rows.append([
            f"{size} x {size} {r['dtype']}", f"{mb:.0f}",
            f"{r['traced_peak'] / 1e6:.0f} ({r['traced_peak'] / r['input_bytes']:.2f}x)",
            "n/a" if rss is None else f"{rss / 1e6:.0f} ({rss / r['input_bytes']:.2f}x)",
            f"{r['set_image_s']:.1f} / {r['segment_s']:.2f}",
        ])
    print(table(rows, ["image", "input MB", "tracemalloc peak MB (x input)", "RSS peak rise MB (x input)",
                       "set_image / segment s"]))


if __name__ == "__main__":
    main()
