"""Time the installed backends on this CPU and store the result for ``backend="auto"``
(:mod:`.backend_choice` reads it)."""

from __future__ import annotations

import logging
import time

from .backend_choice import installed_backends, save_timings, timing_key

logger = logging.getLogger(__name__)


def measure(model: str = "edgesam-nuclei", backends: list[str] | None = None, rounds: int = 3,
            save: bool = True) -> dict:
    """Time encoder and decoder of registered ``model`` on each backend (default: those installed
    that can run it) with ``rounds`` interleaved calls after a warm-up; store the result for
    this CPU when ``save``. Returns ``{backend: {"encoder_ms", "decoder_ms"}}``. Takes a few
    seconds per backend (loading included)."""
    import numpy as np

    from ...datasets import synthetic_nuclei_2d
    from . import weights
    from .api import load_model

    spec = weights.MODEL_REGISTRY[model]
    if backends is None:
        backends = [b for b in installed_backends()
                    if ("pth" in spec.files if b == "torch" else "onnx_encoder" in spec.files)]
    predictors = {b: load_model(model, backend=b) for b in backends}
    image = synthetic_nuclei_2d(seed=0)[0]
    box = np.float32([100, 100, 180, 170])
    times: dict[str, dict[str, list[float]]] = {b: {"encoder_ms": [], "decoder_ms": []} for b in backends}
    embs = {b: p.encode(image, prior=None) for b, p in predictors.items()}  # warm-up
    for b, p in predictors.items():
        p.decode(embs[b], box=box)
    for _ in range(rounds):
        for b, p in predictors.items():
            t = time.perf_counter()
            embs[b] = p.encode(image, prior=None)
            times[b]["encoder_ms"].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            for _ in range(3):
                p.decode(embs[b], box=box)
            times[b]["decoder_ms"].append((time.perf_counter() - t) * 1000 / 3)
    result = {b: {k: float(np.median(v)) for k, v in t.items()} for b, t in times.items()}
    if save:
        path = save_timings(result)
        logger.info("backend timings for %s saved in %s", timing_key(), path)
    return result
