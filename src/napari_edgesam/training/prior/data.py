"""Training data of the box head: instance boxes and cached encoder features.

Boxes come from instance label images (``scipy.ndimage.find_objects``) or SA-1B jsons (the
``bbox`` field, else the decoded RLE). They are mapped to the model-input frame of the image
(longest side resized to ``img_size``), as ``(x0, y0, x1, y1)`` pixel-edge coordinates. The
encoder is frozen, so its ``stage1/2/3`` features are computed once per image (float16) and
kept in memory or in a cache folder; a head then trains in milliseconds per image on a CPU.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from ..._atomic import atomic_open
from ...inference.core.preprocess import normalize_and_pad
from ...model.box_head import STAGES, encoder_signature
from ..config import DataConfig
from ..data import TrainingDataset
from ..records import Record, read_array
from ..sa1b import decode_annotations, read_annotations

logger = logging.getLogger(__name__)


def instance_boxes(labels: np.ndarray) -> np.ndarray:
    """``H x W`` instance labels (0 background) -> ``K x 4`` float32 boxes ``(x0, y0, x1, y1)``,
    pixel edges (a one-pixel object at column c, row r is ``(c, r, c + 1, r + 1)``), by label."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be a 2D integer image, got {labels.dtype} {labels.shape}")
    if labels.min(initial=0) < 0:
        raise ValueError("labels must be non-negative (0 = background)")
    boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndi.find_objects(labels.astype(np.int64)) if s]
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def sa1b_boxes(anns: Sequence[dict]) -> np.ndarray:
    """``K x 4`` float32 boxes of SA-1B annotations (``bbox`` ``[x, y, w, h]``, else from the RLE)."""
    out = []
    for i, ann in enumerate(anns):
        bbox = ann.get("bbox")
        if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
            x, y, w, h = (float(v) for v in bbox)
            out.append((x, y, x + w, y + h))
            continue
        mask = decode_annotations(list(anns), np.array([i]))[0]
        ys, xs = np.nonzero(mask)
        if ys.size:
            out.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    return np.asarray(out, np.float32).reshape(-1, 4)


def scale_boxes(boxes: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
    """Map ``K x 4`` boxes from original pixels to the model-input frame (and back, swapped)."""
    sx = input_size[1] / original_size[1]
    sy = input_size[0] / original_size[0]
    return (np.asarray(boxes, np.float32) * np.float32([sx, sy, sx, sy])).astype(np.float32)


def record_boxes(record: Record, original_size: tuple[int, int]) -> np.ndarray:
    """All instance boxes of a training record in original pixels (empty without labels)."""
    if record.labels is None:
        return np.zeros((0, 4), np.float32)
    if record.kind == "sa1b":
        return sa1b_boxes(read_annotations(record.labels))
    labels = read_array(record.labels, labels=True)
    if labels.shape != tuple(original_size):
        raise ValueError(f"label image {record.labels} is {labels.shape} but image {record.image} is {tuple(original_size)}")
    return instance_boxes(labels)


class FeatureStore:
    """Encoder features + boxes per image key, in memory or in a folder (one ``.pt`` per image).

    An entry is ``{"stage1", "stage2", "stage3"}`` float16 ``C x h x w`` tensors, ``"boxes"``
    ``K x 4`` float32 (input frame) and ``"input_size"`` ``[h, w]`` int64. A folder is tied to
    one encoder and input size through a digest in its file names.
    """

    def __init__(self, folder: str | os.PathLike | None, digest: str) -> None:
        self.folder = None if folder is None else Path(folder)
        self.digest = digest
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", key)[-80:]
        tag = hashlib.sha256(key.encode()).hexdigest()[:8]  # keys differing only in odd characters
        return self.folder / f"{safe}.{tag}.{self.digest}.pt"

    def __contains__(self, key: str) -> bool:
        return key in self._memory or (self.folder is not None and self._path(key).is_file())

    def put(self, key: str, entry: dict[str, torch.Tensor]) -> None:
        if self.folder is None:
            self._memory[key] = entry
            return
        path = self._path(key)
        with atomic_open(path, "wb") as fh:
            torch.save(entry, fh)

    def get(self, key: str) -> dict[str, torch.Tensor]:
        if key in self._memory:
            return self._memory[key]
        if self.folder is None or not self._path(key).is_file():
            raise KeyError(f"no cached features for {key!r}: call cache_features first")
        return torch.load(self._path(key), map_location="cpu", weights_only=True)


def store_digest(encoder: torch.nn.Module, img_size: int) -> str:
    """A short digest of the encoder's signature and the input size (names cache files)."""
    sig = np.round(np.asarray(encoder_signature(encoder), np.float64), 3)
    return hashlib.sha256(sig.tobytes() + str(int(img_size)).encode()).hexdigest()[:12]


@torch.no_grad()
def cache_features(
    encoder: torch.nn.Module,
    records: Sequence[Record],
    data_cfg: DataConfig,
    img_size: int,
    store: FeatureStore,
    *,
    min_box_size: float = 2.0,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Compute (or find cached) features and boxes of ``records``; returns their keys.

    ``encoder``: a frozen RepViT encoder with ``forward_features`` (float32, eval). Boxes
    thinner than ``min_box_size`` input pixels are dropped.
    """
    if img_size % 32:
        raise ValueError(f"img_size must be a multiple of 32, got {img_size}")
    dataset = TrainingDataset(records, data_cfg, img_size, with_instances=False)
    encoder = encoder.eval().to(device)
    keys = []
    for i, rec in enumerate(records):
        keys.append(rec.key)
        if rec.key not in store:
            resized, original = dataset.load_resized_rgb(i)
            input_hw = resized.shape[:2]
            boxes = scale_boxes(record_boxes(rec, original), original, input_hw)
            size = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) if len(boxes) else np.zeros(0)
            x = torch.from_numpy(normalize_and_pad(np.ascontiguousarray(resized), img_size)).to(device)
            feats = encoder.forward_features(x)
            entry = {k: feats[k][0].to("cpu", torch.float16).contiguous() for k in STAGES}
            entry["boxes"] = torch.from_numpy(boxes[size >= min_box_size])
            entry["input_size"] = torch.tensor(input_hw, dtype=torch.int64)
            store.put(rec.key, entry)
        if progress is not None:
            progress(i + 1, len(records))
    logger.info("features of %d images ready", len(keys))
    return keys


def load_batch(store: FeatureStore, keys: Sequence[str], device: str | torch.device = "cpu"):
    """Stack the features of ``keys``: ``({stage: B x C x h x w float32}, [boxes K_i x 4], B x 2 sizes)``."""
    entries = [store.get(k) for k in keys]
    feats = {s: torch.stack([e[s] for e in entries]).to(device, torch.float32) for s in STAGES}
    boxes = [e["boxes"].float() for e in entries]
    sizes = torch.stack([e["input_size"] for e in entries])
    return feats, boxes, sizes
