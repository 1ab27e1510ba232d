"""The one-way import rule of docs/architecture.md, checked on the source.

Every module of ``napari_edgesam`` belongs to a layer; a module may import its own layer and
the layers below it, never one above, and no chain of imports (lazy ones inside functions
included) may lead back to where it started. napari, Qt and magicgui are imported only in
``_napari/``. A new top-level module or package fails here until it is given a layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = "napari_edgesam"
SRC = next(p / "src" for p in Path(__file__).resolve().parents if (p / "src" / PKG).is_dir())

#: layer of each top-level module or package; an import may only go to the same or a lower number
LAYERS: dict[str, int] = {
    "constants": 0, "coords": 0, "cachedir": 0, "_atomic": 0, "datasets": 0,
    "model": 1,
    "inference": 2, "models": 2,
    "interactive": 3, "export": 3,
    "training": 4,
    "_napari": 5,
    "cli": 6, "__main__": 6,
    "__init__": 0,  # the package root: lazy public names, __version__; imports nothing itself
}
GUI_PACKAGES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / PKG).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import of ``name``, lazy ones included; names imported
    from a package resolve to its submodule when there is one."""
    path = MODULES[name]
    package = name if _is_package(name) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in MODULES else target, node.lineno))
    return found


def _rel(path: Path) -> str:
    return str(path.relative_to(SRC)) if path.is_relative_to(SRC) else path.name


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_top_level_module_has_a_layer():
    missing = sorted({_layer(m) for m in MODULES} - set(LAYERS))
    assert not missing, f"give these top-level modules a layer in LAYERS: {missing}"


def test_imports_only_go_down():
    bad = []
    for name in MODULES:
        mine = LAYERS.get(_layer(name))
        for target, line in _imports(name):
            if target.startswith(PKG + ".") or target == PKG:
                theirs = LAYERS.get(_layer(target))
                if mine is not None and theirs is not None and theirs > mine:
                    bad.append(f"{_rel(MODULES[name])}:{line} ({_layer(name)}) imports {target} "
                               f"({_layer(target)})")
    assert not bad, "imports that run back up the layers:\n" + "\n".join(bad)


def test_gui_packages_only_in_the_napari_glue():
    bad = [f"{_rel(MODULES[n])}:{line} imports {t}"
           for n in MODULES if _layer(n) != "_napari"
           for t, line in _imports(n) if t.split(".")[0] in GUI_PACKAGES]
    assert not bad, "napari/Qt outside _napari/:\n" + "\n".join(bad)


def _cycles() -> list[list[str]]:
    graph = {n: sorted({t for t, _ in _imports(n) if t in MODULES and t != n}) for n in MODULES}
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    # a package's __init__ that re-exports its submodules is not a circle with them
    cycles = [c for c in _cycles()
              if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert not cycles, "import circles (lazy imports count):\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("source, target", [("model", "inference"), ("inference", "_napari"), ("training", "cli")])
def test_the_rule_would_catch_a_violation(tmp_path, source, target):
    """The checker itself: an import from a lower layer to a higher one is reported."""
    assert LAYERS[source] < LAYERS[target]
    name = f"{PKG}.{source}.__probe__"
    MODULES[name] = tmp_path / "__probe__.py"
    MODULES[name].write_text(f"from {PKG}.{target} import something\n")
    try:
        with pytest.raises(AssertionError, match="run back up"):
            test_imports_only_go_down()
    finally:
        del MODULES[name]


def test_the_circle_check_would_catch_a_circle(tmp_path):
    a, b = f"{PKG}.inference.__probe_a__", f"{PKG}.inference.__probe_b__"
    MODULES[a], MODULES[b] = tmp_path / "__probe_a__.py", tmp_path / "__probe_b__.py"
    MODULES[a].write_text("def f():\n    from . import __probe_b__\n")
    MODULES[b].write_text("from . import __probe_a__\n")
    try:
        assert any(a in c and b in c for c in _cycles())
    finally:
        del MODULES[a], MODULES[b]
