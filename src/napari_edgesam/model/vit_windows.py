"""Windowing and decomposed relative positions of SAM's ViT encoder (for :mod:`.vit`).

Token grids are channels last, ``B x H x W x C``; a window side is ``ws``; relative-position
tables are ``(2 * size - 1) x head_dim``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Windowing helpers
# ---------------------------------------------------------------------------------------------


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split a token grid into non-overlapping windows, zero-padding bottom/right first.

    Args:
        x: ``B x H x W x C``.
        window_size: window side ``ws``.

    Returns:
        windows ``(B * nh * nw) x ws x ws x C`` and the padded size ``(Hp, Wp)``.
    """
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        windows: ``(B * nh * nw) x ws x ws x C``.
        window_size: window side ``ws``.
        pad_hw: padded grid size ``(Hp, Wp)``.
        hw: original grid size ``(H, W)``.

    Returns:
        ``B x H x W x C`` with the padding removed.
    """
    hp, wp = pad_hw
    h, w = hw
    nh, nw = hp // window_size, wp // window_size
    b = windows.shape[0] // (nh * nw)
    x = windows.view(b, nh, nw, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


# ---------------------------------------------------------------------------------------------
# Relative position embeddings
# ---------------------------------------------------------------------------------------------


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative position embeddings for every (query, key) pair along one axis.

    Args:
        q_size: number of query positions along the axis.
        k_size: number of key positions along the axis.
        rel_pos: the learned table ``L x head_dim``; resized linearly when ``L`` differs from
            ``2 * max(q_size, k_size) - 1``.

    Returns:
        ``q_size x k_size x head_dim``.
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        # L x D -> 1 x D x L, linear resize along L, back to L' x D.
        rel_pos = (
            F.interpolate(rel_pos.t().unsqueeze(0), size=max_rel_dist, mode="linear").squeeze(0).t()
        )
    # Scale the coordinates of the shorter side so both span the same range.
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    offset = (k_size - 1) * max(q_size / k_size, 1.0)
    idx = (q_coords - k_coords + offset).long()
    return rel_pos[idx]


def decomposed_rel_pos_terms(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of SAM's decomposed relative position bias (MViTv2 style).

    The attention bias is ``bias[n, (i, j), (k, l)] = term_h[n, (i, j), k] + term_w[n, (i, j), l]``
    with ``term_h = q[n, (i, j)] . Rh[i, k]`` and ``term_w = q[n, (i, j)] . Rw[j, l]``.

    Args:
        q: unscaled queries ``N x (qh * qw) x D`` (``N`` = batch x heads).
        rel_pos_h / rel_pos_w: tables ``Lh x D`` / ``Lw x D``.
        q_size: query grid ``(qh, qw)``.
        k_size: key grid ``(kh, kw)``.

    Returns:
        ``term_h`` ``N x (qh * qw) x kh`` and ``term_w`` ``N x (qh * qw) x kw``.
    """
    qh, qw = q_size
    kh, kw = k_size
    r_h = get_rel_pos(qh, kh, rel_pos_h).to(q.dtype)  # qh x kh x D
    r_w = get_rel_pos(qw, kw, rel_pos_w).to(q.dtype)  # qw x kw x D
    n, _, d = q.shape
    r_q = q.reshape(n, qh, qw, d)
    term_h = torch.einsum("nhwd,hkd->nhwk", r_q, r_h).reshape(n, qh * qw, kh)
    term_w = torch.einsum("nhwd,wkd->nhwk", r_q, r_w).reshape(n, qh * qw, kw)
    return term_h, term_w


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> torch.Tensor:
    """The full additive bias ``N x (qh * qw) x (kh * kw)`` (see :func:`decomposed_rel_pos_terms`).

    Reference formulation; the encoder itself uses the cheaper augmented-key form
    (:func:`key_position_one_hot`).
    """
    term_h, term_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, q_size, k_size)
    n, lq, kh = term_h.shape
    kw = term_w.shape[-1]
    return (term_h[:, :, :, None] + term_w[:, :, None, :]).reshape(n, lq, kh * kw)


def key_position_one_hot(
    k_size: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``(kh * kw) x (kh + kw)``: row ``(k, l)`` is one-hot at ``k`` and at ``kh + l``.

    Appending these columns to the keys and ``[term_h, term_w]`` to the (scaled) queries turns
    ``q k^T * scale + bias`` into a single matrix product, without materialising the bias.
    """
    kh, kw = k_size
    rows = torch.arange(kh, device=device).repeat_interleave(kw)
    cols = torch.arange(kw, device=device).repeat(kh)
    return torch.cat([F.one_hot(rows, kh), F.one_hot(cols, kw)], dim=1).to(dtype)
