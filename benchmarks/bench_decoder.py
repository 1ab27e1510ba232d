"""Decoder latency per prompt on this CPU: the previous fast path against the current one,
side by side in one run (interleaved), and the interactive click path around it.

Rows (golden weights: the official EdgeSAM cost, see ``_common.golden_state_dict``):
  * decoder, 1 point, 4 masks: the module-by-module eager decoder; the previous fast path
    (``decode_tokens`` on the whole batch of image tokens, image tokens plus the no-mask embedding
    added per call); the current default (``decode_one``: first block's image side cached per
    embedding, fused chunked passes); the same for a grid point whose masks are all negative at
    the point (``needed_at``: no upscaling);
  * click path (``predictor.segment`` with one point, float16 cached embedding as the napari
    cache stores it): with the previous predictor behaviour (embedding checked and converted
    on every call, previous decoder) and the current one.

Wall-clock medians and per-call CPU time of the calling thread (with ``--threads 1`` all the
work runs on it: a better measure than wall time on a shared machine)::

    python benchmarks/bench_decoder.py [--quick] [--threads N] [--rounds 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import golden_state_dict, table  # noqa: E402

from napari_edgesam.inference.backends import compute_thread  # noqa: E402

compute_thread.ENABLED = False  # all torch work on this thread (timed with thread CPU time)


def timed(fns: dict, rounds: int, warmup: int = 3) -> dict[str, tuple[float, float]]:
    """``{name: (median wall s, median thread CPU s)}``, interleaved round-robin."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t, c = time.perf_counter(), time.thread_time()
            f()
            cpu[k].append(time.thread_time() - c)
            wall[k].append(time.perf_counter() - t)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def previous_predictor(predictor):
    """A copy of a torch-backed ``predictor`` that behaves as before the single-prompt path:
    the fast decoder as ``decode_tokens`` on the token-layout embedding (the no-mask embedding
    added on every call), no decode hints, the embedding checked and float16 features converted
    on every call. Shares the model with ``predictor``."""
    import copy

    import torch

    from napari_edgesam.inference.backends.torch_backend import TorchBackend
    from napari_edgesam.inference.core.predictor import EdgeSamPredictor, _check_embedding
    from napari_edgesam.model.fast_decoder import decode_tokens, to_tokens

    class PreviousBackend(TorchBackend):
        decode_hints = frozenset()
        decodes_prompt_by_prompt = True  # same fixed grid batches as the current path

        def _decode_shared(self, embeddings, sparse, size, hints):
            src = to_tokens(torch.from_numpy(np.ascontiguousarray(embeddings, np.float32)))
            src = src + self.model.prompt_encoder.no_mask_embed.weight.reshape(1, 1, -1)
            masks = torch.empty((sparse.shape[0], 4, 4 * size[0], 4 * size[1]))
            ious = []
            for i in range(sparse.shape[0]):  # one prompt per call, as before
                masks[i : i + 1], iou = decode_tokens(self.model.mask_decoder, src, self._pe_tokens(),
                                                      sparse[i : i + 1], size)
                ious.append(iou)
            return masks[:, hints["sl"]], torch.cat(ious)

    class PreviousPredictor(EdgeSamPredictor):
        def checked(self, embedding):
            _check_embedding(embedding, self.backend.embedding_shape)
            return embedding

        def _features32(self, emb):
            return emb.features.astype(np.float32)

        def decode_batch(self, embedding, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                         num_multimask_outputs=1, return_logits=False, use_stability_score=False, upscale=True):
            return super().decode_batch(embedding, point_coords, point_labels, boxes, mask_input,
                                        num_multimask_outputs, return_logits, use_stability_score, upscale)

    backend = copy.copy(predictor.backend)
    backend.__class__ = PreviousBackend
    old = copy.copy(predictor)
    old.__class__ = PreviousPredictor
    old.backend = backend
    old._last_checked = old._last_f32 = None
    return old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="10 rounds")
    args = ap.parse_args()
    import torch

    from napari_edgesam.inference.backends.torch_backend import TorchBackend
    from napari_edgesam.inference.core.predictor import EdgeSamPredictor
    from napari_edgesam.model import build_edge_sam

    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = 10 if args.quick else args.rounds

    sd = golden_state_dict()
    eager = build_edge_sam(sd).eval()
    new = EdgeSamPredictor(TorchBackend(build_edge_sam(sd), "cpu"), "golden")
    old = previous_predictor(EdgeSamPredictor(TorchBackend(build_edge_sam(sd), "cpu"), "golden"))
    rng = np.random.default_rng(0)
    image = (rng.random((768, 1024)) * 255).astype(np.uint8)
    emb = new.encode(image)
    emb16 = emb.astype(np.float16)
    feat = emb.features
    coords = np.array([[[400.0, 300.0], [0.0, 0.0]]], np.float32)
    labels = np.array([[1.0, -1.0]], np.float32)
    low, _ = new.backend.decode(feat, coords, labels)
    best = low[0].max(0)
    negative = np.array([np.unravel_index(np.argmin(best), best.shape)])
    t_emb, t_coords, t_labels = torch.from_numpy(feat), torch.from_numpy(coords), torch.from_numpy(labels).long()

    def eager_decode():
        with torch.inference_mode():
            pe = eager.prompt_encoder
            sparse = pe.embed_points(t_coords, t_labels, pad=False)
            dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 64, 64)
            eager.mask_decoder.predict_masks(t_emb, pe.get_dense_pe(), sparse, dense)

    point, one = np.array([[400.0, 300.0]]), np.ones(1)
    fns = {
        "decoder: eager (module by module)": eager_decode,
        "decoder: previous fast path": lambda: old.backend.decode(feat, coords, labels),
        "decoder: current default": lambda: new.backend.decode(feat, coords, labels),
        "decoder: current, grid point with no mask there": lambda: new.backend.decode(feat, coords, labels,
                                                                                       needed_at=negative),
        "click (segment, fp16 embedding): previous": lambda: old.segment(point, one, embedding=emb16, fill_holes=False),
        "click (segment, fp16 embedding): current": lambda: new.segment(point, one, embedding=emb16, fill_holes=False),
    }
    res = timed(fns, rounds)
    base = res["decoder: previous fast path"]
    rows = [[k, f"{w * 1e3:.1f}", f"{c * 1e3:.1f}", f"{w / base[0]:.2f}x"] for k, (w, c) in res.items()]
    try:
        load = Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        load = "n/a"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {rounds} interleaved rounds; load average {load}"
          " (a shared machine: compare rows of one run, not runs)")
    print(table(rows, ["path (1 point + pad, 4 masks)", "wall ms (median)", "thread CPU ms", "wall vs previous"]))


if __name__ == "__main__":
    main()
