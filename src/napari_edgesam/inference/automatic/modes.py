"""The two automatic modes behind one call, for the batch engine, the CLI and the widgets.

* point grid (:class:`~napari_edgesam.inference.automatic.grid.AutomaticConfig`): works with any model;
* prior boxes (:class:`~napari_edgesam.inference.automatic.boxes.BoxAutomaticConfig`): the
  model's granularity prior (box head) proposes the boxes to decode; the predictor must carry
  the prior (``load_model(..., prior="auto" | path)``).

The mode is chosen by the type of the configuration given to :func:`segment_automatic_any`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .boxes import BoxAutomaticConfig, segment_automatic_boxes
from .common import ProgressFn, segment_volume
from .grid import AutomaticConfig, segment_automatic

#: Either mode's configuration.
AnyAutomaticConfig = AutomaticConfig | BoxAutomaticConfig


def segment_automatic_any(
    predictor,
    image: np.ndarray,
    config: AnyAutomaticConfig,
    *,
    stack: bool = False,
    region: Sequence[float] | None = None,
    normalisation: dict | None = None,
    merge_iou: float = 0.3,
    progress: ProgressFn | None = None,
    cancel=None,
) -> np.ndarray:
    """Automatic segmentation in the mode of ``config``.

    Args:
        image: ``H x W [x C]``, or ``Z x H x W [x C]`` when ``stack`` (per slice with the
            stack's normalisation, merged in 3D with ``merge_iou``; ``progress`` counts slices).
        config: :class:`AutomaticConfig` (point grid) or :class:`BoxAutomaticConfig` (prior
            boxes: ``predictor.prior`` must be set).
        region, normalisation, progress, cancel: as in
            :func:`~napari_edgesam.inference.automatic.grid.segment_automatic`.
    Returns:
        ``[Z x] H x W`` uint32 labels.
    """
    if isinstance(config, BoxAutomaticConfig):
        prior = getattr(predictor, "prior", None)
        if prior is None:
            raise RuntimeError(
                "prior-box automatic mode needs a predictor with a granularity prior: load the model "
                "with load_model(..., prior='auto' or a .prior.pth/.prior.onnx path) first"
            )

        def plane(img: np.ndarray, norm: dict | None, report: ProgressFn | None = None) -> np.ndarray:
            return segment_automatic_boxes(predictor, prior, img, config, region=region, normalisation=norm,
                                           progress=report, cancel=cancel)
    elif isinstance(config, AutomaticConfig):

        def plane(img: np.ndarray, norm: dict | None, report: ProgressFn | None = None) -> np.ndarray:
            return segment_automatic(predictor, img, config, region=region, normalisation=norm,
                                     progress=report, cancel=cancel)
    else:
        raise TypeError(f"config must be an AutomaticConfig or a BoxAutomaticConfig, got {type(config).__name__}")
    if stack:
        return segment_volume(image, plane, normalisation=normalisation, merge_iou=merge_iou,
                              progress=progress, cancel=cancel)
    return plane(image, normalisation, progress)
