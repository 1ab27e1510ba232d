"""``napari-edgesam train adapt``: adapt a model to a folder of labelled images (issue #14)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_edgesam.cli import main
from napari_edgesam.datasets import synthetic_nuclei_2d

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two planes of nuclei (which the base segments well) written as an annotation export."""
    from napari_edgesam.interactive.annotations import AnnotatedImage, export_annotations

    items = []
    for seed in (0, 1):
        img, lab = synthetic_nuclei_2d(seed=seed, shape=(160, 160), n_nuclei=6, radius=(10.0, 18.0))
        items.append(AnnotatedImage(f"nuclei{seed}", img, lab, []))
    return export_annotations(tmp_path_factory.mktemp("adapt_cli") / "ann", items)


def _args(folder, out, *more):
    return ["train", "adapt", "--images", str(folder / "images"), "--labels", str(folder / "labels"),
            "--model", "edgesam-nuclei", "-o", str(out), *more]


def test_train_adapt_writes_a_loadable_model_with_its_card(folder, tmp_path, capsys):
    from napari_edgesam import load_model

    out = tmp_path / "models" / "mine.pth"
    rc = main(_args(folder, out, "--max-steps", "2", "--max-seconds", "300", "--force"))
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "held-out (" in text and "box mIoU" in text and "click mIoU" in text and "(2 steps" in text
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["format"] == "napari-edgesam-adapted" and card["steps"] == 2 and card["images"] == 2
    assert card["heldout_before"]["n"] >= 1 and card["base_model"]["name"] == "edgesam-nuclei"
    assert out.with_name("mine.prior.pth").is_file()
    predictor = load_model(out, backend="torch", device="cpu")
    mask, _, _ = predictor.segment(box=np.array([10, 10, 60, 60], np.float32),
                                   embedding=predictor.encode(np.zeros((64, 64), np.uint8)))
    assert mask.shape == (64, 64)


def test_train_adapt_rejected_writes_nothing(folder, tmp_path, capsys):
    out = tmp_path / "bad.pth"
    rc = main(_args(folder, out, "--max-steps", "2", "--lr", "5", "--max-seconds", "300"))
    text = capsys.readouterr().out
    assert rc == 1 and "kept the base model" in text and "not written" in text
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_train_adapt_bad_input_is_one_line(folder, tmp_path, capsys):
    rc = main(["train", "adapt", "--images", str(tmp_path / "nope"), "--labels", str(folder / "labels"),
               "--model", "edgesam-nuclei", "-o", str(tmp_path / "x.pth")])
    err = capsys.readouterr().err
    assert rc == 1 and "image folder not found" in err and len(err.strip().splitlines()) == 1
    rc = main(_args(folder, tmp_path / "x.onnx"))
    assert rc == 1 and "must be a .pth" in capsys.readouterr().err


def test_train_adapt_negative_labels_and_bad_budgets_are_named_before_the_model_loads(tmp_path, capsys):
    import tifffile

    img, lab = synthetic_nuclei_2d(seed=0, shape=(96, 96), n_nuclei=4, radius=(8.0, 12.0))
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", img)
    tifffile.imwrite(tmp_path / "labels" / "a.tif", -lab.astype(np.int32))
    base = ["train", "adapt", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
            "--model", "no-such-model", "-o", str(tmp_path / "x.pth")]
    assert main(base) == 1
    assert "labels must be instance ids >= 0" in capsys.readouterr().err
    for opt, value in (("--max-seconds", "nan"), ("--max-seconds", "0"), ("--holdout", "1")):
        assert main([*base, opt, value]) == 1
        err = capsys.readouterr().err
        assert f"{opt} must be" in err and "no-such-model" not in err and len(err.strip().splitlines()) == 1


def test_train_adapt_never_overwrites_its_base_model(folder, tmp_path, capsys):
    base = tmp_path / "base.pth"
    base.write_bytes(b"the user's checkpoint")
    rc = main(["train", "adapt", "--images", str(folder / "images"), "--labels", str(folder / "labels"),
               "--model", str(base), "-o", str(tmp_path / "." / "base.pth")])
    assert rc == 1 and "would overwrite the base model" in capsys.readouterr().err
    assert base.read_bytes() == b"the user's checkpoint"
