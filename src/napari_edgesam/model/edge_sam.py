"""The EdgeSAM model: RepViT image encoder + SAM prompt encoder + SAM mask decoder."""

from __future__ import annotations

import torch
from torch import nn

from ..constants import IMG_SIZE, PIXEL_MEAN, PIXEL_STD, token_slice
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .repvit import RepViTEncoder


def stability_score(logits: torch.Tensor, threshold: float = 0.0, offset: float = 1.0) -> torch.Tensor:
    """IoU between ``logits > threshold + offset`` and ``logits > threshold - offset``.

    ``logits``: ``... x H x W`` -> ``...``. An empty loose mask scores 0.
    """
    inter = (logits > threshold + offset).sum((-1, -2), dtype=torch.int64)
    union = (logits > threshold - offset).sum((-1, -2), dtype=torch.int64)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter, dtype=torch.float))


class EdgeSam(nn.Module):
    """EdgeSAM. Sub-module names (``image_encoder``, ``prompt_encoder``, ``mask_decoder``)
    match the official checkpoints.
    """

    mask_threshold: float = 0.0
    image_size: int = IMG_SIZE

    def __init__(
        self,
        image_encoder: RepViTEncoder | None = None,
        prompt_encoder: PromptEncoder | None = None,
        mask_decoder: MaskDecoder | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder if image_encoder is not None else RepViTEncoder()
        self.prompt_encoder = prompt_encoder if prompt_encoder is not None else PromptEncoder()
        self.mask_decoder = mask_decoder if mask_decoder is not None else MaskDecoder()
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``B x 3 x h x w`` RGB in 0..255 (already longest-side resized) -> normalised,
        zero-padded ``B x 3 x 1024 x 1024``."""
        x = (images - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return nn.functional.pad(x, (0, self.image_size - w, 0, self.image_size - h))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised padded ``B x 3 x 1024 x 1024`` -> embeddings ``B x 256 x 64 x 64``."""
        return self.image_encoder(images)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        num_multimask_outputs: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run prompt encoder and mask decoder.

        Args:
            image_embeddings: ``1 x 256 x 64 x 64`` (shared) or ``B x 256 x 64 x 64``.
            point_coords: ``B x N x 2`` (x, y) in the 1024 input frame.
            point_labels: ``B x N`` (-2 ignore, -1 pad, 0 negative, 1 positive, 2/3 box corners).
            boxes: ``B x 4`` (x0, y0, x1, y1) in the 1024 input frame.
            mask_input: ``B x 1 x 256 x 256`` low-res logits of an earlier prediction.
            num_multimask_outputs: 1, 3 or 4 (see :func:`token_slice`).

        Returns:
            low-res logits ``B x M x 256 x 256`` and IoU-head scores ``B x M``.
        """
        token_slice(num_multimask_outputs)  # validate early
        points = None if point_coords is None else (point_coords, point_labels)
        sparse, dense = self.prompt_encoder(points, boxes, mask_input)
        return self.mask_decoder(
            image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense, num_multimask_outputs
        )

    @torch.no_grad()
    def fuse(self) -> EdgeSam:
        """Fold BatchNorm and RepVGG branches of the encoder (inference only)."""
        self.image_encoder.fuse()
        return self
