"""The headless CLI: segment and info."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_edgesam.cli import main
from napari_edgesam.inference.batch.io import write_labels


def read_image(path):
    return tifffile.imread(path)


@pytest.fixture()
def image_file(tmp_path, edge_golden):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, edge_golden["image"])
    return path


def test_segment_boxes(tmp_path, image_file, golden_checkpoint, golden_predictor, edge_golden, capsys):
    out = tmp_path / "labels.tif"
    rc = main(["segment", str(image_file), "--box", "60,45,260,205", "--box", "300,200,390,290",
               "-o", str(out), "--model", str(golden_checkpoint)])
    assert rc == 0
    labels = read_image(out)
    assert labels.shape == (300, 400)
    golden_predictor.set_image(edge_golden["image"])
    first, _, _ = golden_predictor.segment(box=[60, 45, 260, 205])
    second, _, _ = golden_predictor.segment(box=[300, 200, 390, 290])
    np.testing.assert_array_equal(labels == 1, first)
    np.testing.assert_array_equal(labels == 2, second & ~first)
    assert "2 object(s)" in capsys.readouterr().out


def test_segment_box_alone(tmp_path, image_file, golden_checkpoint, golden_predictor, edge_golden):
    """By default a box whose first mask falls short is decoded again with its centre as a
    positive point; ``--box-alone`` decodes the box alone."""
    box = [20, 20, 380, 280]
    golden_predictor.set_image(edge_golden["image"])
    with_centre, _, _ = golden_predictor.segment(box=box)
    alone, _, _ = golden_predictor.segment(box=box, box_centre=False)
    assert (with_centre != alone).any(), "the golden model's mask falls short of this box"
    for flag, expected in (([], with_centre), (["--box-alone"], alone)):
        out = tmp_path / f"labels{len(flag)}.tif"
        assert main(["segment", str(image_file), "--box", ",".join(map(str, box)), "-o", str(out),
                     "--model", str(golden_checkpoint), *flag]) == 0
        np.testing.assert_array_equal(read_image(out) == 1, expected)


def test_segment_points(tmp_path, image_file, golden_checkpoint, golden_predictor, edge_golden):
    out = tmp_path / "labels.tif"
    rc = main(["segment", str(image_file), "--point", "200,150", "--point", "100,75,0",
               "-o", str(out), "--model", str(golden_checkpoint)])
    assert rc == 0
    golden_predictor.set_image(edge_golden["image"])
    mask, _, _ = golden_predictor.segment(np.array([[200, 150], [100, 75]]), np.array([1, 0]))
    np.testing.assert_array_equal(read_image(out) == 1, mask)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--box", "1,2,3"], "needs 4 numbers"),
        (["--point", "500,10"], "outside the image"),
        ([], "at least one --box or --point"),
        (["--box", "1,2,30,40", "--box", "5,5,9,9", "--point", "3,3"], "at most one --box"),
    ],
)
def test_segment_errors(tmp_path, image_file, golden_checkpoint, capsys, args, message):
    try:
        rc = main(["segment", str(image_file), *args, "-o", str(tmp_path / "o.tif"), "--model", str(golden_checkpoint)])
    except SystemExit as exit_:  # argparse type errors
        rc = exit_.code
    assert rc != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


def test_segment_missing_image(tmp_path, golden_checkpoint, capsys):
    rc = main(["segment", str(tmp_path / "nope.tif"), "--box", "1,1,5,5", "-o", str(tmp_path / "o.tif"),
               "--model", str(golden_checkpoint)])
    assert rc == 1 and "image not found" in capsys.readouterr().err


def test_info_json(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_EDGESAM_CACHE", str(tmp_path))
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cache_dir"] == str(tmp_path)
    assert "cpu" in info["devices"]
    # openvino is in the test env: it runs the shipped model, with its gated int8 encoder
    assert info["auto_backend"].startswith("openvino with the int8 encoder of edgesam-nuclei (OpenVINO is installed")
    assert "mask IoU vs float32 0.9" in info["auto_backend"]
    names = {m["name"] for m in info["models"]}
    assert {"edgesam", "edgesam-3x"} <= names


def test_write_labels_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "l.tif"
    write_labels(path, np.ones((4, 4), np.int64))
    import tifffile as tf

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(tf, "imwrite", boom)  # fails mid-write
    with pytest.raises(OSError):
        write_labels(path, np.full((4, 4), 7))
    assert (read_image(path) == 1).all()  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["l.tif"]  # no temp file left


def test_segment_single_click_with_prior(tmp_path, image_file, golden_checkpoint, edge_golden):
    """``--prior auto`` finds ``edge_sam.prior.pth`` beside the model; one click then goes
    through the granularity rule (box proposal + point)."""
    import shutil

    import torch

    from napari_edgesam.inference.loading.api import load_model
    from napari_edgesam.inference.prior import save_box_head
    from napari_edgesam.model import build_edge_sam
    from napari_edgesam.model.box_head import BoxHead, encoder_signature

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    ckpt = shutil.copy(golden_checkpoint, model_dir / "edge_sam.pth")
    torch.manual_seed(0)
    enc = build_edge_sam(ckpt).image_encoder
    save_box_head(BoxHead(), model_dir / "edge_sam.prior.pth",
                  {"encoder": "golden", "encoder_signature": encoder_signature(enc)})
    out = tmp_path / "labels.tif"
    assert main(["segment", str(image_file), "--point", "200,150", "-o", str(out),
                 "--model", str(ckpt), "--prior", "auto"]) == 0
    predictor = load_model(ckpt, prior="auto")
    assert predictor.prior is not None
    predictor.set_image(edge_golden["image"])
    assert predictor.proposals is not None
    mask, _, _ = predictor.segment_click([200, 150])
    np.testing.assert_array_equal(read_image(out) == 1, mask)


def test_segment_keep_outside_box(tmp_path, image_file, golden_checkpoint, golden_predictor, edge_golden):
    """By default a box's mask ends at the box; ``--keep-outside-box`` keeps the rest."""
    box = [60, 45, 260, 205]
    golden_predictor.set_image(edge_golden["image"])
    cut, _, _ = golden_predictor.segment(box=box)
    free, _, _ = golden_predictor.segment(box=box, clip_box=False)
    assert (free & ~cut).any(), "the golden model's mask reaches past this box"
    for flag, expected in (([], cut), (["--keep-outside-box"], free)):
        out = tmp_path / f"labels{len(flag)}.tif"
        assert main(["segment", str(image_file), "--box", ",".join(map(str, box)), "-o", str(out),
                     "--model", str(golden_checkpoint), *flag]) == 0
        np.testing.assert_array_equal(read_image(out) == 1, expected)
