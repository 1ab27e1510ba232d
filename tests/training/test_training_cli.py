"""``napari-edgesam train ...`` (also ``python -m napari_edgesam train ...``, what torchrun runs)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from _helpers import one_thread  # noqa: F401
from napari_edgesam.cli import main as cli_main
from napari_edgesam.training.synthetic import write_folder_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def main(argv: list[str]) -> int:
    """``napari-edgesam train ARGV...``."""
    return cli_main(["train", *argv])


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    images, labels = write_folder_dataset(root / "data", n_images=2, shape=(40, 64), n_blobs=3, seed=5)
    cfg = {
        "phase": "finetune",
        "model": {"img_size": 64},
        "data": {"images": str(images), "labels": str(labels), "max_instances": 2},
        "optim": {"epochs": 1, "batch_size": 1, "lr": 1e-3},
        "run": {"out_dir": str(root / "run"), "progress": False, "tensorboard": False},
    }
    path = root / "cfg.json"
    path.write_text(json.dumps(cfg))
    return path


def test_dry_run_prints_the_resolved_config(config_file, capsys):
    assert main(["finetune", "--config", str(config_file), "optim.lr=3e-4", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["optim"]["lr"] == 3e-4 and out["phase"] == "finetune"


def test_bad_override_is_a_clean_error(config_file, capsys):
    assert main(["finetune", "--config", str(config_file), "optim.nope=1"]) == 1
    assert "unknown key" in capsys.readouterr().err
    assert main(["phase1", "--config", str(config_file)]) == 1  # phase1 needs a teacher
    assert "teacher.kind" in capsys.readouterr().err


def test_finetune_then_export_through_the_top_level_cli(config_file, tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert cli_main(["train", "finetune", "--config", str(config_file), f"run.out_dir={out_dir}", "run.max_steps=1"]) == 0
    assert "stopped at step 1" in capsys.readouterr().out
    assert (out_dir / "last.pt").is_file() and (out_dir / "model.pth").is_file()
    target = tmp_path / "exported" / "student.pth"
    assert cli_main(["train", "export", "--checkpoint", str(out_dir / "last.pt"), "--output", str(target)]) == 0
    sd = torch.load(target, weights_only=True)
    ref = torch.load(out_dir / "model.pth", weights_only=True)
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in sd)
    assert json.loads(target.with_suffix(".json").read_text())["trained_img_size"] == 64


def test_module_entry_point_lists_configs():
    proc = subprocess.run(
        [sys.executable, "-m", "napari_edgesam", "train", "configs"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "paper_phase1" in proc.stdout and "cpu_finetune" in proc.stdout


def test_cli_module_does_not_import_torch():
    code = "import sys, napari_edgesam.cli.train, napari_edgesam.training.config; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr
