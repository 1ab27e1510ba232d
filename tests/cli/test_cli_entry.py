"""The one command-line entry point: every command (training, the prior and the recipes included)
goes through ``napari_edgesam.cli.main``, which alone configures logging; no lower layer has an
entry point of its own or imports the CLI."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import numpy as np
import pytest

import napari_edgesam
from napari_edgesam import cli
from napari_edgesam.cli import logs

PACKAGE = Path(napari_edgesam.__file__).parent


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    pkg = path.relative_to(PACKAGE.parent).parts[:-1]  # the package a relative import starts from
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(pkg[: len(pkg) - node.level + 1]) if node.level else []
            mod = ".".join([*base, node.module] if node.module else base)
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def test_only_the_cli_configures_logging():
    callers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "basicConfig" in p.read_text())
    assert callers == ["cli/logs.py"]


def test_no_entry_point_below_the_cli():
    mains = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("__main__.py"))
    assert mains == ["__main__.py", "cli/__main__.py"]
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "cli":
            continue
        tree = ast.parse(path.read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "main"], rel
        assert "ArgumentParser(" not in path.read_text(), f"{rel} builds its own parser"
        if rel.parts[0] != "__main__.py":
            assert not any(m.startswith("napari_edgesam.cli") for m in _imports(path)), f"{rel} imports the CLI"


@pytest.mark.parametrize(("verbose", "default", "level"), [
    (0, logging.WARNING, logging.WARNING), (1, logging.WARNING, logging.INFO), (2, logging.WARNING, logging.DEBUG),
    (5, logging.WARNING, logging.DEBUG), (0, logging.INFO, logging.INFO), (1, logging.INFO, logging.INFO),
    (2, logging.INFO, logging.DEBUG),
])
def test_log_level(verbose, default, level):
    assert logs.log_level(verbose, default) == level


def test_main_configures_logging_once_with_the_commands_level(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "configure_logging", lambda verbose, default: calls.append((verbose, default)))
    assert cli.main(["-v", "train", "configs"]) == 0
    assert "nuclei_cpu_v2" in capsys.readouterr().out
    monkeypatch.setenv("RANK", "1")  # training logs progress on the main process only
    assert cli.main(["train", "configs"]) == 0
    monkeypatch.delenv("RANK")
    assert cli.main(["train", "configs"]) == 0
    assert calls == [(1, logging.INFO), (0, logging.WARNING), (0, logging.INFO)]


def test_unknown_train_step_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "recipe", "mitochondria", "prepare"])
    assert exc.value.code == 2 and "mitochondria" in capsys.readouterr().err


def _fake_stardist(folder: Path) -> Path:
    """A folder like stardist's ``data/images``: a 64x64 image with 6 bright nuclei."""
    import tifffile

    from napari_edgesam.datasets import synthetic_nuclei_2d

    image, labels = synthetic_nuclei_2d(seed=3, shape=(64, 64), n_nuclei=6, radius=(5.0, 8.0))
    folder.mkdir(parents=True)
    tifffile.imwrite(folder / "img2d.tif", np.asarray(image, np.uint16))
    tifffile.imwrite(folder / "mask2d.tif", np.asarray(labels, np.uint16))
    return folder


def test_nuclei_recipe_steps_through_the_cli(tmp_path, capsys, golden_checkpoint):
    torch = pytest.importorskip("torch")
    import tifffile

    data = tmp_path / "data"
    assert cli.main(["train", "recipe", "nuclei", "prepare", "--stardist-wheel", str(_fake_stardist(tmp_path / "sd")),
                     "--out", str(data), "--n-synthetic", "0", "--dsb-repeat", "2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["train_images"] == 2 and info["heldout"] == [[64, 32]]
    assert tifffile.imread(data / "train/images/dsb_0_r1.tif").shape == (64, 32)
    assert tifffile.imread(data / "heldout/labels/dsb_right_half.tif").shape == (64, 32)

    dest = tmp_path / "pkg"
    dest.mkdir()
    assert cli.main(["train", "recipe", "nuclei", "package", "--checkpoint", str(golden_checkpoint),
                     "--dest", str(dest)]) == 0
    packaged = Path(capsys.readouterr().out.strip())
    assert packaged == dest / "edge_sam_nuclei.pth"
    sd = torch.load(packaged, weights_only=True)
    ref = torch.load(golden_checkpoint, weights_only=True)
    assert sd.keys() == ref.keys()
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())

    out_json = tmp_path / "heldout.json"
    assert cli.main(["train", "recipe", "nuclei", "evaluate", "--model", str(packaged), "--data", str(data),
                     "--iterations", "0", "--out-json", str(out_json)]) == 0
    summary = json.loads(out_json.read_text())
    assert summary["images"] == ["dsb_right_half.tif"] and summary["weights"] == str(packaged)
    assert "held-out DSB2018" in capsys.readouterr().out


def test_recipe_step_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["train", "recipe", "nuclei", "prepare", "--stardist-wheel", str(tmp_path / "nowhere.whl"),
                     "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-edgesam train: error:") and "nowhere.whl" in err and "\n" not in err
