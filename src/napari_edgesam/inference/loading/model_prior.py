"""Where a registered model's granularity prior is (by model name or path), and how to get one.

Above the predictor: it asks the registry and the loader (:mod:`.api`) for a model's files,
then :func:`~napari_edgesam.inference.prior.find_prior` beside them. Nothing is loaded or
downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..prior import find_prior


def model_files(name_or_path: str | os.PathLike) -> list[Path]:
    """The local weight files of a registered model name (``"auto"``: the one ``load_model``
    would pick), or ``[path]`` for a model file; nothing is loaded or downloaded."""
    from . import api

    key = os.fspath(name_or_path).strip()
    if key == "auto":
        try:
            key = api.best_available_model(allow_download=False)
        except RuntimeError:
            return []
    for model in api.list_models():
        if model["name"] == key:
            return [Path(f["path"]) for f in model["files"].values() if f["path"]]
    return [Path(key)] if Path(key).suffix else []


def find_model_prior(name_or_path: str | os.PathLike) -> Path | None:
    """The granularity prior stored beside a model's weights (what ``prior="auto"`` loads),
    or None; nothing is loaded or downloaded."""
    for path in model_files(name_or_path):
        found = find_prior(path)
        if found is not None:
            return found
    return None


def missing_prior_message(model: str | os.PathLike) -> str:
    """Why prior-box mode cannot run with ``model`` and how to get a prior."""
    files = [p for p in model_files(model) if p.suffix != ".onnx" or "decoder" not in p.stem]
    beside = files[0].with_name(files[0].stem.replace("_encoder", "") + ".prior.pth") if files else None
    where = f" (looked for {beside})" if beside is not None else ""
    return (
        f"model {os.fspath(model)!r} has no granularity prior beside its weights{where}. Train one with "
        f"'napari-edgesam train prior --model {os.fspath(model)} --images DIR --labels DIR "
        f"--output {beside or 'MODEL_STEM.prior.pth'}' (saved beside the model, it is found automatically), "
        "pass a .prior.pth/.prior.onnx path instead of 'auto', or use the shipped model "
        "'edgesam-nuclei', which has one"
    )
