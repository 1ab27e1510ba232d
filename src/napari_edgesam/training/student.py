"""The student: EdgeSAM at a chosen input size, its initial weights and which parts train."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from torch import nn

from ..model.build import extract_state_dict, load_state_dict_strict, read_checkpoint
from ..model.edge_sam import EdgeSam
from ..model.prompt_encoder import PromptEncoder
from ..model.repvit import RepViTBlock
from .checkpoint import is_training_checkpoint
from .config import ModelConfig

logger = logging.getLogger(__name__)


def set_input_size(model: nn.Module, img_size: int) -> None:
    """Make a SAM-family model (EdgeSam or Sam) take ``img_size x img_size`` inputs.

    Only plain attributes change (the prompt encoder's frames and the mask-input size); the
    state dict is the same for every size. The image encoders are convolutional (RepViT) or
    interpolate their position embedding (ViT), so embeddings become ``img_size/16`` square.
    """
    grid = img_size // 16
    pe: PromptEncoder = model.prompt_encoder
    pe.input_image_size = (img_size, img_size)
    pe.image_embedding_size = (grid, grid)
    pe.mask_input_size = (4 * grid, 4 * grid)
    if isinstance(model, EdgeSam):
        model.image_size = img_size


def _zero_init_residual_bn(model: EdgeSam) -> None:
    """Start every residual MLP of the encoder as the identity (last BN weight 0), as RepViT does."""
    for module in model.image_encoder.modules():
        if isinstance(module, RepViTBlock):
            last = module.channel_mixer.m[-1]
            nn.init.zeros_(last.bn.weight)


def build_student(cfg: ModelConfig) -> EdgeSam:
    """EdgeSAM for ``cfg.img_size`` inputs, with ``cfg.checkpoint`` loaded strictly if given.

    ``cfg.checkpoint`` may be an official/exported EdgeSAM ``.pth`` (flat state dict) or one of
    our training checkpoints (its ``"model"`` entry is used).
    """
    grid = cfg.img_size // 16
    model = EdgeSam(
        prompt_encoder=PromptEncoder(
            image_embedding_size=(grid, grid), input_image_size=(cfg.img_size, cfg.img_size)
        )
    )
    model.image_encoder.upsample_mode = cfg.upsample_mode
    set_input_size(model, cfg.img_size)
    if cfg.checkpoint:
        load_student_weights(model, cfg.checkpoint)
    else:
        _zero_init_residual_bn(model)
    return model


def load_student_weights(model: EdgeSam, path: str | os.PathLike) -> None:
    """Load EdgeSAM weights strictly from an official/exported ``.pth`` or a training checkpoint."""
    obj = read_checkpoint(path)
    if is_training_checkpoint(obj):
        obj = obj["model"]
    sd = extract_state_dict(obj, f"checkpoint {path}")
    load_state_dict_strict(model, sd, f"checkpoint {path}")
    logger.info("student initialised from %s", path)


def copy_decoder_from(student: EdgeSam, teacher_model: nn.Module) -> None:
    """Copy the teacher's prompt encoder and mask decoder weights into the student (phase 2)."""
    student.prompt_encoder.load_state_dict(teacher_model.prompt_encoder.state_dict(), strict=True)
    student.mask_decoder.load_state_dict(teacher_model.mask_decoder.state_dict(), strict=True)


def configure_trainable(model: EdgeSam, train_encoder: bool, train_decoder: bool,
                        train_mask_input: bool = False) -> None:
    """Set ``requires_grad``: the prompt encoder is frozen except, with ``train_mask_input``,
    its mask path (``mask_downscaling``)."""
    model.image_encoder.requires_grad_(train_encoder)
    model.mask_decoder.requires_grad_(train_decoder)
    model.prompt_encoder.requires_grad_(False)
    model.prompt_encoder.mask_downscaling.requires_grad_(train_mask_input)


def set_train_mode(model: EdgeSam, train_encoder: bool, train_decoder: bool, freeze_bn: bool,
                   train_mask_input: bool = False) -> None:
    """Train mode for the trained parts; frozen parts (and BN with ``freeze_bn``) in eval mode."""
    model.train()
    model.prompt_encoder.eval()
    if train_mask_input:
        model.prompt_encoder.mask_downscaling.train()
    if not train_encoder:
        model.image_encoder.eval()
    if not train_decoder:
        model.mask_decoder.eval()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups over the trainable parameters: no decay for biases, norms and token tables."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or _is_token_table(name):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _is_token_table(name: str) -> bool:
    return any(k in name for k in ("iou_token", "mask_tokens", "point_embeddings", "not_a_point_embed", "no_mask_embed"))


def trainable_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    return (p for p in model.parameters() if p.requires_grad)
