"""Build EdgeSAM and load checkpoints strictly and safely."""

from __future__ import annotations

import io
import logging
import os
import pickle
import pickletools
import re
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


#: What to do about a valid pickle with non-allowlisted objects, for weight files.
UNSAFE_FIX = "If you trust the file, pass allow_unsafe=True (CLI: --allow-unsafe where offered)."
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _valid_pickles(stream, count: int) -> bool:
    """Whether ``stream`` starts with ``count`` well-formed pickles (opcodes, memo, STOP);
    nothing is unpickled."""
    try:
        for _ in range(count):
            pickletools.dis(stream, out=io.StringIO())
    except Exception:  # noqa: BLE001 - any parse failure means "not a pickle"
        return False
    return True


def _diagnose(path: Path) -> str | None:
    """Why ``torch.load`` may have failed: ``"corrupt: <what>"``, or None for a well-formed
    file (whose pickle then holds objects the safe loader refuses)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                if not names:
                    return "corrupt: a zip archive without a PyTorch data.pkl"
                data = z.read(names[0])
            return None if _valid_pickles(io.BytesIO(data), 1) else "corrupt: its data.pkl is not a valid pickle"
        with open(path, "rb") as fh:
            head = fh.read(4)
            if head == b"PK\x03\x04":
                return "corrupt: a truncated or damaged zip archive (its end is missing)"
            if not head or head[0] != 0x80:  # every binary pickle starts with PROTO
                return "corrupt: neither a zip archive nor a pickle"
            fh.seek(0)
            if not _valid_pickles(fh, 1):
                return "corrupt: not a zip archive, and not a complete pickle (truncated or damaged)"
            fh.seek(0)
            try:
                magic = pickle.loads(_first_pickle_bytes(fh)) if _is_int_pickle(fh) else None
            except Exception:  # noqa: BLE001
                magic = None
            if magic == _TORCH_LEGACY_MAGIC:  # legacy torch format: 3 more pickles, then storages
                fh.seek(0)
                if not _valid_pickles(fh, 4):
                    return "corrupt: a legacy PyTorch file whose header pickles are damaged"
    except zipfile.BadZipFile as err:
        return f"corrupt: damaged zip archive ({err})"
    except (OSError, EOFError, RuntimeError, ValueError) as err:
        return f"corrupt: {err}"
    return None


def _first_pickle_bytes(fh) -> bytes:
    start = fh.tell()
    pickletools.dis(fh, out=io.StringIO())
    end = fh.tell()
    fh.seek(start)
    return fh.read(end - start)


def _is_int_pickle(fh) -> bool:
    """Whether the first pickle in ``fh`` holds only an integer (no globals: safe to load)."""
    start = fh.tell()
    try:
        ops = [op.name for op, _, _ in pickletools.genops(fh)]
    except Exception:  # noqa: BLE001
        return False
    finally:
        fh.seek(start)
    return set(ops) <= {"PROTO", "FRAME", "LONG1", "LONG4", "BININT", "BININT1", "BININT2", "INT", "LONG", "STOP"}


def damaged_file_fix(path: Path) -> str:
    """The fix for a damaged weight file, which depends on where it is."""
    try:
        from ..cachedir import cache_dir

        in_cache = path.resolve().parent == cache_dir().expanduser().resolve()
    except Exception:  # noqa: BLE001 - no cache configured: give the general advice
        in_cache = False
    if in_cache:
        return (f"It is in the weights cache: delete {path} and it will be downloaded again on "
                "next use (or copy a good file to that path).")
    return f"Delete {path} and download, copy or export it again."


def read_checkpoint(
    path: str | os.PathLike, *, allow_unsafe: bool = False, unsafe_fix: str = UNSAFE_FIX
) -> dict:
    """Read a ``.pth`` file with ``torch.load(weights_only=True)``.

    ``allow_unsafe=True`` permits arbitrary pickled objects (only for files you trust).
    Raises :class:`CheckpointError` naming the file and the fix: a damaged file (not a zip or
    a pickle, truncated) is told apart from a well-formed one holding objects the safe loader
    refuses (``unsafe_fix`` says what the caller can do about those).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes). {damaged_file_fix(path)}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_unsafe)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds; diagnosed below
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        problem = _diagnose(path)
        if problem is not None:
            raise CheckpointError(
                f"checkpoint {path} ({size:,} bytes) is damaged or not a PyTorch file "
                f"({problem.removeprefix('corrupt: ')}). {damaged_file_fix(path)}"
            ) from err
        if not allow_unsafe and isinstance(err, pickle.UnpicklingError):
            found = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
            what = f" (e.g. {found[0]})" if found else ""
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects other than tensors and plain "
                f"data{what}; refusing to unpickle them, as that could run code from the file. "
                f"{unsafe_fix}"
            ) from err
        raise CheckpointError(
            f"cannot read checkpoint {path} ({size:,} bytes): {type(err).__name__}: {detail}. "
            f"{damaged_file_fix(path)}"
        ) from err
    if allow_unsafe:
        logger.warning("loaded %s with allow_unsafe=True (full unpickling)", path)
    return obj


def check_finite(state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """:class:`CheckpointError` if a floating tensor of ``state_dict`` holds NaN or inf."""
    bad = [k for k, v in state_dict.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{source} has NaN or inf values in {len(bad)} tensor(s) (e.g. {bad[:3]}): the file "
            "is damaged or comes from a diverged training; use another checkpoint"
        )


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
    """Check keys, shapes and finiteness, cast floating tensors to the model's dtype, and
    ``load_state_dict(strict=True)``."""
    check_state_dict(model, state_dict, source)
    check_finite(state_dict, source)
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
