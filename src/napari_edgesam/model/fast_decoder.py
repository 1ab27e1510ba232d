"""An inference-only evaluation of :meth:`MaskDecoder.predict_masks` with ~2.5x fewer operations.

The mask decoder spends most of its time on the 4096 image tokens, not on the handful of prompt
tokens. Three exact rewrites move the work to the small side (same maths, different summation
order: results agree to float32 rounding, ~1e-6 relative):

* **token -> image attention** (few queries, 4096 keys): instead of projecting every image token
  to keys and values, fold the key projection into the queries and the value projection after
  the weighted sum. Per head ``h`` with ``q_h`` the projected queries (``T x d``)::

      logits_h = (q_h W_k,h) X_k^T / sqrt(d)          # the q_h . b_k,h term is constant
      out_h    = (softmax(logits_h) X_v) W_v,h^T + b_v,h   # along keys: softmax ignores it;
                                                           # rows of softmax sum to 1
* **image -> token attention** (4096 queries, few keys): fold the query projection into the
  keys and the output projection into the values::

      logits_h = X_q (W_q,h^T k_h^T) / sqrt(d) + (b_q,h . k_h) / sqrt(d)
      out      = sum_h softmax(logits_h) (v_h W_o,h^T) + b_o

  Every 4096-row product then has ``H * T`` (~56) columns instead of a 128-wide projection
  followed by attention.
* **output upscaling**: the two stride-2, kernel-2 transposed convolutions never overlap, so each
  of the 64 x 64 embedding cells becomes its own 4 x 4 output patch. Both run as plain matrix
  products in cell-major order (LayerNorm and GELU are per pixel), and only the final 4-mask
  logits are rearranged into image order.

The image tokens also stay ``B x HW x C`` throughout (no transposes), and without a mask prompt
the first block's image side is shared by all prompts of a batch (one product for all of them).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..constants import SKIPPED_LOGIT
from .mask_decoder import MaskDecoder
from .transformer import Attention, TwoWayAttentionBlock


def _heads(x: torch.Tensor, attn: Attention) -> torch.Tensor:
    """``B x T x (H*d)`` -> ``B x H x T x d``."""
    b, t, c = x.shape
    return x.view(b, t, attn.num_heads, c // attn.num_heads).transpose(1, 2)


def _token_to_image(attn: Attention, q_in: torch.Tensor, x_k: torch.Tensor, x_v: torch.Tensor) -> torch.Tensor:
    """``Attention(q_in, x_k, x_v)`` for few queries ``B x T x C`` and many keys ``Bx x N x C``
    (``Bx`` is ``B`` or 1, shared by all queries). Returns ``B x T x C``."""
    b, t, c = q_in.shape
    heads = attn.num_heads
    d = attn.internal_dim // heads
    q = _heads(attn.q_proj(q_in), attn)  # B H T d
    w_k = attn.k_proj.weight.view(heads, d, c)
    q_t = torch.matmul(q, w_k) * (d**-0.5)  # B H T C
    if x_k.shape[0] == 1 and not torch.jit.is_tracing():  # traced graphs keep a dynamic batch
        logits = q_t.reshape(b * heads * t, c) @ x_k[0].T  # (B H T) x N
        p = torch.softmax(logits, dim=-1)
        px = (p @ x_v[0]).view(b, heads, t, c)
    else:
        logits = torch.matmul(q_t.reshape(b, heads * t, c), x_k.transpose(1, 2))  # B (H T) N
        p = torch.softmax(logits, dim=-1)
        px = torch.matmul(p, x_v).view(b, heads, t, c)
    w_v = attn.v_proj.weight.view(heads, d, c)
    out = torch.matmul(px, w_v.transpose(1, 2)) + attn.v_proj.bias.view(heads, 1, d)  # B H T d
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, heads * d))


def _image_to_token(attn: Attention, x_q: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
    """``Attention(x_q, k_in, v_in)`` for many queries ``Bx x N x C`` (``Bx`` is ``B`` or 1) and
    few keys ``B x T x C``. Returns ``B x N x C``."""
    b, t, c = k_in.shape
    heads = attn.num_heads
    d = attn.internal_dim // heads
    scale = d**-0.5
    k = _heads(attn.k_proj(k_in), attn)  # B H T d
    v = _heads(attn.v_proj(v_in), attn)
    w_q = attn.q_proj.weight.view(heads, d, c)
    k_t = torch.matmul(k, w_q) * scale  # B H T C
    bias = torch.matmul(k, attn.q_proj.bias.view(heads, d, 1)) * scale  # B H T 1
    v_t = torch.matmul(v, attn.out_proj.weight.view(c, heads, d).permute(1, 2, 0))  # B H T C
    n = x_q.shape[1]
    # logits transposed (B x (H T) x N): the softmax then runs over a short, non-innermost axis,
    # which is much faster than a softmax over an innermost axis of length T.
    if x_q.shape[0] == 1 and not torch.jit.is_tracing():
        logits = (k_t.reshape(b * heads * t, c) @ x_q[0].T).view(b, heads, t, n)
    else:
        logits = torch.matmul(k_t.reshape(b, heads * t, c), x_q.transpose(1, 2)).view(b, heads, t, n)
    p = torch.softmax(logits + bias, dim=2).view(b, heads * t, n)
    return torch.baddbmm(attn.out_proj.bias.expand(b, n, c), p.transpose(1, 2), v_t.reshape(b, heads * t, c))


def _block(
    layer: TwoWayAttentionBlock, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One :class:`TwoWayAttentionBlock`; ``keys``/``key_pe`` may have batch 1 (shared)."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(queries, queries, queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q, q, queries)
    queries = layer.norm1(queries)
    k = keys + key_pe
    q = queries + query_pe
    queries = layer.norm2(queries + _token_to_image(layer.cross_attn_token_to_image, q, k, keys))
    queries = layer.norm3(queries + layer.mlp(queries))
    q = queries + query_pe
    keys = layer.norm4(keys + _image_to_token(layer.cross_attn_image_to_token, k, q, queries))
    return queries, keys


#: Image tokens per upscaling chunk: a chunk's intermediates (~1 MB) stay in the CPU cache,
#: which makes the memory-bound LayerNorm/GELU passes ~2x faster than on whole tensors.
UPSCALE_CHUNK = 1024


def _upscaled_masks(decoder: MaskDecoder, keys: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``output_upscaling`` and the hypernetwork product for image tokens ``B x (h*w) x C`` and
    hypernetwork weights ``B x M x C/8``. Returns mask logits ``B x M x 4h x 4w``."""
    conv1, norm, _, conv2, _ = decoder.output_upscaling
    b, n, c = keys.shape
    c1, c2 = conv1.out_channels, conv2.out_channels
    # ConvTranspose2d weight: Cin x Cout x kh x kw -> Cin x (kh kw Cout), cell-major outputs
    w1, b1 = conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1), conv1.bias.repeat(4)
    w2, b2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2), conv2.bias.repeat(4)
    m = hyper_in.shape[1]

    def patch_logits(tokens: torch.Tensor, hyper_t: torch.Tensor) -> torch.Tensor:
        y = torch.addmm(b1, tokens, w1).view(-1, c1)
        y = F.gelu(F.layer_norm(y, (c1,), norm.weight, norm.bias, norm.eps))
        y = F.gelu(torch.addmm(b2, y, w2)).view(-1, c2)
        return y @ hyper_t  # (tokens ki kj ki2 kj2) x M

    if torch.jit.is_tracing():  # one graph node per step, batch kept dynamic
        y = torch.addmm(b1, keys.reshape(-1, c), w1).view(-1, c1)
        y = F.gelu(F.layer_norm(y, (c1,), norm.weight, norm.bias, norm.eps))
        y = F.gelu(torch.addmm(b2, y, w2)).view(b, n * 16, c2)
        masks = torch.matmul(y, hyper_in.transpose(1, 2))
    else:
        masks = keys.new_empty(b, n * 16, m)
        for i in range(b):
            hyper_t = hyper_in[i].T
            for s in range(0, n, UPSCALE_CHUNK):
                e = min(n, s + UPSCALE_CHUNK)
                masks[i, s * 16 : e * 16] = patch_logits(keys[i, s:e], hyper_t)
    # cell-major (h w ki kj ki2 kj2) -> image order: row 4i + 2ki + ki2, column 4j + 2kj + kj2
    masks = masks.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return masks.reshape(b, m, 4 * h, 4 * w)


