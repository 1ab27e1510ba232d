"""The napari manifest: valid for npe2, every ``python_name`` importable, widgets and samples
reachable through napari's plugin machinery."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

MANIFEST = Path(__file__).resolve().parents[2] / "src" / "napari_edgesam" / "napari.yaml"


@pytest.fixture(scope="module")
def manifest():
    return npe2.PluginManifest.from_file(MANIFEST)


def test_the_installed_distribution_ships_this_manifest(manifest):
    installed = npe2.PluginManifest.from_distribution("napari-edgesam")
    assert installed.name == manifest.name == "napari-edgesam"
    assert {c.id for c in installed.contributions.commands} == {c.id for c in manifest.contributions.commands}


def test_npe2_validate_with_imports():
    out = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-edgesam", "--imports"],
        capture_output=True, text=True, encoding="utf-8", timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


@pytest.mark.parametrize("python_name", [
    c.python_name for c in npe2.PluginManifest.from_file(MANIFEST).contributions.commands
])
def test_every_python_name_is_importable(python_name):
    module_name, attr = python_name.split(":")
    obj = getattr(importlib.import_module(module_name), attr)
    assert callable(obj)


def test_widgets_are_qwidgets_taking_the_viewer(manifest):
    import inspect

    from qtpy.QtWidgets import QWidget

    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    for widget in manifest.contributions.widgets:
        module_name, attr = commands[widget.command].split(":")
        cls = getattr(importlib.import_module(module_name), attr)
        assert issubclass(cls, QWidget), cls
        assert list(inspect.signature(cls).parameters)[0] == "napari_viewer"


def test_sample_data_are_layer_data_tuples(manifest):
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    keys = {s.key for s in manifest.contributions.sample_data}
    assert keys == {"nuclei_2d", "nuclei_3d", "cell"}
    for sample in manifest.contributions.sample_data:
        module_name, attr = commands[sample.command].split(":")
        layers = getattr(importlib.import_module(module_name), attr)()
        assert isinstance(layers, list) and layers
        for data, meta, kind in layers:
            assert kind == "image" and data.ndim >= 2 and meta["name"]


