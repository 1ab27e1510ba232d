"""Torch work from several threads: one compute thread (the default) against each caller's own.

The napari widget loads the model in one worker, embeds in another and decodes in a third. This
script does the same with the shipped ``edgesam-nuclei`` (no download): a loader thread, an
encoder thread and a decoder thread. It times ``segment`` (one click, 4 masks upscaled) and, now
and then, an encode. Each setting runs in its own process, alternating, ``--rounds`` times,
because thread teams persist for the life of a process.

    python benchmarks/bench_threads.py [--rounds 2] [--clicks 25]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def child(clicks: int) -> dict:
    from napari_edgesam.datasets import synthetic_nuclei_2d
    from napari_edgesam.inference.loading.api import load_model

    loader, encoder, decoder = ThreadPoolExecutor(1), ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    predictor = loader.submit(load_model, "edgesam-nuclei", device="cpu", allow_download=False).result()
    image, _ = synthetic_nuclei_2d(0)
    emb = encoder.submit(predictor.encode, image).result()
    point, label = np.array([[256.0, 256.0]], np.float32), np.ones(1, np.float32)
    segment, encode = [], []
    for i in range(clicks + 3):
        if i % 5 == 0:  # a prefetch now and then
            t = time.perf_counter()
            encoder.submit(predictor.encode, image).result()
            encode.append(time.perf_counter() - t)
        t = time.perf_counter()
        decoder.submit(predictor.segment, point, label, embedding=emb).result()
        if i >= 3:
            segment.append(time.perf_counter() - t)
    return {"segment_ms": 1000 * float(np.median(segment)), "encode_ms": 1000 * float(np.median(encode))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clicks", type=int, default=25)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.clicks)))
        return
    settings = {"one compute thread (default)": "1", "each caller's own (NAPARI_EDGESAM_TORCH_THREAD=0)": "0"}
    results: dict[str, list[dict]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, flag in settings.items():
            env = dict(os.environ, NAPARI_EDGESAM_TORCH_THREAD=flag)
            out = subprocess.run([sys.executable, __file__, "--child", "--clicks", str(args.clicks)],
                                 env=env, capture_output=True, text=True, check=True)
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{os.cpu_count()} CPUs; median per process, {args.rounds} process(es) per setting, alternating\n")
    print(f"| {'torch calls run on':<52} | segment ms (per process) | encode ms (per process) |")
    print(f"|{'-' * 54}|--------------------------|-------------------------|")
    for name, runs in results.items():
        seg = " / ".join(f"{r['segment_ms']:.1f}" for r in runs)
        enc = " / ".join(f"{r['encode_ms']:.0f}" for r in runs)
        print(f"| {name:<52} | {seg:<24} | {enc:<23} |")


if __name__ == "__main__":
    main()
