"""Adapted models as files: ``<name>.pth`` (the official EdgeSAM layout, loadable with
``torch.load(weights_only=True)`` by ``build_edge_sam``/``load_model``), ``<name>.prior.pth``
(the base's granularity prior, when it had one: the encoder is the base's, so its prior still
fits) and ``<name>.json`` (the card), written atomically, the card last.

:func:`save_adapted` puts them into the model cache (``<cache>/adapted/``), where the registry
finds them: ``list_models()``, ``load_model(name)``, ``--model NAME`` and ``export NAME``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ..._atomic import atomic_write_bytes, atomic_write_text
from ...cachedir import cache_dir as _cache_dir
from ...inference.loading import weights
from ...inference.prior.files import find_prior
from ...model.build import build_edge_sam, extract_state_dict, read_checkpoint
from ..checkpoint import atomic_torch_save
from .result import AdaptResult

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_model_name(name: str) -> str:
    """``name`` if it can name an adapted model (letters, digits, ``.``, ``_``, ``-``; up to
    64; not a built-in model's name, not ending in ``.pth``/``.onnx``); ValueError otherwise."""
    if not isinstance(name, str) or not _NAME.match(name) or name.lower().endswith((".pth", ".pt", ".onnx", ".json")):
        raise ValueError(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' (up to 64), "
                         "without a file extension, e.g. 'my-nuclei-adapted'")
    if name in weights.MODEL_REGISTRY and name not in weights.refresh_adapted_models():
        raise ValueError(f"model name {name!r} is taken by a built-in model: choose another name")
    return name


def adapted_state_dict(result: AdaptResult) -> dict[str, torch.Tensor]:
    """The base model's file (official layout) with the adapted prompt encoder and mask
    decoder (float32); the base's own file gives the unfused encoder weights."""
    adapted = result.adapted if result.adapted is not None else result.predictor
    base = result.base if result.base is not None else adapted
    source = getattr(base, "checkpoint_path", None) or getattr(base, "source_path", None)
    if source is None or Path(source).suffix.lower() not in (".pth", ".pt") or not Path(source).is_file():
        raise ValueError("saving an adapted model needs its base loaded from a .pth file (load_model(name or "
                         f"path, backend='torch')); this base came from {source or 'memory'}")
    sd = extract_state_dict(read_checkpoint(source), f"base model {source}")
    model = adapted.backend.model
    for prefix, module in (("prompt_encoder.", model.prompt_encoder), ("mask_decoder.", model.mask_decoder)):
        for key, value in module.state_dict().items():
            if prefix + key in sd:
                sd[prefix + key] = value.detach().to("cpu", torch.float32).clone().contiguous()
    build_edge_sam(sd)  # raises CheckpointError if a key or shape differs from the official layout
    return sd


def write_adapted(result: AdaptResult, path: str | os.PathLike, *, name: str | None = None,
                  force: bool = False) -> Path:
    """Write the adapted model to ``path`` (``.pth``), its prior beside it (``<stem>.prior.pth``,
    when the base had one) and its card (``<stem>.json``); returns ``path``.

    Raises:
        ValueError: the adaptation was not accepted by the guard (pass ``force=True`` to write
            it anyway), the base did not come from a ``.pth`` file, or ``path`` is not a ``.pth``.
    """
    path = Path(path)
    if path.suffix.lower() != ".pth":
        raise ValueError(f"an adapted model is written as a .pth file, got {path}")
    if not result.accepted and not force:
        raise ValueError(f"the adaptation was not kept ({result.message}): nothing to save "
                         "(force=True writes it anyway)")
    sd = adapted_state_dict(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = result.base if result.base is not None else result.predictor
    # the .pth prior beside the checkpoint (an ONNX encoder's source has a .prior.onnx beside it)
    prior_src = find_prior(getattr(base, "checkpoint_path", None) or base.source_path)
    files = {"pth": path.name}
    if prior_src is not None:
        prior_dst = path.with_name(f"{path.stem}.prior.pth")
        atomic_write_bytes(prior_dst, Path(prior_src).read_bytes())
        files["prior"] = prior_dst.name
    atomic_torch_save(sd, path)
    card = dict(result.card)
    card.update({"name": name or path.stem, "files": files, "accepted": bool(result.accepted),
                 "mask_input_refines": bool(getattr(base, "refine_with_mask_input", True))})
    base_name = str(card.get("base_model", {}).get("name") or "")
    # an int8 encoder's predictor is named '<model>-int8' (its embedding cache): the weights are <model>'s
    spec = weights.MODEL_REGISTRY.get(base_name) or weights.MODEL_REGISTRY.get(base_name.removesuffix("-int8"))
    if spec is not None and not card.get("licence"):
        card["licence"] = spec.licence
    atomic_write_text(path.with_suffix(".json"), json.dumps(card, indent=1, sort_keys=True, default=str))
    return path


def save_adapted(result: AdaptResult, name: str, cache_dir: str | os.PathLike | None = None, *,
                 force: bool = False, overwrite: bool = False) -> Path:
    """Save an accepted adaptation as the named model ``name`` into the model cache
    (``<cache_dir>/adapted/<name>.pth`` + card + prior; ``cache_dir`` defaults to the
    project's cache, ``NAPARI_EDGESAM_CACHE``) and register it: it then appears in
    ``list_models()`` and loads with ``load_model(name)``. Returns the ``.pth`` path.
    Only the project's cache is registered: a model saved into another ``cache_dir`` is found
    by name in a session whose ``NAPARI_EDGESAM_CACHE`` is that folder (else load its path).

    Raises:
        ValueError: a bad or taken name, an existing adapted model of that name (without
            ``overwrite``), or an adaptation the guard rejected (without ``force``).
    """
    check_model_name(name)
    root = Path(cache_dir) if cache_dir is not None else _cache_dir()
    path = root / weights.ADAPTED_SUBDIR / f"{name}.pth"
    if path.with_suffix(".json").exists() and not overwrite:
        raise ValueError(f"an adapted model named {name!r} exists ({path}): choose another name or pass overwrite=True")
    write_adapted(result, path, name=name, force=force)
    weights.refresh_adapted_models()
    return path
