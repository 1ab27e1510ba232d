"""Where a model's prior is, how a prior file is loaded, and the box-head file format.

* :func:`find_prior`: the prior stored beside a model file (``x.prior.onnx`` / ``x.prior.pth``;
  for a registered model name: :mod:`napari_edgesam.inference.loading.model_prior`, which needs the
  registry and so lives above the predictor).
* :func:`load_prior`: a ``.pth`` head on the torch backend's encoder, or an exported ``.onnx``.
* :func:`prior_tag`: a loaded prior's identity (file, size, modification time), stored with its
  proposals so caches never serve them to another prior.
* :func:`save_box_head` / :func:`load_box_head`: the head's file (``{"format", "config",
  "state_dict", "meta"}``, readable with ``torch.load(weights_only=True)``); the module itself
  is :class:`~napari_edgesam.model.box_head.BoxHead`.

Nothing here imports torch at module level.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...model.box_head import BoxHead

#: The ``format`` entry of a box-head file.
FORMAT = "napari-edgesam-boxhead/1"


#: Suffix of a prior quantized together with its encoder (``x.prior_int8.onnx``: encoder and box
#: head in one int8 graph, with the embedding as an output) and of its gate record.
INT8_PRIOR_SUFFIX = ".prior_int8.onnx"
INT8_PRIOR_GATE_SUFFIX = ".prior_int8.gate.json"


def find_prior(model_path: str | os.PathLike) -> Path | None:
    """The prior stored beside a model file (``x.prior.onnx`` for ONNX models, else
    ``x.prior.pth``), or None. Beside an int8 encoder (``x_encoder_int8.onnx``) the int8 prior
    ``x.prior_int8.onnx`` comes first when its gate record (``x.prior_int8.gate.json``) says it
    passed: one int8 pass then gives both the embedding and the boxes."""
    path = Path(model_path)
    int8 = path.stem.endswith("_int8")
    stem = path.stem.removesuffix("_int8")  # an int8 encoder shares the float32 one's prior
    stem = stem[: -len("_encoder")] if stem.endswith("_encoder") else stem
    names = [f"{stem}.prior.onnx", f"{stem}.prior.pth"] if path.suffix == ".onnx" else [f"{stem}.prior.pth"]
    if int8 and path.suffix == ".onnx" and int8_prior_gate_passed(path.with_name(stem + INT8_PRIOR_SUFFIX)):
        names.insert(0, stem + INT8_PRIOR_SUFFIX)
    for name in names:
        if (path.with_name(name)).is_file():
            return path.with_name(name)
    return None


def int8_prior_gate_passed(prior: str | os.PathLike) -> bool:
    """Whether the gate record beside int8 prior file ``prior`` (``x.prior_int8.gate.json``,
    written by ``napari-edgesam export --int8 --gate``) says its embedding passed the int8 gate."""
    import json

    prior = Path(prior)
    record = prior.with_name(prior.name.removesuffix(INT8_PRIOR_SUFFIX) + INT8_PRIOR_GATE_SUFFIX)
    try:
        return bool(json.loads(record.read_text(encoding="utf-8")).get("passed")) and prior.is_file()
    except (OSError, ValueError, AttributeError):
        return False


def encoder_file(predictor) -> Path | None:
    """The weights file the predictor's image encoder runs from: the ONNX encoder of an ONNX or
    split backend (e.g. the int8 one), else the predictor's ``source_path`` (a checkpoint)."""
    backend = getattr(predictor, "backend", None)
    encoder = getattr(backend, "encoder_backend", backend)
    path = getattr(encoder, "encoder_path", None)
    if path is None:
        path = getattr(predictor, "source_path", None)
    return None if path is None else Path(path)


def _is_int8_twin(prior: Path, predictor) -> bool:
    """Whether ``prior`` (``x.prior_int8.onnx``) is the int8 twin of the predictor's encoder file
    (``x_encoder_int8.onnx`` in the same folder): its embedding output may then stand for the
    encoder's (both passed the int8 gate)."""
    source = encoder_file(predictor)
    if source is None or not prior.name.endswith(INT8_PRIOR_SUFFIX):
        return False
    stem = prior.name.removesuffix(INT8_PRIOR_SUFFIX)
    return Path(source).resolve() == prior.resolve().with_name(f"{stem}_encoder_int8.onnx")


