"""``napari-edgesam batch``: the CLI over the batch engine, with the golden checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_edgesam.cli import main

SMALL = ["--points-per-side", "4", "--points-per-batch", "8", "--stability-thresh", "0",
         "--max-area-fraction", "1", "--min-area", "0"]


@pytest.fixture()
def inputs(tmp_path, make_golden_image):
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "one.tif", make_golden_image(seed=1, h=96, w=128)[..., 0])
    Image.fromarray(make_golden_image(seed=2, h=80, w=80)).save(folder / "two.png")
    return folder


def test_cli_auto_then_skip(inputs, tmp_path, golden_checkpoint, capsys):
    out = tmp_path / "out"
    rc = main(["batch", str(inputs), "-o", str(out), "--auto", "--model", str(golden_checkpoint), *SMALL])
    assert rc == 0
    printed = capsys.readouterr()
    assert "2 images: 2 ok" in printed.out
    for key, shape in (("one", (96, 128)), ("two", (80, 80))):
        labels = tifffile.imread(out / f"{key}_labels.tif")
        assert labels.shape == shape and labels.dtype == np.uint16
        rec = json.loads((out / f"{key}.json").read_text())
        assert rec["status"] == "ok" and rec["backend"] == "torch" and rec["model"] == str(golden_checkpoint)
        assert rec["parameters"]["automatic"]["points_per_side"] == 4
    rc = main(["batch", str(inputs), "-o", str(out), "--auto", "--model", str(golden_checkpoint), *SMALL])
    assert rc == 0 and "2 skipped" in capsys.readouterr().out


def test_cli_prompts_folder_and_errors(inputs, tmp_path, golden_checkpoint, capsys):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "one_points.csv").write_text("index,axis-0,axis-1\n0,40,50\n1,20,100\n")
    (prompts / "two_shapes.csv").write_text(
        "index,shape-type,vertex-index,axis-0,axis-1\n0,rectangle,0,10,10\n0,rectangle,1,60,70\n"
    )
    shutil.copy(inputs / "one.tif", inputs / "three.tif")  # no prompts -> reported, run goes on
    out = tmp_path / "out"
    rc = main(["batch", str(inputs), "-o", str(out), "--prompts", str(prompts), "--model",
               str(golden_checkpoint), "--no-progress"])
    assert rc == 1
    report = json.loads((out / "report.json").read_text())
    status = {r["key"]: r["status"] for r in report["records"]}
    assert status == {"one": "ok", "two": "ok", "three": "error"}
    assert "no prompts" in {r["key"]: r for r in report["records"]}["three"]["error"]
    assert json.loads((out / "one.json").read_text())["mode"] == "prompts"
    labels = tifffile.imread(out / "one_labels.tif")
    assert set(np.unique(labels)) <= {0, 1, 2}


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["batch", str(tmp_path), "-o", str(tmp_path / "o")])  # neither --auto nor --prompts
    assert main(["batch", str(tmp_path / "nothing"), "-o", str(tmp_path / "o"), "--auto"]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["batch", str(tmp_path), "-o", str(tmp_path / "o"), "--auto", "--stability-thresh", "2"]) == 1
    assert "stability_thresh" in capsys.readouterr().err


def test_entry_point_help_documents_prompt_formats():
    exe = shutil.which("napari-edgesam")
    cmd = [exe] if exe else [sys.executable, "-m", "napari_edgesam.cli"]
    out = subprocess.run([*cmd, "batch", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert "--scheduler" in out.stdout and "axis-0" in out.stdout and "--prompts" in out.stdout
