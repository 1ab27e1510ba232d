"""Export EdgeSAM to ONNX: an image encoder and a prompt decoder, as two single files.

The encoder takes ``image`` (``1 x 3 x 1024 x 1024`` float32, resized, normalised, padded)
and returns ``image_embeddings`` (``1 x 256 x 64 x 64``).

The decoder comes in two interfaces:

* ``official`` (the released ``edge_sam_decoder.onnx``): inputs ``image_embeddings``
  ``1 x 256 x 64 x 64``, ``point_coords`` ``1 x N x 2`` (x, y) in the 1024 frame and
  ``point_labels`` ``1 x N`` float32 (-1 pad, 0 negative, 1 positive, 2/3 box corners);
  outputs ``scores`` ``1 x 4`` (stability scores) and ``masks`` ``1 x 4 x 256 x 256`` low-res
  logits. Only ``N`` is dynamic. The graph does not append a padding point: callers append
  ``(0, 0)`` with label -1 when there is no box.
* ``extended`` (ours): additionally ``mask_input`` ``B x 1 x 256 x 256`` and ``has_mask_input``
  ``[1]`` (0 or 1, SAM's convention); ``B`` is dynamic for the prompts and the mask input;
  outputs ``scores`` ``B x 4`` (stability), ``masks`` ``B x 4 x 256 x 256`` and
  ``iou_predictions`` ``B x 4`` (IoU head).

This module needs torch and onnx (the ``torch`` extra).
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._atomic import atomic_write
from ..constants import (
    EMBED_DIM,
    EMBED_SIZE,
    IMG_SIZE,
    LABEL_IGNORE,
    LABEL_PAD,
    LOW_RES_SIZE,
    STABILITY_OFFSET,
)
from ..model.edge_sam import EdgeSam
from ..model.fast_decoder import predict_masks_fast
from ..model.repvit import SqueezeExcite

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embeddings",)
OFFICIAL_DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels")
EXTENDED_DECODER_INPUTS = (*OFFICIAL_DECODER_INPUTS, "mask_input", "has_mask_input")
OFFICIAL_DECODER_OUTPUTS = ("scores", "masks")
EXTENDED_DECODER_OUTPUTS = (*OFFICIAL_DECODER_OUTPUTS, "iou_predictions")
UPSAMPLE_MODES = (None, "bicubic", "bilinear")


class SqueezeExciteForExport(nn.Module):
    """:class:`SqueezeExcite` with the spatial mean taken one axis at a time.

    Same function; needed because onnxruntime's ``ReduceMean`` over both axes of a large map
    (e.g. 256 x 256) sums in float32 with a large rounding error, and the gates amplify it
    through the encoder (embeddings off by ~1e-3 relative instead of ~1e-5).
    """

    def __init__(self, se: SqueezeExcite) -> None:
        super().__init__()
        self.fc1 = se.fc1
        self.fc2 = se.fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean(3, keepdim=True).mean(2, keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(gate))))


def make_exportable(module: nn.Module) -> nn.Module:
    """Swap, in place, the sub-modules whose export needs a different (equivalent) form."""
    for name, child in module.named_children():
        if isinstance(child, SqueezeExcite):
            setattr(module, name, SqueezeExciteForExport(child))
        else:
            make_exportable(child)
    return module


class DecoderForExport(nn.Module):
    """Prompt encoder + mask decoder with tensor-only prompt handling (traceable).

    Labels are handled with arithmetic masks (no boolean indexing, no Python branches on
    values): -2 ignore (zero embedding), -1 padding (``not_a_point_embed``), 0..3 the four
    point embeddings added to the positional encoding.

    Args:
        model: the EdgeSAM model (its prompt encoder and mask decoder are shared, not copied).
        official_interface: no mask input and batch 1 (see the module docstring).
        fast: trace :func:`~napari_edgesam.model.fast_decoder.predict_masks_fast` (same maths,
            fewer operations) instead of ``predict_masks``.
    """

    def __init__(self, model: EdgeSam, official_interface: bool = True, fast: bool = True) -> None:
        super().__init__()
        pe = model.prompt_encoder
        self.official_interface = official_interface
        self.fast = fast
        self.pe_layer = pe.pe_layer
        self.mask_decoder = model.mask_decoder
        self.mask_downscaling = pe.mask_downscaling
        self.input_h, self.input_w = pe.input_image_size
        with torch.no_grad():
            self.register_buffer("dense_pe", pe.get_dense_pe().detach().clone())
            self.register_buffer("not_a_point", pe.not_a_point_embed.weight.detach().clone())
            tables = torch.cat([t.weight.detach() for t in pe.point_embeddings], 0)
            self.register_buffer("point_tables", tables.clone())  # 4 x C
            self.register_buffer("no_mask", pe.no_mask_embed.weight.detach().reshape(1, -1, 1, 1).clone())

    def embed_points(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        """``B x N x 2`` (x, y) in the 1024 frame and ``B x N`` float labels -> ``B x N x C``."""
        coords = point_coords + 0.5
        scale = coords.new_tensor([1.0 / self.input_w, 1.0 / self.input_h])
        encoding = self.pe_layer._pe_encoding(coords * scale)
        labels = point_labels.unsqueeze(-1)
        is_pad = (labels == LABEL_PAD).to(encoding.dtype)
        is_ignore = (labels == LABEL_IGNORE).to(encoding.dtype)
        emb = encoding * (1.0 - is_pad - is_ignore) + is_pad * self.not_a_point
        for k in range(self.point_tables.shape[0]):
            emb = emb + (labels == k).to(encoding.dtype) * self.point_tables[k]
        return emb

    def dense_embedding(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """SAM's rule: ``has * mask_downscaling(mask) + (1 - has) * no_mask_embed``."""
        has = has_mask_input.reshape(-1, 1, 1, 1)
        return has * self.mask_downscaling(mask_input) + (1.0 - has) * self.no_mask

    @staticmethod
    def stability(masks: torch.Tensor) -> torch.Tensor:
        """IoU of ``logits > +1`` and ``logits > -1`` per mask; 0 where both are empty."""
        inter = (masks > STABILITY_OFFSET).to(masks.dtype).sum((-1, -2))
        union = (masks > -STABILITY_OFFSET).to(masks.dtype).sum((-1, -2))
        return inter / union.clamp(min=1.0)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        has_mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        sparse = self.embed_points(point_coords, point_labels)
        batch = sparse.shape[0]
        if mask_input is None:
            dense = self.no_mask if self.fast else self.no_mask.expand(batch, -1, EMBED_SIZE, EMBED_SIZE)
        else:
            dense = self.dense_embedding(mask_input, has_mask_input)
        emb = image_embeddings.expand(batch, -1, -1, -1)
        if self.fast:
            masks, iou = predict_masks_fast(self.mask_decoder, image_embeddings, self.dense_pe, sparse, dense)
        else:
            masks, iou = self.mask_decoder.predict_masks(emb, self.dense_pe, sparse, dense)
        scores = self.stability(masks)
        if self.official_interface:
            return scores, masks
        return scores, masks, iou


