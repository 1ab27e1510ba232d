"""Teachers behind one small interface: SAM ViT-B/L/H (official or micro-sam weights) or EdgeSAM.

:func:`decode_prompts` is the one decoding path shared by teacher and student: box corners are
passed as points labelled 2/3, and SAM's padding point is appended only when there is no box.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path

import torch
from torch import nn

from ..constants import LABEL_BOX_TOP_LEFT
from .config import TeacherConfig
from .student import set_input_size

logger = logging.getLogger(__name__)


def decode_prompts(
    model: nn.Module,
    embeddings: torch.Tensor,
    coords: torch.Tensor,
    labels: torch.Tensor,
    mask_input: torch.Tensor | None = None,
    num_outputs: int = 4,
    has_box: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model.prompt_encoder`` + ``model.mask_decoder`` (EdgeSam or Sam).

    Args:
        embeddings: ``N x 256 x g x g`` (or ``1 x ...`` shared by all prompts).
        coords: ``N x P x 2`` (x, y) in the model-input frame; box corners included as points.
        labels: ``N x P`` (-2 ignore, -1 pad, 0 negative, 1 positive, 2/3 box corners).
        mask_input: ``N x 1 x 4g x 4g`` low-res logits or None.
        num_outputs: 1 (token 0), 3 or 4 mask tokens.
        has_box: whether the prompts contain a box (no padding point then); None: look at labels.

    Returns:
        low-res logits ``N x num_outputs x 4g x 4g`` and IoU predictions ``N x num_outputs``.
    """
    pe = model.prompt_encoder
    if has_box is None:
        has_box = bool((labels == LABEL_BOX_TOP_LEFT).any())
    sparse = pe.embed_points(coords, labels, pad=not has_box)
    if mask_input is not None:
        dense = pe.embed_masks(mask_input)
    else:
        h, w = pe.image_embedding_size
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(coords.shape[0], -1, h, w)
    return model.mask_decoder(embeddings, pe.get_dense_pe(), sparse, dense, num_outputs)


class Teacher:
    """A frozen SAM-family model.

    Args:
        model: a ``Sam`` or ``EdgeSam`` (put in eval mode, gradients off).
        name: identity of the teacher (kind, variant, weights), recorded with cached embeddings.
        img_size: side of the padded input it receives (prompt frames are set accordingly).
    """

    def __init__(self, model: nn.Module, name: str, img_size: int = 1024) -> None:
        set_input_size(model, img_size)
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.img_size = img_size
        self.autocast_dtype: torch.dtype | None = None

    def to(self, device: torch.device | str) -> Teacher:
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _autocast(self):
        dev = self.device
        if self.autocast_dtype is None or dev.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast(dev.type, dtype=self.autocast_dtype)

    def drop_image_encoder(self) -> None:
        """Free the image encoder (when embeddings come from a cache); :meth:`embed` then fails."""
        self.model.image_encoder = None
        self._has_encoder = False

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``B x 3 x S x S`` normalised, zero-padded images -> ``B x 256 x S/16 x S/16`` (float32)."""
        if not getattr(self, "_has_encoder", True):
            raise RuntimeError("the teacher's image encoder was dropped (embeddings come from the cache)")
        with self._autocast():
            return self.model.image_encoder(images).float()

    @torch.no_grad()
    def decode(
        self,
        embeddings: torch.Tensor,
        coords: torch.Tensor,
        labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        has_box: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All 4 masks: (``N x 4 x S/4 x S/4`` logits, ``N x 4`` IoU predictions), float32.

        ``coords`` ``N x P x 2`` (x, y) in the input frame, ``labels`` ``N x P`` as in
        :func:`decode_prompts`.
        """
        with self._autocast():
            logits, iou = decode_prompts(
                self.model, embeddings, coords, labels, mask_input, num_outputs=4, has_box=has_box
            )
        return logits.float(), iou.float()


def _weights_id(path: str | None) -> str:
    if not path:
        return "random"
    p = Path(path)
    st = p.stat()
    digest = hashlib.sha256(f"{p.name}:{st.st_size}".encode()).hexdigest()[:12]
    return f"{p.name}:{st.st_size}:{digest}"


def build_teacher(cfg: TeacherConfig, img_size: int = 1024, seed: int = 0) -> Teacher:
    """The teacher described by ``cfg`` (on the CPU).

    ``kind="sam"``: ``build_sam_vit(cfg.variant, cfg.checkpoint)`` (official or micro-sam file);
    ``kind="edgesam"``: ``build_edge_sam(cfg.checkpoint)``. Without a checkpoint the weights are
    random (seeded; tests only) and a warning is logged.
    """
    if cfg.checkpoint and not Path(cfg.checkpoint).is_file():
        raise FileNotFoundError(f"teacher checkpoint not found: {cfg.checkpoint}")
    if not cfg.checkpoint:
        logger.warning("teacher %s has no checkpoint: using random weights (only useful for tests)", cfg.kind)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.kind == "sam":
            from ..model.sam import build_sam_vit

            model = build_sam_vit(cfg.variant, cfg.checkpoint, allow_unsafe=cfg.allow_unsafe)
            name = f"sam-{cfg.variant}"
        elif cfg.kind == "edgesam":
            from ..model.build import build_edge_sam

            model = build_edge_sam(cfg.checkpoint, allow_unsafe=cfg.allow_unsafe)
            name = "edgesam"
        else:
            raise ValueError(f"teacher.kind must be 'sam' or 'edgesam' to build a teacher, got {cfg.kind!r}")
    return Teacher(model, f"{name}@{_weights_id(cfg.checkpoint)}@{img_size}", img_size)


def teacher_identity(cfg: TeacherConfig, img_size: int) -> str:
    """The name :func:`build_teacher` would give, without building the model."""
    name = f"sam-{cfg.variant}" if cfg.kind == "sam" else "edgesam"
    return f"{name}@{_weights_id(cfg.checkpoint)}@{img_size}"
