"""The granularity prior's rule: box proposals, their selection, and the paper's click rule.

A trained box head proposes object boxes once per image (:class:`ProposalSet`). A single click
then becomes unambiguous: among the proposals that contain the point, take the ``k_nearest`` (5)
by box centre and prompt with the best-scoring one *and* the point (EdgeSAM paper, "granularity
prior"); if no proposal contains the point, the point goes alone (:func:`choose_box_for_click`,
:func:`click_box`). Pure numpy: nothing here runs a model.

Coordinates are (x, y) pixels of the original image; boxes are ``(x0, y0, x1, y1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


# -- proposals --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProposalSet:
    """Box proposals of one image.

    Attributes:
        boxes: ``K x 4`` float32 ``(x0, y0, x1, y1)`` in pixels of the original image.
        scores: ``K`` float32 in [0, 1], descending.
        original_size: ``(h, w)`` of the image.
        tag: which prior proposed them (:func:`~napari_edgesam.inference.prior.prior_tag`: its
            file, size and modification time), or None for a prior built in memory. Caches
            serve proposals only to the prior with the same tag.
    """

    boxes: np.ndarray
    scores: np.ndarray
    original_size: tuple[int, int]
    tag: str | None = None

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
        object.__setattr__(self, "tag", None if self.tag is None else str(self.tag))

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def from_input_frame(
        cls, boxes: np.ndarray, scores: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int],
        tag: str | None = None,
    ) -> ProposalSet:
        """Map boxes from the 1024 model-input frame (image resized to ``input_size``) to the
        original pixels, clipped to the image."""
        (h, w), (H, W) = input_size, original_size
        b = np.asarray(boxes, np.float32).reshape(-1, 4) * np.float32([W / w, H / h, W / w, H / h])
        b = np.clip(b, 0, np.float32([W, H, W, H]))
        return cls(b, scores, (H, W), tag)

    def above(self, score: float) -> ProposalSet:
        """The proposals scoring at least ``score``."""
        keep = self.scores >= score
        return ProposalSet(self.boxes[keep], self.scores[keep], self.original_size, self.tag)

    def to_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays (for ``np.savez``, no pickling); ``tag`` only when there is one."""
        out = {"boxes": self.boxes, "scores": self.scores, "original_size": np.asarray(self.original_size, np.int64)}
        if self.tag is not None:
            out["tag"] = np.str_(self.tag)
        return out

    @classmethod
    def from_dict(cls, data) -> ProposalSet:
        """The inverse of :meth:`to_dict` (a dict or an opened ``.npz``)."""
        tag = str(data["tag"]) if "tag" in data else None
        return cls(np.asarray(data["boxes"]), np.asarray(data["scores"]),
                   tuple(np.asarray(data["original_size"]).tolist()), tag)


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
        raise ValueError(f"the proposals are of a {proposals.original_size} image but the embedding's image is "
                         f"{tuple(image_size)}: use the proposals of that image (predictor.encode(image) "
                         "carries them when the predictor has a prior)")
    return choose_box_for_click(np.asarray(point, np.float32).reshape(2), proposals.boxes, proposals.scores,
                                k_nearest)