def to_tokens(grid: torch.Tensor) -> torch.Tensor:
    """``B x C x h x w`` -> contiguous ``B x (h*w) x C`` (row-major cells, as ``flatten(2)``)."""
    return grid.flatten(2).transpose(1, 2).contiguous()


def predict_masks_fast(
    decoder: MaskDecoder,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embeddings: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same as ``decoder.predict_masks(...)`` (all 4 masks ``B x 4 x 256 x 256`` and IoU scores
    ``B x 4``), computed with the rewrites described in the module docstring.

    Args:
        image_embeddings: ``1 x C x 64 x 64`` (shared by all prompts) or ``B x C x 64 x 64``.
        image_pe: ``1 x C x 64 x 64``.
        sparse_prompt_embeddings: ``B x N x C``.
        dense_prompt_embeddings: ``B x C x 64 x 64``, or ``1 x C x 1 x 1`` / ``1 x C x 64 x 64``
            when all prompts share it (no mask input): the first block then runs its image
            side once for the whole batch.
    """
    _, _, h, w = image_embeddings.shape
    src = to_tokens(image_embeddings + dense_prompt_embeddings)
    return decode_tokens(decoder, src, to_tokens(image_pe), sparse_prompt_embeddings, (h, w))


def decode_tokens(
    decoder: MaskDecoder,
    image_tokens: torch.Tensor,
    pe_tokens: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    grid_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`predict_masks_fast` on token-layout inputs (callers may cache them).

    Args:
        image_tokens: image embedding plus dense prompt embedding, ``1 x (h*w) x C`` (shared by
            all prompts) or ``B x (h*w) x C``, cells in row-major order (see :func:`to_tokens`).
        pe_tokens: the dense positional encoding, ``1 x (h*w) x C``.
        sparse_prompt_embeddings: ``B x N x C``.
        grid_size: ``(h, w)`` of the embedding grid (64, 64).
    Returns:
        mask logits ``B x 4 x 4h x 4w`` and IoU scores ``B x 4``.
    """
    transformer = decoder.transformer
    b = sparse_prompt_embeddings.shape[0]
    h, w = grid_size
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1)
    keys, queries = image_tokens, tokens
    for layer in transformer.layers:
        queries, keys = _block(layer, queries, keys, tokens, pe_tokens)
    attn = transformer.final_attn_token_to_image
    q = queries + tokens
    queries = transformer.norm_final_attn(queries + _token_to_image(attn, q, keys + pe_tokens, keys))
    if keys.shape[0] != b:
        keys = keys.expand(b, -1, -1)
    mask_tokens = queries[:, 1 : 1 + decoder.num_mask_tokens]
    hyper_in = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1)
    masks = _upscaled_masks(decoder, keys, hyper_in, h, w)
    return masks, decoder.iou_prediction_head(queries[:, 0])


