"""``napari-edgesam info``: models, cache, backends and devices."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--measure-backends", action="store_true",
                   help="time the installed backends on this CPU (a few seconds each) and remember the fastest "
                        "for --backend auto")


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def _devices() -> list[str]:
    from ..inference.loading.api import torch_available

    devices = ["cpu"]
    if torch_available():
        import torch

        if torch.cuda.is_available():
            devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            devices.append("mps")
    return devices


def collect() -> dict:
    """Everything ``info`` reports, as a dict."""
    from .. import __version__
    from ..inference.loading import weights
    from ..inference.loading.api import list_models, torch_available

    backends = {"onnxruntime": _version("onnxruntime"), "torch": _version("torch") if torch_available() else None,
                "openvino": _version("openvino")}
    if backends["onnxruntime"]:
        import onnxruntime as ort

        backends["onnxruntime_providers"] = ort.get_available_providers()
    return {
        "napari-edgesam": __version__,
        "python": platform.python_version(),
        "cache_dir": str(weights.cache_dir()),
        "cache_env": weights.CACHE_ENV,
        "backends": backends,
        "devices": _devices(),
        "napari": _version("napari"),
        "models": list_models(),
        "auto_model": _auto_model(),
        "auto_backend": _auto_backend(),
    }


def choose_model_name() -> str:
    """The registered model ``--model auto`` picks now (no network); ``RuntimeError`` if none."""
    from ..inference.loading.api import choose_model

    return choose_model(allow_download=False)[0]


def _auto_model() -> str:
    """What ``--model auto`` picks now without network, and why (one line)."""
    from ..inference.loading.api import choose_model

    try:
        return choose_model(allow_download=False)[1]
    except (RuntimeError, ValueError) as err:
        return f"none on this machine ({err})"


def _auto_backend() -> str:
    """The backend ``--backend auto`` runs that model on, and why (one line)."""
    from ..inference.loading import weights
    from ..inference.loading.api import (
        TORCH_DECODER_WHY,
        choose_backend,
        choose_model,
        torch_decodes,
        wants_int8,
    )

    try:
        name = choose_model(allow_download=False)[0]
        spec = weights.MODEL_REGISTRY[name]
        backend, why = choose_backend(spec)
    except (RuntimeError, ValueError, KeyError) as err:
        return f"none ({err})"
    decoder = f"; decoder on torch: {TORCH_DECODER_WHY}" if torch_decodes(spec, backend, "auto") else ""
    if backend != "torch" and wants_int8(spec, backend, None):
        from ..models import PACKAGED

        gate = PACKAGED.get(name, {}).get("int8_gate", {})
        iou = f"; mask IoU vs float32 {gate['mean_iou']:.3f} on held-out nuclei" if "mean_iou" in gate else ""
        return f"{backend} with the int8 encoder of {name} ({why}; int8: its accuracy gate held{iou}{decoder})"
    return f"{backend} ({why}{decoder})"


def run(args: argparse.Namespace) -> int:
    if args.measure_backends:
        from ..inference.loading.backend_choice import PROMPTS_PER_IMAGE, timing_key
        from ..inference.loading.measure import measure

        for backend, t in measure(choose_model_name()).items():
            print(f"measured {backend}: encoder {t['encoder_ms']:.0f} ms, decoder {t['decoder_ms']:.1f} ms "
                  f"(cost {t['encoder_ms'] + PROMPTS_PER_IMAGE * t['decoder_ms']:.0f} ms)", flush=True)
        print(f"saved for {timing_key()}")
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"napari-edgesam {info['napari-edgesam']} (Python {info['python']}, napari {info['napari'] or 'not installed'})")
    b = info["backends"]
    print(f"backends: onnxruntime {b['onnxruntime'] or 'missing'}; torch {b['torch'] or 'not installed'}; "
          f"openvino {b['openvino'] or 'not installed'}")
    print(f"devices: {', '.join(info['devices'])}")
    print(f"weights cache: {info['cache_dir']} (override with ${info['cache_env']})")
    print(f"default model (--model auto): {info['auto_model']}")
    print(f"default backend (--backend auto): {info['auto_backend']}")
    print("models:")
    for m in info["models"]:
        print(f"  {m['name']}: {m['description']}")
        for kind, f in m["files"].items():
            where = f['path'] or f"{info['cache_dir']}/{f['filename']}"
            state = f"cached at {where}" if f["cached"] else f"not downloaded (goes to {where})"
            print(f"    {kind:13s} {f['filename']}: {state}")
        if m.get("licence"):
            print(f"    licence: {m['licence']}")
    return 0
