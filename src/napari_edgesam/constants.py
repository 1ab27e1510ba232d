"""Model constants shared by the torch model and the torch-free inference code."""

from __future__ import annotations

#: Side of the square, padded model input.
IMG_SIZE = 1024
#: Side of the low-resolution mask logits (and of a mask input).
LOW_RES_SIZE = 256
#: Side of the image embedding grid; embeddings are ``256 x 64 x 64``.
EMBED_SIZE = 64
EMBED_DIM = 256
#: SAM's input normalisation (RGB, 0-255 scale), used by the model, preprocessing and training.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
MASK_THRESHOLD = 0.0
STABILITY_OFFSET = 1.0

#: Point labels understood by the prompt encoder.
LABEL_IGNORE = -2  # training only: the point contributes nothing
LABEL_PAD = -1  # "not a point" padding
LABEL_NEGATIVE = 0
LABEL_POSITIVE = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3

#: ``num_multimask_outputs`` -> which of the 4 mask tokens are returned.
TOKEN_SLICES = {1: slice(0, 1), 3: slice(1, 4), 4: slice(0, 4)}


def token_slice(num_multimask_outputs: int) -> slice:
    """The mask tokens returned for ``num_multimask_outputs`` (1 -> token 0, 3 -> 1..3, 4 -> 0..3)."""
    n = num_multimask_outputs
    try:
        if isinstance(n, bool) or int(n) != n:  # 1.5 or "4" must not become 1 or 4 silently
            raise ValueError
        return TOKEN_SLICES[int(n)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"num_multimask_outputs must be 1, 3 or 4, got {num_multimask_outputs!r}"
        ) from None

#: Low-res logits a decoder call was told it need not compute (``decode_batch(needed_at=,
#: windows=)``): finite, so upscaling stays well defined, and far below every threshold.
SKIPPED_LOGIT = -1.0e4
