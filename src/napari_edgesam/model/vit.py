"""SAM's ViT image encoder (ViT-B/L/H), the teacher of the EdgeSAM distillation.

The layout (module and parameter names) matches Meta's segment-anything checkpoints, so an
official ``sam_vit_*.pth`` state dict loads into :class:`ImageEncoderViT` under the
``image_encoder.`` prefix.

Shapes for the standard 1024 x 1024 input (``patch_size`` 16, so a 64 x 64 token grid):

* input: ``B x 3 x 1024 x 1024`` (normalised, zero-padded)
* tokens inside the trunk: ``B x 64 x 64 x C`` (channels last), ``C = embed_dim``
* output: ``B x 256 x 64 x 64``

Windowing and decomposed relative positions: :mod:`.vit_windows`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock
from .vit_windows import (
    decomposed_rel_pos_terms,
    key_position_one_hot,
    window_partition,
    window_unpartition,
)

#: Hyper-parameters of the three published SAM image encoders.
VIT_CONFIGS: dict[str, dict] = {
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": (2, 5, 8, 11)},
    "vit_l": {
        "embed_dim": 1024,
        "depth": 24,
        "num_heads": 16,
        "global_attn_indexes": (5, 11, 17, 23),
    },
    "vit_h": {
        "embed_dim": 1280,
        "depth": 32,
        "num_heads": 16,
        "global_attn_indexes": (7, 15, 23, 31),
    },
}


def vit_config(variant: str) -> dict:
    """The :data:`VIT_CONFIGS` entry of ``variant`` (``"vit_b"``, ``"vit_l"`` or ``"vit_h"``)."""
    try:
        return dict(VIT_CONFIGS[variant])
    except KeyError:
        raise ValueError(
            f"unknown SAM ViT variant {variant!r}; expected one of {sorted(VIT_CONFIGS)}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: ``B x 3 x H x W`` -> ``B x H/p x W/p x C``."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Attention(nn.Module):
    """Multi-head self-attention over a token grid with decomposed relative positions.

    Args:
        dim: token width ``C``.
        num_heads: number of heads; ``head_dim = C // num_heads``.
        qkv_bias: whether the fused ``qkv`` projection has a bias.
        use_rel_pos: add the decomposed relative position bias.
        input_size: ``(h, w)`` of the grid attended over (the window, or the whole grid for
            global attention); sizes the tables ``rel_pos_h`` ``(2h-1) x head_dim`` and
            ``rel_pos_w`` ``(2w-1) x head_dim``.
        use_sdpa: compute with ``F.scaled_dot_product_attention`` (True) or with an explicit
            ``softmax(q k^T) v`` (False); None (default) picks SDPA except on the CPU, where the
            explicit product is faster. Both give the same result within float rounding.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: tuple[int, int] | None = None,
        use_sdpa: bool | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.use_sdpa = use_sdpa
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required when use_rel_pos is True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``B x H x W x C`` -> ``B x H x W x C``."""
        b, h, w, c = x.shape
        nh, hd = self.num_heads, self.head_dim
        # B x HW x 3 x heads x hd -> 3 x (B*heads) x HW x hd
        qkv = self.qkv(x).reshape(b, h * w, 3, nh, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * nh, h * w, hd).unbind(0)

        if self.use_rel_pos:
            # q k^T * scale + bias == [q * scale, term_h, term_w] [k, onehot_h, onehot_w]^T
            term_h, term_w = decomposed_rel_pos_terms(
                q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w)
            )
            q = torch.cat([q * self.scale, term_h, term_w], dim=-1)
            onehot = key_position_one_hot((h, w), k.dtype, k.device)
            k = torch.cat([k, onehot.expand(b * nh, -1, -1)], dim=-1)
        else:
            q = q * self.scale

        use_sdpa = self.use_sdpa if self.use_sdpa is not None else q.device.type != "cpu"
        if use_sdpa:
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        else:
            out = (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v

        out = out.view(b, nh, h, w, hd).permute(0, 2, 3, 1, 4).reshape(b, h, w, c)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block; windowed attention when ``window_size > 0``.

    Args:
        dim: token width ``C``.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / ``C``.
        qkv_bias: bias of the ``qkv`` projection.
        use_rel_pos: decomposed relative positions in attention.
        window_size: window side (0 = global attention over the whole grid).
        input_size: token grid ``(h, w)`` (sizes the relative position tables of global blocks).
        use_sdpa: see :class:`Attention`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
        use_sdpa: bool | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=input_size if window_size == 0 else (window_size, window_size),
            use_sdpa=use_sdpa,
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``B x H x W x C`` -> ``B x H x W x C``."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            # Padded tokens are zeros and take part in attention, exactly as in SAM.
            x, pad_hw = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, pad_hw, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """SAM's ViT image encoder.

    Args:
        img_size: input side (1024).
        patch_size: patch side (16), so the token grid is ``img_size / patch_size`` (64).
        in_chans: input channels (3).
        embed_dim / depth / num_heads: trunk width, number of blocks, attention heads.
        mlp_ratio: MLP hidden width / ``embed_dim`` (4).
        out_chans: channels of the neck output (256).
        qkv_bias: bias in the fused ``qkv`` projections (True).
        use_abs_pos: learned absolute position embedding ``pos_embed`` ``1 x 64 x 64 x C``.
        use_rel_pos: decomposed relative positions in every attention (True).
        window_size: window side of the windowed blocks (14).
        global_attn_indexes: the blocks that attend over the whole grid.
        use_sdpa: ``F.scaled_dot_product_attention`` in attention: True, False or None (auto:
            SDPA except on the CPU), see :class:`Attention`.

    ``forward``: ``B x 3 x 1024 x 1024`` (normalised, padded) -> ``B x 256 x 64 x 64``.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
        use_sdpa: bool | None = None,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        global_set = set(global_attn_indexes)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_set else window_size,
                input_size=(grid, grid),
                use_sdpa=use_sdpa,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @classmethod
    def from_variant(cls, variant: str = "vit_b", **kwargs) -> ImageEncoderViT:
        """Build ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``; ``kwargs`` override the config."""
        cfg = vit_config(variant)
        cfg.update(kwargs)
        return cls(**cfg)

    def set_use_sdpa(self, enabled: bool | None) -> None:
        """Switch every attention to SDPA (True), the explicit softmax (False) or auto (None)."""
        for blk in self.blocks:
            blk.attn.use_sdpa = None if enabled is None else bool(enabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``B x 3 x H x W`` -> ``B x out_chans x H/16 x W/16`` (64 x 64 at 1024)."""
        x = self.patch_embed(x)  # B x h x w x C
        if self.pos_embed is not None:
            pos = self.pos_embed
            if pos.shape[1:3] != x.shape[1:3]:
                # Only for non-standard input sizes; SAM itself always runs at 1024.
                pos = F.interpolate(
                    pos.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bicubic", align_corners=False
                ).permute(0, 2, 3, 1)
            x = x + pos
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))
