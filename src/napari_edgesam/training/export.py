"""Export a trained student: the official EdgeSAM ``.pth`` layout (+ sidecar JSON) and ONNX.

The ``.pth`` is a flat state dict with exactly the official keys, loadable strictly by
``build_edge_sam(path)`` and therefore by ``napari_edgesam.inference.loading.api.load_model(path)``.
It is the same for every training ``img_size`` (the positional encoding is a fixed ``2 x 128``
buffer); the size trained at is recorded in the sidecar ``<name>.json``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..model.build import build_edge_sam, read_checkpoint
from ..model.edge_sam import EdgeSam
from .checkpoint import atomic_torch_save, atomic_write_text, is_training_checkpoint

logger = logging.getLogger(__name__)

ONNX_EXPORT_MODULE = "napari_edgesam.export.onnx_export"


def official_state_dict(model: EdgeSam) -> dict[str, torch.Tensor]:
    """The model's state dict as contiguous CPU tensors, checked to load strictly into EdgeSAM."""
    sd = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    build_edge_sam(sd)  # raises CheckpointError if any key or shape differs from the official layout
    return sd


def export_official(
    model: EdgeSam, out_path: str | os.PathLike, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``out_path`` (flat official state dict) and ``out_path.with_suffix('.json')``."""
    out_path = Path(out_path)
    sd = official_state_dict(model)
    atomic_torch_save(sd, out_path)
    meta = {"format": "edgesam-official", "num_tensors": len(sd), **(metadata or {})}
    atomic_write_text(json.dumps(meta, indent=2, default=str), out_path.with_suffix(".json"))
    logger.info("exported %s (%d tensors)", out_path, len(sd))
    return out_path


def load_trained_model(path: str | os.PathLike) -> tuple[EdgeSam, dict[str, Any]]:
    """An EdgeSAM (1024 input, eval mode) from a training checkpoint or an official ``.pth``,
    and metadata (``img_size`` trained at, phase, step, ...)."""
    obj = read_checkpoint(path)
    if is_training_checkpoint(obj):
        model = build_edge_sam(obj["model"], upsample_mode=obj["model_config"].get("upsample_mode", "bicubic"))
        meta = {
            "trained_img_size": obj["model_config"].get("img_size"),
            "phase": obj.get("phase"),
            "step": obj.get("step"),
            "source": str(path),
        }
        return model, meta
    return build_edge_sam(obj), {"source": str(path)}


def onnx_exporter_available() -> bool:
    """Whether the ONNX export module (written elsewhere in the package) is installed."""
    try:
        importlib.import_module(ONNX_EXPORT_MODULE)
    except ImportError:
        return False
    return True


def export_onnx(model: EdgeSam, out_dir: str | os.PathLike, prefix: str = "edgesam") -> tuple[Path, Path]:
    """Encoder and decoder ONNX files via ``napari_edgesam.export.onnx_export.export_onnx``.

    Raises:
        RuntimeError: the ONNX exporter is not available in this installation.
    """
    try:
        mod = importlib.import_module(ONNX_EXPORT_MODULE)
    except ImportError as err:
        raise RuntimeError(
            f"ONNX export needs {ONNX_EXPORT_MODULE} (and the onnx package): {err}"
        ) from err
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    enc, dec = mod.export_onnx(model, out_dir, prefix)
    return Path(enc), Path(dec)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    onnx_dir: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Export a training checkpoint (or official ``.pth``) to ``output`` (official layout) and,
    with ``onnx_dir``, to ONNX files named after ``output``'s stem. Returns the written paths."""
    model, meta = load_trained_model(checkpoint)
    out = {"pth": export_official(model, output, meta)}
    if onnx_dir is not None:
        enc, dec = export_onnx(model.eval(), onnx_dir, Path(output).stem)
        out["onnx_encoder"], out["onnx_decoder"] = enc, dec
    return out
