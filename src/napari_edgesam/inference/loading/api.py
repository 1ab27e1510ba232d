"""``load_model`` and ``list_models``: the one-line entry points of the public API."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from ..core.predictor import EdgeSamPredictor
from . import weights

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
#: Backends that run the ONNX files.
ONNX_BACKENDS = ("onnxruntime", "openvino")


def torch_available() -> bool:
    """Whether the optional torch backend can be used (without importing torch)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a blocked or broken torch install
        return False


def list_models() -> list[dict]:
    """Registered models: name, description, licence, formats and cache state (no network)."""
    return weights.list_models()


def _resolve_backend(backend: str, what: str = "") -> str:
    """The backend to use when ``backend`` ("auto" = torch if installed) was asked for."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "torch" if torch_available() else "onnxruntime"
    if backend == "torch" and not torch_available():
        raise ValueError(
            f"the torch backend{what} needs PyTorch: pip install 'napari-edgesam[torch]' "
            "(or use backend='onnxruntime' with an ONNX model)"
        )
    return backend


def _check_onnx_backend(backend: str) -> None:
    if backend == "openvino":
        from ..backends.openvino_backend import openvino_available

        if not openvino_available():
            raise ValueError("the openvino backend needs OpenVINO: pip install 'napari-edgesam[openvino]' "
                             "(or use backend='onnxruntime')")


def choose_backend(spec: weights.ModelSpec, backend: str = "auto", device: str = "auto") -> tuple[str, str]:
    """The backend that runs registered model ``spec`` and the reason, in words.

    ``"auto"`` picks, among the installed backends that can run the model (torch needs its
    checkpoint, onnxruntime and OpenVINO its ONNX files), the one measured fastest on this CPU
    if it has been measured, else by the rule of
    :mod:`~napari_edgesam.inference.loading.backend_choice` (OpenVINO, then torch, then
    onnxruntime); torch when ``device`` names a GPU or, with ``device="auto"``, torch sees one.
    An explicit backend the model has no files for is a ``ValueError`` naming that backend.
    """
    from . import backend_choice
    from .backend_choice import choose, installed_backends

    has_pth, has_onnx = "pth" in spec.files, "onnx_encoder" in spec.files
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend in ONNX_BACKENDS:
        if not has_onnx:
            raise ValueError(f"model {spec.name!r} has no ONNX files for the {backend} backend: export them "
                             f"with 'napari-edgesam export {spec.name} -o DIR' (needs torch) and load DIR's "
                             "*_encoder.onnx, or use backend='torch'")
        _check_onnx_backend(backend)
        return backend, "asked for"
    if backend == "torch":
        if not has_pth:
            raise ValueError(f"model {spec.name!r} has no PyTorch checkpoint for the torch backend; "
                             "use backend='onnxruntime'")
        return _resolve_backend("torch", f" (asked for model {spec.name!r})"), "asked for"
    candidates = [b for b in installed_backends() if (has_pth if b == "torch" else has_onnx)]
    if "torch" in candidates and device not in ("auto", "cpu"):
        return "torch", f"device {device!r} asked for: torch runs on it"
    if "torch" in candidates and device == "auto" and backend_choice.torch_gpu_available():
        return "torch", "torch sees a GPU: it runs there"
    if "torch" in candidates and not _onnx_is_extended(spec):
        # the released ONNX files have the official decoder (no mask input, no IoU scores) and a
        # bilinear neck: the checkpoint on torch gives the full model
        return "torch", ("torch is installed and the model's ONNX files are the official ones (no mask input, "
                         "no IoU scores)")
    if not candidates:
        if has_pth and not has_onnx:
            raise ValueError(f"model {spec.name!r} needs PyTorch (it has only a .pth checkpoint): "
                             "pip install 'napari-edgesam[torch]'")
        raise ValueError(f"no installed backend can run model {spec.name!r}: pip install 'napari-edgesam[openvino]'")
    return choose(candidates)


def _onnx_is_extended(spec: weights.ModelSpec) -> bool:
    """Whether ``spec``'s ONNX files are this project's exports with the extended decoder (the
    shipped models'); downloaded ones are the official files (official decoder interface)."""
    return all(k in spec.files and spec.files[k].local_path is not None for k in ("onnx_encoder", "onnx_decoder"))


def auto_onnx_backend() -> tuple[str, str]:
    """The backend ``"auto"`` runs an ONNX file on (OpenVINO or onnxruntime), and why."""
    from .backend_choice import choose, installed_backends

    return choose([b for b in installed_backends() if b in ONNX_BACKENDS] or ["onnxruntime"])


def wants_int8(spec: weights.ModelSpec, backend: str, int8: bool | None) -> bool:
    """Whether the int8 encoder of ``spec`` runs: ``int8=None`` (the default) uses it on OpenVINO
    when the model has one (registered only when it passed its accuracy gate,
    :mod:`napari_edgesam.export.int8_gate`); True asks for it on an ONNX backend (``ValueError``
    when there is none); False never."""
    has = "onnx_encoder_int8" in spec.files
    if int8 is None:
        return has and backend == "openvino"
    if int8 and has and backend not in ONNX_BACKENDS:
        raise ValueError(f"int8 runs on the ONNX backends, not {backend}: load {spec.name!r} with "
                         "backend='openvino', 'onnxruntime' or 'auto' for its int8 encoder, or int8=False for torch")
    if int8 and (not has or backend not in ONNX_BACKENDS):
        raise ValueError(f"model {spec.name!r} has no int8 encoder for the {backend} backend: export one with "
                         f"'napari-edgesam export {spec.name} -o DIR --int8' and load DIR's *_encoder_int8.onnx "
                         "(onnxruntime or openvino)")
    return bool(int8)


#: Preference order of ``load_model("auto")``.
AUTO_ORDER = ("edgesam", "edgesam-3x", "edgesam-nuclei")


def _local_kind(spec: weights.ModelSpec, backend: str = "auto") -> str | None:
    """The weight format of ``spec`` that ``backend`` can use and whose files are on this
    machine now (``"pth"`` or ``"onnx_encoder"``), preferring the backend's own; None if none is.
    Only file presence and size are checked (no hashing, no network)."""
    if backend == "auto":
        try:
            preferred = choose_backend(spec)[0]
        except ValueError:
            preferred = _resolve_backend(backend)
    else:
        preferred = _resolve_backend(backend)
    order = ("pth", "onnx_encoder") if preferred == "torch" else ("onnx_encoder", "pth")
    if backend != "auto":
        order = order[:1]
    for kind in order:
        if kind == "pth" and not torch_available():
            continue
        if _format_present(spec, kind):
            return kind
    return None


def _format_present(spec: weights.ModelSpec, fmt: str) -> bool:
    """Whether the files of format ``fmt`` (``"pth"`` or ``"onnx_encoder"``, with its decoder)
    of ``spec`` are on this machine (presence and size only)."""
    needed = ("pth",) if fmt == "pth" else ("onnx_encoder", "onnx_decoder")
    return all(k in spec.files and _present(spec.files[k]) for k in needed)


def _present(wf: weights.WeightFile) -> bool:
    path = Path(wf.local_path) if wf.local_path is not None else weights.cache_dir() / wf.filename
    try:
        return path.is_file() and (wf.size is None or path.stat().st_size == wf.size)
    except OSError:
        return False


def _is_shipped(spec: weights.ModelSpec) -> bool:
    return all(wf.local_path is not None for wf in spec.files.values())


def choose_model(backend: str = "auto", allow_download: bool = True) -> tuple[str, str]:
    """What ``load_model("auto")`` loads, and why, in one line: ``(name, reason)``.

    The first of :data:`AUTO_ORDER` whose files are on this machine now (a downloaded
    official model in the cache, else a shipped one such as ``edgesam-nuclei``); only when
    none is, and ``allow_download``, the first that downloads. A present but damaged file
    (wrong size or hash) is skipped with its reason. Raises ``RuntimeError`` saying what to
    do when no model is available.
    """
    skipped: list[str] = []
    for name in AUTO_ORDER:
        spec = weights.MODEL_REGISTRY.get(name)
        kind = None if spec is None else _local_kind(spec, backend)
        if kind is None:
            continue
        try:  # verifies size and hash of what is there: still no network
            for k in ("pth",) if kind == "pth" else ("onnx_encoder", "onnx_decoder"):
                weights.fetch_weight(name, k, allow_download=False, progress=False)
        except (weights.WeightsUnavailableError, weights.WeightFileError) as err:
            skipped.append(f"{name}: {err}")
            continue
        return name, _reason(name, spec, skipped)
    cache = weights.cache_dir()
    if allow_download:
        for name in AUTO_ORDER:
            spec = weights.MODEL_REGISTRY.get(name)
            if spec is None or _is_shipped(spec):
                continue
            kind = "pth" if "pth" in spec.files and _resolve_backend(backend) == "torch" else "onnx_encoder"
            if kind not in spec.files:
                continue
            try:
                for k in ("pth",) if kind == "pth" else ("onnx_encoder", "onnx_decoder"):
                    weights.fetch_weight(name, k, allow_download=True, progress=False)
            except (weights.WeightsUnavailableError, weights.WeightFileError) as err:
                skipped.append(f"{name}: {err}")
                continue
            return name, f"{name}: downloaded the official weights into {cache} (no model was on this machine)"
    raise RuntimeError(
        f"no EdgeSAM model is available offline: put edge_sam.pth (official EdgeSAM weights) into {cache} "
        f"(napari-edgesam info shows the cache), or pass a .pth/.onnx file"
        + (" (" + "; ".join(skipped) + ")" if skipped else "")
    )


def _reason(name: str, spec: weights.ModelSpec, skipped: list[str] | None = None) -> str:
    """One line: why ``name`` (on this machine) is the model used when none is named."""
    cache = weights.cache_dir()
    if name not in AUTO_ORDER:
        why = f"{name}: registered model found on this machine"
    elif _is_shipped(spec):
        why = (f"{name}: the model shipped with napari-edgesam (no official EdgeSAM weights in {cache}; "
               f"put edge_sam.pth there to use them)")
    else:
        why = f"{name}: official weights found in {cache}"
    if skipped:
        why += " [skipped " + "; ".join(skipped) + "]"
    return why


def why_model(name: str) -> str:
    """One line saying why the registered model ``name`` (on this machine) is used by default."""
    return _reason(name, weights.MODEL_REGISTRY[name])


def best_available_model(allow_download: bool = True) -> str:
    """The name :func:`choose_model` picks: a model on this machine first (no network), a
    download only when none is and ``allow_download``. ``RuntimeError`` when none is available."""
    return choose_model(allow_download=allow_download)[0]


def _onnx_decoder_for(encoder: Path) -> Path:
    name = encoder.name
    if "encoder" not in name:
        raise ValueError(
            f"cannot find the decoder for ONNX file {encoder}: name it '*encoder*.onnx' with a "
            "'*decoder*.onnx' beside it, or pass decoder=..."
        )
    if encoder.stem.endswith("_encoder_int8"):  # export --int8: the float32 decoder beside it
        return encoder.with_name(encoder.stem[: -len("_encoder_int8")] + "_decoder.onnx")
    return encoder.with_name(name.replace("encoder", "decoder"))


def load_model(
    name_or_path: str | os.PathLike = "edgesam",
    backend: str = "auto",
    device: str = "auto",
    *,
    decoder: str | os.PathLike | None = None,
    allow_download: bool = True,
    allow_unsafe: bool = False,
    prior: str | os.PathLike | None = None,
    int8: bool | None = None,
    **backend_options,
) -> EdgeSamPredictor:
    """Return a ready :class:`EdgeSamPredictor`.

    Args:
        name_or_path: a registered model name (see :func:`list_models`), a ``.pth`` checkpoint
            (official layout, or exported by ``napari-edgesam train export``), or an encoder
            ``.onnx`` file (its decoder is found beside it, or given as ``decoder``).
        backend: ``"auto"`` (see :func:`choose_backend`), ``"torch"``, ``"onnxruntime"`` or
            ``"openvino"`` (the last two run ONNX files).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
        allow_download: fetch registered weights into the cache if missing.
        allow_unsafe: permit full unpickling of a trusted ``.pth`` file.
        prior: a granularity prior (box head): a ``.prior.pth``/``.prior.onnx`` path, or
            ``"auto"`` to use the one stored beside the model file if there is one.
        int8: the model's int8 encoder (registered models): None uses it on OpenVINO when the
            model has one that passed its accuracy gate; True asks for it; False never.
        backend_options: passed to the backend (e.g. ``num_threads``).
    """
    from ..backends import check_device

    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a model name or a file path, got {type(name_or_path).__name__}")
    check_device(device)  # one message for every backend, before any file is read
    predictor = _load_predictor(
        name_or_path, backend, device, decoder, allow_download, allow_unsafe, backend_options, int8
    )
    if prior is not None:
        _attach_prior(predictor, prior, device)
    return predictor


def _attach_prior(predictor: EdgeSamPredictor, prior: str | os.PathLike, device: str) -> None:
    from ..prior import find_prior, load_prior
    from ..prior.files import encoder_file

    path = Path(prior) if os.fspath(prior) != "auto" else None
    if path is None:
        source = predictor.source_path
        running = encoder_file(predictor)  # e.g. the int8 encoder: its int8 prior comes first
        path = find_prior(running) if running is not None else None
        if path is None and source is not None:
            path = find_prior(source)
        if path is None:
            logger.warning("prior='auto': no granularity prior (.prior.pth/.prior.onnx) is stored beside %s; "
                           "going on without one", source)
            return
    predictor.prior = load_prior(path, predictor, device=device)


def _load_predictor(name_or_path, backend, device, decoder, allow_download, allow_unsafe, backend_options,
                    int8=None):
    key = os.fspath(name_or_path)
    if not key.strip():  # Path("") would be the current folder
        raise ValueError("no model given (an empty name): use 'auto', a registered model name or a .pth/.onnx path")
    if key == "auto":
        key, why = choose_model(backend, allow_download=allow_download)
        logger.info("model auto: %s", why)
    path = Path(key)
    if key not in weights.MODEL_REGISTRY and not path.suffix:
        weights.refresh_adapted_models()  # an adapted model saved since the registry was built
    if key in weights.MODEL_REGISTRY:
        spec = weights.MODEL_REGISTRY[key]
        kind, why = choose_backend(spec, backend, device)
        fmt = "pth" if kind == "torch" else "onnx_encoder"
        local = _local_kind(spec, "auto") if backend == "auto" else None
        if local is not None and local != fmt and not _format_present(spec, fmt):
            # what is on this machine: no download for another format
            kind = "torch" if local == "pth" else auto_onnx_backend()[0]
            why = "its files on this machine are in that format"
        logger.info("model %s on %s (%s)", key, kind, why)
        if kind == "torch" and int8 and backend == "auto" and "onnx_encoder_int8" in spec.files:
            kind, why = auto_onnx_backend()  # int8 asked for: it runs on an ONNX backend
        if kind == "torch" and int8:
            wants_int8(spec, kind, int8)  # the error: int8 runs on the ONNX backends
        if kind == "torch":
            ckpt = weights.fetch_weight(key, "pth", allow_download=allow_download)
            predictor = _torch_predictor(ckpt, device, key, allow_unsafe, backend_options)
        else:
            int8 = wants_int8(spec, kind, int8)
            enc = weights.fetch_weight(key, "onnx_encoder_int8" if int8 else "onnx_encoder",
                                       allow_download=allow_download)
            dec = weights.fetch_weight(key, "onnx_decoder", allow_download=allow_download)
            # int8 embeddings differ from float32 ones: they are cached under a name of their own
            name = f"{key}-int8" if int8 else key
            predictor = _onnx_predictor(enc, dec, device, name, backend_options, kind)
            if backend == "auto" and torch_decodes(spec, kind, device):
                predictor = _with_torch_decoder(predictor, weights.fetch_weight(key, "pth", allow_download=False),
                                                device, name, allow_unsafe)
                logger.info("model %s: decoder on torch (%s)", key, TORCH_DECODER_WHY)
            predictor.source_path = weights.fetch_weight(key, "onnx_encoder", allow_download=allow_download)
        predictor.refine_with_mask_input = spec.mask_input_refines
        return predictor
    if path.is_dir():
        raise ValueError(f"model {path} is a folder: pass the .pth checkpoint or the *_encoder.onnx file inside it")
    if path.suffix.lower() in (".pth", ".pt"):
        sha = weights.verify_weight_file(path)
        if _resolve_backend("torch" if backend == "auto" else backend) != "torch":
            raise ValueError(f"{path} is a PyTorch checkpoint: use backend='torch' or an .onnx file")
        # the hash in the name keeps caches of different files with the same name apart
        return _torch_predictor(path, device, f"{path.stem}-{sha[:8]}", allow_unsafe, backend_options)
    if path.suffix.lower() == ".onnx":
        weights.verify_weight_file(path)
        if backend not in ("auto", *ONNX_BACKENDS):
            raise ValueError(f"{path} is an ONNX file: use backend='onnxruntime' or 'openvino'")
        if backend == "auto":  # OpenVINO runs on the CPU only; onnxruntime may have a GPU provider
            kind = auto_onnx_backend()[0] if device in ("auto", "cpu") else "onnxruntime"
        else:
            kind = backend
        _check_onnx_backend(kind)
        dec = Path(decoder) if decoder is not None else _onnx_decoder_for(path)
        sha = weights.verify_weight_file(dec)[:4] + weights.verify_weight_file(path)[:4]
        return _onnx_predictor(path, dec, device, f"{path.stem.replace('_encoder', '')}-{sha}", backend_options, kind)
    if path.suffix:
        raise ValueError(f"unsupported model file {path}: expected .pth, .pt or .onnx")
    known = ", ".join(sorted(weights.MODEL_REGISTRY))
    raise ValueError(f"unknown model {key!r}: use one of {known}, or a path to a .pth/.onnx file")


#: Why ``backend="auto"`` decodes on torch beside an OpenVINO encoder.
TORCH_DECODER_WHY = ("torch's fast decoder answers a prompt in less time than the ONNX decoder in OpenVINO "
                     "(benchmarks/bench_core.py); the encoder stays on OpenVINO")


def torch_decodes(spec: weights.ModelSpec, kind: str, device: str) -> bool:
    """Whether ``auto`` pairs the OpenVINO encoder of ``spec`` with torch's decoder: on the CPU,
    with torch installed and the model's checkpoint on this machine (never downloaded for it).
    ``NAPARI_EDGESAM_SPLIT=0`` turns the pairing off."""
    if kind != "openvino" or device not in ("auto", "cpu") or not _split_enabled():
        return False
    return "pth" in spec.files and torch_available() and _format_present(spec, "pth")


def _split_enabled() -> bool:
    """``NAPARI_EDGESAM_SPLIT``: unset, ``1``/``true``/``yes``/``on`` pair the encoder with torch's
    decoder, ``0``/``false``/``no``/``off`` do not; anything else is a ValueError."""
    value = os.environ.get("NAPARI_EDGESAM_SPLIT", "1").strip().lower()
    if value in ("1", "true", "yes", "on", ""):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"NAPARI_EDGESAM_SPLIT={os.environ['NAPARI_EDGESAM_SPLIT']!r} is not understood: "
                     "set it to 0 (OpenVINO's own decoder) or 1 (torch's decoder, the default), or unset it")


