"""The granularity prior at inference, one strategy with one home.

A trained box head proposes object boxes once per image; a single click then takes the whole
object (EdgeSAM paper, "granularity prior"):

* :mod:`.rule`: :class:`ProposalSet`, box IoU/NMS, proposal selection and the click rule
  (pure numpy);
* :mod:`.propose`: what a prior is (:class:`BoxPrior`) and proposals for an image or beside
  its embedding (:func:`encode_with_prior`, used by ``EdgeSamPredictor.encode``);
* :mod:`.torch_prior` (:class:`TorchBoxPrior`, one encoder pass with the torch backend) and
  :mod:`.onnx_prior` (:class:`OnnxBoxPrior`, onnxruntime-only installs);
* :mod:`.files`: the prior beside a model file, loading it, its identity tag, the box-head file
  (by registered model name: :mod:`napari_edgesam.inference.loading.model_prior`).

Nothing here imports torch at module level, nor the predictor.
"""

from .files import (
    FORMAT,
    find_prior,
    load_box_head,
    load_prior,
    prior_path_for,
    prior_tag,
    save_box_head,
)
from .onnx_prior import ONNX_META_KEY, OnnxBoxPrior
from .propose import BoxPrior, compute_proposals, encode_with_prior, propose_rgb
from .rule import ProposalSet, box_iou, choose_box_for_click, click_box, nms_boxes, select_proposals
from .torch_prior import TorchBoxPrior

__all__ = [
    "FORMAT",
    "ONNX_META_KEY",
    "BoxPrior",
    "OnnxBoxPrior",
    "ProposalSet",
    "TorchBoxPrior",
    "box_iou",
    "choose_box_for_click",
    "click_box",
    "compute_proposals",
    "encode_with_prior",
    "find_prior",
    "load_box_head",
    "load_prior",
    "nms_boxes",
    "prior_path_for",
    "prior_tag",
    "propose_rgb",
    "save_box_head",
    "select_proposals",
]
