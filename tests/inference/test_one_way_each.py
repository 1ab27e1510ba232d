"""One way each: the model registry built in one place, the normalisation constants defined once,
distinct names for distinct classes, and the model-with-prior loader usable without Qt."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import napari_edgesam
from napari_edgesam.inference.loading import weights

PACKAGE = Path(napari_edgesam.__file__).parent
#: class names that two modules share on purpose: segment-anything's own names for its ViT
#: encoder's attention (``model/vit.py``) and its two-way transformer's (``model/transformer.py``)
SHARED_CLASS_NAMES = {"Attention"}


def _trees():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text())


def test_the_registry_is_built_at_import_with_the_shipped_model():
    code = textwrap.dedent("""
        from napari_edgesam.inference.loading import weights
        spec = weights.MODEL_REGISTRY["edgesam-nuclei"]
        print(sorted(weights.MODEL_REGISTRY), spec.mask_input_refines, sorted(spec.files),
              spec.files["pth"].local_path.is_file())
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == (
        "['edgesam', 'edgesam-3x', 'edgesam-nuclei'] True ['onnx_decoder', 'onnx_encoder', 'onnx_encoder_int8', 'pth'] True")


def test_only_the_weights_module_changes_the_registry():
    writers = set()
    for rel, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", None))
                if name in ("register_model", "register_packaged_models"):
                    writers.add(rel)
            targets = node.targets if isinstance(node, ast.Assign) else []
            for t in targets:
                if isinstance(t, ast.Subscript) and "MODEL_REGISTRY" in ast.unparse(t.value):
                    writers.add(rel)
    assert writers == {"inference/loading/weights.py"}


def test_packaged_spec_takes_the_installed_files(tmp_path):
    entry = {"files": {"pth": "m/a.pth", "onnx_encoder": "m/a_encoder.onnx", "onnx_decoder": "m/a_decoder.onnx"},
             "description": "d", "file_licence": "fl", "licence": "l", "mask_input_refines": False}
    assert weights._packaged_spec("a", entry, tmp_path) is None  # nothing installed
    (tmp_path / "m").mkdir()
    (tmp_path / "m/a_encoder.onnx").write_bytes(b"12345")
    assert weights._packaged_spec("a", entry, tmp_path) is None  # an encoder alone is no model
    (tmp_path / "m/a.pth").write_bytes(b"123")
    spec = weights._packaged_spec("a", entry, tmp_path)
    assert sorted(spec.files) == ["pth"] and spec.files["pth"].size == 3
    assert spec.files["pth"].local_path == tmp_path / "m/a.pth" and spec.files["pth"].licence == "fl"
    (tmp_path / "m/a_decoder.onnx").write_bytes(b"1")
    spec = weights._packaged_spec("a", entry, tmp_path)
    assert sorted(spec.files) == ["onnx_decoder", "onnx_encoder", "pth"]
    assert spec.licence == "l" and spec.mask_input_refines is False and spec.description == "d"


def test_pixel_mean_and_std_are_defined_once():
    defined = {(rel, t.id) for rel, tree in _trees() for node in ast.walk(tree) if isinstance(node, ast.Assign)
               for t in node.targets if isinstance(t, ast.Name) and t.id in ("PIXEL_MEAN", "PIXEL_STD")}
    assert defined == {("constants.py", "PIXEL_MEAN"), ("constants.py", "PIXEL_STD")}


def test_distinct_classes_have_distinct_names():
    where: dict[str, list[str]] = {}
    for rel, tree in _trees():
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                where.setdefault(node.name, []).append(rel)
    shared = {name: files for name, files in where.items() if len(files) > 1}
    assert set(shared) <= SHARED_CLASS_NAMES, shared


def test_the_demo_loads_a_model_with_its_prior_without_qt():
    pytest.importorskip("onnxruntime")
    code = textwrap.dedent("""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui"):
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Block())
        from napari_edgesam.cli.demo import choose_model
        predictor = choose_model("edgesam-nuclei", backend="onnxruntime", device="cpu")
        print(predictor.backend.name, type(predictor.prior).__name__,
              sorted(m for m in sys.modules if m.startswith("napari_edgesam._napari")))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "onnxruntime OnnxBoxPrior []"
