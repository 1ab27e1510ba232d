"""The prior as a strategy: what a box prior is, and proposals for an image or beside its embedding.

A prior (:class:`BoxPrior`: :class:`~.torch_prior.TorchBoxPrior`, :class:`~.onnx_prior.OnnxBoxPrior`
or any object with the same methods) works on the prepared model input (``1 x 3 x 1024 x 1024``
normalised, padded) and answers boxes in that 1024 frame; the functions here turn them into a
:class:`~.rule.ProposalSet` in the pixels of the original image, tagged with the prior's
:func:`~.files.prior_tag`. :meth:`EdgeSamPredictor.encode
<napari_edgesam.inference.core.predictor.EdgeSamPredictor.encode>` calls :func:`encode_with_prior`;
nothing here imports the predictor.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..core.preprocess import prepare_input, to_rgb_uint8
from .files import prior_tag
from .rule import ProposalSet


@runtime_checkable
class BoxPrior(Protocol):
    """Proposes boxes for a prepared image (``1 x 3 x 1024 x 1024`` normalised, padded)."""

    def propose(self, image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Boxes ``K x 4`` (x0, y0, x1, y1) in the 1024 frame and scores ``K`` (descending)."""
        ...

    def shares_encoder_with(self, backend) -> bool:
        """Whether ``embed_and_propose(image, input_size) -> (features, boxes, scores)`` gives
        ``backend``'s own embedding (then one encoder pass serves both)."""
        ...


def encode_with_prior(prior, backend, x: np.ndarray, input_size: tuple[int, int],
                      original_size: tuple[int, int]) -> tuple[np.ndarray, ProposalSet]:
    """The features of the prepared image ``x`` and the prior's proposals for it.

    One encoder pass when the prior shares ``backend``'s encoder (a
    :class:`~.torch_prior.TorchBoxPrior` on the torch backend reads the taps of the backend's
    own traced encoder; an ONNX prior with ``use_embedding``); otherwise ``backend.encode(x)``
    and a separate ``prior.propose(x)``.

    Args:
        x: ``1 x 3 x 1024 x 1024`` float32 (:func:`~napari_edgesam.inference.core.preprocess.prepare_input`).
        input_size: ``(h, w)`` of the image resized into the 1024 frame.
        original_size: ``(h, w)`` of the original image (the proposals' frame).
    Returns:
        features ``1 x 256 x 64 x 64`` float32 and the proposals (tagged with :func:`prior_tag`).
    """
    input_size = (int(input_size[0]), int(input_size[1]))
    if hasattr(prior, "embed_and_propose") and prior.shares_encoder_with(backend):
        features, boxes, scores = prior.embed_and_propose(x, input_size)
    else:
        features = backend.encode(x)
        boxes, scores = prior.propose(x, input_size)
    return features, ProposalSet.from_input_frame(boxes, scores, input_size, original_size, prior_tag(prior))


def propose_rgb(prior, rgb: np.ndarray) -> ProposalSet:
    """The prior's proposals for an ``H x W x 3`` uint8 RGB image alone (its embedding exists,
    e.g. in a cache); this is an encoder pass of the prior's own."""
    x, input_size = prepare_input(rgb)
    input_size = (int(input_size[0]), int(input_size[1]))
    boxes, scores = prior.propose(x, input_size)
    return ProposalSet.from_input_frame(boxes, scores, input_size, rgb.shape[:2], prior_tag(prior))


def compute_proposals(prior, image: np.ndarray, **normalisation) -> ProposalSet:
    """:func:`propose_rgb` for any image (``H x W`` grey, RGB, multi-channel), normalised with
    ``normalisation`` as :meth:`EdgeSamPredictor.encode` does."""
    return propose_rgb(prior, to_rgb_uint8(image, **normalisation))
