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

#: OpenMP threads that spin only briefly before they sleep. PyTorch's OpenMP teams spin for a
#: long time between parallel regions by default (libgomp: 300,000 iterations; Intel/LLVM
#: OpenMP: 200 ms); on a CPU shared with other programs (napari, a browser, other analysis)
#: the spinning threads and the other programs take each other's time slices: beside two busy
#: processes a decoder call went from 17 ms to 56-768 ms and an encode 11x slower. A short spin
#: (``GOMP_SPINCOUNT=3000``, ``KMP_BLOCKTIME=1`` ms) kept the decoder at ~44 ms there and ~19 ms on
#: a quiet CPU, where fully passive waiting cost 33 ms (``python benchmarks/bench_contention.py
#: --rounds 7 --decodes 40``; the README's table). OpenMP reads these once,
#: when torch loads, so they are set here, before our code imports torch; settings the user
#: made (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``, ``KMP_BLOCKTIME``) are kept, and
#: ``NAPARI_EDGESAM_OMP_PASSIVE=0`` leaves the environment alone.
SHORT_OPENMP_SPIN = os.environ.get("NAPARI_EDGESAM_OMP_PASSIVE", "1") != "0" and "torch" not in sys.modules
if SHORT_OPENMP_SPIN and "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "3000")
    os.environ.setdefault("KMP_BLOCKTIME", "1")

_LAZY = {
    "build_edge_sam": "napari_edgesam.model.build",
    "EdgeSamPredictor": "napari_edgesam.inference.core.predictor",
    "ImageEmbedding": "napari_edgesam.inference.core.predictor",
    "load_model": "napari_edgesam.inference.loading.api",
    "list_models": "napari_edgesam.inference.loading.api",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_edgesam' has no attribute {name!r}")
