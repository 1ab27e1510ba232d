"""The onnxruntime backend: EdgeSAM without PyTorch.

Runs an encoder/decoder pair of ONNX files: the official ``edge_sam_encoder.onnx`` /
``edge_sam_decoder.onnx`` or files written by ``napari-edgesam export``. The decoder's
interface is detected from its input names (see :mod:`napari_edgesam.export.onnx_export`).
This module must never import torch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ...constants import EMBED_DIM, EMBED_SIZE, IMG_SIZE, LOW_RES_SIZE

logger = logging.getLogger(__name__)

ENCODER_INPUT = "image"
ENCODER_OUTPUT = "image_embeddings"
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels")
MASK_INPUTS = ("mask_input", "has_mask_input")
DECODER_OUTPUTS = ("scores", "masks")
IOU_OUTPUT = "iou_predictions"
DEVICES = ("auto", "cpu", "cuda")


def _providers_for(device: str) -> list:
    """Execution providers for ``device`` (``"auto"``/``"cpu"``, ``"cuda"`` or ``"cuda:N"``)."""
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {type(device).__name__}")
    kind, _, index = device.partition(":")
    if kind in ("auto", "cpu") and not index:
        return ["CPUExecutionProvider"]
    if kind == "cuda" and (not index or index.isdigit()):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError(
                "device 'cuda' was requested but onnxruntime has no CUDAExecutionProvider "
                "(install onnxruntime-gpu) ; use device='cpu'"
            )
        options = {"device_id": int(index)} if index else {}
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    raise ValueError(f"device must be one of {DEVICES} (or 'cuda:N') for onnxruntime, got {device!r}")


def _session(path: Path, what: str, options: ort.SessionOptions, providers: list) -> ort.InferenceSession:
    if not path.is_file():
        raise FileNotFoundError(f"EdgeSAM {what} ONNX file not found: {path}")
    try:
        return ort.InferenceSession(os.fspath(path), sess_options=options, providers=providers)
    except Exception as err:  # onnxruntime raises its own (pybind) exception types
        raise ValueError(f"{path} could not be loaded as an EdgeSAM {what} ONNX model: {err}") from err


def _shape_ok(shape: list, expected: tuple) -> bool:
    """Static dims must match ``expected``; None in ``expected`` or a symbolic dim passes."""
    if len(shape) != len(expected):
        return False
    return all(e is None or not isinstance(d, int) or d == e for d, e in zip(shape, expected, strict=True))


def _signature(session: ort.InferenceSession) -> str:
    ins = ", ".join(f"{i.name}{list(i.shape)}" for i in session.get_inputs())
    outs = ", ".join(f"{o.name}{list(o.shape)}" for o in session.get_outputs())
    return f"inputs ({ins}), outputs ({outs})"


def _check_encoder(session: ort.InferenceSession, path: Path) -> None:
    ins, outs = session.get_inputs(), {o.name: o for o in session.get_outputs()}
    ok = (
        len(ins) == 1 and ins[0].name == ENCODER_INPUT
        and _shape_ok(ins[0].shape, (1, 3, IMG_SIZE, IMG_SIZE))
        and ENCODER_OUTPUT in outs
        and _shape_ok(outs[ENCODER_OUTPUT].shape, (1, EMBED_DIM, EMBED_SIZE, EMBED_SIZE))
    )
    if not ok:
        raise ValueError(
            f"{path} is not an EdgeSAM image encoder: expected input '{ENCODER_INPUT}' "
            f"[1, 3, {IMG_SIZE}, {IMG_SIZE}] and output '{ENCODER_OUTPUT}' "
            f"[1, {EMBED_DIM}, {EMBED_SIZE}, {EMBED_SIZE}]; found {_signature(session)}"
        )


def _check_decoder(session: ort.InferenceSession, path: Path) -> bool:
    """Validate the decoder; returns True for the extended interface (mask input, IoU output)."""
    ins = {i.name: i for i in session.get_inputs()}
    outs = {o.name: o for o in session.get_outputs()}
    extended = set(MASK_INPUTS) <= set(ins)
    expected_in = set(DECODER_INPUTS) | (set(MASK_INPUTS) if extended else set())
    expected_out = set(DECODER_OUTPUTS) | ({IOU_OUTPUT} if extended else set())
    ok = (
        set(ins) == expected_in
        and expected_out <= set(outs)
        and _shape_ok(ins["image_embeddings"].shape, (1, EMBED_DIM, EMBED_SIZE, EMBED_SIZE))
        and _shape_ok(ins["point_coords"].shape, (None, None, 2))
        and _shape_ok(ins["point_labels"].shape, (None, None))
        and _shape_ok(outs["masks"].shape, (None, 4, LOW_RES_SIZE, LOW_RES_SIZE))
        and _shape_ok(outs["scores"].shape, (None, 4))
    )
    if extended and ok:
        ok = _shape_ok(ins["mask_input"].shape, (None, 1, LOW_RES_SIZE, LOW_RES_SIZE))
    if not ok:
        raise ValueError(
            f"{path} is not an EdgeSAM prompt decoder: expected inputs {list(DECODER_INPUTS)} "
            f"(optionally {list(MASK_INPUTS)}) and outputs {list(DECODER_OUTPUTS)}; "
            f"found {_signature(session)}"
        )
    return extended


def decoder_feeds(embeddings: np.ndarray, point_coords: np.ndarray, point_labels: np.ndarray,
                  mask_input: np.ndarray | None, extended: bool, decoder_name: str) -> list[dict[str, np.ndarray]]:
    """The inputs of an EdgeSAM ONNX decoder for ``B`` prompts (shared by the runtimes that run
    these files): one feed for the extended decoder (batched, with a zero mask input and
    ``has_mask_input`` 0 when none is given), one feed per prompt for the official decoder
    (batch 1, no mask input: ``ValueError`` if one is given). Shapes as :meth:`OnnxBackend.decode`."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    coords = np.ascontiguousarray(point_coords, dtype=np.float32)
    labels = np.ascontiguousarray(point_labels, dtype=np.float32)
    if coords.ndim != 3 or coords.shape[-1] != 2 or labels.shape != coords.shape[:2]:
        raise ValueError(
            f"point_coords must be (B, N, 2) and point_labels (B, N); got {coords.shape} and {labels.shape}"
        )
    batch = coords.shape[0]
    if not extended:
        if mask_input is not None:
            raise ValueError(
                f"the decoder {decoder_name} (official interface) has no mask input; "
                "export one with 'napari-edgesam export' or use the torch backend"
            )
        return [{"image_embeddings": emb, "point_coords": coords[i : i + 1], "point_labels": labels[i : i + 1]}
                for i in range(batch)]
    size = (1, LOW_RES_SIZE, LOW_RES_SIZE)
    if mask_input is None:
        masks_in, has = np.zeros((batch, *size), np.float32), np.zeros(1, np.float32)
    else:
        masks_in = np.asarray(mask_input, np.float32)
        if masks_in.ndim != 4 or masks_in.shape[1:] != size or masks_in.shape[0] not in (1, batch):
            raise ValueError(f"mask_input must have shape ({batch}, 1, {LOW_RES_SIZE}, {LOW_RES_SIZE}); "
                             f"got {masks_in.shape}")
        masks_in, has = np.ascontiguousarray(np.broadcast_to(masks_in, (batch, *size))), np.ones(1, np.float32)
    return [{"image_embeddings": emb, "point_coords": coords, "point_labels": labels,
             "mask_input": masks_in, "has_mask_input": has}]


