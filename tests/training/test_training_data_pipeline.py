"""The augmentation pipeline of the training data: config fields, alignment, synthetic records."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from _helpers import one_thread  # noqa: F401
from napari_edgesam.constants import PIXEL_MEAN, PIXEL_STD
from napari_edgesam.training.config import ConfigError, DataConfig, TrainConfig
from napari_edgesam.training.data import TrainingDataset
from napari_edgesam.training.records import find_records

pytestmark = pytest.mark.usefixtures("one_thread")
ALL = ["hflip", "vflip", "rot90", "scale", "intensity"]


@pytest.fixture()
def banded(tmp_path):
    """Two uint8 images whose intensity is 3 * label + 20 on nuclei (0 elsewhere)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    yy, xx = np.mgrid[:180, :240]
    for i in range(2):
        lab = np.zeros((180, 240), np.uint16)
        k = 0
        for cy in range(20 + 5 * i, 170, 38):
            for cx in range(22, 230, 40):
                k += 1
                lab[((yy - cy) / 13.0) ** 2 + ((xx - cx) / (9.0 + i)) ** 2 <= 1] = k
        grey = np.where(lab > 0, 3 * lab + 20, 0).astype(np.uint8)
        tifffile.imwrite(tmp_path / f"images/im{i}.tif", grey)
        tifffile.imwrite(tmp_path / f"labels/im{i}.tif", lab)
    return DataConfig(images=str(tmp_path / "images"), labels=str(tmp_path / "labels"), max_instances=6,
                      min_instance_area=4)


def grey_of(sample):
    """The sample's image back in uint8 grey levels (channel 0)."""
    x = sample["image"].numpy()[0] * PIXEL_STD[0] + PIXEL_MEAN[0]
    return np.round(x).astype(int)


def test_geometric_pipeline_keeps_masks_on_their_objects(banded):
    banded.augment = ["hflip", "vflip", "rot90", "scale"]
    banded.scale_probability = 1.0
    ds = TrainingDataset(find_records(banded), banded, 256, seed=3, with_masks=True)
    checked = 0
    for epoch in range(10):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            grey = grey_of(s)
            h, w = s["input_size"].tolist()
            assert h <= 256 and w <= 256
            img = s["image"].numpy()
            assert not img[:, h:, :].any() and not img[:, :, w:].any()  # padded bottom/right with zeros
            for m in s["masks"].numpy():
                inner = ndi.binary_erosion(m, iterations=2)
                if not inner.any():
                    continue
                vals = np.unique(grey[np.kron(inner, np.ones((4, 4), bool))])
                # one nucleus, one grey level: the mask sits on its object
                assert vals.size == 1 and (vals[0] - 20) % 3 == 0 and vals[0] > 20, vals
                checked += 1
            for (x0, y0, x1, y1), (px, py), _mask in zip(s["boxes"].numpy(), s["points"].numpy(), s["masks"].numpy()):
                assert 0 <= x0 <= px <= x1 <= w and 0 <= y0 <= py <= y1 <= h
    assert checked > 10


def test_scale_spans_small_and_large_objects(banded):
    banded.augment = ["scale"]
    banded.scale_probability = 1.0
    banded.object_size_px = [6, 400]
    ds = TrainingDataset(find_records(banded), banded, 512, seed=0, with_masks=True)
    sizes = []
    for epoch in range(12):
        ds.set_epoch(epoch)
        s = ds[0]
        area = s["masks"].numpy().sum(axis=(1, 2)) * 16  # low-res pixels -> input pixels
        if area.size:
            sizes.append(np.sqrt(area.max()))
    assert min(sizes) < 15 and max(sizes) > 60


def test_synthetic_records_and_determinism(banded):
    banded.augment = ALL
    banded.synthetic_images = 2
    banded.synthetic_regimes = ["small", "large"]
    recs = find_records(banded)
    assert len(recs) == 4 and [r.kind for r in recs[2:]] == ["synthetic", "synthetic"]
    ds = TrainingDataset(recs, banded, 256, seed=1, with_masks=True)
    a, b = ds[3], ds[3]
    assert np.array_equal(a["image"].numpy(), b["image"].numpy())
    assert np.array_equal(a["masks"].numpy(), b["masks"].numpy())
    assert 0 < len(a["masks"]) <= 6 and a["image"].shape == (3, 256, 256)
    ds.set_epoch(1)
    c = ds[3]
    assert not np.array_equal(a["image"].numpy(), c["image"].numpy())  # new images every epoch
    with pytest.raises(ValueError, match="no file"):
        ds.load_resized_rgb(3)


def test_config_fields_and_their_errors(tmp_path):
    base = {"phase": "finetune", "data": {"images": "x", "labels": "y"}}
    cfg = TrainConfig.from_dict(base).with_overrides(
        ["data.augment=[\"scale\",\"intensity\",\"rot90\"]", "data.synthetic_images=5", "data.object_size_px=[8,300]"])
    assert cfg.data.synthetic_images == 5 and cfg.data.object_size_px == [8.0, 300.0]
    bad = [
        ("data.augment=[\"zoom\"]", "data.augment entry"),
        ("data.object_size_px=[10,5]", "object_size_px"),
        ("data.scale_probability=1.5", "scale_probability"),
        ("data.synthetic_regimes=[\"giant\"]", "synthetic_regimes"),
        ("data.synthetic_images=-1", "synthetic_images"),
    ]
    for item, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            TrainConfig.from_dict(base).with_overrides([item])
    with pytest.raises(ConfigError, match="kind 'folder'"):
        TrainConfig.from_dict({"phase": "finetune", "data": {"images": "x", "kind": "sa1b", "augment": ["scale"]}}).validate()
    with pytest.raises(ConfigError, match="synthetic_images cannot"):
        TrainConfig.from_dict({"phase": "phase2", "teacher": {"kind": "sam", "cache_dir": "c"},
                               "data": {"images": "x", "synthetic_images": 2}}).validate()


def test_shipped_v2_config_is_valid():
    from napari_edgesam.cli.train import resolve_config

    cfg = TrainConfig.from_file(resolve_config("nuclei_cpu_v2"))
    assert set(ALL) <= set(cfg.data.augment) and cfg.data.synthetic_images > 0
    assert cfg.model.img_size == 1024 and cfg.run.resume and cfg.run.checkpoint_every > 0
