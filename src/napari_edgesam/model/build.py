"""Build EdgeSAM and load checkpoints strictly and safely."""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from .edge_sam import EdgeSam

logger = logging.getLogger(__name__)

#: Keys under which training frameworks nest the weights.
_WRAPPER_KEYS = ("model", "state_dict", "model_state")


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, not a state dict, or does not fit the model."""


def read_checkpoint(path: str | os.PathLike, *, allow_unsafe: bool = False) -> dict:
    """Read a ``.pth`` file with ``torch.load(weights_only=True)``.

    ``allow_unsafe=True`` permits arbitrary pickled objects (only for files you trust).
    Raises :class:`CheckpointError` naming the file for truncated, corrupt or unsafe files.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): delete it and download it again")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_unsafe)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path} contains pickled Python objects that are not plain tensors; "
            "refusing to load it (this could run arbitrary code). If you trust the file, "
            f"pass allow_unsafe=True. Details: {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"cannot read checkpoint {path} ({path.stat().st_size:,} bytes): it is truncated or not "
            f"a PyTorch file. Delete it and download it again. Details: {str(err).splitlines()[0]}"
        ) from err
    if allow_unsafe:
        logger.warning("loaded %s with allow_unsafe=True (full unpickling)", path)
    return obj


def extract_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap common containers (``{"model": sd}``, ``{"state_dict": sd}``) to a flat state dict."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not _looks_like_state_dict(obj):
            for key in _WRAPPER_KEYS:
                if key in obj and isinstance(obj[key], Mapping):
                    obj = obj[key]
                    break
            else:
                break
    if not isinstance(obj, Mapping) or not _looks_like_state_dict(obj):
        raise CheckpointError(f"{source} does not contain a state dict of tensors")
    return dict(obj)


def _looks_like_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def check_state_dict(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k}: expected {tuple(expected[k].shape)}, found {tuple(state_dict[k].shape)}"
        for k in expected
        if k in state_dict and expected[k].shape != state_dict[k].shape
    ]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if wrong:
        parts.append(f"{len(wrong)} mis-shaped tensors (e.g. {wrong[:3]})")
    raise CheckpointError(
        f"{source} is not an EdgeSAM checkpoint of the expected layout "
        f"({len(expected)} tensors): " + "; ".join(parts)
    )


def load_state_dict_strict(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Check, cast floating tensors to the model's dtype, and ``load_state_dict(strict=True)``."""
    check_state_dict(model, state_dict, source)
    expected = model.state_dict()
    cast = {
        k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state_dict.items()
    }
    model.load_state_dict(cast, strict=True)


def build_edge_sam(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    *,
    upsample_mode: str = "bicubic",
    allow_unsafe: bool = False,
) -> EdgeSam:
    """Build EdgeSAM (RepViT-M1 encoder) and optionally load weights.

    Args:
        checkpoint: path to an official ``edge_sam.pth`` / ``edge_sam_3x.pth`` (or a state dict).
            Loaded strictly: every key and shape must match.
        upsample_mode: neck upsampling, ``"bicubic"`` (PyTorch reference) or ``"bilinear"``
            (the official ONNX/CoreML exports).
        allow_unsafe: permit full unpickling of a trusted file.

    Returns:
        the model in eval mode, unfused, float32.
    """
    model = EdgeSam()
    model.image_encoder.upsample_mode = upsample_mode
    if checkpoint is not None:
        if isinstance(checkpoint, Mapping):
            sd, source = extract_state_dict(checkpoint, "state dict"), "state dict"
        else:
            source = f"checkpoint {checkpoint}"
            sd = extract_state_dict(read_checkpoint(checkpoint, allow_unsafe=allow_unsafe), source)
        load_state_dict_strict(model, sd, source)
    return model.eval()