def load_prior(path: str | os.PathLike, predictor=None, *, device: str = "auto", check_encoder: bool = True,
               use_embedding: bool = False):
    """Load a prior: a ``.pth`` head (needs ``predictor`` with the torch backend, whose encoder
    it shares) or an exported ``.onnx`` prior (``use_embedding``: see :class:`OnnxBoxPrior`; on
    for the int8 prior beside the predictor's own int8 encoder file)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        use_embedding = use_embedding or _is_int8_twin(path, predictor)
        from .onnx_prior import OnnxBoxPrior

        backend = getattr(predictor, "backend", None)
        runtime = getattr(backend, "encoder_name", getattr(backend, "name", None))
        if runtime == "openvino":  # the prior runs in the runtime of the predictor's encoder
            prior = OnnxBoxPrior(path, device=device, use_embedding=use_embedding, runtime="openvino",
                                 num_threads=getattr(backend, "num_threads", None),
                                 cache=getattr(backend, "cache", True))
        else:
            prior = OnnxBoxPrior(path, device=device, use_embedding=use_embedding)
        prior.source_path = path
        prior.source_tag = prior_tag(prior)
        return prior
    if path.suffix.lower() not in (".pth", ".pt"):
        raise ValueError(f"unsupported prior file {path}: expected .pth or .onnx")
    if predictor is None:
        raise ValueError("a .pth prior shares the predictor's torch encoder: pass predictor=...")
    from ..backends import compute_thread
    from .torch_prior import TorchBoxPrior

    def build():
        head, meta = load_box_head(path)
        return TorchBoxPrior.from_backend(predictor.backend, head, meta, check_encoder=check_encoder)

    prior = compute_thread.run(build)
    prior.source_path = path
    prior.source_tag = prior_tag(prior)  # the file as it was loaded: a later retraining is another prior
    return prior


def prior_tag(prior) -> str | None:
    """An identity of a prior loaded from a file (:func:`load_prior` sets ``source_path``, and
    ``source_tag``, this value at loading): its resolved path, size and modification time, so a
    retrained file gets a new tag. None for a prior built in memory (its proposals are then
    never persisted)."""
    tag = getattr(prior, "source_tag", None)
    if isinstance(tag, str):
        return tag
    path = getattr(prior, "source_path", None)
    if path is None:
        return None
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"


# -- the box-head file -------------------------------------------------------------------------
def prior_path_for(model_path: str | os.PathLike) -> Path:
    """Where the head of an EdgeSAM checkpoint ``x.pth`` (or ``x_encoder.onnx``) is stored:
    ``x.prior.pth`` beside it."""
    path = Path(model_path)
    stem = path.stem.removesuffix("_int8")  # an int8 encoder shares the float32 one's prior
    stem = stem[: -len("_encoder")] if stem.endswith("_encoder") else stem
    return path.with_name(f"{stem}.prior.pth")


def save_box_head(head: BoxHead, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``{"format", "config", "state_dict", "meta"}`` atomically (temp file + ``os.replace``).
    ``meta`` must hold plain data (str, numbers, lists, dicts)."""
    import torch

    from ...model.box_head import BoxHead

    if not isinstance(head, BoxHead):
        raise TypeError(f"expected a BoxHead, got {type(head).__name__}")
    obj = {
        "format": FORMAT,
        "config": head.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
        "meta": dict(meta or {}),
    }
    from ..._atomic import atomic_open

    path = Path(path)
    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)
    return path


def load_box_head(path: str | os.PathLike, map_location: object = "cpu") -> tuple[BoxHead, dict]:
    """Read a file written by :func:`save_box_head` (``weights_only=True``, strict keys).

    Returns:
        the head (eval mode) and its ``meta`` dict.
    Raises:
        ValueError: not a box-head file, or its config/keys do not match.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"box head file not found: {path}")
    from ...model.box_head import BoxHead, BoxHeadConfig
    from ...model.build import check_finite, read_checkpoint

    # damaged vs. holding objects told apart, one line each; a box head file never needs unpickling
    obj = read_checkpoint(path, unsafe_fix="A box head file holds only tensors and plain data: train or "
                                           "save it again with napari-edgesam train prior.")
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path} is not a box head file (expected format {FORMAT!r})")
    if not isinstance(obj.get("config"), dict) or not isinstance(obj.get("state_dict"), dict):
        raise ValueError(f"{path} is a damaged box head file (no config or state dict)")
    try:
        head = BoxHead(BoxHeadConfig.from_dict(obj["config"]))
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"{path} is a damaged box head file (its config: {err})") from None
    check_finite(obj["state_dict"], str(path))
    try:
        missing, unexpected = head.load_state_dict(obj["state_dict"], strict=False)
    except RuntimeError as err:  # tensor shapes that do not fit the config
        raise ValueError(f"{path}: state dict does not match the config ({' '.join(str(err).split())[:300]})") from None
    if missing or unexpected:
        raise ValueError(f"{path}: state dict does not match the config (missing {missing}, unexpected {unexpected})")
    return head.eval(), dict(obj.get("meta") or {})