def _with_torch_decoder(predictor: EdgeSamPredictor, checkpoint: Path, device: str, name: str,
                        allow_unsafe: bool) -> EdgeSamPredictor:
    """``predictor`` with its encoder and torch's decoder of the same weights (``checkpoint``)."""
    from ...model.build import build_edge_sam
    from ..backends import compute_thread
    from ..backends.split_backend import SplitBackend
    from ..backends.torch_backend import TorchBackend

    decoder = compute_thread.run(lambda: TorchBackend(build_edge_sam(checkpoint, allow_unsafe=allow_unsafe), "cpu"))
    weights.confirm_loaded(checkpoint)
    split = EdgeSamPredictor(SplitBackend(predictor.backend, decoder), model_name=name)
    split.source_path = predictor.source_path
    split.checkpoint_path = Path(checkpoint)
    return split


def _torch_predictor(path: Path, device: str, name: str, allow_unsafe: bool, options: dict) -> EdgeSamPredictor:
    from ...model.build import build_edge_sam
    from ..backends import compute_thread
    from ..backends.torch_backend import TorchBackend

    def build() -> TorchBackend:
        return TorchBackend(build_edge_sam(path, allow_unsafe=allow_unsafe), device, **options)

    predictor = EdgeSamPredictor(compute_thread.run(build), model_name=name)
    weights.confirm_loaded(path)  # a fetched file's hash is recorded once it has loaded
    predictor.source_path = predictor.checkpoint_path = Path(path)
    return predictor


def _onnx_predictor(encoder: Path, decoder: Path, device: str, name: str, options: dict,
                    kind: str = "onnxruntime") -> EdgeSamPredictor:
    if kind == "openvino":
        from ..backends.openvino_backend import OpenVinoBackend

        backend = OpenVinoBackend(encoder, decoder, device=device, **options)
    else:
        from ..backends.onnx_backend import OnnxBackend

        backend = OnnxBackend(encoder, decoder, device=device, **options)
    predictor = EdgeSamPredictor(backend, model_name=name)
    weights.confirm_loaded(encoder, decoder)  # first use: their hashes are recorded now they loaded
    predictor.source_path = Path(encoder)
    return predictor
