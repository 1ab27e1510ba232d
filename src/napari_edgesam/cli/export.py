"""``napari-edgesam export MODEL -o OUTDIR [--prior PATH|auto]``: write ONNX files.

MODEL is a registered model name (its ``.pth`` is fetched into the cache, or taken from the
package for shipped models such as ``edgesam-nuclei``) or a ``.pth`` path. The files are
``{prefix}_encoder.onnx`` and ``{prefix}_decoder.onnx``, and with ``--prior`` also
``{prefix}.prior.onnx`` (the granularity prior: image -> box proposals, with the encoder
inside); load them with ``napari_edgesam.load_model("OUTDIR/{prefix}_encoder.onnx",
prior="auto")`` (no torch needed). Needs torch (``pip install 'napari-edgesam[torch]'``);
imported only when the command runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="registered model name (e.g. edgesam, edgesam-nuclei) or a .pth checkpoint")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--prefix", default=None,
        help="file-name prefix (default: the checkpoint's stem, e.g. edge_sam)",
    )
    parser.add_argument(
        "--prior", default=None, metavar="PATH|auto",
        help="also export this granularity prior (box head .pth) as {prefix}.prior.onnx; "
             "'auto' uses the .prior.pth stored beside the checkpoint",
    )
    parser.add_argument(
        "--official-decoder", action="store_true",
        help="decoder with the official interface (batch 1, no mask input, no IoU scores)",
    )
    parser.add_argument(
        "--bilinear", action="store_true",
        help="bilinear neck upsampling like the official ONNX files (default: bicubic, as in PyTorch)",
    )
    parser.add_argument(
        "--fp16-weights", action="store_true",
        help="store the weights as float16 (half the file size; computation stays float32)",
    )
    parser.add_argument(
        "--int8", action="store_true",
        help="also write {prefix}_encoder_int8.onnx: the encoder quantized to int8 (post-training, calibrated on "
             "--calibration images and synthetic nuclei); faster on OpenVINO, checked with --gate",
    )
    parser.add_argument(
        "--calibration", type=Path, default=None, metavar="DIR",
        help="--int8: training images to calibrate on (e.g. data/nuclei_v2/train/images; never held-out data); "
             "default: synthetic nuclei only",
    )
    parser.add_argument(
        "--gate", type=Path, default=None, metavar="DIR",
        help="--int8: held-out images/ and labels/ (e.g. data/nuclei_v2/heldout) to check the int8 masks against "
             "float32 (mean IoU >= 0.97 with box prompts); the result is written beside the file as .gate.json",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument(
        "--allow-unsafe", action="store_true",
        help="allow full unpickling of a trusted checkpoint that is not a plain state dict",
    )


def _checkpoint(model: str) -> Path:
    """The ``.pth`` of a registered (downloaded or shipped) model name, or the given path."""
    from ..inference.loading import weights

    if model in weights.MODEL_REGISTRY:
        if "pth" not in weights.MODEL_REGISTRY[model].files:
            raise ValueError(f"model {model!r} has no PyTorch checkpoint to export (its files: "
                             f"{sorted(weights.MODEL_REGISTRY[model].files)})")
        return weights.fetch_weight(model, "pth")
    path = Path(model)
    if path.suffix.lower() not in (".pth", ".pt"):
        known = ", ".join(sorted(weights.MODEL_REGISTRY))
        raise ValueError(f"MODEL must be a registered name ({known}) or a .pth/.pt file, got {model!r}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def _prior_file(prior: str, checkpoint: Path) -> Path:
    """The box-head ``.pth`` named by ``--prior`` (``"auto"``: the one beside ``checkpoint``)."""
    from ..inference.prior import find_prior

    if prior == "auto":
        found = find_prior(checkpoint)
        if found is None:
            expected = checkpoint.with_name(f"{checkpoint.stem}.prior.pth")
            raise FileNotFoundError(
                f"--prior auto: no granularity prior beside {checkpoint} (expected {expected}); train one "
                "with 'napari-edgesam train prior' or pass --prior PATH")
        return found
    path = Path(prior)
    if path.suffix.lower() not in (".pth", ".pt"):
        raise ValueError(f"--prior must be 'auto' or a box head .pth/.pt file (from 'napari-edgesam train prior'), "
                         f"got {prior!r}")
    if not path.is_file():
        raise FileNotFoundError(f"--prior: box head file not found: {path}")
    return path


def _load_head(path: Path, encoder):
    """The head and its meta; ``ValueError`` if it was trained on another encoder."""
    from ..inference.prior import load_box_head
    from ..model.box_head import encoder_signature, signatures_match

    head, meta = load_box_head(path)
    expected = meta.get("encoder_signature")
    if expected and not signatures_match(encoder_signature(encoder), expected):
        raise ValueError(f"the prior {path} was trained on another encoder ({meta.get('encoder', 'unknown')!r}), "
                         "not this model's: export the prior trained for this model")
    if meta.get("img_size", 1024) != 1024:
        print(f"warning: the prior was trained at input size {meta['img_size']}, the model uses 1024: "
              "proposals will be poor", file=sys.stderr)
    return head, meta


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("torch") is None:
        raise RuntimeError("export needs PyTorch: pip install 'napari-edgesam[torch]'")
    from .._atomic import check_output_folder
    from ..export.onnx_export import export_onnx
    from ..model.build import build_edge_sam

    check_output_folder(args.output)  # before any work: a file named like the folder
    if (args.calibration is not None or args.gate is not None) and not args.int8:
        raise ValueError("--calibration and --gate go with --int8")
    if args.int8:  # a held-out or missing calibration folder is an error before any work
        from ..export.int8 import calibration_images

        args.calibration_images = calibration_images(args.calibration)
        if args.gate is not None:  # gate data without images, labels or objects: before the export too
            from ..export.int8_gate import read_pairs

            args.gate_pairs = read_pairs(args.gate)
    checkpoint = _checkpoint(args.model)
    prior = _prior_file(args.prior, checkpoint) if args.prior is not None else None
    model = build_edge_sam(checkpoint, allow_unsafe=args.allow_unsafe)
    head, meta = _load_head(prior, model.image_encoder) if prior is not None else (None, None)
    prefix = args.prefix or checkpoint.stem
    upsample_mode = "bilinear" if args.bilinear else None
    encoder, decoder = export_onnx(
        model, args.output, prefix,
        official_decoder=args.official_decoder,
        upsample_mode=upsample_mode,
        opset=args.opset,
    )
    kind = "official" if args.official_decoder else "extended (mask input, IoU scores)"
    print(f"encoder: {encoder}")
    print(f"decoder: {decoder} [{kind}]")
    if head is not None:
        from ..export.box_head_onnx import export_box_head

        if upsample_mode is not None:  # the prior's embedding output then equals the encoder file's
            model.image_encoder.upsample_mode = upsample_mode
        path = export_box_head(head, args.output / f"{prefix}.prior.onnx", encoder=model.image_encoder,
                               with_embedding=True, meta=meta, opset=args.opset)
        print(f"prior:   {path} (from {prior})")
    prior_onnx = args.output / f"{prefix}.prior.onnx" if head is not None else None
    code = _int8(args, encoder, decoder, prior_onnx) if args.int8 else 0  # from the float32 files, before fp16 storage
    if args.fp16_weights:
        from ..export.fp16_storage import store_weights_fp16

        for path in [encoder, decoder] + ([args.output / f"{prefix}.prior.onnx"] if head is not None else []):
            store_weights_fp16(path)
        print("weights stored as float16")
    return code


def _int8(args: argparse.Namespace, encoder: Path, decoder: Path, prior: Path | None = None) -> int:
    """Quantize the exported encoder (and the prior, encoder and head in one graph, when one was
    exported); with ``--gate``, check each and record the result beside it."""
    import json

    from .._atomic import atomic_write_text
    from ..export.int8 import int8_path_for, quantize_encoder
    from ..inference.prior.files import INT8_PRIOR_GATE_SUFFIX, INT8_PRIOR_SUFFIX

    images = args.calibration_images
    int8 = quantize_encoder(encoder, int8_path_for(encoder), images)
    print(f"int8 encoder: {int8} ({int8.stat().st_size / 1e6:.1f} MB, calibrated on {len(images)} images)")
    int8_prior = None
    if prior is not None:
        stem = prior.name.removesuffix(".prior.onnx")
        int8_prior = quantize_encoder(prior, prior.with_name(stem + INT8_PRIOR_SUFFIX), images)
        print(f"int8 prior:   {int8_prior} ({int8_prior.stat().st_size / 1e6:.1f} MB; encoder and box head, "
              "with the embedding as an output)")
    if args.gate is None:
        print("int8 gate not run (pass --gate DIR with held-out images/ and labels/); use it opt-in")
        return 0
    from ..export.int8_gate import run_gate, run_prior_gate
    from ..inference.backends.openvino_backend import openvino_available

    backend = "openvino" if openvino_available() else "onnxruntime"
    result = run_gate(int8, encoder, decoder, args.gate_pairs, backend=backend)
    record = {**result.as_dict(), "data": str(args.gate), "backend": backend, "reference": encoder.name}
    atomic_write_text(int8.with_suffix(".gate.json"), json.dumps(record, indent=2) + "\n")
    print(result.line())
    passed = result.passed
    if int8_prior is not None:
        prior_result = run_prior_gate(int8_prior, encoder, decoder, args.gate_pairs, backend=backend)
        record = {**prior_result.as_dict(), "data": str(args.gate), "backend": backend, "reference": encoder.name}
        stem = int8_prior.name.removesuffix(INT8_PRIOR_SUFFIX)
        atomic_write_text(int8_prior.with_name(stem + INT8_PRIOR_GATE_SUFFIX), json.dumps(record, indent=2) + "\n")
        print("prior embedding: " + prior_result.line())
        passed = passed and prior_result.passed
    return 0 if passed else 1
