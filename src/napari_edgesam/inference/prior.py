"""The granularity prior at inference: box proposals per image, and the paper's click rule.

A trained box head (:mod:`napari_edgesam.model.box_head`) proposes object boxes once per image.
A single click then becomes unambiguous: among the proposals that contain the point, take the
``k_nearest`` (5) by box centre and prompt with the best-scoring one *and* the point (EdgeSAM
paper, "granularity prior"); if no proposal contains the point, the point goes alone.

Coordinates are (x, y) pixels of the original image; boxes are ``(x0, y0, x1, y1)``. Priors
run in two flavours: :class:`TorchBoxPrior` shares the torch backend's (fused) encoder and can
compute the embedding and the proposals in ONE encoder pass (:func:`embed_with_proposals`);
:class:`OnnxBoxPrior` runs an exported ``*.prior.onnx`` (image -> boxes, optionally also the
embedding) for onnxruntime-only installs. This module does not import torch at module level.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .predictor import ImageEmbedding
from .preprocess import prepare_input, to_rgb_uint8

logger = logging.getLogger(__name__)

#: ONNX metadata key holding the head's decoding settings (JSON).
ONNX_META_KEY = "napari_edgesam_box_head"


# -- proposals --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProposalSet:
    """Box proposals of one image.

    Attributes:
        boxes: ``K x 4`` float32 ``(x0, y0, x1, y1)`` in pixels of the original image.
        scores: ``K`` float32 in [0, 1], descending.
        original_size: ``(h, w)`` of the image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    original_size: tuple[int, int]

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, np.float32)
        scores = np.asarray(self.scores, np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (len(boxes),):
            raise ValueError(f"boxes must be K x 4 and scores K; got {np.shape(self.boxes)} and {np.shape(self.scores)}")
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise ValueError("proposal boxes or scores contain NaN or inf")
        order = np.argsort(-scores, kind="stable")
        object.__setattr__(self, "boxes", boxes[order])
        object.__setattr__(self, "scores", scores[order])
        object.__setattr__(self, "original_size", (int(self.original_size[0]), int(self.original_size[1])))

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def from_input_frame(
        cls, boxes: np.ndarray, scores: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> ProposalSet:
        """Map boxes from the 1024 model-input frame (image resized to ``input_size``) to the
        original pixels, clipped to the image."""
        (h, w), (H, W) = input_size, original_size
        b = np.asarray(boxes, np.float32).reshape(-1, 4) * np.float32([W / w, H / h, W / w, H / h])
        b = np.clip(b, 0, np.float32([W, H, W, H]))
        return cls(b, scores, (H, W))

    def above(self, score: float) -> ProposalSet:
        """The proposals scoring at least ``score``."""
        keep = self.scores >= score
        return ProposalSet(self.boxes[keep], self.scores[keep], self.original_size)

    def to_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays (for ``np.savez`` beside a cached embedding)."""
        return {"boxes": self.boxes, "scores": self.scores, "original_size": np.asarray(self.original_size)}

    @classmethod
    def from_dict(cls, data) -> ProposalSet:
        return cls(np.asarray(data["boxes"]), np.asarray(data["scores"]), tuple(np.asarray(data["original_size"]).tolist()))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``N x 4`` and ``M x 4`` boxes ``(x0, y0, x1, y1)`` -> ``N x M`` float64."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms_boxes(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS: indices of kept boxes by descending score (ties: lower index first)."""
    scores = np.asarray(scores).reshape(-1)
    if len(scores) == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    iou = box_iou(np.asarray(boxes)[order], np.asarray(boxes)[order])
    alive = np.ones(len(order), bool)
    keep = []
    for i in range(len(order)):
        if alive[i]:
            keep.append(i)
            alive &= iou[i] <= iou_thresh
    return order[np.asarray(keep, np.int64)]


def select_proposals(
    boxes: np.ndarray,
    scores: np.ndarray,
    valid_size: tuple[int, int] | None,
    *,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    pre_nms_top_k: int = 1000,
    max_detections: int = 300,
    min_size: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Numpy twin of :func:`napari_edgesam.model.box_head.select_boxes` (dense head output ->
    proposals): score threshold, drop boxes centred outside ``valid_size`` ``(h, w)`` and clip
    the rest, drop thin boxes, top-k, NMS, keep ``max_detections``."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    keep = scores >= score_thresh
    if valid_size is not None:
        h, w = float(valid_size[0]), float(valid_size[1])
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        keep &= (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
        boxes = np.clip(boxes, 0, np.float32([w, h, w, h]))
    keep &= ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    boxes, scores = boxes[keep], scores[keep]
    if len(scores) > pre_nms_top_k:
        top = np.argsort(-scores, kind="stable")[:pre_nms_top_k]
        boxes, scores = boxes[top], scores[top]
    kept = nms_boxes(boxes, scores, nms_thresh)[:max_detections]
    return boxes[kept], scores[kept]


# -- the click rule ---------------------------------------------------------------------------
def choose_box_for_click(
    point: Sequence[float], boxes: np.ndarray, scores: np.ndarray, k_nearest: int = 5
) -> np.ndarray | None:
    """The paper's rule: of the boxes containing ``point`` (x, y) (borders included), take the
    ``k_nearest`` by distance from box centre to the point, and return the highest-scoring one
    (ties: the nearer) as a float32 ``(x0, y0, x1, y1)``; None if no box contains the point."""
    if isinstance(k_nearest, bool) or not isinstance(k_nearest, (int, np.integer)) or k_nearest < 1:
        raise ValueError(f"k_nearest must be a positive integer, got {k_nearest!r}")
    p = np.asarray(point, np.float64).reshape(-1)
    if p.shape != (2,) or not np.isfinite(p).all():
        raise ValueError(f"point must be (x, y), finite; got {point!r}")
    b = np.asarray(boxes, np.float64)
    s = np.asarray(scores, np.float64).reshape(-1)
    b = b.reshape(0, 4) if b.size == 0 else b
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be K x 4 (x0, y0, x1, y1); got shape {np.shape(boxes)}")
    if len(b) != len(s):
        raise ValueError(f"got {len(b)} boxes but {len(s)} scores")
    inside = np.flatnonzero((b[:, 0] <= p[0]) & (p[0] <= b[:, 2]) & (b[:, 1] <= p[1]) & (p[1] <= b[:, 3]))
    if inside.size == 0:
        return None
    centres = (b[inside, :2] + b[inside, 2:]) / 2
    dist = np.hypot(*(centres - p).T)
    nearest = inside[np.argsort(dist, kind="stable")[:k_nearest]]
    return b[nearest[int(np.argmax(s[nearest]))]].astype(np.float32)


def click_box(proposals: ProposalSet, point: Sequence[float], image_size: tuple[int, int],
              k_nearest: int = 5) -> np.ndarray | None:
    """The box the granularity rule (:func:`choose_box_for_click`) joins to one positive click
    ``(x, y)`` on an image of ``image_size`` ``(h, w)``, or None (no proposal around it)."""
    if not isinstance(proposals, ProposalSet):
        raise TypeError(f"proposals must be a ProposalSet, got {type(proposals).__name__}")
    if tuple(int(v) for v in image_size) != proposals.original_size:
        raise ValueError(f"the proposals are of a {proposals.original_size} image but the predictor's image is "
                         f"{tuple(image_size)}: compute proposals for the current image first")
    return choose_box_for_click(np.asarray(point, np.float32).reshape(2), proposals.boxes, proposals.scores,
                                k_nearest)


def segment_click_with_prior(
    predictor, proposals: ProposalSet, point: Sequence[float], *, k_nearest: int = 5, fill_holes: bool = True
) -> tuple[np.ndarray, float, np.ndarray]:
    """Segment the object under a single positive click with the granularity prior.

    With a proposal chosen by :func:`choose_box_for_click` the decoder gets the box and the
    point (token 0); otherwise the point alone (EdgeSAM's most-stable-of-4 rule). Interior
    holes are filled unless ``fill_holes`` is False (as :meth:`EdgeSamPredictor.segment`).

    Returns:
        mask ``H x W`` bool, stability score, low-res logits ``256 x 256`` (as ``segment``).
    """
    pt = np.asarray(point, np.float32).reshape(1, 2)
    box = click_box(proposals, pt[0], predictor.embedding.original_size, k_nearest)
    keep = {} if fill_holes else {"fill_holes": False}  # predictor-likes without the option fill nothing
    return predictor.segment(pt, np.ones(1, np.float32), box, **keep)


# -- priors -----------------------------------------------------------------------------------
@runtime_checkable
class BoxPrior(Protocol):
    """Proposes boxes for a prepared image (``1 x 3 x 1024 x 1024`` normalised, padded)."""

    def propose(self, image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Boxes ``K x 4`` (x0, y0, x1, y1) in the 1024 frame and scores ``K`` (descending)."""
        ...


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
        trained on another encoder (per ``meta["encoder_signature"]``) raises ``ValueError``."""
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
        from ..model.box_head import encoder_signature, signatures_match

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
        from .backends import compute_thread

        return compute_thread.run(self._propose, image, input_size)

    def _propose(self, image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            return self._detect(self._embed_and_features(image)[1], input_size)

    def embed_and_propose(self, image: np.ndarray, input_size: tuple[int, int]):
        """One encoder pass -> (embedding ``1 x 256 x 64 x 64`` float32, boxes, scores); the
        embedding equals the backend's ``encode(image)``. Runs on the torch compute thread."""
        from .backends import compute_thread

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
        model = getattr(backend, "model", None)
        return model is not None and getattr(model, "image_encoder", None) is self.encoder


class OnnxBoxPrior:
    """An exported prior (``image`` -> ``boxes``, ``scores``, optionally ``image_embeddings``)
    run with onnxruntime; proposals are selected in numpy with the head's settings.

    Args:
        path: the ``.onnx`` file (:func:`~napari_edgesam.export.box_head_onnx.export_box_head`).
        use_embedding: take the predictor's embedding from this file's ``image_embeddings``
            output (one encoder pass for both). Only correct when the file was exported from the
            predictor's own model, so it is off unless asked for.
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, *, device: str = "auto", num_threads: int | None = None,
                 use_embedding: bool = False) -> None:
        import onnxruntime as ort

        from .backends.onnx_backend import _providers_for

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"prior ONNX file not found: {self.path}")
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if num_threads is not None:
            options.intra_op_num_threads = int(num_threads)
        providers = _providers_for(device)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            detail = " ".join(str(err).split())[:200]
            raise ValueError(f"prior {self.path} ({self.path.stat().st_size:,} bytes) could not be loaded as an "
                             f"ONNX file (damaged, truncated or not ONNX: {detail}); export it again with "
                             "'napari-edgesam export MODEL -o DIR --prior auto'") from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != ["image"] or not {"boxes", "scores"} <= set(outputs):
            raise ValueError(f"{self.path} is not an exported prior (image -> boxes, scores); inputs {inputs}, outputs {outputs}")
        self.has_embedding = "image_embeddings" in outputs
        if use_embedding and not self.has_embedding:
            raise ValueError(f"{self.path} has no image_embeddings output (export it with with_embedding=True)")
        self.use_embedding = use_embedding
        meta = self.session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)
        self.settings = json.loads(meta) if meta else {}
        self.meta = self.settings

    def _select(self, boxes, scores, input_size):
        s = self.settings
        return select_proposals(boxes[0], scores[0], input_size, score_thresh=s.get("score_thresh", 0.05),
                                nms_thresh=s.get("nms_thresh", 0.5), pre_nms_top_k=s.get("pre_nms_top_k", 1000),
                                max_detections=s.get("max_detections", 300))

    def propose(self, image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        boxes, scores = self.session.run(["boxes", "scores"], {"image": np.ascontiguousarray(image, np.float32)})
        return self._select(boxes, scores, input_size)

    def embed_and_propose(self, image: np.ndarray, input_size: tuple[int, int]):
        if not self.has_embedding:
            raise RuntimeError(f"{self.path} has no image_embeddings output: use propose() and the backend's encoder")
        emb, boxes, scores = self.session.run(["image_embeddings", "boxes", "scores"],
                                              {"image": np.ascontiguousarray(image, np.float32)})
        return emb, *self._select(boxes, scores, input_size)

    def shares_encoder_with(self, backend) -> bool:
        """Whether :func:`embed_with_proposals` may take the embedding from this file."""
        return self.use_embedding


def find_prior(model_path: str | os.PathLike) -> Path | None:
    """The prior stored beside a model file (``x.prior.onnx`` for ONNX models, else
    ``x.prior.pth``), or None."""
    path = Path(model_path)
    stem = path.stem[: -len("_encoder")] if path.stem.endswith("_encoder") else path.stem
    names = [f"{stem}.prior.onnx", f"{stem}.prior.pth"] if path.suffix == ".onnx" else [f"{stem}.prior.pth"]
    for name in names:
        if (path.with_name(name)).is_file():
            return path.with_name(name)
    return None


def load_prior(path: str | os.PathLike, predictor=None, *, device: str = "auto", check_encoder: bool = True,
               use_embedding: bool = False):
    """Load a prior: a ``.pth`` head (needs ``predictor`` with the torch backend, whose encoder
    it shares) or an exported ``.onnx`` prior (``use_embedding``: see :class:`OnnxBoxPrior`)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        prior = OnnxBoxPrior(path, device=device, use_embedding=use_embedding)
        prior.source_path = path
        return prior
    if path.suffix.lower() not in (".pth", ".pt"):
        raise ValueError(f"unsupported prior file {path}: expected .pth or .onnx")
    if predictor is None:
        raise ValueError("a .pth prior shares the predictor's torch encoder: pass predictor=...")
    from ..model.box_head import load_box_head
    from .backends import compute_thread

    def build() -> TorchBoxPrior:
        head, meta = load_box_head(path)
        return TorchBoxPrior.from_backend(predictor.backend, head, meta, check_encoder=check_encoder)

    prior = compute_thread.run(build)
    prior.source_path = path
    return prior


def prior_tag(prior) -> str | None:
    """An identity of a prior loaded from a file (:func:`load_prior` sets ``source_path``): its
    resolved path, size and modification time, so a retrained file gets a new tag. None for a
    prior built in memory (its proposals are then never persisted)."""
    path = getattr(prior, "source_path", None)
    if path is None:
        return None
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"


def embed_rgb_with_proposals(predictor, prior, rgb: np.ndarray) -> tuple[ImageEmbedding, ProposalSet]:
    """:func:`embed_with_proposals` for an ``H x W x 3`` uint8 RGB image (no normalisation)."""
    x, input_size = prepare_input(rgb)
    input_size = (int(input_size[0]), int(input_size[1]))
    original = (int(rgb.shape[0]), int(rgb.shape[1]))
    if hasattr(prior, "embed_and_propose") and prior.shares_encoder_with(predictor.backend):
        features, boxes, scores = prior.embed_and_propose(x, input_size)
        emb = ImageEmbedding(features, original, input_size)
    else:
        emb = predictor.embed_rgb(rgb)
        boxes, scores = prior.propose(x, input_size)
    return emb, ProposalSet.from_input_frame(boxes, scores, input_size, original)


def embed_with_proposals(predictor, prior, image: np.ndarray, **normalisation) -> tuple[ImageEmbedding, ProposalSet]:
    """Embed ``image`` (as ``predictor.compute_embedding(image, **normalisation)`` does) and
    propose boxes, in one encoder pass when the prior shares the predictor's encoder. Does not
    change the predictor's state: call ``predictor.set_embedding(embedding)``."""
    return embed_rgb_with_proposals(predictor, prior, to_rgb_uint8(image, **normalisation))


def compute_proposals(prior, image: np.ndarray, **normalisation) -> ProposalSet:
    """Proposals of ``image`` alone (e.g. when its embedding came from a cache)."""
    rgb = to_rgb_uint8(image, **normalisation)
    x, input_size = prepare_input(rgb)
    boxes, scores = prior.propose(x, tuple(int(v) for v in input_size))
    return ProposalSet.from_input_frame(boxes, scores, input_size, rgb.shape[:2])
