"""``napari-edgesam demo``: napari with a sample image, the interactive widget docked and one
nucleus already segmented from a box prompt.

Model: ``--model`` if given; otherwise the official EdgeSAM weights if cached, else the packaged
``edgesam-nuclei`` model, else the official weights downloaded, else a message saying what to do
(exit status 1). ``--screenshot PATH`` saves the window and exits (works under ``xvfb-run``).
"""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)

SAMPLES = ("nuclei_2d", "nuclei_3d", "cell")
FALLBACK_MODELS = ("edgesam", "edgesam-nuclei")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="registered model name or .pth/.onnx file (default: the best available)")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime", "openvino"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--sample", default="nuclei_2d", choices=SAMPLES, help="sample image to open")
    p.add_argument("--screenshot", metavar="PATH", default=None,
                   help="save a PNG of the window once the object is segmented, then exit")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait for the segmentation before giving up (with --screenshot)")


def choose_model(name: str | None, backend: str = "auto", device: str = "auto"):
    """Load ``name``, or the first loadable of :data:`FALLBACK_MODELS`.

    The granularity prior stored beside the model file, if any, is attached (so one click
    takes the whole object). Raises RuntimeError listing what was tried and what to do when
    nothing loads.
    """
    from ..inference.loading.api import list_models
    from ..inference.loading.weights import WeightsUnavailableError
    from ..inference.loading.with_prior import load_predictor

    def load_model(name, backend, device, allow_download=True):
        return load_predictor(name, backend, device, allow_download=allow_download)[0]

    if name:
        return load_model(name, backend=backend, device=device)
    registered = {m["name"] for m in list_models()}
    failures = [f"  {candidate}: not installed" for candidate in FALLBACK_MODELS if candidate not in registered]
    # what is on this machine first (no network), then the official download
    for allow_download, candidates in ((False, FALLBACK_MODELS), (True, FALLBACK_MODELS[:1])):
        for candidate in candidates:
            if candidate not in registered:
                continue
            try:
                predictor = load_model(candidate, backend=backend, device=device, allow_download=allow_download)
            except Exception as err:  # offline, missing file, bad checksum ...: try the next one
                logger.info("cannot load %s: %s", candidate, err)
                if allow_download or not isinstance(err, WeightsUnavailableError):
                    failures.append(f"  {candidate}: {err}")
                continue
            _say_why(candidate, allow_download)
            return predictor
    raise RuntimeError(
        "no EdgeSAM model could be loaded:\n" + "\n".join(failures) + "\n"
        "What to do: connect to the internet once so the official weights are downloaded "
        "(napari-edgesam info shows the cache folder), put edge_sam.pth into that folder by hand, "
        "or pass --model PATH to a .pth / encoder .onnx file."
    )


def _say_why(name: str, downloaded: bool) -> None:
    """One line on stderr: which model the demo uses and why."""
    from ..inference.loading.api import why_model

    try:
        why = why_model(name) if not downloaded else f"{name}: downloaded the official weights"
    except KeyError:
        why = name
    print(f"napari-edgesam demo: model {why}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    try:
        predictor = choose_model(args.model, args.backend, args.device)
    except RuntimeError as err:
        print(f"napari-edgesam demo: {err}", file=sys.stderr)
        return 1
    from .._napari.demo import show_demo

    return show_demo(predictor, args.sample, args.screenshot, args.timeout)
