"""napari-edgesam: EdgeSAM segmentation for napari, headless inference and training.

Importing this package is cheap: it imports neither torch nor napari. The public names
are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "build_edge_sam": "napari_edgesam.model.build",
    "EdgeSamPredictor": "napari_edgesam.inference.predictor",
    "ImageEmbedding": "napari_edgesam.inference.predictor",
    "load_model": "napari_edgesam.inference.api",
    "list_models": "napari_edgesam.inference.api",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_edgesam' has no attribute {name!r}")