class OnnxBackend:
    """Runs an EdgeSAM encoder/decoder pair of ONNX files with onnxruntime.

    Args:
        encoder_path: the image encoder (``image`` -> ``image_embeddings``).
        decoder_path: the prompt decoder, official or extended interface.
        device: ``"auto"`` or ``"cpu"`` (CPU provider), ``"cuda"`` / ``"cuda:N"``
            (needs onnxruntime-gpu; ``ValueError`` otherwise).
        num_threads: intra-op threads per session (default: onnxruntime's choice).
        providers: explicit onnxruntime execution providers (overrides ``device``).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a file is not an ONNX model, or not an EdgeSAM encoder/decoder.
    """

    name = "onnxruntime"
    #: What ``encode`` returns (checked when an embedding is set from elsewhere, e.g. a cache).
    embedding_shape = (1, 256, 64, 64)

    def __init__(
        self,
        encoder_path: str | os.PathLike,
        decoder_path: str | os.PathLike,
        *,
        device: str = "auto",
        num_threads: int | None = None,
        providers: list | None = None,
    ) -> None:
        self.encoder_path = Path(encoder_path)
        self.decoder_path = Path(decoder_path)
        if providers is None:
            providers = _providers_for(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT worker threads spinning would slow down other work in the process (torch).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        from . import check_num_threads

        if check_num_threads(num_threads) is not None:
            options.intra_op_num_threads = int(num_threads)
        self.encoder = _session(self.encoder_path, "encoder", options, providers)
        _check_encoder(self.encoder, self.encoder_path)
        self.decoder = _session(self.decoder_path, "decoder", options, providers)
        self.extended = _check_decoder(self.decoder, self.decoder_path)
        #: Our exports have a mask input and IoU-head scores; the official files have neither
        #: (their ``scores`` output holds stability scores).
        self.supports_mask_input = self.extended
        self.provides_iou_scores = self.extended
        self.providers = self.encoder.get_providers()
        logger.debug(
            "onnxruntime backend: %s + %s (%s decoder, providers %s)", self.encoder_path.name,
            self.decoder_path.name, "extended" if self.extended else "official", self.providers,
        )

    def encode(self, image: np.ndarray) -> np.ndarray:
        """``1 x 3 x 1024 x 1024`` normalised float32 -> ``1 x 256 x 64 x 64`` float32."""
        x = np.ascontiguousarray(image, dtype=np.float32)
        if x.shape != (1, 3, IMG_SIZE, IMG_SIZE):
            raise ValueError(f"encoder input must have shape (1, 3, {IMG_SIZE}, {IMG_SIZE}); got {x.shape}")
        return self.encoder.run([ENCODER_OUTPUT], {ENCODER_INPUT: x})[0]

    def decode(
        self,
        embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode ``B`` prompts against one image.

        Args:
            embeddings: ``1 x 256 x 64 x 64``.
            point_coords: ``B x N x 2`` (x, y) in the 1024 frame (padding point included).
            point_labels: ``B x N`` (-1 pad, 0 negative, 1 positive, 2/3 box corners).
            mask_input: ``B x 1 x 256 x 256`` low-res logits or None (extended decoder only).
        Returns:
            low-res logits ``B x 4 x 256 x 256`` and IoU-head scores ``B x 4`` (None for the
            official decoder).
        """
        feeds = decoder_feeds(embeddings, point_coords, point_labels, mask_input, self.extended,
                              self.decoder_path.name)
        if not self.extended:
            masks = [self.decoder.run(["masks"], feed)[0] for feed in feeds]
            return np.concatenate(masks, 0), None
        masks, iou = self.decoder.run(["masks", IOU_OUTPUT], feeds[0])
        return masks, iou
