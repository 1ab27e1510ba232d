"""Inference backends: the same two calls (encode, decode) on torch or onnxruntime."""

from __future__ import annotations

import sys
from typing import Protocol, runtime_checkable

import numpy as np


def check_device(device: object) -> str:
    """``device`` if it names a device this package runs on: ``"auto"``, ``"cpu"``, ``"mps"``,
    ``"cuda"`` or ``"cuda:N"``; otherwise a ValueError saying which ones (no torch import)."""
    import re

    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    return device


def check_num_threads(num_threads: object) -> int | None:
    """``num_threads`` of a backend: None (the library's choice) or an integer >= 1."""
    if num_threads is None:
        return None
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
    return int(num_threads)


@runtime_checkable
class Backend(Protocol):
    """What the predictor needs from an inference engine.

    Coordinates are (x, y) in the 1024 input frame; labels follow the prompt encoder
    (-1 pad, 0 negative, 1 positive, 2/3 box corners). Boxes arrive as two corner points.
    """

    name: str
    #: False when the decoder cannot return IoU-head scores (e.g. the official ONNX files).
    provides_iou_scores: bool
    #: False when the decoder has no mask input (e.g. the official ONNX files).
    supports_mask_input: bool

    def encode(self, image: np.ndarray) -> np.ndarray:
        """``1 x 3 x 1024 x 1024`` normalised float32 -> ``1 x 256 x 64 x 64`` float32."""
        ...

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
            point_coords: ``B x N x 2`` float32.
            point_labels: ``B x N`` float32.
            mask_input: ``B x 1 x 256 x 256`` or None.
        Returns:
            low-res logits ``B x 4 x 256 x 256`` and IoU-head scores ``B x 4`` (or None).
        """
        ...


def as_backend(obj: object, device: str = "auto") -> Backend:
    """``obj`` itself when it is a backend; an ``EdgeSam`` module wrapped in the default torch
    backend. Never imports torch: a module can only exist when torch is already imported."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.nn.Module):
        from ...model.edge_sam import EdgeSam

        if not isinstance(obj, EdgeSam):
            raise TypeError(
                f"EdgeSamPredictor needs an EdgeSam model (napari_edgesam.model.build_edge_sam(checkpoint)) "
                f"or a backend, got the torch module {type(obj).__name__}")
        from . import compute_thread
        from .torch_backend import TorchBackend

        return compute_thread.run(TorchBackend, obj, device)
    if callable(getattr(obj, "encode", None)) and hasattr(obj, "name") and not isinstance(obj, (str, bytes)):
        return obj
    raise TypeError(
        f"EdgeSamPredictor needs a backend (TorchBackend, OnnxBackend) or an EdgeSam model "
        f"(napari_edgesam.model.build_edge_sam(checkpoint)), got {type(obj).__name__}; "
        "to load weights by name or path use napari_edgesam.load_model(...)")
