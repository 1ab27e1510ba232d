"""Meta's Segment Anything (ViT image encoder + prompt encoder + mask decoder): the teacher.

:func:`build_sam_vit` builds ``vit_b``/``vit_l``/``vit_h`` and loads an official SAM checkpoint
or a micro-sam checkpoint (flat, or a training checkpoint with the SAM state dict under
``"model_state"``, ``"model"`` or ``"state_dict"``, keys possibly prefixed ``"sam."``).
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import PIXEL_MEAN, PIXEL_STD
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .vit import VIT_CONFIGS, ImageEncoderViT, vit_config

logger = logging.getLogger(__name__)

__all__ = [
    "Sam",
    "VIT_CONFIGS",
    "build_sam_vit",
    "extract_sam_state_dict",
    "load_checkpoint_file",
]

#: Keys under which training checkpoints keep the model's state dict, in order of preference.
_WRAPPER_KEYS = ("model_state", "model", "state_dict")
#: Prefixes stripped from every key when all keys carry them (micro-sam, DataParallel, ...).
_PREFIXES = ("module.", "sam.", "model.")
#: Keys that some checkpoints carry but that are not learned parameters.
_IGNORED_KEYS = ("pixel_mean", "pixel_std")


class Sam(nn.Module):
    """SAM: ``image_encoder`` (ViT), ``prompt_encoder``, ``mask_decoder``.

    ``pixel_mean``/``pixel_std`` are non-persistent buffers (``3 x 1 x 1``), as in SAM, so the
    state dict holds only the three sub-modules.
    """

    image_format = "RGB"

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = PIXEL_MEAN,
        pixel_std: tuple[float, float, float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def img_size(self) -> int:
        """Side of the square model input (1024)."""
        return self.image_encoder.img_size

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise and zero-pad resized images.

        Args:
            images: ``B x 3 x h x w`` RGB on the 0-255 scale, longest side already resized to
                ``img_size`` (1024).

        Returns:
            ``B x 3 x 1024 x 1024``: ``(x - mean) / std``, zero-padded bottom/right.
        """
        x = (images.float() - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        if h > self.img_size or w > self.img_size:
            raise ValueError(f"image {h}x{w} is larger than the model input {self.img_size}")
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings.

        Args:
            images: ``B x 3 x 1024 x 1024``, normalised and padded (see :meth:`preprocess`).

        Returns:
            ``B x 256 x 64 x 64``.
        """
        return self.image_encoder(images)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        num_multimask_outputs: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for prompts in the 1024 frame.

        Args:
            image_embeddings: ``1 x 256 x 64 x 64`` (shared) or ``B x 256 x 64 x 64``.
            points: ``(coords B x N x 2 (x, y), labels B x N)`` or None.
            boxes: ``B x 4`` (x0, y0, x1, y1) or None.
            mask_input: ``B x 1 x 256 x 256`` low-res logits or None.
            num_multimask_outputs: 1 (single-mask token), 3 (multimask tokens) or 4 (all).

        Returns:
            low-res logits ``B x M x 256 x 256`` and IoU predictions ``B x M``.
        """
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        return self.mask_decoder(
            image_embeddings,
            self.prompt_encoder.get_dense_pe(),
            sparse,
            dense,
            num_multimask_outputs,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`embed`: ``B x 3 x 1024 x 1024`` -> ``B x 256 x 64 x 64``."""
        return self.embed(images)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def load_checkpoint_file(path: str | os.PathLike, allow_unsafe: bool = False) -> object:
    """``torch.load`` on the CPU, refusing arbitrary pickled objects unless ``allow_unsafe``.

    Raises:
        ValueError: the file needs full unpickling and ``allow_unsafe`` is False.
    """
    path = os.fspath(path)
    if allow_unsafe:
        logger.warning(
            "Loading %s with weights_only=False: this executes arbitrary pickled code; "
            "only do this for files from a trusted source.",
            path,
        )
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} contains arbitrary pickled objects (not only tensors and plain containers); "
            "it can be loaded only with allow_unsafe=True, which runs code from the file — "
            f"use it only for a trusted file. ({str(err).splitlines()[0]})"
        ) from err


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def extract_sam_state_dict(ckpt: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The flat SAM state dict inside a loaded checkpoint.

    Accepts a flat state dict or a dict holding one under ``"model_state"``, ``"model"`` or
    ``"state_dict"`` (micro-sam / generic training checkpoints). Prefixes ``"module."``,
    ``"sam."`` and ``"model."`` shared by every key are stripped; ``pixel_mean``/``pixel_std``
    are dropped.

    Raises:
        ValueError: no state dict found.
    """
    sd = ckpt
    if not _is_state_dict(sd) and isinstance(sd, Mapping):
        for key in _WRAPPER_KEYS:
            if key in sd and _is_state_dict(sd[key]):
                sd = sd[key]
                break
    if not _is_state_dict(sd):
        keys = list(ckpt)[:8] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ValueError(
            f"{source}: no SAM state dict found (expected a flat dict of tensors or one under "
            f"{list(_WRAPPER_KEYS)}); top level: {keys}"
        )
    sd = dict(sd)
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                stripped = True
    for k in _IGNORED_KEYS:
        sd.pop(k, None)
    return sd


def _load_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a ValueError naming the offending keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mis_shaped = [
        f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    problems = []
    for name, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("mis-shaped", mis_shaped),
    ):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            problems.append(f"{len(items)} {name}: {items[:5]}{more}")
    if problems:
        raise ValueError(f"{source} does not match the SAM model: " + "; ".join(problems))
    model.load_state_dict(dict(sd), strict=True)


def build_sam_vit(
    variant: str = "vit_b",
    checkpoint: str | os.PathLike | None = None,
    *,
    allow_unsafe: bool = False,
    use_sdpa: bool | None = None,
) -> Sam:
    """Build SAM with a ``vit_b``/``vit_l``/``vit_h`` image encoder.

    Args:
        variant: key of :data:`VIT_CONFIGS`.
        checkpoint: path to an official SAM or micro-sam checkpoint, or None (random init).
        allow_unsafe: load with ``weights_only=False`` (arbitrary pickles; logs a warning).
        use_sdpa: ``scaled_dot_product_attention`` in the ViT (None: auto, SDPA except on CPU).

    Returns:
        the model in eval mode, on the CPU.

    Raises:
        ValueError: unknown variant; unsafe pickle without ``allow_unsafe``; no state dict in the
            file; missing, unexpected or mis-shaped keys (strict loading).
    """
    cfg = vit_config(variant)
    model = Sam(
        image_encoder=ImageEncoderViT(**cfg, use_sdpa=use_sdpa),
        prompt_encoder=PromptEncoder(),
        mask_decoder=MaskDecoder(),
    )
    if checkpoint is not None:
        source = os.fspath(checkpoint)
        ckpt = load_checkpoint_file(source, allow_unsafe=allow_unsafe)
        _load_strict(model, extract_sam_state_dict(ckpt, source), source)
    return model.eval()
