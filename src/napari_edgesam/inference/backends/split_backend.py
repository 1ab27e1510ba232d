"""One backend's encoder with another's decoder, as one backend.

The fastest encoder and the fastest decoder on a CPU are not in the same runtime: OpenVINO runs
the (int8) encoder in a fraction of torch's time, while torch's fast decoder (prompt-side folded
attention, per-embedding image-side cache, chosen masks only) answers a click in less time than
the ONNX decoder in OpenVINO or onnxruntime (``benchmarks/bench_core.py``). ``load_model``'s
``backend="auto"`` pairs them when both are installed and the model has both files (the same
weights: the decoder is not quantised, the encoder's embeddings are the same up to the int8
gate). This module imports neither runtime.
"""

from __future__ import annotations

import numpy as np


class SplitBackend:
    """``encoder.encode`` and ``decoder.decode`` behind the predictor's one backend.

    Args:
        encoder: a backend whose ``encode`` runs (``1 x 3 x 1024 x 1024`` -> ``1 x 256 x 64 x 64``).
        decoder: a backend whose ``decode`` runs; its IoU scores, mask input and decode hints
            are what the predictor sees.
    """

    def __init__(self, encoder, decoder) -> None:
        self.encoder_backend = encoder
        self.decoder_backend = decoder
        self.name = f"{encoder.name}+{decoder.name}"
        #: The runtime the image encoder (and an ONNX prior beside it) runs in.
        self.encoder_name = encoder.name
        self.provides_iou_scores = decoder.provides_iou_scores
        self.supports_mask_input = decoder.supports_mask_input
        self.decode_hints = getattr(decoder, "decode_hints", frozenset())
        self.num_threads = getattr(encoder, "num_threads", None)
        self.cache = getattr(encoder, "cache", True)

    @property
    def model(self):
        """The decoder backend's torch model (``EdgeSam``; None when it has none): what adapting
        the decoder and saving it read (:mod:`napari_edgesam.training.adapt`)."""
        return getattr(self.decoder_backend, "model", None)

    def with_decoder(self, prompt_encoder, mask_decoder) -> SplitBackend:
        """The same encoder with the decoder backend's ``with_decoder`` (adapted copies); this
        backend is not changed. AttributeError when the decoder backend cannot."""
        return SplitBackend(self.encoder_backend, self.decoder_backend.with_decoder(prompt_encoder, mask_decoder))

    @property
    def decodes_prompt_by_prompt(self) -> bool:
        """The decoder backend's (the automatic modes then use fixed batch sizes: results that
        do not depend on timing)."""
        return bool(getattr(self.decoder_backend, "decodes_prompt_by_prompt", False))

    @property
    def embedding_shape(self):
        return getattr(self.encoder_backend, "embedding_shape", None)

    def encode(self, image: np.ndarray) -> np.ndarray:
        """``1 x 3 x 1024 x 1024`` normalised float32 -> ``1 x 256 x 64 x 64`` float32 (the encoder's)."""
        return self.encoder_backend.encode(image)

    def decode(self, embeddings: np.ndarray, point_coords: np.ndarray, point_labels: np.ndarray,
               mask_input: np.ndarray | None = None, **hints):
        """The decoder backend's ``decode`` (same arguments and result)."""
        return self.decoder_backend.decode(embeddings, point_coords, point_labels, mask_input, **hints)

    def __repr__(self) -> str:
        return f"SplitBackend(encoder={self.encoder_backend.name!r}, decoder={self.decoder_backend.name!r})"
