"""The OpenVINO backend: the project's ONNX files compiled for Intel and AMD CPUs.

Runs the same encoder/decoder pair of ONNX files as :mod:`.onnx_backend` (the project's
exports with the extended decoder, or the official files) with OpenVINO's CPU plugin, which
picks kernels for the CPU it finds (AVX2, AVX-512, AMX). Optional: ``pip install
'napari-edgesam[openvino]'``. Compiled models are cached under the weights cache
(``<cache>/openvino``), so the second load of a model is fast. This module must never import
torch.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

from ...constants import EMBED_DIM, EMBED_SIZE, IMG_SIZE
from .onnx_backend import (
    DECODER_INPUTS,
    ENCODER_INPUT,
    ENCODER_OUTPUT,
    IOU_OUTPUT,
    MASK_INPUTS,
    decoder_feeds,
)

logger = logging.getLogger(__name__)


def openvino_available() -> bool:
    """Whether OpenVINO can be imported (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


def _cache_dir() -> Path:
    from ..loading.weights import cache_dir

    return cache_dir() / "openvino"


def ov_core(num_threads: int | None = None, cache: bool = True):
    """An OpenVINO ``Core`` (with the compiled-model cache under ``<cache>/openvino`` when
    ``cache``) and the CPU configuration every EdgeSAM model here is compiled with."""
    import openvino as ov

    from . import check_num_threads

    config: dict = {
        "PERFORMANCE_HINT": "LATENCY",
        # threads pinned to cores fight other programs for those cores on a busy PC
        "ENABLE_CPU_PINNING": False,
        # f32 everywhere: the masks must not depend on whether the CPU has bf16 units (an int8
        # encoder file still runs its quantized layers in int8)
        "INFERENCE_PRECISION_HINT": "f32",
    }
    if check_num_threads(num_threads) is not None:
        config["INFERENCE_NUM_THREADS"] = int(num_threads)
    core = ov.Core()
    if cache:
        try:
            _cache_dir().mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": os.fspath(_cache_dir())})
        except OSError as err:  # a read-only cache: compile every time
            logger.info("openvino: no compiled-model cache (%s)", err)
    return core, config


def compile_onnx(path: str | os.PathLike, what: str, num_threads: int | None = None, cache: bool = True):
    """``path`` compiled for the CPU (see :func:`ov_core`); ``ValueError`` naming ``what`` if
    OpenVINO cannot read it."""
    core, config = ov_core(num_threads, cache)
    return OpenVinoBackend._compile(core, Path(path), what, config)


class OpenVinoBackend:
    """Runs an EdgeSAM encoder/decoder pair of ONNX files with OpenVINO on the CPU.

    Args:
        encoder_path: the image encoder (``image`` -> ``image_embeddings``).
        decoder_path: the prompt decoder, official or extended interface.
        device: ``"auto"`` or ``"cpu"`` (OpenVINO's CPU plugin).
        num_threads: inference threads (default: OpenVINO's choice, the physical cores).
        cache: keep compiled models under the weights cache.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a file is not an EdgeSAM encoder/decoder, or the device is not a CPU.
    """

    name = "openvino"
    #: What ``encode`` returns (checked when an embedding is set from elsewhere, e.g. a cache).
    embedding_shape = (1, 256, 64, 64)

    def __init__(
        self,
        encoder_path: str | os.PathLike,
        decoder_path: str | os.PathLike,
        *,
        device: str = "auto",
        num_threads: int | None = None,
        cache: bool = True,
    ) -> None:
        if device not in ("auto", "cpu"):
            raise ValueError(f"the openvino backend runs on the CPU: use device='cpu', got {device!r}")
        self.encoder_path, self.decoder_path = Path(encoder_path), Path(decoder_path)
        for path, what in ((self.encoder_path, "encoder"), (self.decoder_path, "decoder")):
            if not path.is_file():
                raise FileNotFoundError(f"EdgeSAM {what} ONNX file not found: {path}")
        #: what a prior run beside this backend is compiled with (``load_prior``)
        self.num_threads, self.cache = num_threads, cache
        core, config = ov_core(num_threads, cache)
        self.encoder = self._compile(core, self.encoder_path, "encoder", config)
        self.decoder = self._compile(core, self.decoder_path, "decoder", config)
        enc_in = {n for p in self.encoder.inputs for n in p.get_names()}
        enc_out = {n for p in self.encoder.outputs for n in p.get_names()}
        if ENCODER_INPUT not in enc_in or ENCODER_OUTPUT not in enc_out:
            raise ValueError(f"{self.encoder_path} is not an EdgeSAM image encoder: expected input "
                             f"'{ENCODER_INPUT}' and output '{ENCODER_OUTPUT}', found {sorted(enc_in)} -> "
                             f"{sorted(enc_out)}")
        dec_in = {n for p in self.decoder.inputs for n in p.get_names()}
        dec_out = {n for p in self.decoder.outputs for n in p.get_names()}
        if not set(DECODER_INPUTS) <= dec_in or "masks" not in dec_out:
            raise ValueError(f"{self.decoder_path} is not an EdgeSAM prompt decoder: expected inputs "
                             f"{list(DECODER_INPUTS)} and output 'masks', found {sorted(dec_in)} -> {sorted(dec_out)}")
        self.extended = set(MASK_INPUTS) <= dec_in and IOU_OUTPUT in dec_out
        self.supports_mask_input = self.extended
        self.provides_iou_scores = self.extended
        # an infer request serves one call at a time; GUI workers may call from several threads
        self._enc_request, self._enc_lock = self.encoder.create_infer_request(), threading.Lock()
        self._dec_request, self._dec_lock = self.decoder.create_infer_request(), threading.Lock()

    @staticmethod
    def _compile(core, path: Path, what: str, config: dict):
        try:
            return core.compile_model(os.fspath(path), "CPU", config)
        except Exception as err:  # OpenVINO raises its own exception types
            raise ValueError(f"{path} could not be loaded as an EdgeSAM {what} model by OpenVINO: {err}") from err

    def encode(self, image: np.ndarray) -> np.ndarray:
        """``1 x 3 x 1024 x 1024`` normalised float32 -> ``1 x 256 x 64 x 64`` float32."""
        x = np.ascontiguousarray(image, dtype=np.float32)
        if x.shape != (1, 3, IMG_SIZE, IMG_SIZE):
            raise ValueError(f"encoder input must have shape (1, 3, {IMG_SIZE}, {IMG_SIZE}); got {x.shape}")
        with self._enc_lock:
            out = self._enc_request.infer({ENCODER_INPUT: x})
            emb = np.array(out[self.encoder.output(ENCODER_OUTPUT)], np.float32)
        assert emb.shape == (1, EMBED_DIM, EMBED_SIZE, EMBED_SIZE), emb.shape
        return emb

    def decode(
        self,
        embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode ``B`` prompts against one image (shapes as :meth:`OnnxBackend.decode`):
        ``1 x 256 x 64 x 64`` embedding, ``B x N x 2`` (x, y) in the 1024 frame, ``B x N``
        labels, optional ``B x 1 x 256 x 256`` mask input -> ``B x 4 x 256 x 256`` logits and
        ``B x 4`` IoU scores (None for the official decoder)."""
        feeds = decoder_feeds(embeddings, point_coords, point_labels, mask_input, self.extended,
                              self.decoder_path.name)
        if not self.extended:
            return np.concatenate([self._run_decoder(feed)[0] for feed in feeds], 0), None
        return self._run_decoder(feeds[0])

    def _run_decoder(self, inputs: dict) -> tuple[np.ndarray, np.ndarray | None]:
        with self._dec_lock:
            out = self._dec_request.infer(inputs)
            masks = np.array(out[self.decoder.output("masks")], np.float32)
            iou = np.array(out[self.decoder.output(IOU_OUTPUT)], np.float32) if self.extended else None
        return masks, iou
