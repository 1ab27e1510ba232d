"""Training data: images (+ instances) -> padded model inputs, prompts and low-res masks.

Every sample is prepared exactly like the predictor prepares an image (``to_rgb_uint8`` ->
longest side resized to ``img_size`` -> normalised -> zero-padded bottom/right), so a model
trained here sees what it will see in napari. Instances are resized to the model-input frame
(nearest neighbour); boxes and initial points are taken there (see :mod:`.prompts` for the
coordinate conventions) and the masks are area-downsampled to the low-res ``img_size/4`` grid.

Randomness (instance choice, points, flips) comes from a generator seeded by
``(seed, epoch, index)``, so a sample is the same in every worker and after a resume.

With the label-map augmentations (``data.augment`` "rot90", "scale", "intensity") or generated
images (``data.synthetic_images``) a sample takes the augmentation pipeline instead: the image
at its own resolution with its label map -> "scale" (objects to a random size in the frame,
crop, at most ``img_size`` per side) or the predictor's resize -> flips/rot90 -> intensity ->
instances -> zero-padded bottom/right by :func:`normalize_and_pad` exactly like the predictor.
Finding and reading the files: :mod:`.records`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..inference.core.preprocess import (
    normalize_and_pad,
    resize_longest_side,
    to_rgb_uint8,
)
from . import augment as aug
from .config import PIPELINE_AUGMENTATIONS, SYNTHETIC_REGIMES, DataConfig
from .prompts import mask_to_box, random_box_around, random_point_prompt, sample_point_in_mask
from .records import Record, read_array
from .sa1b import annotation_area, decode_annotations, read_annotations

# ---------------------------------------------------------------------------------------------
# Resizing label maps and masks
# ---------------------------------------------------------------------------------------------


def nearest_resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes of ``arr`` to ``size = (h, w)``
    (source pixel = floor((i + 0.5) * H / h))."""
    in_h, in_w = arr.shape[-2:]
    h, w = size
    rows = np.minimum(((np.arange(h) + 0.5) * in_h / h).astype(np.int64), in_h - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * in_w / w).astype(np.int64), in_w - 1)
    return arr[..., rows[:, None], cols[None, :]]


def downsample_masks(masks: np.ndarray, factor: int) -> np.ndarray:
    """``K x H x W`` bool (H, W multiples of ``factor``) -> ``K x H/f x W/f``: block mean >= 0.5."""
    k, h, w = masks.shape
    blocks = masks.reshape(k, h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(2, 4), dtype=np.float32) >= 0.5


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


class TrainingDataset(Dataset):
    """Padded model inputs with prompts (and low-res masks) for every phase.

    Args:
        records: from :func:`.records.find_records`.
        cfg: the data section of the config.
        img_size: side of the padded model input.
        seed: run seed (with the epoch and index it seeds each sample's randomness).
        with_instances: produce prompts (phase 2 / finetune); False for phase 1 and caching.
        with_masks: also produce the low-res ground-truth masks (finetune).
        pseudo_prompts: for images without instances, make ``max_instances`` random points and
            random boxes around them (distillation on unlabelled images: the teacher's answers
            are the targets).
        embedding_cache: precomputed teacher embeddings (``key -> 256 x g x g`` float16).

    ``__getitem__`` returns a dict: ``image`` ``3 x S x S`` float32; ``input_size`` ``[h, w]``;
    ``index``; and with instances ``boxes`` ``K x 4`` and ``points`` ``K x 2`` float32 in the input
    frame, ``masks`` ``K x S/4 x S/4`` bool (with_masks); ``teacher_embedding`` (with a cache).
    """

    def __init__(
        self,
        records: Sequence[Record],
        cfg: DataConfig,
        img_size: int,
        seed: int = 0,
        *,
        with_instances: bool = True,
        with_masks: bool = False,
        pseudo_prompts: bool = False,
        embedding_cache=None,
    ) -> None:
        self.records = list(records)
        self.cfg = cfg
        self.img_size = int(img_size)
        self.seed = int(seed)
        self.epoch = 0
        self.with_instances = with_instances
        self.with_masks = with_masks
        self.pseudo_prompts = pseudo_prompts
        self.embedding_cache = embedding_cache

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the randomness of ``epoch`` (call before creating the epoch's DataLoader)."""
        self.epoch = int(epoch)

    def keys(self) -> list[str]:
        return [r.key for r in self.records]

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, int(index)]))

    # -- pieces --------------------------------------------------------------------------------
    def load_resized_rgb(self, index: int) -> tuple[np.ndarray, tuple[int, int]]:
        """The image as ``h x w x 3`` uint8 resized to the model input, and its original ``(H, W)``."""
        rec = self.records[index]
        if rec.kind == "synthetic":
            raise ValueError(f"{rec.key} is generated per sample and has no file: use the dataset's items")
        raw = read_array(rec.image)
        lo, hi = self.cfg.percentiles
        try:
            rgb = to_rgb_uint8(raw, channel_axis=self.cfg.channel_axis, percentiles=(lo, hi))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{rec.image}: {err}") from err
        return resize_longest_side(rgb, self.img_size), rgb.shape[:2]

    def model_input(self, index: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """``3 x S x S`` normalised padded input (no augmentation) and the resized ``(h, w)``."""
        resized, _ = self.load_resized_rgb(index)
        return torch.from_numpy(normalize_and_pad(resized, self.img_size)[0]), resized.shape[:2]

    def _instances(self, index: int, original: tuple[int, int], input_hw: tuple[int, int], rng) -> np.ndarray:
        """``K x h x w`` bool masks in the (unpadded) input frame, at most ``max_instances``."""
        rec = self.records[index]
        cfg = self.cfg
        if rec.labels is None:
            return np.zeros((0, *input_hw), dtype=bool)
        if rec.kind == "sa1b":
            anns = read_annotations(rec.labels)
            scale = (input_hw[0] / original[0]) * (input_hw[1] / original[1])
            areas = np.array([annotation_area(a) * scale for a in anns], dtype=np.float64)
            ok = np.flatnonzero(areas >= max(cfg.min_instance_area, 1))
            chosen = np.sort(rng.choice(ok, size=min(len(ok), cfg.max_instances), replace=False)) if len(ok) else ok
            masks = decode_annotations(anns, chosen)
            if len(chosen) and masks.shape[1:] != tuple(original):
                raise ValueError(f"{rec.labels}: masks are {masks.shape[1:]} but the image is {original}")
            masks = nearest_resize(masks, input_hw) if len(chosen) else np.zeros((0, *input_hw), bool)
            return masks[masks.reshape(len(masks), -1).any(axis=1)]
        labels = read_array(rec.labels, labels=True)
        if labels.ndim != 2:
            raise ValueError(f"label image {rec.labels} must be 2D (H, W) integers, got shape {labels.shape}")
        if labels.shape != tuple(original):
            raise ValueError(f"label image {rec.labels} is {labels.shape} but image {rec.image} is {tuple(original)}")
        lab = nearest_resize(labels, input_hw)
        ids, counts = np.unique(lab[lab > 0], return_counts=True)
        ids = ids[counts >= max(cfg.min_instance_area, 1)]
        if len(ids) > cfg.max_instances:
            ids = np.sort(rng.choice(ids, size=cfg.max_instances, replace=False))
        return lab[None] == ids[:, None, None]

    # -- the sample ----------------------------------------------------------------------------
    def uses_pipeline(self, index: int) -> bool:
        """Whether sample ``index`` takes the augmentation pipeline (see the module doc)."""
        return self.records[index].kind == "synthetic" or bool(set(self.cfg.augment) & set(PIPELINE_AUGMENTATIONS))

    def native_pair(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """``(H x W x 3 uint8, H x W label map or None)`` at the image's own resolution; a
        synthetic record is generated here (frame-sized, the regime from ``rng``)."""
        rec, cfg, s = self.records[index], self.cfg, self.img_size
        lo, hi = cfg.percentiles
        if rec.kind == "synthetic":
            from .synthetic import rich_synthetic_nuclei

            regimes = list(cfg.synthetic_regimes) or list(SYNTHETIC_REGIMES)
            regime = regimes[int(rng.integers(len(regimes)))]
            shape = (s, s)
            if rng.random() < 0.3:  # some non-square images, padded like the predictor pads
                short = int(s * rng.uniform(0.4, 1.0))
                shape = (short, s) if rng.random() < 0.5 else (s, short)
            img, lab, _ = rich_synthetic_nuclei(rng, shape, regime, radius_scale=s / 1024)
            return to_rgb_uint8(img, percentiles=(lo, hi)), lab
        raw = read_array(rec.image)
        try:
            rgb = to_rgb_uint8(raw, channel_axis=cfg.channel_axis, percentiles=(lo, hi))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{rec.image}: {err}") from err
        if rec.labels is None:
            return rgb, None
        labels = read_array(rec.labels, labels=True)
        if labels.ndim != 2:
            raise ValueError(f"label image {rec.labels} must be 2D (H, W) integers, got shape {labels.shape}")
        if labels.shape != rgb.shape[:2]:
            raise ValueError(f"label image {rec.labels} is {labels.shape} but image {rec.image} is {rgb.shape[:2]}")
        return rgb, labels

    def _pipeline_item(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """The augmented ``h x w x 3`` uint8 (h, w <= img_size) and its ``K x h x w`` instances."""
        cfg, s = self.cfg, self.img_size
        rgb, labels = self.native_pair(index, rng)
        lab = labels if labels is not None else np.zeros(rgb.shape[:2], np.int32)
        if self.records[index].kind == "synthetic":
            if max(lab.shape) > s:
                rgb, lab = aug.fill_frame(rgb, lab, s)
        elif "scale" in cfg.augment and rng.random() < cfg.scale_probability:
            rgb, lab, _ = aug.random_scale_crop(rgb, lab, rng, s, cfg.object_size_px,
                                                canvas_probability=cfg.canvas_probability)
        else:
            rgb, lab = aug.fill_frame(rgb, lab, s)
        geo = [a for a in cfg.augment if a in aug.GEOMETRIC]
        if geo:
            rgb, lab = aug.random_flip_rot(rgb, lab, rng, geo)
        if "intensity" in cfg.augment:
            rgb = aug.intensity_augment(rgb, lab, rng)
        if not self.with_instances:
            return rgb, None
        ids, counts = np.unique(lab[lab > 0], return_counts=True)
        ids = ids[counts >= max(cfg.min_instance_area, 1)]
        if len(ids) > cfg.max_instances:
            ids = np.sort(rng.choice(ids, size=cfg.max_instances, replace=False))
        return rgb, lab[None] == ids[:, None, None]

    def __getitem__(self, index: int) -> dict:
        rng = self.rng(index)
        if self.uses_pipeline(index):
            resized, masks = self._pipeline_item(index, rng)
            return self._sample(index, resized, masks, rng)
        resized, original = self.load_resized_rgb(index)
        input_hw = resized.shape[:2]
        masks = None
        if self.with_instances:
            masks = self._instances(index, original, input_hw, rng)
        flips = [a for a in self.cfg.augment if rng.random() < 0.5]
        for flip in flips:
            axis = 1 if flip == "hflip" else 0
            resized = np.flip(resized, axis=axis)
            if masks is not None:
                masks = np.flip(masks, axis=axis + 1)
        return self._sample(index, resized, masks, rng)

    def _sample(self, index: int, resized: np.ndarray, masks: np.ndarray | None, rng) -> dict:
        input_hw = resized.shape[:2]
        image = torch.from_numpy(normalize_and_pad(np.ascontiguousarray(resized), self.img_size)[0])
        sample = {"image": image, "input_size": torch.tensor(input_hw, dtype=torch.int64), "index": index}
        if self.embedding_cache is not None:
            sample["teacher_embedding"] = torch.from_numpy(self.embedding_cache.load(self.records[index].key))
        if masks is not None:
            sample.update(self._prompts(masks, input_hw, rng))
        return sample

    def _prompts(self, masks: np.ndarray, input_hw: tuple[int, int], rng) -> dict:
        s = self.img_size
        if len(masks) == 0 and self.pseudo_prompts:
            pts = [random_point_prompt(input_hw, rng) for _ in range(self.cfg.max_instances)]
            boxes = [random_box_around(p, input_hw, rng) for p in pts]
            out = {"points": torch.from_numpy(np.stack(pts)), "boxes": torch.from_numpy(np.stack(boxes))}
            if self.with_masks:
                out["masks"] = torch.zeros((len(pts), s // 4, s // 4), dtype=torch.bool)
            return out
        k = len(masks)
        boxes = np.stack([mask_to_box(m) for m in masks]) if k else np.zeros((0, 4), np.float32)
        points = np.stack([sample_point_in_mask(m, rng) for m in masks]) if k else np.zeros((0, 2), np.float32)
        out = {"points": torch.from_numpy(points), "boxes": torch.from_numpy(boxes)}
        if self.with_masks:
            padded = np.zeros((k, s, s), dtype=bool)
            padded[:, : input_hw[0], : input_hw[1]] = masks
            out["masks"] = torch.from_numpy(downsample_masks(padded, 4))
        return out


def collate(samples: list[dict]) -> dict:
    """Stack images; concatenate instances of all images (``instance_image`` says whose they are)."""
    batch = {
        "image": torch.stack([s["image"] for s in samples]),
        "input_size": torch.stack([s["input_size"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
    }
    if "teacher_embedding" in samples[0]:
        batch["teacher_embedding"] = torch.stack([s["teacher_embedding"] for s in samples])
    if "boxes" in samples[0]:
        counts = torch.tensor([len(s["boxes"]) for s in samples], dtype=torch.int64)
        batch["boxes"] = torch.cat([s["boxes"] for s in samples])
        batch["points"] = torch.cat([s["points"] for s in samples])
        batch["instance_image"] = torch.repeat_interleave(torch.arange(len(samples)), counts)
        if "masks" in samples[0]:
            batch["masks"] = torch.cat([s["masks"] for s in samples])
    return batch


def epoch_batches(
    n: int, batch_size: int, world_size: int, rank: int, seed: int, epoch: int, shuffle: bool = True
) -> list[list[int]]:
    """This rank's batches of dataset indices for ``epoch``.

    The permutation (seeded by ``seed`` and ``epoch``) is padded by wrapping around to a multiple
    of ``batch_size * world_size``, so every rank gets ``ceil(n / (batch_size * world_size))``
    equal batches; global batch ``i`` is split into consecutive per-rank chunks.
    """
    if n < 1:
        raise ValueError("the dataset is empty")
    order = (
        torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        if shuffle
        else list(range(n))
    )
    per_step = batch_size * world_size
    steps = -(-n // per_step)
    total = steps * per_step
    order = (order * (-(-total // n)))[:total]
    return [
        order[s * per_step + rank * batch_size : s * per_step + (rank + 1) * batch_size] for s in range(steps)
    ]
