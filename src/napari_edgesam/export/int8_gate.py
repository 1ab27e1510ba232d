"""The accuracy gate of an int8 encoder: its masks against the float32 encoder's.

For every ground-truth object of held-out images, the box around it is the prompt; the same
decoder segments it (``predictor.segment``) once from the float32 embedding and once from the
int8 one, and the gate is the mean IoU of the two masks: at least :data:`MIN_MEAN_IOU` (0.97)
for an int8 encoder to be used by default. The ground truth gives the prompts only: the gate
measures what int8 changes, not the model's quality. Golden agreement (against the official
code) stays a float32 matter and is not checked here.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

#: The mean mask IoU (int8 vs float32) an int8 encoder must reach.
MIN_MEAN_IOU = 0.97


@dataclass(frozen=True)
class GateResult:
    """What the gate measured: mean and minimum IoU over ``n_objects`` box prompts."""

    mean_iou: float
    min_iou: float
    n_objects: int
    threshold: float = MIN_MEAN_IOU

    @property
    def passed(self) -> bool:
        return self.n_objects > 0 and self.mean_iou >= self.threshold

    def line(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"int8 gate {verdict}: mean mask IoU vs float32 {self.mean_iou:.4f} (>= {self.threshold} needed), "
                f"min {self.min_iou:.3f}, {self.n_objects} objects")

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def object_boxes(labels: np.ndarray) -> np.ndarray:
    """``K x 4`` boxes (x0, y0, x1, y1; pixel edges, so x1 = last column + 1) of the objects of
    an ``H x W`` instance label image, in label order."""
    from scipy import ndimage as ndi

    boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndi.find_objects(np.asarray(labels))
             if s is not None]
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def read_pairs(folder: str | os.PathLike) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(image, labels)`` of ``folder/images/*.tif`` and ``folder/labels/<same name>`` (the
    layout of the nuclei recipe's ``heldout``)."""
    import tifffile

    folder = Path(folder)
    images = sorted((folder / "images").glob("*.tif*"))
    if not images:
        raise FileNotFoundError(f"no held-out images in {folder / 'images'} (expected the nuclei recipe's layout: "
                                "'napari-edgesam train recipe nuclei prepare --out data/nuclei_v2')")
    pairs = []
    for path in images:
        lab = folder / "labels" / path.name
        if not lab.is_file():
            raise FileNotFoundError(f"no labels for {path}: expected {lab}")
        pairs.append((tifffile.imread(path), tifffile.imread(lab)))
    if not any(np.asarray(labels).max(initial=0) > 0 for _, labels in pairs):
        raise ValueError(f"no labelled object in {folder / 'labels'}: the gate compares masks of the labelled "
                         "objects; give held-out images with their instance labels")
    return pairs


def measure(fp32, int8, pairs, *, threshold: float = MIN_MEAN_IOU) -> GateResult:
    """The gate for two predictors sharing a decoder (``fp32``, ``int8``: anything with
    ``encode`` and ``segment(box=..., embedding=..., box_centre=...)``) on ``(image, labels)`` pairs.
    Each box is decoded alone (``box_centre=False``): the gate compares encoders, and the
    all-or-nothing second decode of a box whose mask falls short would add flips of its own."""
    ious: list[float] = []
    for image, labels in pairs:
        e32, e8 = fp32.encode(image), int8.encode(image)
        for box in object_boxes(labels):
            a = np.asarray(fp32.segment(box=box, embedding=e32, box_centre=False)[0], bool)
            b = np.asarray(int8.segment(box=box, embedding=e8, box_centre=False)[0], bool)
            union = (a | b).sum()
            ious.append(float((a & b).sum() / union) if union else 1.0)
    if not ious:
        return GateResult(0.0, 0.0, 0, threshold)
    return GateResult(float(np.mean(ious)), float(np.min(ious)), len(ious), threshold)


def run_gate(int8_encoder: str | os.PathLike, fp32_encoder: str | os.PathLike, decoder: str | os.PathLike,
             pairs, *, backend: str = "openvino", threshold: float = MIN_MEAN_IOU,
             num_threads: int | None = None) -> GateResult:
    """The gate for ONNX files: ``int8_encoder`` against ``fp32_encoder``, both with ``decoder``,
    on ``backend`` (``"openvino"`` or ``"onnxruntime"``) and ``pairs`` (:func:`read_pairs`)."""
    from ..inference.core.predictor import EdgeSamPredictor

    if backend == "openvino":
        from ..inference.backends.openvino_backend import OpenVinoBackend as Engine

        opts = {"cache": False}
    elif backend == "onnxruntime":
        from ..inference.backends.onnx_backend import OnnxBackend as Engine

        opts = {}
    else:
        raise ValueError(f"the int8 gate runs on 'openvino' or 'onnxruntime', got {backend!r}")
    if Path(int8_encoder).resolve() == Path(fp32_encoder).resolve():
        raise ValueError(f"the int8 gate compares two encoders, got {Path(int8_encoder).name} twice: pass the "
                         "*_encoder_int8.onnx file and its float32 reference")
    ref = EdgeSamPredictor(Engine(fp32_encoder, decoder, num_threads=num_threads, **opts), "fp32")
    low = EdgeSamPredictor(Engine(int8_encoder, decoder, num_threads=num_threads, **opts), "int8")
    return measure(ref, low, pairs, threshold=threshold)


def run_prior_gate(int8_prior: str | os.PathLike, fp32_encoder: str | os.PathLike, decoder: str | os.PathLike,
                   pairs, *, backend: str = "openvino", threshold: float = MIN_MEAN_IOU,
                   num_threads: int | None = None) -> GateResult:
    """The gate of an int8 prior's embedding output (``x.prior_int8.onnx``: encoder and box head
    quantized in one graph): its masks against the float32 encoder's, as :func:`run_gate` (the
    predictor then takes its embedding from the prior's pass)."""
    from ..inference.core.predictor import EdgeSamPredictor
    from ..inference.prior.onnx_prior import OnnxBoxPrior

    if backend == "openvino":
        from ..inference.backends.openvino_backend import OpenVinoBackend as Engine

        opts, prior_opts = {"cache": False}, {"runtime": "openvino", "cache": False}
    elif backend == "onnxruntime":
        from ..inference.backends.onnx_backend import OnnxBackend as Engine

        opts, prior_opts = {}, {}
    else:
        raise ValueError(f"the int8 gate runs on 'openvino' or 'onnxruntime', got {backend!r}")
    ref = EdgeSamPredictor(Engine(fp32_encoder, decoder, num_threads=num_threads, **opts), "fp32")
    via = EdgeSamPredictor(Engine(fp32_encoder, decoder, num_threads=num_threads, **opts), "int8 prior")
    via.prior = OnnxBoxPrior(int8_prior, use_embedding=True, num_threads=num_threads, **prior_opts)
    return measure(ref, via, pairs, threshold=threshold)