# -- one prompt on a CPU: cached first block, fused passes over the image tokens ---------------
#: Image tokens per chunk of the single-prompt path: a chunk's tensors (1024 x 256 floats, 1 MB)
#: stay in the CPU's L2 cache from the product through softmax, residual, LayerNorm, the
#: positional add and the next attention's logits, instead of each step streaming 4 MB tensors
#: through memory.
TOKEN_CHUNK = 1024
#: ``needed_at`` skips the upscaling when every mask's logit at the pixel is below minus this.
NEEDED_MARGIN = 0.01


class ImageTokens:
    """What every single-prompt decode of one image shares (see :func:`decode_one`).

    The first block's image side does not depend on the prompt: its key, value and query
    projections of the image tokens are computed once here (``3 x N x C/2``), which makes that
    block's two attentions ~8x cheaper per prompt. Without ``shared`` (tokens used by one
    prompt only, e.g. with its own mask input) nothing is precomputed until :meth:`share`:
    that costs more than it saves once.

    Args:
        decoder: the mask decoder.
        image_tokens: ``1 x N x C`` image embedding plus dense prompt embedding.
        pe_tokens: ``1 x N x C`` dense positional encoding.
        shared: precompute the first block's projections.
    """

    def __init__(self, decoder: MaskDecoder, image_tokens: torch.Tensor, pe_tokens: torch.Tensor,
                 shared: bool = True) -> None:
        self.src = image_tokens[0].contiguous()
        self.pe = pe_tokens[0].contiguous()
        self.k1 = self.v1 = self.q1 = None
        if shared:
            self.share(decoder)

    def share(self, decoder: MaskDecoder) -> None:
        """Precompute the first block's projections (once; they pay off from the second prompt)."""
        if self.q1 is not None:
            return
        first = decoder.transformer.layers[0]
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        src_pe = self.src + self.pe
        n, heads = self.src.shape[0], t2i.num_heads
        #: ``H x N x d``: the first token->image attention's keys and values
        self.k1 = t2i.k_proj(src_pe).view(n, heads, -1).transpose(0, 1).contiguous()
        self.v1 = t2i.v_proj(self.src).view(n, heads, -1).transpose(0, 1).contiguous()
        #: ``N x (H d)``: the first image->token attention's queries
        self.q1 = i2t.q_proj(src_pe).contiguous()


