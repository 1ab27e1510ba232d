"""Which installed backend ``backend="auto"`` runs: a measured answer per CPU, else a rule.

The rule (used until this CPU has been measured): **torch** when a GPU is asked for or torch
sees one (CUDA, Apple MPS: the CPU backends cannot use it); else **OpenVINO** when it is
installed and the model has ONNX files, then **torch** when the model has a checkpoint, then
**onnxruntime**. A model whose ONNX files are the official released ones (no mask input, no
IoU scores) stays on torch when torch is installed.
Why OpenVINO first: the encoder is what a user waits for (an image, a slice, a tile) and
OpenVINO's is the fastest measured on both CPU families the project has seen: 0.40x the
unfolded eager model in float32 and ~0.2x with the gated int8 encoder on an Intel AVX-512 Xeon
(torch 0.64x, onnxruntime 0.70x), and 0.73x onnxruntime's time on an AMD EPYC Zen 3 (AVX2),
where torch's default path measured 0.65x eager. OpenVINO's CPU plugin supports AMD CPUs
(AVX2/AVX-512 kernels by instruction set, not by vendor). Its decoder is a few ms per prompt
slower than torch's (23 vs 16 ms on the Xeon): with torch installed too, ``load_model`` pairs
OpenVINO's encoder with torch's decoder (:mod:`napari_edgesam.inference.backends.split_backend`). Not measured: an AMD laptop; a measurement answers for the CPU it runs on.

A measurement (``napari-edgesam info --measure-backends``, or
:func:`napari_edgesam.inference.loading.measure.measure`) times each
installed backend's encoder and decoder on this CPU and stores the times in the cache
(``backend_timings.json``), keyed by the CPU model and the backends' versions; from then on
``auto`` takes the backend with the least ``encoder + 10 x decoder`` time (an image and ten
prompts) among those that can run the model. Nothing here imports torch.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import platform
import time
from pathlib import Path

logger = logging.getLogger(__name__)

#: The rule's order (see the module docstring).
RULE_ORDER = ("openvino", "torch", "onnxruntime")
#: Decoder calls per encoder call in the measured cost.
PROMPTS_PER_IMAGE = 10
TIMINGS_FILE = "backend_timings.json"
_PACKAGES = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}


def installed_backends() -> list[str]:
    """The backends whose package can be imported here (no import is done), in rule order."""
    found = []
    for backend in RULE_ORDER:
        try:
            if importlib.util.find_spec(_PACKAGES[backend]) is not None:
                found.append(backend)
        except (ImportError, ValueError):
            pass
    return found


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def timing_key(backends: list[str] | None = None) -> str:
    """What a measurement is valid for: the CPU model, its core count and the backends' versions."""
    import os

    backends = installed_backends() if backends is None else backends
    versions = ",".join(f"{b}={_version(_PACKAGES[b])}" for b in sorted(backends))
    return f"{cpu_name()} x{os.cpu_count()} | {versions}"


def _timings_path() -> Path:
    from ...cachedir import cache_dir

    return cache_dir() / TIMINGS_FILE


def load_timings() -> dict:
    """``{backend: {"encoder_ms", "decoder_ms"}}`` measured for :func:`timing_key` here, or {}."""
    try:
        data = json.loads(_timings_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entry = data.get(timing_key()) if isinstance(data, dict) else None
    return entry.get("timings", {}) if isinstance(entry, dict) else {}


def save_timings(timings: dict) -> Path:
    """Store ``timings`` (as :func:`load_timings` returns) for this CPU, atomically."""
    from ..._atomic import atomic_write_text

    path = _timings_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data = data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        data = {}
    data[timing_key()] = {"timings": timings, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def torch_gpu_available() -> bool:
    """Whether torch sees a CUDA or Apple GPU. torch is imported only when there is a sign of
    one (an NVIDIA driver, or an Apple-silicon Mac), so a CPU-only machine does not pay for it."""
    import shutil
    import sys

    mac = sys.platform == "darwin" and platform.machine() == "arm64"
    nvidia = Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None
    if not (mac or nvidia):
        return False
    try:
        import torch
    except Exception:  # noqa: BLE001 - a broken torch install: no GPU for us
        return False
    mps = getattr(torch.backends, "mps", None)
    return bool(torch.cuda.is_available() or (mps is not None and mps.is_available()))


def cost_ms(t: dict) -> float:
    """The measured cost of a backend: one encoder call and :data:`PROMPTS_PER_IMAGE` decodes."""
    return float(t["encoder_ms"]) + PROMPTS_PER_IMAGE * float(t["decoder_ms"])


def choose(candidates: list[str], timings: dict | None = None) -> tuple[str, str]:
    """The backend among ``candidates`` (those installed that can run the model) and why.

    ``timings`` (default: :func:`load_timings`) decide when they cover at least one candidate;
    otherwise the rule of :data:`RULE_ORDER`. ``ValueError`` for no candidate.
    """
    if not candidates:
        raise ValueError("no installed backend can run this model")
    timings = load_timings() if timings is None else timings
    measured = {b: t for b, t in timings.items() if b in candidates and _valid(t)}
    if measured:
        best = min(measured, key=lambda b: cost_ms(measured[b]))
        others = ", ".join(f"{b} {cost_ms(t):.0f} ms" for b, t in sorted(measured.items(), key=lambda i: cost_ms(i[1]))
                           if b != best)
        return best, (f"fastest measured on this CPU: encoder {measured[best]['encoder_ms']:.0f} ms + "
                      f"{PROMPTS_PER_IMAGE} x decoder {measured[best]['decoder_ms']:.1f} ms = {cost_ms(measured[best]):.0f} ms"
                      + (f" (vs {others})" if others else ""))
    best = next(b for b in RULE_ORDER if b in candidates)
    why = {
        "openvino": "OpenVINO is installed: the fastest encoder measured on Intel and AMD CPUs (rule; "
                    "'napari-edgesam info --measure-backends' measures this CPU)",
        "torch": "torch is installed and OpenVINO is not (or the model has no ONNX files): faster than onnxruntime "
                 "(rule)",
        "onnxruntime": "the only installed backend that can run this model",
    }[best]
    return best, why


def _valid(t: object) -> bool:
    try:
        return isinstance(t, dict) and float(t["encoder_ms"]) > 0 and float(t["decoder_ms"]) > 0
    except (KeyError, TypeError, ValueError):
        return False