def _check_model(model: object) -> EdgeSam:
    if not isinstance(model, EdgeSam):
        raise TypeError(f"expected an EdgeSam model, got {type(model).__name__}")
    return model


def _atomic_export(module: nn.Module, args: tuple, path: str | os.PathLike, **kwargs) -> Path:
    """``torch.onnx.export`` (legacy TorchScript exporter) into a temp file, then ``os.replace``."""
    path = Path(path)

    def export(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(module, args, str(tmp), dynamo=False, do_constant_folding=True, **kwargs)

    atomic_write(path, export)
    logger.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def export_encoder(
    model: EdgeSam,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    upsample_mode: str | None = None,
    fold: bool = True,
) -> Path:
    """Export the image encoder: ``image`` ``1x3x1024x1024`` -> ``image_embeddings`` ``1x256x64x64``.

    Args:
        model: an EdgeSAM model (not modified: a copy is exported).
        path: the ``.onnx`` file to write (atomically).
        opset: ONNX opset (bicubic ``Resize`` needs 11 or newer).
        upsample_mode: neck upsampling; None keeps the model's (``"bicubic"`` is the PyTorch
            reference), ``"bilinear"`` reproduces the official ONNX files.
        fold: fold BatchNorm and RepVGG branches (same results, faster).
    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    _check_model(model)
    if upsample_mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsample_mode must be one of {UPSAMPLE_MODES}, got {upsample_mode!r}")
    if opset < 11:
        raise ValueError(f"opset must be 11 or newer (cubic/half-pixel Resize), got {opset}")
    encoder = copy.deepcopy(model.image_encoder).float().eval()
    if upsample_mode is not None:
        encoder.upsample_mode = upsample_mode
    if fold:
        encoder.fuse()
    make_exportable(encoder)
    image = torch.zeros(1, 3, IMG_SIZE, IMG_SIZE)
    return _atomic_export(
        encoder, (image,), path, opset_version=opset,
        input_names=list(ENCODER_INPUTS), output_names=list(ENCODER_OUTPUTS),
    )


def export_decoder(
    model: EdgeSam,
    path: str | os.PathLike,
    *,
    official_interface: bool = True,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export prompt encoder + mask decoder (interfaces in the module docstring).

    Args:
        model: an EdgeSAM model (not modified).
        path: the ``.onnx`` file to write (atomically).
        official_interface: True for the released files' interface (batch 1, no mask input);
            False for ours (dynamic batch, mask input, IoU-head output).
    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    _check_model(model)
    copied = make_exportable(copy.deepcopy(model).float().eval())
    wrapper = DecoderForExport(copied, official_interface).eval()
    n = 3
    batch = 1 if official_interface else 2
    emb = torch.randn(1, EMBED_DIM, EMBED_SIZE, EMBED_SIZE)
    coords = torch.rand(batch, n, 2) * IMG_SIZE
    labels = torch.tensor([[1.0, 0.0, -1.0]]).expand(batch, n).contiguous()
    if official_interface:
        args: tuple = (emb, coords, labels)
        names_in, names_out = OFFICIAL_DECODER_INPUTS, OFFICIAL_DECODER_OUTPUTS
        dynamic = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    else:
        mask = torch.randn(batch, 1, LOW_RES_SIZE, LOW_RES_SIZE)
        args = (emb, coords, labels, mask, torch.ones(1))
        names_in, names_out = EXTENDED_DECODER_INPUTS, EXTENDED_DECODER_OUTPUTS
        dynamic = {
            "point_coords": {0: "batch", 1: "num_points"},
            "point_labels": {0: "batch", 1: "num_points"},
            "mask_input": {0: "batch"},
            **{name: {0: "batch"} for name in names_out},
        }
    return _atomic_export(
        wrapper, args, path, opset_version=opset,
        input_names=list(names_in), output_names=list(names_out), dynamic_axes=dynamic,
    )


def export_onnx(
    model: EdgeSam,
    out_dir: str | os.PathLike,
    prefix: str = "edge_sam",
    *,
    official_decoder: bool = False,
    upsample_mode: str | None = None,
    opset: int = DEFAULT_OPSET,
) -> tuple[Path, Path]:
    """Write ``{prefix}_encoder.onnx`` and ``{prefix}_decoder.onnx`` into ``out_dir``.

    The decoder has the extended interface unless ``official_decoder``. Load the pair with
    ``napari_edgesam.load_model(out_dir / f"{prefix}_encoder.onnx")``.

    Returns:
        ``(encoder_path, decoder_path)``.
    """
    if not prefix or os.sep in prefix or (os.altsep and os.altsep in prefix):
        raise ValueError(f"prefix must be a plain file-name stem, got {prefix!r}")
    out = Path(out_dir)
    enc = export_encoder(model, out / f"{prefix}_encoder.onnx", opset=opset, upsample_mode=upsample_mode)
    dec = export_decoder(model, out / f"{prefix}_decoder.onnx", official_interface=official_decoder, opset=opset)
    return enc, dec
