"""The PyTorch backend: our fastest verified torch inference path."""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict

import numpy as np
import torch

from ...constants import SKIPPED_LOGIT
from ...model.edge_sam import EdgeSam
from ...model.fast_decoder import ImageTokens, decode_one, decode_tokens, to_tokens
from . import compute_thread

logger = logging.getLogger(__name__)



def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> cuda, then mps, then cpu; otherwise the named device (checked)."""
    if isinstance(device, torch.device):
        device = str(device)
    from . import check_device

    check_device(device)
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available; use 'cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was requested but MPS is not available; use 'cpu'")
    return dev


#: Embeddings whose decoder-side image tokens are kept (~10 MB each): two, so that alternating
#: between two images (e.g. two viewers or layers) does not recompute them on every call.
TOKEN_CACHE = 2


class TorchBackend:
    """Runs an :class:`EdgeSam` model.

    Args:
        model: the model (unfused; it is copied-by-reference and fused in place if ``fuse``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        fuse: fold BatchNorm and RepVGG branches (identical results, faster).
        channels_last: run the encoder in channels-last memory format (faster on CPU).
        encoder_dtype: ``torch.float32`` or ``torch.bfloat16`` (autocast on the encoder only).
        num_threads: torch intra-op threads (default: leave torch's choice).
        fast_decoder: decode with :func:`~napari_edgesam.model.fast_decoder.predict_masks_fast`
            (the same maths with ~2.5x fewer operations; agrees to ~1e-6) instead of the
            module-by-module ``predict_masks``.
        jit: on CPU, trace the folded encoder once (at the first 1024x1024 encode), freeze it and
            let ``torch.jit.optimize_for_inference`` fuse it with oneDNN (same results to ~2e-5,
            ~15-20% faster than eager channels-last here).
    """

    name = "torch"
    #: What ``encode`` returns (checked when an embedding is set from elsewhere, e.g. a cache).
    embedding_shape = (1, 256, 64, 64)
    provides_iou_scores = True
    supports_mask_input = True
    #: The optional keywords of :meth:`decode` this backend understands (hints of what the
    #: caller will use; a backend without them computes everything).
    decode_hints = frozenset({"needed_at", "windows", "mask_tokens", "need_iou"})

    def __init__(
        self,
        model: EdgeSam,
        device: str = "auto",
        *,
        fuse: bool = True,
        channels_last: bool = True,
        encoder_dtype: torch.dtype = torch.float32,
        num_threads: int | None = None,
        jit: bool = True,
        fast_decoder: bool = True,
    ) -> None:
        self.device = resolve_device(device)
        from . import check_num_threads

        if check_num_threads(num_threads) is not None:
            torch.set_num_threads(int(num_threads))
        model = model.eval()
        if fuse:
            model.fuse()
        self.model = model.to(self.device)
        self.channels_last = channels_last and self.device.type == "cpu"
        if self.channels_last:
            self.model.image_encoder.to(memory_format=torch.channels_last)
        self.encoder_dtype = encoder_dtype
        self.jit = jit and fuse and self.device.type == "cpu" and encoder_dtype == torch.float32
        self._jit_encoder = None
        self.fast_decoder = fast_decoder
        self._pe_tok: torch.Tensor | None = None
        self._token_cache: OrderedDict[int, tuple] = OrderedDict()
        self._dense_pe: torch.Tensor | None = None
        self._tapped = _TappedEncoder(self.model.image_encoder).eval()
        logger.debug("torch backend on %s (fuse=%s, threads=%d)", self.device, fuse, torch.get_num_threads())

    def with_decoder(self, prompt_encoder: torch.nn.Module, mask_decoder: torch.nn.Module) -> TorchBackend:
        """A backend that shares this one's image encoder (and its traced graph) and decodes
        with ``prompt_encoder`` and ``mask_decoder`` instead (e.g. adapted copies): its
        embeddings are this backend's, bit for bit. This backend is not changed."""
        model = EdgeSam(self.model.image_encoder, prompt_encoder.eval(), mask_decoder.eval())
        # a backend of its own (every decoder-side cache starts empty: they hold projections of
        # the decoder's weights); the encoder is taken as it is (not fused again, not re-traced)
        new = TorchBackend(model, str(self.device), fuse=False, channels_last=self.channels_last,
                           encoder_dtype=self.encoder_dtype, jit=False, fast_decoder=self.fast_decoder)
        new.jit = self.jit
        new._jit_encoder = self._jit_encoder
        return new

    @property
    def decodes_prompt_by_prompt(self) -> bool:
        """Whether a batch of prompts costs its size in single calls (the CPU fast path): the
        automatic grid then uses small fixed batches (see ``ONE_BY_ONE_POINTS_PER_BATCH``)."""
        return self.fast_decoder and self.device.type == "cpu"

    @property
    def dense_pe(self) -> torch.Tensor:
        if self._dense_pe is None:
            with torch.inference_mode():
                self._dense_pe = self.model.prompt_encoder.get_dense_pe()
        return self._dense_pe

    def encode_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """``B x 3 x 1024 x 1024`` tensor -> ``B x 256 x 64 x 64`` float32 tensor."""
        return self.encode_tensor_with_taps(x)[0]

    def encode_tensor_with_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The embedding and the backbone taps of one encoder pass.

        ``B x 3 x 1024 x 1024`` -> (``B x 256 x 64 x 64`` float32 embedding, ``{"stage1",
        "stage2", "stage3"}`` feature maps at strides 8, 16, 32). Every encode of this backend
        runs this one graph (traced on CPU), so the embedding is the same bits whether or not a
        granularity prior also reads the taps.
        """
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.jit and tuple(x.shape) == (1, 3, 1024, 1024):
                if self._jit_encoder is None:
                    self._jit_encoder = self._trace_encoder(x)
                outs = self._jit_encoder(x)
            elif self.encoder_dtype != torch.float32:
                with torch.autocast(self.device.type, dtype=self.encoder_dtype):
                    outs = self._tapped(x)
            else:
                outs = self._tapped(x)
        emb, s1, s2, s3 = outs
        return emb.float().contiguous(), {"stage1": s1, "stage2": s2, "stage3": s3}

    def _trace_encoder(self, example: torch.Tensor):
        traced = torch.jit.trace(self._tapped, example, check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))

    def encode(self, image: np.ndarray) -> np.ndarray:
        """``1 x 3 x 1024 x 1024`` float32 -> ``1 x 256 x 64 x 64`` (on the compute thread)."""
        return compute_thread.run(self._encode, image)

    def _encode(self, image: np.ndarray) -> np.ndarray:
        return self.encode_tensor(torch.from_numpy(np.ascontiguousarray(image, np.float32))).cpu().numpy()

    def decode(
        self,
        embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray | None = None,
        *,
        needed_at: np.ndarray | None = None,
        windows: np.ndarray | None = None,
        mask_tokens: slice | None = None,
        need_iou: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Low-res logits ``B x 4 x 256 x 256`` and IoU scores ``B x 4`` (on the compute thread).

        Hints (on CPU; elsewhere only ``mask_tokens`` is used):
            needed_at: ``B x 2`` low-res pixels ``(row, col)``, one per prompt: a prompt none of
                whose masks is positive at its pixel is not upscaled, and its logits come back
                as :data:`~napari_edgesam.constants.SKIPPED_LOGIT` everywhere (callers that keep
                only masks containing that pixel get the same answer).
            windows: ``B x 4`` low-res ``(r0, r1, c0, c1)`` (end-exclusive) per prompt: logits
                are computed only over the embedding cells covering the window (``SKIPPED_LOGIT``
                elsewhere).
            mask_tokens: only these of the 4 masks are computed and returned (``B x M x ...``).
            need_iou: False when the caller does not read the IoU scores (it ranks masks by
                stability): on the CPU fast path they come back as NaN (the final attention
                skips the IoU token); elsewhere they are computed anyway.
        """
        return compute_thread.run(self._decode, embeddings, point_coords, point_labels, mask_input,
                                  needed_at, windows, mask_tokens, need_iou)

    def _decode(self, embeddings, point_coords, point_labels, mask_input, needed_at=None, windows=None,
                mask_tokens=None, need_iou=True):
        dev = self.device
        sl = mask_tokens if mask_tokens is not None else slice(None)
        with torch.inference_mode():
            coords = _tensor(point_coords, dev)
            labels = torch.as_tensor(np.asarray(point_labels), device=dev).round().to(torch.int64)
            pe = self.model.prompt_encoder
            sparse = pe.embed_points(coords, labels, pad=False)
            if self.fast_decoder:
                h, w = pe.image_embedding_size
                b = sparse.shape[0]
                hints = {
                    "at": None if needed_at is None else np.asarray(needed_at, np.int64).reshape(b, 2),
                    "windows": None if windows is None else np.asarray(windows, np.int64).reshape(b, 4),
                    "sl": sl,
                    "iou": bool(need_iou),
                }
                if mask_input is None:  # the image side is shared by the whole batch
                    masks, iou = self._decode_shared(embeddings, sparse, (h, w), hints)
                else:
                    src = self._image_tokens(embeddings) + to_tokens(pe.embed_masks(_tensor(mask_input, dev)))
                    masks, iou = self._decode_each(src, sparse, (h, w), hints)
            else:
                emb = _tensor(embeddings, dev)
                if mask_input is not None:
                    dense = pe.embed_masks(_tensor(mask_input, dev))
                else:
                    h, w = pe.image_embedding_size
                    dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(coords.shape[0], -1, h, w)
                masks, iou = self.model.mask_decoder.predict_masks(emb, self.dense_pe, sparse, dense)
                masks = masks[:, sl]
        return masks.cpu().numpy(), iou.cpu().numpy()

    def _decode_shared(self, embeddings: np.ndarray, sparse: torch.Tensor, size: tuple[int, int], hints: dict):
        """Prompts without a mask input: on CPU one prompt at a time through
        :func:`~napari_edgesam.model.fast_decoder.decode_one` (chunked, cache-resident passes; the
        first block's image side is kept per embedding); elsewhere one batched call."""
        shared = self._shared_tokens(embeddings, sparse.shape[0])
        if self.device.type != "cpu":
            masks, iou = decode_tokens(self.model.mask_decoder, shared.src[None], shared.pe[None], sparse, size)
            return masks[:, hints["sl"]], iou
        return self._one_by_one(lambda i: shared, sparse, size, hints)

    def _one_by_one(self, image_of, sparse: torch.Tensor, size: tuple[int, int], hints: dict):
        """:func:`~napari_edgesam.model.fast_decoder.decode_one` for each prompt ``i`` on the image
        tokens ``image_of(i)``: on CPU a batch of B prompts costs more per prompt than B single
        calls (B x 4 MB of image tokens per step leave the cache)."""
        decoder = self.model.mask_decoder
        sl, at, windows = hints["sl"], hints["at"], hints["windows"]
        b, m = sparse.shape[0], len(range(decoder.num_mask_tokens)[sl])
        masks = torch.empty((b, m, 4 * size[0], 4 * size[1]))
        ious = []
        for i in range(b):
            pixel = None if at is None else (int(at[i, 0]), int(at[i, 1]))
            window = None if windows is None else tuple(int(v) for v in windows[i])
            out, iou = decode_one(decoder, image_of(i), sparse[i : i + 1], size, mask_tokens=sl,
                                  needed_at=pixel, window=window, need_iou=hints["iou"])
            if iou is None:  # not asked for
                iou = torch.full((1, decoder.num_mask_tokens), float("nan"))
            if out is None:
                masks[i] = SKIPPED_LOGIT
            else:
                masks[i : i + 1] = out
            ious.append(iou)
        return masks, torch.cat(ious)

    def _decode_each(self, src: torch.Tensor, sparse: torch.Tensor, size: tuple[int, int], hints: dict):
        """Prompts with image tokens of their own ``B x N x C`` (a mask input each)."""
        decoder, pe = self.model.mask_decoder, self._pe_tokens()
        if self.device.type != "cpu":
            masks, iou = decode_tokens(decoder, src, pe, sparse, size)
            return masks[:, hints["sl"]], iou
        return self._one_by_one(lambda i: ImageTokens(decoder, src[i : i + 1], pe, shared=False), sparse, size, hints)

    def _pe_tokens(self) -> torch.Tensor:
        if self._pe_tok is None:
            self._pe_tok = to_tokens(self.dense_pe)
        return self._pe_tok

    def _image_tokens(self, embeddings: np.ndarray) -> torch.Tensor:
        """The embedding in token layout ``1 x N x C`` (float32 on the device)."""
        return to_tokens(_tensor(embeddings, self.device))

    def _shared_tokens(self, embeddings: np.ndarray, prompts: int = 1) -> ImageTokens:
        """The image side shared by every prompt without a mask input (tokens plus the no-mask
        embedding, positional encoding), kept for the :data:`TOKEN_CACHE` most recent embedding
        arrays (embedding arrays are never modified in place once computed). The first block's
        projections are added from the second prompt on an embedding (the first of a batch of
        several): a single decode on a fresh embedding (3D propagation) does not pay for them."""
        cache = self._token_cache
        key = id(embeddings)
        hit = cache.get(key)
        cpu = self.device.type == "cpu"  # the batched (GPU) path does not use the projections
        if hit is not None and hit[0]() is embeddings:
            cache.move_to_end(key)
            shared = hit[1]
            if cpu:
                shared.share(self.model.mask_decoder)
            return shared
        no_mask = self.model.prompt_encoder.no_mask_embed.weight.reshape(1, 1, -1)
        shared = ImageTokens(self.model.mask_decoder, self._image_tokens(embeddings) + no_mask, self._pe_tokens(),
                             shared=cpu and prompts > 1)
        try:
            cache[key] = (weakref.ref(embeddings), shared)
        except TypeError:  # not weak-referenceable: no reuse
            return shared
        while len(cache) > TOKEN_CACHE:
            cache.popitem(last=False)
        return shared


class _TappedEncoder(torch.nn.Module):
    """The image encoder returning its backbone taps beside the embedding (one graph for the
    predictor and the granularity prior)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor):
        feats = self.encoder.forward_features(x)
        emb = self.encoder.neck_forward(feats["stage2"], feats["stage3"])
        return emb, feats["stage1"], feats["stage2"], feats["stage3"]


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """float32 tensor sharing memory with ``array`` when possible (copies read-only arrays,
    e.g. fp16 or read-only cached embeddings, which torch cannot wrap)."""
    a = np.asarray(array)
    if a.dtype != np.float32 or not a.flags.writeable or not a.flags.c_contiguous:
        a = np.array(a, np.float32, order="C")
    return torch.from_numpy(a).to(device)
