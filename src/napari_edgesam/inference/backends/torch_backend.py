"""The PyTorch backend: our fastest verified torch inference path."""

from __future__ import annotations

import logging
import weakref

import numpy as np
import torch

from ...model.edge_sam import EdgeSam
from ...model.fast_decoder import decode_tokens, to_tokens
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
        self._last_tokens: tuple | None = None
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
    ) -> tuple[np.ndarray, np.ndarray]:
        """Low-res logits ``B x 4 x 256 x 256`` and IoU scores ``B x 4`` (on the compute thread)."""
        return compute_thread.run(self._decode, embeddings, point_coords, point_labels, mask_input)

    def _decode(self, embeddings, point_coords, point_labels, mask_input):
        dev = self.device
        with torch.inference_mode():
            coords = _tensor(point_coords, dev)
            labels = torch.as_tensor(np.asarray(point_labels), device=dev).round().to(torch.int64)
            pe = self.model.prompt_encoder
            sparse = pe.embed_points(coords, labels, pad=False)
            if self.fast_decoder:
                src = self._image_tokens(embeddings)
                if mask_input is not None:
                    src = src + to_tokens(pe.embed_masks(_tensor(mask_input, dev)))
                else:  # shared by the whole batch
                    src = src + pe.no_mask_embed.weight.reshape(1, 1, -1)
                h, w = pe.image_embedding_size
                masks, iou = self._decode_each(src, sparse, (h, w))
            else:
                emb = _tensor(embeddings, dev)
                if mask_input is not None:
                    dense = pe.embed_masks(_tensor(mask_input, dev))
                else:
                    h, w = pe.image_embedding_size
                    dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(coords.shape[0], -1, h, w)
                masks, iou = self.model.mask_decoder.predict_masks(emb, self.dense_pe, sparse, dense)
        return masks.cpu().numpy(), iou.cpu().numpy()

    def _decode_each(self, src: torch.Tensor, sparse: torch.Tensor, size: tuple[int, int]):
        """The fast decoder one prompt at a time: on CPU a batch of B prompts costs more per
        prompt than B single calls (B x 4 MB of image tokens per step leave the cache;
        measured 15 ms per prompt alone against 18-24 ms in batches of 2-64)."""
        decoder, pe = self.model.mask_decoder, self._pe_tokens()
        b = sparse.shape[0]
        if b == 1 or self.device.type != "cpu":
            return decode_tokens(decoder, src, pe, sparse, size)
        masks = torch.empty((b, decoder.num_mask_tokens, 4 * size[0], 4 * size[1]), device=src.device)
        ious = []
        for i in range(b):
            masks[i : i + 1], iou = decode_tokens(decoder, src if src.shape[0] == 1 else src[i : i + 1], pe,
                                                  sparse[i : i + 1], size)
            ious.append(iou)
        return masks, torch.cat(ious)

    def _pe_tokens(self) -> torch.Tensor:
        if self._pe_tok is None:
            self._pe_tok = to_tokens(self.dense_pe)
        return self._pe_tok

    def _image_tokens(self, embeddings: np.ndarray) -> torch.Tensor:
        """The embedding in token layout (float32 on the device), kept for the most recent
        embedding array: repeated clicks on one image skip the conversion (embedding arrays
        are never modified in place once computed)."""
        last = self._last_tokens
        if last is not None and last[0]() is embeddings:
            return last[1]
        tokens = to_tokens(_tensor(embeddings, self.device))
        try:
            self._last_tokens = (weakref.ref(embeddings), tokens)
        except TypeError:  # not weak-referenceable: no reuse
            self._last_tokens = None
        return tokens


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