def _heads2(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``T x (H*d)`` -> ``H x T x d``."""
    t, c = x.shape
    return x.view(t, heads, c // heads).transpose(0, 1)


def _t2i_cached(attn: Attention, q_in: torch.Tensor, image: ImageTokens) -> torch.Tensor:
    """The first block's ``Attention(q_in, src + pe, src)`` on the cached projections: ``T x C``."""
    heads = attn.num_heads
    q = _heads2(attn.q_proj(q_in), heads)  # H T d
    d = q.shape[-1]
    p = torch.softmax(torch.bmm(q, image.k1.transpose(1, 2)) * (d**-0.5), dim=-1)  # H T N
    out = torch.bmm(p, image.v1)  # H T d
    return attn.out_proj(out.transpose(0, 1).reshape(q_in.shape[0], heads * d))


def _t2i_query(attn: Attention, q_in: torch.Tensor) -> torch.Tensor:
    """Token->image queries with the key projection folded in: ``(H T) x C`` (scaled), so that
    the logits against image tokens ``x`` (plus pe) are ``q_t @ x.T`` (the query-key-bias term
    is constant along the keys and drops out of the softmax)."""
    t, c = q_in.shape
    heads = attn.num_heads
    q = _heads2(attn.q_proj(q_in), heads)
    d = q.shape[-1]
    return (torch.bmm(q, attn.k_proj.weight.view(heads, d, c)) * (d**-0.5)).reshape(heads * t, c)


def _t2i_finish(attn: Attention, logits: torch.Tensor, x_v: torch.Tensor, t: int) -> torch.Tensor:
    """Token->image attention from its logits ``(H T) x N`` and the values' input ``N x C``
    (value projection after the weighted sum): ``T x C``."""
    heads = attn.num_heads
    c = x_v.shape[1]
    d = attn.internal_dim // heads
    px = (torch.softmax(logits, dim=-1) @ x_v).view(heads, t, c)
    w_v = attn.v_proj.weight.view(heads, d, c)
    out = torch.baddbmm(attn.v_proj.bias.view(heads, 1, d), px, w_v.transpose(1, 2))  # H T d
    return attn.out_proj(out.transpose(0, 1).reshape(t, heads * d))


def _i2t_values(attn: Attention, v_tok: torch.Tensor) -> torch.Tensor:
    """Image->token values with the output projection (and its bias, ``b / H`` per head: each
    head's softmax weights sum to 1) folded in: ``(H T) x C``."""
    t, c = v_tok.shape
    heads = attn.num_heads
    v = _heads2(attn.v_proj(v_tok), heads)  # H T d
    d = v.shape[-1]
    v_t = torch.bmm(v, attn.out_proj.weight.view(c, heads, d).permute(1, 2, 0))  # H T C
    return (v_t + attn.out_proj.bias / heads).reshape(heads * t, c)


def _image_pass(logits_of, residual: torch.Tensor, v_t: torch.Tensor, norm: torch.nn.LayerNorm,
                pe: torch.Tensor, q_next: torch.Tensor, heads: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image->token attention with its residual and LayerNorm, and the next token->image
    attention's logits, in one pass over the image tokens.

    ``logits_of(s, e)``: the image->token logits ``(H T) x (e - s)`` of image tokens ``s:e``;
    ``residual``, ``pe``: ``N x C``; ``v_t``: folded values ``(H T) x C``; ``q_next``: the next
    attention's folded queries ``(H T') x C``. Returns the new image tokens ``N x C`` and the
    next logits ``(H T') x N``."""
    n, c = residual.shape
    t = v_t.shape[0] // heads
    keys = torch.empty_like(residual)
    logits_next = []
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        p = torch.softmax(logits_of(s, e).view(heads, t, e - s), dim=1).view(heads * t, e - s)
        y = F.layer_norm(torch.addmm(residual[s:e], p.T, v_t), (c,), norm.weight, norm.bias, norm.eps)
        keys[s:e] = y
        logits_next.append(q_next @ (y + pe[s:e]).T)
    return keys, torch.cat(logits_next, dim=1)


@functools.lru_cache(maxsize=64)
def _image_order(m: int, h: int, w: int, rows: int) -> torch.Tensor:
    """Flat indices that put cell-major logits, stored per chunk of ``rows`` cell rows as
    ``(h/rows) x m x (rows w 2 2 2 2)``, in image order ``m x 4h x 4w`` (for ``torch.take``:
    one gather, ~4x faster than a 7-dimensional permuted copy)."""
    idx = torch.arange(m * h * w * 16).view(h // rows, m, rows, w, 2, 2, 2, 2)
    # image row 4i + 2ki + ki2, column 4j + 2kj + kj2
    return idx.permute(1, 0, 2, 4, 6, 3, 5, 7).reshape(m, 4 * h, 4 * w).contiguous()


def _upscaled_masks_chunked(
    decoder: MaskDecoder, keys: torch.Tensor, hyper: torch.Tensor, h: int, w: int, chunk_rows: int
) -> torch.Tensor:
    """:func:`_upscaled_masks` for one prompt: ``keys`` ``(h*w) x C``, ``hyper`` ``M x C/8``;
    returns ``M x 4h x 4w``. Runs on chunks of ``chunk_rows`` cell rows, then puts the
    cell-major logits in image order with one gather."""
    conv1, norm, _, conv2, _ = decoder.output_upscaling
    n, c = keys.shape
    c1, c2 = conv1.out_channels, conv2.out_channels
    w1, b1 = conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1), conv1.bias.repeat(4)
    w2, b2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2), conv2.bias.repeat(4)
    m = hyper.shape[0]
    rows = min(h, max(1, chunk_rows))
    if h % rows:  # pad to whole chunks (extra rows are computed, then cut off)
        keys = torch.cat([keys, keys.new_zeros((rows - h % rows) * w, c)])
    hp = keys.shape[0] // w
    cells = keys.new_empty(hp // rows, m, rows * w * 16)
    for ci in range(hp // rows):
        y = torch.addmm(b1, keys[ci * rows * w : (ci + 1) * rows * w], w1).view(-1, c1)
        y = F.gelu(F.layer_norm(y, (c1,), norm.weight, norm.bias, norm.eps))
        y = F.gelu(torch.addmm(b2, y, w2)).view(-1, c2)
        torch.mm(hyper, y.T, out=cells[ci])  # M x (cells ki kj ki2 kj2)
    return torch.take(cells, _image_order(m, hp, w, rows).to(cells.device))[:, : 4 * h]


def _upscaled_window(decoder: MaskDecoder, keys: torch.Tensor, hyper: torch.Tensor, h: int, w: int,
                     cells: tuple[int, int, int, int], chunk: int) -> torch.Tensor:
    """The ``M x 4h x 4w`` mask logits inside the embedding cells ``(i0, i1, j0, j1)`` (rows,
    columns, end-exclusive) only; :data:`SKIPPED_LOGIT` elsewhere."""
    i0, i1, j0, j1 = cells
    out = keys.new_full((hyper.shape[0], 4 * h, 4 * w), SKIPPED_LOGIT)
    if i1 <= i0 or j1 <= j0:
        return out
    sub = keys.view(h, w, -1)[i0:i1, j0:j1].reshape((i1 - i0) * (j1 - j0), -1)
    out[:, 4 * i0 : 4 * i1, 4 * j0 : 4 * j1] = _upscaled_masks_chunked(
        decoder, sub, hyper, i1 - i0, j1 - j0, max(1, chunk // (j1 - j0)))
    return out


def _logits_at(decoder: MaskDecoder, keys: torch.Tensor, hyper: torch.Tensor, w: int, row: int, col: int) -> torch.Tensor:
    """The ``M`` mask logits at low-res pixel ``(row, col)`` alone: the upscaling of the one
    image token under it (``keys`` ``(h*w) x C``, ``hyper`` ``M x C/8``)."""
    conv1, norm, _, conv2, _ = decoder.output_upscaling
    c, c1, c2 = keys.shape[1], conv1.out_channels, conv2.out_channels
    w1, b1 = conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1), conv1.bias.repeat(4)
    w2, b2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2), conv2.bias.repeat(4)
    token = keys[(row // 4) * w + col // 4][None]
    y = torch.addmm(b1, token, w1).view(-1, c1)
    y = F.gelu(F.layer_norm(y, (c1,), norm.weight, norm.bias, norm.eps))
    y = F.gelu(torch.addmm(b2, y, w2)).view(-1, c2)  # rows (ki kj ki2 kj2)
    ki, ki2 = divmod(row % 4, 2)
    kj, kj2 = divmod(col % 4, 2)
    return hyper @ y[((ki * 2 + kj) * 2 + ki2) * 2 + kj2]


def decode_one(
    decoder: MaskDecoder,
    image: ImageTokens,
    sparse_prompt_embeddings: torch.Tensor,
    grid_size: tuple[int, int],
    mask_tokens: slice = slice(None),
    chunk: int = TOKEN_CHUNK,
    needed_at: tuple[int, int] | None = None,
    window: tuple[int, int, int, int] | None = None,
    need_iou: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """:func:`decode_tokens` for ONE prompt on a CPU (same maths, ~1e-6 relative).

    The first block's image side comes precomputed in ``image``; every later pass over the
    image tokens runs chunk by chunk, each fusing one image->token attention (with its residual
    and LayerNorm) with the logits of the next token->image attention (whose queries are known
    by then: a block's self-attention reads only the prompt tokens); only the masks of
    ``mask_tokens`` are upscaled.

    Args:
        image: the image's shared tokens (:class:`ImageTokens`).
        sparse_prompt_embeddings: ``1 x T x C``.
        grid_size: ``(h, w)`` of the embedding grid (64, 64).
        mask_tokens: which of the 4 mask tokens to upscale (all by default).
        needed_at: a low-res pixel ``(row, col)``: when no mask is positive there, the masks
            are not upscaled at all (the automatic mode's prompt must lie inside its mask;
            most grid points on background fail that, and the upscaling is ~45% of the cost).
        window: low-res pixels ``(r0, r1, c0, c1)`` (end-exclusive): the masks are upscaled
            only over the embedding cells that cover them (:data:`SKIPPED_LOGIT` elsewhere).
        need_iou: compute the IoU head's scores (callers that rank masks by stability do not
            read them: the final attention then also skips the IoU token).
    Returns:
        mask logits ``1 x M x 4h x 4w`` (``M`` masks of ``mask_tokens``; None when skipped by
        ``needed_at``) and the IoU scores of all 4 tokens, ``1 x 4`` (None without ``need_iou``).

    The final token->image attention runs only for the tokens read afterwards (the IoU token
    when ``need_iou``, the mask tokens of ``mask_tokens``): its rows are independent of each
    other, so the others' results are the same bits as with every row.
    """
    transformer = decoder.transformer
    layers = transformer.layers
    h, w = grid_size
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight, sparse_prompt_embeddings[0]], dim=0)
    t = tokens.shape[0]
    idx = range(decoder.num_mask_tokens)[mask_tokens]
    # the rows of the final attention that are read: IoU token (0), the chosen mask tokens
    read = ([0] if need_iou else []) + [1 + j for j in idx]
    used = torch.tensor(read) if read != list(range(len(read))) else slice(0, len(read))
    first = layers[0]
    cached = image.q1 is not None
    keys = image.src
    queries = _token_side(first, tokens, tokens)
    attn = first.cross_attn_token_to_image
    if cached:
        t2i = _t2i_cached(attn, queries + tokens, image)
    else:
        t2i = _t2i_finish(attn, _t2i_query(attn, queries + tokens) @ (keys + image.pe).T, keys, t)
    queries = first.norm2(queries + t2i)
    queries = first.norm3(queries + first.mlp(queries))
    for i, layer in enumerate(layers):
        i2t = layer.cross_attn_image_to_token
        heads = i2t.num_heads
        k_in = queries + tokens
        v_t = _i2t_values(i2t, queries)
        if i == 0 and cached:  # cached queries: logits = per-head q1_h k_h^T as one block-diagonal product
            kh = _heads2(i2t.k_proj(k_in), heads) * (i2t.internal_dim // heads) ** -0.5  # H T d
            k_bd = torch.block_diag(*kh.unbind(0))  # (H T) x (H d)
            q1 = image.q1
            logits_of = lambda s, e, k_bd=k_bd, q1=q1: k_bd @ q1[s:e].T  # noqa: E731
        else:  # folded: logits = k_t (keys + pe)^T + bias
            c = keys.shape[1]
            d = i2t.internal_dim // heads
            kh = _heads2(i2t.k_proj(k_in), heads)  # H T d
            k_t = (torch.bmm(kh, i2t.q_proj.weight.view(heads, d, c)) * d**-0.5).reshape(heads * t, c)
            bias = (torch.bmm(kh, i2t.q_proj.bias.view(heads, d, 1)) * d**-0.5).reshape(heads * t, 1)
            logits_of = (lambda s, e, k_t=k_t, bias=bias, keys=keys:  # noqa: E731
                         torch.addmm(bias, k_t, (keys[s:e] + image.pe[s:e]).T))
        if i + 1 < len(layers):
            nxt = layers[i + 1]
            q_side, attn = _token_side(nxt, queries, tokens), nxt.cross_attn_token_to_image
            q_in = q_side + tokens
        else:  # only the tokens read afterwards go through the final attention
            q_side, attn = queries[used], transformer.final_attn_token_to_image
            q_in = q_side + tokens[used]
        keys, logits = _image_pass(logits_of, keys, v_t, layer.norm4, image.pe, _t2i_query(attn, q_in), heads, chunk)
        if i + 1 < len(layers):
            queries = nxt.norm2(q_side + _t2i_finish(attn, logits, keys, t))
            queries = nxt.norm3(queries + nxt.mlp(queries))
        else:
            queries = transformer.norm_final_attn(q_side + _t2i_finish(attn, logits, keys, len(read)))
    mlps = decoder.output_hypernetworks_mlps
    first_mask = 1 if need_iou else 0  # row of the first chosen mask token in ``queries``
    hyper = torch.stack([mlps[j](queries[first_mask + r]) for r, j in enumerate(idx)])
    iou = decoder.iou_prediction_head(queries[:1]) if need_iou else None
    # skipped only when clearly negative (a margin over the rounding of a 1-row product)
    if needed_at is not None and not bool((_logits_at(decoder, keys, hyper, w, *needed_at) > -NEEDED_MARGIN).any()):
        return None, iou
    if window is not None:
        r0, r1, c0, c1 = window
        cells = (max(0, r0 // 4), min(h, -(-r1 // 4)), max(0, c0 // 4), min(w, -(-c1 // 4)))
        return _upscaled_window(decoder, keys, hyper, h, w, cells, chunk)[None], iou
    masks = _upscaled_masks_chunked(decoder, keys, hyper, h, w, max(1, chunk // w))
    return masks[None], iou


def _token_side(layer: TwoWayAttentionBlock, queries: torch.Tensor, query_pe: torch.Tensor) -> torch.Tensor:
    """The self-attention of one block on ``T x C`` prompt tokens."""
    q = queries[None]
    if layer.skip_first_layer_pe:
        return layer.norm1(layer.self_attn(q, q, q))[0]
    qp = q + query_pe[None]
    return layer.norm1(q + layer.self_attn(qp, qp, q))[0]
