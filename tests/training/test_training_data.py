"""Training data: folders of images + labels, SA-1B jpg + json, batching and determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from _helpers import one_thread  # noqa: F401
from napari_edgesam.inference.core.preprocess import (
    normalize_and_pad,
    resize_longest_side,
    resized_shape,
    to_rgb_uint8,
)
from napari_edgesam.training.config import DataConfig
from napari_edgesam.training.data import (
    TrainingDataset,
    collate,
    downsample_masks,
    epoch_batches,
    nearest_resize,
)
from napari_edgesam.training.records import find_records
from napari_edgesam.training.rle import decode_rle
from napari_edgesam.training.synthetic import write_folder_dataset, write_sa1b_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def folder(tmp_path):
    images, labels = write_folder_dataset(tmp_path, n_images=3, shape=(96, 128), n_blobs=5, seed=1)
    return DataConfig(images=str(images), labels=str(labels), max_instances=3, min_instance_area=4)


def test_sample_matches_the_predictor_preprocessing(folder):
    ds = TrainingDataset(find_records(folder), folder, img_size=64, seed=0, with_masks=True)
    s = ds[0]
    raw = tifffile.imread(ds.records[0].image)
    expected = normalize_and_pad(resize_longest_side(to_rgb_uint8(raw), 64), 64)[0]
    assert s["image"].shape == (3, 64, 64)
    np.testing.assert_array_equal(s["image"].numpy(), expected)
    assert s["input_size"].tolist() == list(resized_shape((96, 128), 64)) == [48, 64]
    k = len(s["boxes"])
    assert 1 <= k <= 3 and s["points"].shape == (k, 2) and s["masks"].shape == (k, 16, 16)


def test_prompts_agree_with_the_masks(folder):
    ds = TrainingDataset(find_records(folder), folder, img_size=128, seed=0, with_masks=True)
    for i in range(len(ds)):
        s = ds[i]
        for box, pt, low in zip(s["boxes"], s["points"], s["masks"], strict=True):
            x0, y0, x1, y1 = box.tolist()
            assert x0 <= pt[0] <= x1 and y0 <= pt[1] <= y1
            ys, xs = torch.nonzero(low, as_tuple=True)
            if len(ys):  # low-res pixels (4x4 blocks) lie within the box
                assert xs.min() * 4 >= x0 - 4 and (xs.max() + 1) * 4 <= x1 + 5
                assert ys.min() * 4 >= y0 - 4 and (ys.max() + 1) * 4 <= y1 + 5


def test_known_rectangle_box_and_low_res_mask(tmp_path):
    (tmp_path / "i").mkdir()
    (tmp_path / "l").mkdir()
    lab = np.zeros((64, 64), np.uint8)
    lab[8:24, 12:40] = 3
    tifffile.imwrite(tmp_path / "i" / "a.tif", (lab * 50).astype(np.uint8))
    tifffile.imwrite(tmp_path / "l" / "a_labels.tif", lab)
    cfg = DataConfig(images=str(tmp_path / "i"), labels=str(tmp_path / "l"), augment=[])
    s = TrainingDataset(find_records(cfg), cfg, img_size=64, with_masks=True)[0]
    assert s["boxes"].tolist() == [[12.0, 8.0, 39.0, 23.0]]
    expected = np.zeros((16, 16), bool)
    expected[2:6, 3:10] = True
    np.testing.assert_array_equal(s["masks"][0].numpy(), expected)
    flipped = DataConfig(images=cfg.images, labels=cfg.labels, augment=["hflip"])
    ds = TrainingDataset(find_records(flipped), flipped, img_size=64, with_masks=True)
    boxes = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        boxes.add(tuple(ds[0]["boxes"][0].tolist()))
    assert boxes == {(12.0, 8.0, 39.0, 23.0), (63 - 39.0, 8.0, 63 - 12.0, 23.0)}  # x -> 63 - x


def test_samples_are_deterministic_per_seed_epoch_index(folder):
    ds = TrainingDataset(find_records(folder), folder, img_size=64, seed=5, with_masks=True)
    a, b = ds[1], ds[1]
    assert torch.equal(a["points"], b["points"]) and torch.equal(a["boxes"], b["boxes"])
    draws = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        draws.add(tuple(ds[1]["points"].flatten().tolist()))
    assert len(draws) > 1  # a new epoch draws new points / instances


def test_sa1b_layout(tmp_path):
    root = write_sa1b_dataset(tmp_path / "sa", n_images=2, shape=(96, 128), seed=2)
    cfg = DataConfig(kind="sa1b", images=str(root), max_instances=16, min_instance_area=1)
    records = find_records(cfg)
    assert [r.key for r in records] == ["sa_000", "sa_001"]
    ds = TrainingDataset(records, cfg, img_size=128, with_masks=True)
    s = ds[0]
    anns = json.loads(records[0].labels.read_text())["annotations"]
    # img_size 128 keeps the 96 x 128 image unresized: low-res masks are the 4x-downsampled RLE masks
    full = np.stack([decode_rle(a["segmentation"]) for a in anns])
    padded = np.zeros((len(full), 128, 128), bool)
    padded[:, :96] = full
    expected = downsample_masks(padded, 4)
    got = s["masks"].numpy()
    assert len(got) == len(anns)
    expected = expected[[m.any() for m in full]]
    np.testing.assert_array_equal(np.sort(got.reshape(len(got), -1), axis=0), np.sort(expected.reshape(len(expected), -1), axis=0))


def test_unlabelled_images_get_pseudo_prompts(folder):
    cfg = DataConfig(images=folder.images, labels=None, max_instances=4)
    ds = TrainingDataset(find_records(cfg), cfg, img_size=64, pseudo_prompts=True)
    s = ds[0]
    h, w = s["input_size"].tolist()
    assert s["points"].shape == (4, 2) and s["boxes"].shape == (4, 4)
    assert (s["points"][:, 0] < w).all() and (s["points"][:, 1] < h).all()
    assert (s["boxes"][:, 2] < w).all() and (s["boxes"][:, 3] < h).all()


def test_collate_concatenates_instances(folder):
    ds = TrainingDataset(find_records(folder), folder, img_size=64, with_masks=True)
    samples = [ds[0], ds[1]]
    b = collate(samples)
    k0, k1 = len(samples[0]["boxes"]), len(samples[1]["boxes"])
    assert b["image"].shape == (2, 3, 64, 64)
    assert b["instance_image"].tolist() == [0] * k0 + [1] * k1
    assert b["masks"].shape == (k0 + k1, 16, 16) and b["index"].tolist() == [0, 1]


def test_epoch_batches_split_ranks_and_cover_the_data():
    n = 10
    r0 = epoch_batches(n, 2, world_size=2, rank=0, seed=3, epoch=0)
    r1 = epoch_batches(n, 2, world_size=2, rank=1, seed=3, epoch=0)
    assert len(r0) == len(r1) == 3  # ceil(10 / 4); padded by wrapping around
    seen = [i for b in r0 + r1 for i in b]
    assert set(seen) == set(range(n)) and len(seen) == 12
    assert not set(r0[0]) & set(r1[0])
    assert epoch_batches(n, 2, 2, 0, 3, 0) == r0
    assert epoch_batches(n, 2, 2, 0, 3, 1) != r0


def test_nearest_resize_and_missing_labels(tmp_path, folder):
    a = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(nearest_resize(a, (6, 8))[::2, ::2], a)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no label image"):
        find_records(DataConfig(images=folder.images, labels=str(tmp_path / "empty")))
    with pytest.raises(FileNotFoundError):
        find_records(DataConfig(images=str(tmp_path / "nope")))
