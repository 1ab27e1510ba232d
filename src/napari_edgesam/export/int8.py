"""int8 image encoder: post-training static quantization of an exported float32 encoder.

The encoder's convolutions get int8 weights (per output channel, symmetric) and uint8
activations, written as QuantizeLinear/DequantizeLinear pairs (ONNX "QDQ" format, made with
onnxruntime's quantization tools, so no new dependency). OpenVINO and onnxruntime both run
such a file with int8 kernels (VNNI/AMX on recent Intel CPUs, AVX2 int8 on older ones and on
AMD). What stays float32, because quantizing it cost mask accuracy on held-out nuclei
(measured with :mod:`.int8_gate`, box prompts, IoU against the float32 masks): the
depthwise 3x3 convolutions (0.94 -> 0.98 when kept float; they are also memory-bound, so int8
gains little there), the squeeze-excite 1x1 layers on pooled vectors (no cost to keep), the
stem and the fuse/neck layers that produce the embedding. Activation ranges are the
``percentile`` of each tensor's values over the calibration images (99.9: min/max ranges let
rare outliers waste the 256 levels, 0.92 with everything else equal).

Calibration images are the caller's: the project calibrates on training images (the nuclei
recipe's ``train`` split) and the synthetic nuclei generator, never on the held-out data the
gate measures. Needs ``onnx`` and ``onnxruntime`` (no torch); imported when called.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: Percentile of each activation's values taken as its quantization range.
DEFAULT_PERCENTILE = 99.9
#: Layers kept in float32 (see the module docstring); names of the float groups.
KEEP_FLOAT = ("depthwise", "squeeze_excite", "stem", "neck")
#: File-name suffix of an int8 encoder: ``x_encoder.onnx`` -> ``x_encoder_int8.onnx``.
INT8_SUFFIX = "_int8"


def int8_path_for(encoder: str | os.PathLike) -> Path:
    """Where the int8 version of encoder file ``x_encoder.onnx`` is written: ``x_encoder_int8.onnx``."""
    encoder = Path(encoder)
    return encoder.with_name(f"{encoder.stem}{INT8_SUFFIX}.onnx")


def _float_nodes(model, keep_float: Sequence[str]) -> list[str]:
    """Names of the Conv nodes of the exported RepViT encoder to leave in float32."""
    unknown = set(keep_float) - set(KEEP_FLOAT)
    if unknown:
        raise ValueError(f"keep_float: unknown groups {sorted(unknown)}; choose from {KEEP_FLOAT}")
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if (("depthwise" in keep_float and group > 1)
                or ("squeeze_excite" in keep_float and "/fc" in node.name)
                or ("stem" in keep_float and node.name.startswith("/features.0/"))
                or ("neck" in keep_float and ("/neck" in node.name or "/fuse" in node.name))):
            names.append(node.name)
    return names


def calibration_inputs(images: Iterable[np.ndarray]) -> list[np.ndarray]:
    """The encoder inputs (``1 x 3 x 1024 x 1024`` float32, normalised and padded as the
    predictor does) of ``images`` (``H x W`` or ``H x W x C``, any dtype; default intensity
    normalisation)."""
    from ..inference.core.preprocess import prepare_input, to_rgb_uint8

    return [prepare_input(to_rgb_uint8(np.asarray(img)))[0] for img in images]


def calibration_images(folder: str | os.PathLike | None = None, n_folder: int = 3,
                       n_synthetic: int = 3) -> list[np.ndarray]:
    """Images to calibrate on: the first ``n_folder`` TIFF/PNG images of ``folder`` (e.g. the
    nuclei recipe's ``train/images``), spread over the sorted list, and ``n_synthetic`` synthetic
    nuclei images (:func:`~napari_edgesam.datasets.synthetic_nuclei_2d`, seeds 1000+).

    ``ValueError`` for a folder whose path names held-out data (``heldout``): the gate measures
    on it, so it must never be calibrated on.
    """
    from ..datasets import synthetic_nuclei_2d

    images: list[np.ndarray] = []
    if folder is not None:
        folder = Path(folder)
        if any("heldout" in part.lower() or "held-out" in part.lower() for part in folder.resolve().parts):
            raise ValueError(f"calibration folder {folder} is held-out data: calibrate on training images "
                             "(e.g. data/nuclei_v2/train/images), the gate measures on the held-out ones")
        if not folder.is_dir():
            raise FileNotFoundError(f"calibration folder not found: {folder}")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png"))
        if not files:
            raise ValueError(f"no .tif/.png images in calibration folder {folder}")
        picks = np.unique(np.linspace(0, len(files) - 1, min(n_folder, len(files))).round().astype(int))
        images += [_read_image(files[i]) for i in picks]
    images += [synthetic_nuclei_2d(seed=1000 + i)[0] for i in range(n_synthetic)]
    if not images:
        raise ValueError("no calibration images: give a folder or n_synthetic >= 1")
    return images


def _read_image(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    from PIL import Image

    return np.asarray(Image.open(path))


def quantize_encoder(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    images: Iterable[np.ndarray],
    *,
    percentile: float = DEFAULT_PERCENTILE,
    keep_float: Sequence[str] = KEEP_FLOAT,
    fp16_weights: bool = True,
) -> Path:
    """Write an int8 version of float32 encoder file ``src`` to ``dst`` (atomically).

    Args:
        src: an exported float32 encoder (``image`` -> ``image_embeddings``).
        dst: the int8 file to write.
        images: calibration images (``H x W`` or ``H x W x C``), e.g. :func:`calibration_images`.
        percentile: activation range = this percentile of the calibration values (100: min/max).
        keep_float: layer groups left float32 (:data:`KEEP_FLOAT`).
        fp16_weights: store the float32 layers' weights as float16 (smaller file, float32 compute).
    Returns:
        ``dst`` as a Path.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .._atomic import atomic_write

    if not 50 < percentile <= 100:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"encoder ONNX file not found: {src}")
    inputs = calibration_inputs(images)
    if not inputs:
        raise ValueError("no calibration images")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(inputs)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"image": x}

    with tempfile.TemporaryDirectory(prefix="napari_edgesam_int8_") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(os.fspath(src), os.fspath(pre), skip_symbolic_shape=True)
        exclude = _float_nodes(onnx.load(os.fspath(pre), load_external_data=False), keep_float)
        method = CalibrationMethod.MinMax if percentile >= 100 else CalibrationMethod.Percentile
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            os.fspath(pre), os.fspath(out), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "MatMul"],
            nodes_to_exclude=exclude, calibrate_method=method,
            extra_options={"CalibPercentile": float(percentile)} if percentile < 100 else {},
        )
        if fp16_weights:
            from .fp16_storage import store_weights_fp16

            store_weights_fp16(out)
        model = onnx.load(os.fspath(out))
        meta = model.metadata_props.add()
        meta.key, meta.value = "napari_edgesam_int8", (f"percentile={percentile}; float={','.join(keep_float)}; "
                                                       f"calibration_images={len(inputs)}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        path = atomic_write(dst, lambda t: onnx.save(model, os.fspath(t)))
    logger.info("wrote int8 encoder %s (%.1f MB; %d float layers, calibrated on %d images)",
                path, path.stat().st_size / 1e6, len(exclude), len(inputs))
    return path
