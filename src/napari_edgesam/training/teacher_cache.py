"""Precomputed teacher embeddings: one float16 ``.npy`` per image, written once, resumable.

Layout of a cache folder::

    manifest.json            {"format": 1, "teacher": <identity>, "img_size": S, "shape": [256, g, g], "dtype": "float16"}
    <key>.<hash>.npy         256 x g x g float16 (key: the image path relative to the data root)

Every file is written atomically, so an interrupted run leaves only complete files and the
next run skips them. With several processes (torchrun) each rank embeds a disjoint share of
the images and writes its own files; rank 0 writes the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch

from .._atomic import atomic_open
from .checkpoint import atomic_write_text
from .distributed import DistInfo, barrier

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CACHE_FORMAT = 1


class TeacherEmbeddingCache:
    """A folder of float16 teacher embeddings for one teacher at one input size.

    Args:
        root: the folder.
        teacher: the teacher's identity (see :func:`.teacher.teacher_identity`).
        img_size: input size the teacher embedded at (embeddings are ``256 x S/16 x S/16``).
        create: write the manifest if the folder has none (else a missing manifest is an error).

    Raises:
        ValueError: the folder holds embeddings of another teacher or input size.
        FileNotFoundError: no manifest and ``create`` is False.
    """

    def __init__(self, root: str | os.PathLike, teacher: str, img_size: int, *, create: bool = False) -> None:
        self.root = Path(root)
        self.teacher = teacher
        self.img_size = int(img_size)
        self.shape = (256, self.img_size // 16, self.img_size // 16)
        manifest = self.root / MANIFEST
        expected = {
            "format": CACHE_FORMAT,
            "teacher": teacher,
            "img_size": self.img_size,
            "shape": list(self.shape),
            "dtype": "float16",
        }
        if manifest.is_file():
            found = json.loads(manifest.read_text(encoding="utf-8"))
            diff = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
            if diff:
                detail = "; ".join(f"{k}: cache has {a!r}, run needs {b!r}" for k, (a, b) in diff.items())
                raise ValueError(
                    f"teacher embedding cache {self.root} was made for another setup ({detail}); "
                    "use another teacher.cache_dir or delete it"
                )
        elif create:
            atomic_write_text(json.dumps(expected, indent=2), manifest)
        else:
            raise FileNotFoundError(
                f"no teacher embedding cache at {self.root} ({MANIFEST} missing): run "
                "'napari-edgesam train precompute --config ...' first"
            )

    def path(self, key: str) -> Path:
        """``<readable key>.<8 hex of sha256(key)>.npy`` (the hash keeps distinct keys apart)."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", key)[-80:]
        tag = hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]
        return self.root / f"{safe}.{tag}.npy"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def missing(self, keys: list[str]) -> list[str]:
        return [k for k in keys if not self.has(k)]

    def load(self, key: str) -> np.ndarray:
        """``256 x g x g`` float16 embedding of ``key``."""
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(
                f"no cached teacher embedding for {key!r} ({path}): run the precompute step again"
            )
        arr = np.load(path, allow_pickle=False)
        if arr.shape != self.shape or arr.dtype != np.float16:
            raise ValueError(f"cached embedding {path} is {arr.dtype} {arr.shape}, expected float16 {self.shape}")
        return arr

    def save(self, key: str, embedding: np.ndarray | torch.Tensor) -> Path:
        """Store one ``256 x g x g`` embedding as float16 (atomically)."""
        if isinstance(embedding, torch.Tensor):
            embedding = embedding.detach().float().cpu().numpy()
        arr = np.asarray(embedding).astype(np.float16)
        if arr.shape != self.shape:
            raise ValueError(f"embedding for {key!r} is {arr.shape}, expected {self.shape}")
        path = self.path(key)
        with atomic_open(path, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        return path


def precompute_embeddings(
    dataset,
    teacher,
    cache: TeacherEmbeddingCache,
    *,
    batch_size: int = 4,
    info: DistInfo | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    num_workers: int = 0,
) -> int:
    """Embed every image of ``dataset`` not yet in ``cache``; returns how many this rank wrote.

    Args:
        dataset: a :class:`.data.TrainingDataset` (its ``model_input`` gives un-augmented inputs).
        teacher: a :class:`.teacher.Teacher` (moved to ``device``).
        cache: the destination.
        batch_size: images per teacher forward pass.
        info: distributed info; rank ``r`` of ``W`` handles the missing images ``r, r + W, ...``.
    """
    info = info or DistInfo()
    keys = dataset.keys()
    todo = [i for i, k in enumerate(keys) if not cache.has(k)]
    mine = todo[info.rank :: info.world_size]
    logger.info("teacher cache %s: %d of %d images to embed (%d on this rank)", cache.root, len(todo), len(keys), len(mine))
    teacher.to(device)
    written = 0
    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc="teacher embeddings", unit="img")
    loader = torch.utils.data.DataLoader(
        _InputsOnly(dataset, mine), batch_size=batch_size, num_workers=num_workers, collate_fn=_stack_inputs
    )
    for images, indices in loader:
        emb = teacher.embed(images.to(device))
        for j, i in enumerate(indices):
            cache.save(keys[i], emb[j])
            written += 1
        if bar is not None:
            bar.update(len(indices))
    if bar is not None:
        bar.close()
    barrier()
    return written


class _InputsOnly(torch.utils.data.Dataset):
    def __init__(self, dataset, indices: list[int]) -> None:
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = self.indices[j]
        return self.dataset.model_input(i)[0], i


def _stack_inputs(items):
    return torch.stack([x for x, _ in items]), [i for _, i in items]
