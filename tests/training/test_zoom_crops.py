"""Zoomed crops for the prior's training set (``train recipe nuclei prior-data``)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_edgesam.cli import main
from napari_edgesam.datasets import synthetic_nuclei_2d
from napari_edgesam.training.prior.zoom_crops import MIN_SIDE, write_zoom_crops, zoom_crop


def test_zoom_crop_keeps_image_and_labels_aligned():
    image, labels = synthetic_nuclei_2d(seed=4, shape=(200, 300), n_nuclei=20)
    rgb = np.stack([image, image // 2, image // 3], -1)
    rng = np.random.default_rng(0)
    for zoom in (2, 4):
        img_c, lab_c, (y, x) = zoom_crop(rgb, labels, zoom, rng)
        assert lab_c.shape == (200 // zoom, 300 // zoom) and img_c.shape == (*lab_c.shape, 3)
        np.testing.assert_array_equal(img_c, rgb[y : y + lab_c.shape[0], x : x + lab_c.shape[1]])
        np.testing.assert_array_equal(lab_c, labels[y : y + lab_c.shape[0], x : x + lab_c.shape[1]])
        assert (lab_c > 0).mean() >= 0.05  # a crop with nuclei in it
    with pytest.raises(ValueError, match="differ in size"):
        zoom_crop(image[:, :10], labels, 2, rng)


def _folder(root, pairs):
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for name, (image, labels) in pairs.items():
        tifffile.imwrite(root / "images" / f"{name}.tif", image)
        tifffile.imwrite(root / "labels" / f"{name}.tif", labels)


def test_write_zoom_crops_copies_and_crops_each_distinct_image_once(tmp_path):
    a, b = synthetic_nuclei_2d(seed=1, shape=(128, 128), n_nuclei=10), synthetic_nuclei_2d(seed=2, shape=(128, 96))
    _folder(tmp_path / "train", {"a0": a, "a1": a, "b": b})  # a1: a repeat, as the recipe writes
    report = write_zoom_crops(tmp_path / "train" / "images", tmp_path / "train" / "labels", tmp_path / "ms",
                              zooms=(2, 4))
    assert report == {"images": 3, "distinct": 2, "crops": 4, "out": str(tmp_path / "ms")}
    names = sorted(p.name for p in (tmp_path / "ms" / "images").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "ms" / "labels").iterdir()) and len(names) == 7
    for name in names:
        img = tifffile.imread(tmp_path / "ms" / "images" / name)
        lab = tifffile.imread(tmp_path / "ms" / "labels" / name)
        assert img.shape == lab.shape
        if "_zoom" in name:
            src = name.split("_zoom")[0]
            zoom, y, x = (float(v) for v in name.removesuffix(".tif").split("_zoom")[1].split("_"))
            full_img, full_lab = (a if src.startswith("a") else b)
            assert img.shape == tuple(max(MIN_SIDE, int(n / zoom)) for n in full_lab.shape)  # 96 / 4 -> 32
            np.testing.assert_array_equal(lab, full_lab[int(y) : int(y) + lab.shape[0], int(x) : int(x) + lab.shape[1]])
            np.testing.assert_array_equal(img, full_img[int(y) : int(y) + img.shape[0], int(x) : int(x) + img.shape[1]])


def test_zoom_crops_refuse_held_out_data_and_run_from_the_recipe(tmp_path, capsys):
    pair = synthetic_nuclei_2d(seed=3, shape=(96, 96), n_nuclei=6)
    _folder(tmp_path / "heldout", {"x": pair})
    with pytest.raises(ValueError, match="held-out"):
        write_zoom_crops(tmp_path / "heldout" / "images", tmp_path / "heldout" / "labels", tmp_path / "o")
    _folder(tmp_path / "data" / "train", {"x": pair})
    assert main(["train", "recipe", "nuclei", "prior-data", "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "ms")]) == 0
    assert '"crops": 4' in capsys.readouterr().out
    assert len(list((tmp_path / "ms" / "images").iterdir())) == 5
