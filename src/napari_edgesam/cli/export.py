"""``napari-edgesam export MODEL -o OUTDIR``: write an encoder/decoder pair of ONNX files.

MODEL is a registered model name (its ``.pth`` is fetched into the cache) or a ``.pth`` path.
The files are ``{prefix}_encoder.onnx`` and ``{prefix}_decoder.onnx``; load them with
``napari_edgesam.load_model("OUTDIR/{prefix}_encoder.onnx")`` (no torch needed).
Needs torch (``pip install 'napari-edgesam[torch]'``); imported only when the command runs.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="registered model name (e.g. edgesam) or a .pth checkpoint")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--prefix", default=None,
        help="file-name prefix (default: the checkpoint's stem, e.g. edge_sam)",
    )
    parser.add_argument(
        "--official-decoder", action="store_true",
        help="decoder with the official interface (batch 1, no mask input, no IoU scores)",
    )
    parser.add_argument(
        "--bilinear", action="store_true",
        help="bilinear neck upsampling like the official ONNX files (default: bicubic, as in PyTorch)",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument(
        "--allow-unsafe", action="store_true",
        help="allow full unpickling of a trusted checkpoint that is not a plain state dict",
    )


def _checkpoint(model: str) -> Path:
    from ..inference import weights

    if model in weights.MODEL_REGISTRY:
        return weights.fetch_weight(model, "pth")
    path = Path(model)
    if path.suffix.lower() not in (".pth", ".pt"):
        known = ", ".join(sorted(weights.MODEL_REGISTRY))
        raise ValueError(f"MODEL must be a registered name ({known}) or a .pth/.pt file, got {model!r}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("torch") is None:
        raise RuntimeError("export needs PyTorch: pip install 'napari-edgesam[torch]'")
    from ..export.onnx_export import export_onnx
    from ..model.build import build_edge_sam

    checkpoint = _checkpoint(args.model)
    model = build_edge_sam(checkpoint, allow_unsafe=args.allow_unsafe)
    prefix = args.prefix or checkpoint.stem
    encoder, decoder = export_onnx(
        model, args.output, prefix,
        official_decoder=args.official_decoder,
        upsample_mode="bilinear" if args.bilinear else None,
        opset=args.opset,
    )
    kind = "official" if args.official_decoder else "extended (mask input, IoU scores)"
    print(f"encoder: {encoder}")
    print(f"decoder: {decoder} [{kind}]")
    return 0
