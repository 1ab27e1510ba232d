"""Automatic mode on a 1024 x 1024 image: batched vs unbatched grid, and batch throughput.

Model: the official EdgeSAM architecture with the golden (deterministic) weights, so every
call costs what the released model costs; the masks themselves are arbitrary, which only
changes how many candidates survive the filters (reported as "objects").

Rows:
  * decoder cost per prompt for several prompts-per-call (``decode_batch``, low-res only);
  * unbatched reference: the 32 x 32 grid as 1024 ``predict()`` calls of one point each
    (4 masks upscaled to full size per call, like a naive loop), then the same filtering;
    timed on ``--unbatched-points`` grid points and extrapolated to 1024 (marked "extrapolated");
  * batched, every point decoded (``skip_covered=False``): batching + low-res filtering only;
  * batched, default settings (``skip_covered=True``);
  * batch engine throughput (``run_batch``: read TIFF, embed, automatic, write labels + record).

Usage: ``python benchmarks/bench_automatic.py [--quick] [--threads N] [--images 1] [--unbatched-points 64]``
(``--quick``: batch sizes 1 and 64 only, 16 unbatched points; a few minutes on 2 busy cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import golden_state_dict, table  # noqa: E402

from napari_edgesam.inference.backends import compute_thread  # noqa: E402

# A single-threaded script that also runs torch on its main thread (the reference rows, the
# golden weights): keep all torch work on that thread, as NAPARI_EDGESAM_TORCH_THREAD=0 does.
compute_thread.ENABLED = False


def nuclei_image(seed: int, size: int = 1024) -> np.ndarray:
    """A uint16 fluorescence-like image: ~120 blurred bright ellipses on a dim, noisy background."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size), 200.0)
    for _ in range(120):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(8, 30, 2)
        img[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] += rng.uniform(800, 2500)
    img = ndimage.gaussian_filter(img, 2) + rng.normal(0, 40, img.shape)
    return np.clip(img, 0, 65535).astype(np.uint16)


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--images", type=int, default=1, help="images for the throughput run")
    parser.add_argument("--unbatched-points", type=int, default=64, help="grid points timed unbatched")
    parser.add_argument("--batch-sizes", default="1,4,16,64", help="prompts per call to compare")
    parser.add_argument("--quick", action="store_true", help="batch sizes 1,64 and 16 unbatched points")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.unbatched_points = "1,64", min(args.unbatched_points, 16)

    import torch

    from napari_edgesam.inference.automatic.grid import (
        AutomaticConfig,
        _filter_chunk,
        generate_masks,
        masks_to_labels,
        nms,
        point_grid,
    )
    from napari_edgesam.inference.backends.torch_backend import TorchBackend
    from napari_edgesam.inference.batch.engine import BatchConfig, run_batch
    from napari_edgesam.inference.core.predictor import EdgeSamPredictor, Prediction
    from napari_edgesam.model import build_edge_sam

    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    header = ["what", "work", "time", "speed-up vs unbatched", "how"]
    rows: list[list[str]] = []

    def add(row: list[str]) -> None:
        rows.append(row)
        print(" | ".join(row), flush=True)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; load average at start "
          f"{_load()}", flush=True)
    predictor = EdgeSamPredictor(TorchBackend(build_edge_sam(golden_state_dict()), "cpu"), "edgesam-golden")
    image = nuclei_image(0)
    t = time.perf_counter()
    emb = predictor.encode(image)
    add(["embedding (encoder, 1024x1024)", "1 call", f"{time.perf_counter() - t:.2f} s", "", "measured"])
    default = AutomaticConfig()
    grid = point_grid(image.shape, default.points_per_side)

    # decoder cost per prompt by batch size (32 prompts each, after one warm-up call)
    per_prompt = {}
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        pts = grid[: max(bs, 32)]
        predictor.decode_batch(emb, pts[:bs, None], np.ones((bs, 1)), num_multimask_outputs=4, upscale=False)
        t = time.perf_counter()
        for i in range(0, len(pts), bs):
            c = pts[i : i + bs]
            predictor.decode_batch(emb, c[:, None], np.ones((len(c), 1)), num_multimask_outputs=4, upscale=False)
        per_prompt[bs] = (time.perf_counter() - t) / len(pts)
        add([f"decoder, {bs} prompt(s) per call", f"{len(pts)} prompts",
             f"{per_prompt[bs] * 1e3:.1f} ms/prompt", "", "measured"])

    # unbatched reference: one predict() per grid point, then the same filtering + NMS + paint
    n_sub = min(args.unbatched_points, len(grid))
    sub = grid[np.linspace(0, len(grid) - 1, n_sub).astype(int)]
    covered = np.zeros((256, 256), bool)
    cfg_all = AutomaticConfig(skip_covered=False)
    t = time.perf_counter()
    cands = []
    for p in sub:
        _, scores, low = predictor.decode(emb, p[None], np.ones(1), num_multimask_outputs=4)
        cands += _filter_chunk(p[None], Prediction(None, scores[None], low[None]), emb, cfg_all, covered)
    masks_to_labels(nms(cands, cfg_all.nms_thresh), image.shape, cfg_all.min_area)
    unbatched_s = (time.perf_counter() - t) * len(grid) / n_sub
    add([f"unbatched {default.points_per_side}x{default.points_per_side} grid, predict() per point",
         f"{len(grid)} calls", f"{unbatched_s:.1f} s", "1.00x", f"extrapolated from {n_sub} points"])

    # batched, every point decoded: batching + low-res filtering + in-box upscaling only
    calls = {"n": 0}
    real = predictor.decode_batch

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    predictor.decode_batch = counting
    cfg = AutomaticConfig(skip_covered=False)
    per_call = "auto batch size"
    t = time.perf_counter()
    masks = generate_masks(predictor, emb, cfg)
    n = int(masks_to_labels(masks, image.shape, cfg.min_area, cfg.min_visible_fraction).max())
    secs = time.perf_counter() - t
    add([f"batched, all {len(grid)} points ({per_call})", f"{calls['n']} calls, {n} objects",
         f"{secs:.1f} s", f"{unbatched_s / secs:.2f}x", "measured"])

    # the batch engine with default settings (skip covered points): TIFF in -> labels + record
    with tempfile.TemporaryDirectory() as tmp:
        import tifffile

        folder = Path(tmp) / "in"
        folder.mkdir()
        for i in range(args.images):
            tifffile.imwrite(folder / f"img{i}.tif", nuclei_image(100 + i))
        calls["n"] = 0
        t = time.perf_counter()
        report = run_batch([folder], Path(tmp) / "out", BatchConfig(), predictor=predictor)
        secs = time.perf_counter() - t
    del predictor.decode_batch
    if report.count("ok") != args.images:
        raise RuntimeError(f"batch run failed: {report.records}")
    objects = sum(r["n_objects"] for r in report.records) / args.images
    add([f"batch engine, default settings ({per_call}, skip covered)",
         f"{calls['n'] / args.images:.0f} calls, {objects:.0f} objects per image",
         f"{secs / args.images:.1f} s/image", f"{unbatched_s / (secs / args.images):.2f}x",
         f"measured on {args.images} images, includes read/embed/write"])
    add(["batch throughput (default settings)", f"{args.images} images 1024x1024",
         f"{60 * args.images / secs:.2f} images/min", "", "measured"])

    print()
    print(table(rows, header))
    print(f"total benchmark time {time.perf_counter() - t_start:.0f} s (process CPU time {time.process_time():.0f} s); "
          f"load average at end {_load()} "
          "(other processes on this machine slow every row alike)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
