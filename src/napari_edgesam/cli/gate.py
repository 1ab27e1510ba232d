"""``napari-edgesam gate MODEL|INT8_ENCODER --data DIR``: re-check an int8 encoder's accuracy gate.

Segments every ground-truth object of ``DIR/images`` (labels in ``DIR/labels``, the nuclei
recipe's held-out layout) with a box prompt, once with the float32 encoder and once with the
int8 one (same decoder), and prints the mean mask IoU; exit code 0 when it is at least 0.97,
1 otherwise. MODEL is a registered model with an int8 encoder (e.g. ``edgesam-nuclei``), or an
``*_encoder_int8.onnx`` file from ``napari-edgesam export --int8`` (its float32 encoder and
decoder are found beside it). No torch needed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registered model with an int8 encoder, or an *_encoder_int8.onnx file")
    p.add_argument("--data", required=True, type=Path,
                   help="held-out folder with images/ and labels/ (e.g. data/nuclei_v2/heldout)")
    p.add_argument("--reference", type=Path, default=None, help="the float32 encoder (default: beside the int8 file)")
    p.add_argument("--decoder", type=Path, default=None, help="the decoder (default: beside the int8 file)")
    p.add_argument("--backend", choices=("openvino", "onnxruntime"), default=None,
                   help="runtime (default: openvino if installed)")
    p.add_argument("--threads", type=int, default=None, help="inference threads")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _files(model: str, reference: Path | None, decoder: Path | None) -> tuple[Path, Path, Path]:
    from ..inference.loading import weights
    from ..inference.loading.api import _onnx_decoder_for

    if model in weights.MODEL_REGISTRY:
        spec = weights.MODEL_REGISTRY[model]
        if "onnx_encoder_int8" not in spec.files:
            raise ValueError(f"model {model!r} has no int8 encoder registered (none shipped, or its gate failed): "
                             f"pass the *_encoder_int8.onnx file of 'napari-edgesam export {model} -o DIR --int8'")
        int8 = weights.fetch_weight(model, "onnx_encoder_int8", progress=False)
        reference = reference or weights.fetch_weight(model, "onnx_encoder", progress=False)
        decoder = decoder or weights.fetch_weight(model, "onnx_decoder", progress=False)
        return Path(int8), Path(reference), Path(decoder)
    int8 = Path(model)
    if not int8.is_file():
        known = ", ".join(sorted(weights.MODEL_REGISTRY))
        raise FileNotFoundError(f"MODEL must be a registered model ({known}) or an *_encoder_int8.onnx file; "
                                f"not found: {model}")
    if reference is None:
        if not int8.stem.endswith("_int8"):
            raise ValueError(f"cannot find the float32 encoder of {int8}: MODEL is the *_encoder_int8.onnx file "
                             "of 'napari-edgesam export ... --int8' (its float32 encoder beside it), or pass --reference")
        reference = int8.with_name(int8.stem.removesuffix("_int8") + ".onnx")
    return int8, reference, decoder or _onnx_decoder_for(int8)


def run(args: argparse.Namespace) -> int:
    from ..export.int8_gate import read_pairs, run_gate
    from ..inference.backends.openvino_backend import openvino_available

    int8, reference, decoder = _files(args.model, args.reference, args.decoder)
    backend = args.backend or ("openvino" if openvino_available() else "onnxruntime")
    result = run_gate(int8, reference, decoder, read_pairs(args.data), backend=backend, num_threads=args.threads)
    if args.json:
        print(json.dumps({**result.as_dict(), "int8": str(int8), "reference": str(reference), "backend": backend}))
    else:
        print(f"{result.line()} [{int8.name} vs {reference.name}, {backend}]")
    return 0 if result.passed else 1
