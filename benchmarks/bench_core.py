"""Encoder and decoder latency, side by side in one run, on this machine.

Rows: the unfolded eager model (computes exactly what the official code computes), our
default torch path (folded BN/RepVGG, channels-last, jit encoder; fast decoder), a bf16 encoder, onnxruntime and
OpenVINO (if installed) on our exports, the int8 encoder on OpenVINO and on onnxruntime, and the
fp32 floor (FLOPs / measured matmul peak). The int8 rows run the shipped model's gated int8
encoder file (``edgesam-nuclei``: the same architecture, so the same cost as the golden
weights the other rows use; the time of int8 kernels does not depend on the weight values).
All encoder rows are timed round-robin in one loop (interleaved), and so are the decoder rows.

    python benchmarks/bench_core.py [--rounds 5] [--threads N] [--no-onnx] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from _common import golden_state_dict, interleaved, matmul_peak_gflops, table  # noqa: E402

from napari_edgesam.inference.backends import compute_thread  # noqa: E402
from napari_edgesam.inference.backends.torch_backend import TorchBackend  # noqa: E402

# A single-threaded script that also runs torch on its main thread (the reference rows, the
# golden weights): keep all torch work on that thread, as NAPARI_EDGESAM_TORCH_THREAD=0 does.
compute_thread.ENABLED = False
from napari_edgesam.model import build_edge_sam  # noqa: E402


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--quick", action="store_true", help="3 rounds (encoder) and 10 (decoder): about a minute")
    args = ap.parse_args()
    if args.quick:
        args.rounds = 3
    if args.threads:
        torch.set_num_threads(args.threads)
    sd = golden_state_dict()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((1, 3, 1024, 1024)).astype(np.float32))
    xn = x.numpy()

    eager = build_edge_sam(sd)
    default = TorchBackend(build_edge_sam(sd), "cpu")
    bf16 = TorchBackend(build_edge_sam(sd), "cpu", encoder_dtype=torch.bfloat16)
    emb = default.encode(xn)
    coords = np.array([[[400.0, 300.0], [0.0, 0.0]]], np.float32)
    labels = np.array([[1.0, -1.0]], np.float32)
    t_coords, t_labels = torch.from_numpy(coords), torch.from_numpy(labels).long()
    t_emb = torch.from_numpy(emb)

    def eager_decode():
        with torch.inference_mode():
            sparse = eager.prompt_encoder.embed_points(t_coords, t_labels, pad=False)
            dense = eager.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 64, 64)
            eager.mask_decoder.predict_masks(t_emb, eager.prompt_encoder.get_dense_pe(), sparse, dense)

    def eager_encode():
        with torch.inference_mode():
            eager.image_encoder(x)

    enc = {
        "unfolded eager (official compute)": eager_encode,
        "default torch (jit encoder, fast decoder)": lambda: default.encode(xn),
        "torch bf16 encoder": lambda: bf16.encode(xn),
    }
    dec = {
        "unfolded eager (official compute)": eager_decode,
        "default torch (jit encoder, fast decoder)": lambda: default.decode(emb, coords, labels),
    }
    tmp = tempfile.TemporaryDirectory()
    if not args.no_onnx:
        try:
            from napari_edgesam.export.onnx_export import export_onnx
            from napari_edgesam.inference.backends.onnx_backend import OnnxBackend

            e_path, d_path = export_onnx(build_edge_sam(sd), tmp.name, "bench")
            ort = OnnxBackend(e_path, d_path, device="cpu", num_threads=args.threads)
            enc["onnxruntime"] = lambda: ort.encode(xn)
            dec["onnxruntime"] = lambda: ort.decode(emb, coords, labels)
        except ImportError as err:
            print(f"(onnx rows skipped: {err})")
        try:
            from napari_edgesam.inference.backends.openvino_backend import OpenVinoBackend

            ov = OpenVinoBackend(e_path, d_path, num_threads=args.threads, cache=False)
            enc["openvino"] = lambda: ov.encode(xn)
            dec["openvino"] = lambda: ov.decode(emb, coords, labels)
        except (ImportError, NameError) as err:
            print(f"(openvino rows skipped: {err})")
        try:
            from napari_edgesam.inference.loading import weights

            files = weights.MODEL_REGISTRY["edgesam-nuclei"].files
            q_enc, q_dec = files["onnx_encoder_int8"].local_path, files["onnx_decoder"].local_path
            if "ov" in locals():
                ov8 = OpenVinoBackend(q_enc, q_dec, num_threads=args.threads, cache=False)
                enc["openvino int8 encoder (gated)"] = lambda: ov8.encode(xn)
            ort8 = OnnxBackend(q_enc, q_dec, device="cpu", num_threads=args.threads)
            enc["onnxruntime int8 encoder"] = lambda: ort8.encode(xn)
        except (ImportError, NameError, KeyError) as err:
            print(f"(int8 rows skipped: {err})")

    enc_flops = flops(eager_encode)
    dec_flops = flops(eager_decode)
    dec_flops_default = flops(lambda: default.decode(emb, coords, labels))
    peak = matmul_peak_gflops()
    peak_bf16 = matmul_peak_gflops(torch.bfloat16)
    res_enc = interleaved(enc, rounds=args.rounds)
    res_dec = interleaved(dec, rounds=max(args.rounds * 4, 10), warmup=3)

    base_e = res_enc["unfolded eager (official compute)"]["median"]
    base_d = res_dec["unfolded eager (official compute)"]["median"]
    rows = []
    for name in enc:
        e = res_enc[name]["median"]
        d = res_dec.get(name, {}).get("median")
        rows.append([name, f"{e * 1000:.0f}", f"{e / base_e:.2f}x",
                     "-" if d is None else f"{d * 1000:.1f}", "-" if d is None else f"{d / base_d:.2f}x"])
    rows.append(["fp32 floor (FLOPs / matmul peak)", f"{enc_flops / peak / 1e6:.0f}", f"{enc_flops / peak / 1e9 / base_e:.2f}x",
                 f"{dec_flops / peak / 1e6:.1f}", f"{dec_flops / peak / 1e9 / base_d:.2f}x"])
    print(f"threads={torch.get_num_threads()}  encoder {enc_flops / 2e9:.1f} GMAC, decoder (1 point, 4 masks) "
          f"{dec_flops / 2e9:.2f} GMAC (default path {dec_flops_default / 2e9:.2f}); matmul peak fp32 {peak:.0f} GFLOP/s, bf16 {peak_bf16:.0f} GFLOP/s")
    print(f"input 1024x1024, medians of {args.rounds} interleaved rounds (decoder: {max(args.rounds * 4, 10)})\n")
    print(table(rows, ["path", "encoder ms", "vs eager", "decoder ms", "vs eager"]))


if __name__ == "__main__":
    main()
