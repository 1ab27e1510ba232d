"""Export the granularity prior (box head) to ONNX.

Two graphs, both with dense outputs (NMS is done in numpy by
:func:`napari_edgesam.inference.prior.select_proposals`):

* features -> boxes: inputs ``stage1`` ``1 x 96 x 128 x 128``, ``stage2`` ``1 x 192 x 64 x 64``,
  ``stage3`` ``1 x 384 x 32 x 32``; outputs ``boxes`` ``1 x N x 4`` (x0, y0, x1, y1 in the 1024
  frame) and ``scores`` ``1 x N`` (N = 21504 locations);
* image -> boxes (with the encoder): input ``image`` ``1 x 3 x 1024 x 1024`` (normalised,
  padded); outputs ``boxes``, ``scores`` and, with ``with_embedding``, ``image_embeddings``
  ``1 x 256 x 64 x 64`` from the same pass (one encoder run gives both).

The head's decoding settings travel in the model metadata (key
:data:`~napari_edgesam.inference.prior.ONNX_META_KEY`, JSON). Needs torch and onnx.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._atomic import atomic_write
from ..constants import IMG_SIZE
from ..inference.prior import ONNX_META_KEY
from ..model.box_head import STAGES, BoxHead, locations
from .onnx_export import DEFAULT_OPSET, _atomic_export, make_exportable

logger = logging.getLogger(__name__)


class BoxHeadForExport(nn.Module):
    """``(stage1, stage2, stage3)`` -> ``(boxes 1 x N x 4, scores 1 x N)``."""

    def __init__(self, head: BoxHead, img_size: int = IMG_SIZE) -> None:
        super().__init__()
        self.head = head
        sizes = [(img_size // s, img_size // s) for s in head.config.strides]
        self.register_buffer("points", locations(sizes, head.config.strides), persistent=False)

    def forward(self, stage1: torch.Tensor, stage2: torch.Tensor, stage3: torch.Tensor):
        out = self.head((stage1, stage2, stage3))
        boxes = torch.cat([self.points - out.ltrb[..., :2], self.points + out.ltrb[..., 2:]], -1)
        scores = torch.sqrt(torch.sigmoid(out.logits) * torch.sigmoid(out.centerness))
        return boxes, scores


class PriorForExport(nn.Module):
    """``image`` -> ``(boxes, scores)`` or ``(image_embeddings, boxes, scores)``."""

    def __init__(self, encoder: nn.Module, head: BoxHead, with_embedding: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.boxes = BoxHeadForExport(head)
        self.with_embedding = with_embedding

    def forward(self, image: torch.Tensor):
        feats = self.encoder.forward_features(image)
        boxes, scores = self.boxes(*(feats[k] for k in STAGES))
        if self.with_embedding:
            return self.encoder.neck_forward(feats["stage2"], feats["stage3"]), boxes, scores
        return boxes, scores


def _settings(head: BoxHead, meta: dict | None) -> str:
    c = head.config
    data = {"score_thresh": c.score_thresh, "nms_thresh": c.nms_thresh, "pre_nms_top_k": c.pre_nms_top_k,
            "max_detections": c.max_detections, "encoder": (meta or {}).get("encoder", "")}
    return json.dumps(data)


def _add_metadata(path: Path, key: str, value: str) -> None:
    import onnx

    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value
    atomic_write(path, lambda tmp: onnx.save(model, str(tmp)))


def export_box_head(
    head: BoxHead,
    path: str | os.PathLike,
    *,
    encoder: nn.Module | None = None,
    with_embedding: bool = False,
    meta: dict | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write the prior as ONNX (atomically); see the module docstring for the interfaces.

    Args:
        head: the trained head (not modified: a copy is exported).
        encoder: the RepViT encoder to include (image input); None for feature inputs.
        with_embedding: also output the encoder's ``image_embeddings`` (needs ``encoder``).
        meta: the head file's metadata (its ``encoder`` name is recorded).
    """
    if not isinstance(head, BoxHead):
        raise TypeError(f"expected a BoxHead, got {type(head).__name__}")
    if with_embedding and encoder is None:
        raise ValueError("with_embedding=True needs the encoder")
    head = copy.deepcopy(head).float().eval().cpu()
    if encoder is None:
        module: nn.Module = BoxHeadForExport(head).eval()
        args = tuple(torch.zeros(1, c, IMG_SIZE // s, IMG_SIZE // s)
                     for c, s in zip(head.config.in_channels, head.config.strides, strict=True))
        names_in, names_out = list(STAGES), ["boxes", "scores"]
    else:
        enc = make_exportable(copy.deepcopy(encoder).float().eval().cpu().fuse())
        module = PriorForExport(enc, head, with_embedding).eval()
        args = (torch.zeros(1, 3, IMG_SIZE, IMG_SIZE),)
        names_in = ["image"]
        names_out = (["image_embeddings"] if with_embedding else []) + ["boxes", "scores"]
    out = _atomic_export(module, args, path, opset_version=opset, input_names=names_in, output_names=names_out)
    _add_metadata(out, ONNX_META_KEY, _settings(head, meta))
    return out


def check_parity(
    head: BoxHead, path: str | os.PathLike, inputs: dict[str, np.ndarray], encoder: nn.Module | None = None
) -> dict[str, float]:
    """Run torch and onnxruntime on ``inputs`` (by ONNX input name); returns the largest
    absolute difference per output (boxes in pixels, scores)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, {k: np.ascontiguousarray(v, np.float32) for k, v in inputs.items()}), strict=True))
    head = copy.deepcopy(head).float().eval().cpu()
    with torch.no_grad():
        if encoder is None:
            ref = BoxHeadForExport(head)(*(torch.from_numpy(inputs[k]) for k in STAGES))
            ref = dict(zip(["boxes", "scores"], ref, strict=True))
        else:
            module = PriorForExport(copy.deepcopy(encoder).float().eval().cpu(), head, "image_embeddings" in names)
            ref = dict(zip(names, module(torch.from_numpy(inputs["image"])), strict=True))
    return {k: float(np.abs(got[k] - ref[k].numpy()).max()) for k in names}
