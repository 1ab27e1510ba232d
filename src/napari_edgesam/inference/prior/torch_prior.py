"""A box head on the torch backend's own encoder: proposals from the taps of the same encoder pass.

:class:`TorchBoxPrior` shares the :class:`~napari_edgesam.inference.backends.torch_backend.TorchBackend`'s
(fused, traced) encoder graph through ``encode_tensor_with_taps``, so the embedding and the
proposals come from ONE encoder pass and the embedding equals the backend's ``encode``. This
module does not import torch at module level.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


class TorchBoxPrior:
    """A box head on a torch image encoder (usually the :class:`TorchBackend`'s own, fused).

    Args:
        head: a :class:`~napari_edgesam.model.box_head.BoxHead`.
        encoder: the RepViT encoder the head was trained on.
        device, channels_last, encoder_dtype: as the backend's (see :meth:`from_backend`).
        meta: the head file's metadata.
    """

    name = "torch"

    def __init__(self, head, encoder, *, device=None, channels_last: bool = False, encoder_dtype=None,
                 meta: dict | None = None) -> None:
        import torch

        self.encoder = encoder
        self.device = device if device is not None else next(encoder.parameters()).device
        self.head = head.eval().to(self.device)
        self.channels_last = channels_last
        self.encoder_dtype = encoder_dtype if encoder_dtype is not None else torch.float32
        self.meta = dict(meta or {})
        #: The torch backend whose encoder graph computes the features (set by
        #: :meth:`from_backend`): the prior then reads the taps of the backend's own encoder
        #: pass, so embeddings are identical with and without the prior.
        self.backend = None

    @classmethod
    def from_backend(cls, backend, head, meta: dict | None = None, *, check_encoder: bool = True) -> TorchBoxPrior:
        """Share ``backend``'s encoder (a :class:`TorchBackend`); with ``check_encoder`` a head
        trained on another encoder (per ``meta["encoder_signature"]``) raises ``ValueError``.
        With an encoder in another runtime and a torch decoder (``SplitBackend``), the head
        runs on the torch model's float32 encoder, in a pass of its own."""
        torch_side = getattr(backend, "decoder_backend", None)
        if not hasattr(backend, "device") and hasattr(torch_side, "encode_tensor_with_taps"):
            backend = torch_side
        model = getattr(backend, "model", None)
        if model is None or not hasattr(model, "image_encoder"):
            raise ValueError(f"a torch box head needs the torch backend's encoder, not the {getattr(backend, 'name', backend)!r} "
                             "backend: export the head with its encoder to ONNX (export_box_head(..., encoder=...))")
        prior = cls(head, model.image_encoder, device=backend.device, channels_last=backend.channels_last,
                    encoder_dtype=backend.encoder_dtype, meta=meta)
        if hasattr(backend, "encode_tensor_with_taps"):
            prior.backend = backend
        if check_encoder:
            prior.check_encoder()
        trained = prior.meta.get("img_size", 1024)
        if trained != 1024:
            logger.warning("this box head was trained at input size %s, the predictor uses 1024: "
                           "proposals will be poor", trained)
        return prior

    def check_encoder(self) -> None:
        """``ValueError`` if the head's recorded encoder signature does not match the encoder."""
        from ...model.box_head import encoder_signature, signatures_match

        expected = self.meta.get("encoder_signature")
        if expected and not signatures_match(encoder_signature(self.encoder), expected):
            raise ValueError(f"this box head was trained on another encoder ({self.meta.get('encoder', 'unknown')!r}); "
                             "use the prior trained for this model, or pass check_encoder=False")

    def _embed_and_features(self, image: np.ndarray):
        """(embedding tensor or None, backbone taps) of one encoder pass."""
        import torch

        x = torch.as_tensor(np.ascontiguousarray(image, np.float32), device=self.device)
        if self.backend is not None:
            return self.backend.encode_tensor_with_taps(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.encoder_dtype != torch.float32:
            with torch.autocast(self.device.type, dtype=self.encoder_dtype):
                return None, self.encoder.forward_features(x)
        return None, self.encoder.forward_features(x)

    def _detect(self, feats, input_size) -> tuple[np.ndarray, np.ndarray]:
        feats = {k: v.float().contiguous() for k, v in feats.items()}
        boxes, scores = self.head.detect(feats, [tuple(input_size)])[0]
        return boxes.cpu().numpy(), scores.cpu().numpy()

    def propose(self, image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        from ..backends import compute_thread

        return compute_thread.run(self._propose, image, input_size)

    def _propose(self, image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            return self._detect(self._embed_and_features(image)[1], input_size)

    def embed_and_propose(self, image: np.ndarray, input_size: tuple[int, int]):
        """One encoder pass -> (embedding ``1 x 256 x 64 x 64`` float32, boxes, scores); the
        embedding equals the backend's ``encode(image)``. Runs on the torch compute thread."""
        from ..backends import compute_thread

        return compute_thread.run(self._embed_and_propose, image, input_size)

    def _embed_and_propose(self, image: np.ndarray, input_size: tuple[int, int]):
        import torch

        with torch.inference_mode():
            emb, feats = self._embed_and_features(image)
            if emb is None:
                if self.encoder_dtype != torch.float32:
                    with torch.autocast(self.device.type, dtype=self.encoder_dtype):
                        emb = self.encoder.neck_forward(feats["stage2"], feats["stage3"])
                else:
                    emb = self.encoder.neck_forward(feats["stage2"], feats["stage3"])
            boxes, scores = self._detect(feats, input_size)
        return emb.float().contiguous().cpu().numpy(), boxes, scores

    def shares_encoder_with(self, backend) -> bool:
        """Whether :meth:`embed_and_propose` gives ``backend``'s embedding (the same encoder).
        A ``SplitBackend``'s embeddings are its encoder backend's (its ``model`` is the decoder
        side's: a torch decoder beside another runtime's encoder does not share it)."""
        backend = getattr(backend, "encoder_backend", backend)
        model = getattr(backend, "model", None)
        return model is not None and getattr(model, "image_encoder", None) is self.encoder
