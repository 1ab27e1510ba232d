"""Adapt a model to the objects a user committed (issue #14): fine-tune the decoder with the
prompt-in-the-loop objective on the commits, keep the result only if held-out objects do not
get worse, save it as a named model.

- :class:`AdaptObject`, :func:`objects_from_labels`, :class:`AdaptData` (no torch);
- :class:`Adapter` (``prepare`` / ``step`` / ``done`` / ``progress`` / ``finish``) and
  :func:`adapt` (the headless loop), returning an :class:`AdaptResult`;
- :func:`save_adapted` (the model cache: ``list_models``, ``load_model(name)``, ``--model``).

The torch-needing names load on first use; without torch they raise one clear ImportError.
"""

from __future__ import annotations

import importlib
import importlib.util

from .data import AdaptData
from .objects import AdaptObject, objects_from_labels, plane_key
from .result import AdaptResult

_LAZY = {"Adapter": ".adapter", "adapt": ".run", "save_adapted": ".save", "split_heldout": ".adapter",
         "measure": ".heldout"}

TORCH_MISSING = ("adapting a model needs PyTorch: pip install 'napari-edgesam[torch]' "
                 "(segmentation with the ONNX models works without it)")


def require_torch() -> None:
    """ImportError with one line saying how to install torch, when it is not installed."""
    if importlib.util.find_spec("torch") is None:
        raise ImportError(TORCH_MISSING)


def __getattr__(name: str):
    if name in _LAZY:
        if name != "measure":
            require_torch()
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AdaptData", "AdaptObject", "AdaptResult", "objects_from_labels", "plane_key", "require_torch", *_LAZY]
