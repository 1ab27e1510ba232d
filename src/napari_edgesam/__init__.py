"""napari-edgesam: EdgeSAM segmentation for napari, headless inference and training.

Importing this package is cheap: it imports neither torch nor napari. The public names
are loaded on first use.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

__version__ = "0.1.0"

#: OpenMP threads that wait passively (sleep) instead of spinning. PyTorch's OpenMP teams spin
#: between parallel regions by default; on a CPU shared with other programs (napari, a browser,
#: other analysis) the spinning threads and the other programs' threads take each other's time
#: slices and a decoder call went from 22 ms to 300-760 ms; passive waiting kept it at ~90 ms
#: (``benchmarks/bench_contention.py``). libgomp reads the setting once, when torch loads, so it
#: is set here, before our code imports torch; an explicit ``OMP_WAIT_POLICY`` is kept, and
#: ``NAPARI_EDGESAM_OMP_PASSIVE=0`` leaves the environment alone.
PASSIVE_OPENMP = os.environ.get("NAPARI_EDGESAM_OMP_PASSIVE", "1") != "0" and "torch" not in sys.modules
if PASSIVE_OPENMP:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
