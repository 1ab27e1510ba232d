"""Names and paths the documentation points to exist (checked statically, without importing).

After modules move, docstrings, the README, docs/architecture.md and the model card keep
pointing to the old places; these tests fail for a Sphinx cross-reference (``:mod:``,
``:func:``, ``:class:`` ...), a dotted ``napari_edgesam.x.y`` name or a file path that no
longer resolves.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

PKG = "napari_edgesam"
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "src" / PKG).is_dir())
SRC = ROOT / "src"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((SRC / PKG).rglob("*.md"))]
CODE = [*sorted((SRC / PKG).rglob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]

ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|exc|obj):`~?([^`<>]*?<)?~?([.\w]+)>?`")
DOTTED = re.compile(r"(?<![\w.])napari_edgesam(?:\.\w+)+")
PATH = re.compile(r"(?<![\w/.-])((?:src|tests|benchmarks|docs|scripts)/[\w./-]+\.(?:py|md|json|sh|png))")
FOLDER_PATH = re.compile(r"`((?:inference|interactive|_napari|model|training|cli|export)/[\w/]+\.py)`")


def _module_file(module: str) -> Path | None:
    base = SRC / Path(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def _names(module: str) -> tuple[set[str], dict[str, set[str]]]:
    """Top-level names of ``module`` (and its submodules), and each class's own attributes."""
    path = _module_file(module)
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    classes: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            if isinstance(node.value, ast.Dict):  # lazy public names (``_LAZY = {"name": "module"}``)
                names.update(k.value for k in node.value.keys if isinstance(k, ast.Constant))
        elif isinstance(node, (ast.If, ast.Try)):  # TYPE_CHECKING imports and fallbacks
            names.update((a.asname or a.name).split(".")[0] for n in ast.walk(node)
                         if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names)
        if isinstance(node, ast.ClassDef):
            own = set()
            for n in ast.walk(node):
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    own.add(n.name)
                elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                    own.add(n.id)
                elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self":
                    own.add(n.attr)
            classes[node.name] = own
    if path.name == "__init__.py":
        names.update(p.stem if p.suffix else p.name for p in path.parent.iterdir()
                     if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file())
    return names, classes


def _resolves(dotted: str) -> bool:
    """Whether ``napari_edgesam.a.b.C.m`` names a module, a top-level name of one, or an
    attribute of a class defined there (deeper names and re-exported objects are not followed)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        if _module_file(module) is None:
            continue
        rest = parts[i:]
        if not rest:
            return True
        names, classes = _names(module)
        if rest[0] not in names:
            return False
        return len(rest) == 1 or rest[0] not in classes or rest[1] in classes[rest[0]]
    return False


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(target: str, path: Path) -> str | None:
    """The dotted name a cross-reference in ``path`` points to (None: not ours to check)."""
    if target.startswith("."):
        if not path.is_relative_to(SRC):
            return None
        package = _module_of(path).split(".")
        if path.name != "__init__.py":
            package = package[:-1]
        level = len(target) - len(target.lstrip("."))
        return ".".join(package[: len(package) - (level - 1)] + [target.lstrip(".")])
    return target if target.startswith(PKG + ".") else None


def test_cross_references_in_docstrings_resolve():
    bad = []
    for path in CODE:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in ROLE.finditer(line):
                target = _absolute(m.group(2).rstrip("."), path)
                if target is not None and not _resolves(target):
                    bad.append(f"{path.relative_to(ROOT)}:{n}: {m.group(0)}")
    assert not bad, "cross-references to names that do not exist:\n" + "\n".join(bad)


def test_dotted_names_resolve():
    bad = [f"{path.relative_to(ROOT)}:{n}: {m.group(0)}"
           for path in [*CODE, *DOCS]
           for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
           for m in DOTTED.finditer(line) if not _resolves(m.group(0))]
    assert not bad, "dotted names that do not exist:\n" + "\n".join(bad)


def test_file_paths_in_the_docs_exist():
    bad = []
    for path in [*DOCS, *CODE]:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found = [ROOT / p for p in PATH.findall(line)]
            found += [SRC / PKG / p for p in FOLDER_PATH.findall(line)]
            bad += [f"{path.relative_to(ROOT)}:{n}: {p.relative_to(ROOT)}" for p in found if not p.exists()]
    assert not bad, "paths that do not exist:\n" + "\n".join(bad)


def test_the_checks_catch_stale_names():
    # the moves of issue #11: each of these existed before it
    assert not _resolves("napari_edgesam.inference.predictor.EdgeSamPredictor")
    assert not _resolves("napari_edgesam.inference.prior.segment_click_with_prior")
    assert not _resolves("napari_edgesam.inference.core.predictor.EdgeSamPredictor.compute_embedding")
    assert not _resolves("napari_edgesam.inference.automatic.grid.grid")
    assert _resolves("napari_edgesam.inference.core.predictor.EdgeSamPredictor.encode")
    assert _resolves("napari_edgesam.inference.prior.click_box")
    assert _absolute(".keys", SRC / PKG / "inference" / "embeddings" / "cache.py") == \
        "napari_edgesam.inference.embeddings.keys"
    assert not _resolves(_absolute(".embedding_keys", SRC / PKG / "inference" / "embeddings" / "cache.py"))
