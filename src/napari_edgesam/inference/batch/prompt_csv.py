"""Prompt CSV files for batch prompt mode: reading, per-image selection, identity.

Formats (one header row; the format is recognised from the header):

Prompt CSV formats (one header row; the format is recognised from the header):

* **napari-edgesam prompts**: columns ``object,kind,x,y,label,x0,y0,x1,y1`` plus the optional
  ``image`` (file name or stem the row belongs to; empty = every image) and ``z`` (slice of a
  stack). ``kind`` is ``point`` (``x, y`` pixels, ``label`` 1 positive / 0 negative, default 1)
  or ``box`` (``x0, y0, x1, y1`` pixels); rows with the same ``image`` and ``object`` form one
  object (e.g. a box plus a negative point). Without a ``kind`` column a row with ``x0`` is a box.
* **napari Points layer** ("Save Selected Layer" to CSV): ``index,axis-0,axis-1`` (rows, columns;
  ``axis-0,axis-1,axis-2`` = z, row, column for stacks). Every point is one object.
* **napari Shapes layer** CSV: ``index,shape-type,vertex-index,axis-0,axis-1[,axis-2]``. Every
  shape is one object, prompted with its bounding box.

Every problem (unreadable file, a row with more values than the header, non-numbers, inf/NaN,
bad labels or slices) raises ValueError naming the file and the row; every object remembers its
rows (:attr:`CsvObject.source`) so that a prompt that does not fit its image can be reported
with them. Coordinates are not checked against an image here (see
:func:`napari_edgesam.inference.core.prompts.validate_prompt`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...coords import rowcol_to_xy
from ..core.prompts import parse_number
from .io import image_stem


@dataclass(frozen=True)
class CsvObject:
    """Prompts for one object: ``points`` ``N x 2`` (x, y) pixels with ``labels`` ``N``
    (1 positive, 0 negative), and/or ``box`` ``(x0, y0, x1, y1)``; ``z`` is the slice of a stack.
    ``source`` says where it came from (``"<file> row 3"``, ``"<file> rows 2, 5"``) for errors."""

    name: str
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    z: int | None = None
    source: str = ""


def prompt_identity(prompts: Sequence[CsvObject]) -> str:
    """SHA-256 of what ``prompts`` ask for (names, points, labels, boxes, slices; not where they
    came from): equal for the same prompts, different as soon as one coordinate changes."""
    h = hashlib.sha256()
    for obj in prompts:
        h.update(json.dumps([
            obj.name, None if obj.points is None else np.asarray(obj.points, np.float64).tolist(),
            None if obj.labels is None else np.asarray(obj.labels).astype(np.int64).tolist(),
            None if obj.box is None else np.asarray(obj.box, np.float64).tolist(), obj.z,
        ]).encode())
    return h.hexdigest()


#: image name -> prompts; the key ``""`` holds prompts that apply to every image.
PromptTable = dict[str, list[CsvObject]]


def _num(row: dict, key: str, where: str, default: float | None = None) -> float:
    """A finite real number from column ``key`` (ValueError naming the row otherwise)."""
    value = (row.get(key) or "").strip()
    if value == "":
        if default is not None:
            return default
        raise ValueError(f"{where}: column {key!r} is empty")
    try:
        return parse_number(value)
    except ValueError as err:
        raise ValueError(f"{where}: {key}={err}") from None


def _slice_index(value: float, where: str, key: str = "z") -> int:
    """A slice index from a (finite) number: a whole number >= 0 (napari's float z is rounded)."""
    z = int(round(value))
    if z < 0 or abs(value - z) > 0.01:
        raise ValueError(f"{where}: {key}={value:g} is not a slice index (a whole number >= 0)")
    return z


def read_prompt_csv(path: str | os.PathLike) -> PromptTable:
    """Parse a prompt CSV in any of the three formats of the module docstring.

    Every problem (unreadable file, row with more values than the header, non-numbers, inf/NaN,
    bad labels or slices) raises ValueError naming the file and the row.
    """
    p = Path(path)
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = [(h or "").strip() for h in (reader.fieldnames or [])]
    except UnicodeDecodeError as err:
        raise ValueError(f"{p} is not a UTF-8 text CSV file (byte {err.start}: {err.reason})") from None
    except csv.Error as err:
        raise ValueError(f"{p}: not a readable CSV file ({err})") from None
    if not rows:
        return {}
    for i, r in enumerate(rows):
        if None in r:  # csv.DictReader puts values past the header under the key None
            raise ValueError(f"{p} row {i + 2}: {len(r[None])} more value(s) than the header has columns "
                             f"({','.join(header)}); remove the extra values or name the columns")
    rows = [{k.strip(): v for k, v in r.items()} for r in rows]
    if "shape-type" in header:
        return {"": _napari_shapes(rows, p)}
    if "axis-0" in header:
        return {"": _napari_points(rows, p)}
    if {"x", "y"} <= set(header) or {"x0", "y0", "x1", "y1"} <= set(header):
        return _edgesam_rows(rows, p)
    other = next((sep for sep in (";", "\t", "|") if len(header) == 1 and sep in header[0]), None)
    if other is not None:
        raise ValueError(f"{p}: the columns are separated by {other!r}; prompt CSVs are comma-separated "
                         "(save the file as CSV with commas)")
    raise ValueError(
        f"{p}: unrecognised prompt CSV header {header}; expected napari-edgesam columns "
        "(object,kind,x,y,label,x0,y0,x1,y1[,image,z]) or a napari Points/Shapes CSV export"
    )


def _axes(row: dict) -> list[str]:
    return sorted((k for k in row if k.startswith("axis-")), key=lambda k: int(k.split("-")[1]))


def _napari_points(rows: list[dict], p: Path) -> list[CsvObject]:
    out = []
    for i, row in enumerate(rows):
        where = f"{p} row {i + 2}"
        coords = [_num(row, a, where) for a in _axes(row)]
        if len(coords) not in (2, 3):
            raise ValueError(f"{where}: napari points must have 2 or 3 axes, got {len(coords)}")
        z = _slice_index(coords[0], where, "axis-0") if len(coords) == 3 else None
        xy = rowcol_to_xy(np.array(coords[-2:]))[None]
        out.append(CsvObject(f"point{i}", xy, np.ones(1, np.int64), None, z, where))
    return out


def _napari_shapes(rows: list[dict], p: Path) -> list[CsvObject]:
    shapes: dict[str, list[list[float]]] = defaultdict(list)
    lines: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        index = (row.get("index") or "0").strip()
        shapes[index].append([_num(row, a, f"{p} row {i + 2}") for a in _axes(row)])
        lines[index].append(i + 2)
    out = []
    for index, verts in shapes.items():
        where = _rows_text(p, lines[index])
        v = np.array(verts)
        if v.shape[1] not in (2, 3):
            raise ValueError(f"{where}: shape {index} must have 2 or 3 axes, got {v.shape[1]}")
        z = None
        if v.shape[1] == 3:
            if np.ptp(v[:, 0]) > 0.5:
                raise ValueError(f"{where}: shape {index} spans several slices; draw boxes in one slice")
            z = _slice_index(v[0, 0], where, "axis-0")
        xy = rowcol_to_xy(v[:, -2:])
        box = np.array([*xy.min(0), *xy.max(0)])
        out.append(CsvObject(f"shape{index}", None, None, box, z, where))
    return out


def _rows_text(p: Path, lines: Sequence[int]) -> str:
    if len(lines) == 1:
        return f"{p} row {lines[0]}"
    shown = ", ".join(map(str, lines[:8])) + (", ..." if len(lines) > 8 else "")
    return f"{p} rows {shown}"


def _edgesam_rows(rows: list[dict], p: Path) -> PromptTable:
    groups: dict[tuple[str, str], dict] = {}
    for i, row in enumerate(rows):
        where = f"{p} row {i + 2}"
        image = (row.get("image") or "").strip()
        obj = (row.get("object") or "").strip() or str(i)
        kind = (row.get("kind") or "").strip().lower() or ("box" if (row.get("x0") or "").strip() else "point")
        z = _slice_index(_num(row, "z", where), where) if (row.get("z") or "").strip() else None
        g = groups.setdefault((image, obj), {"points": [], "labels": [], "box": None, "z": z, "rows": []})
        g["rows"].append(i + 2)
        if z != g["z"]:
            raise ValueError(f"{where}: object {obj!r} has prompts in different slices ({g['z']} and {z})")
        if kind == "point":
            label = _num(row, "label", where, default=1.0)
            if label not in (0.0, 1.0):
                raise ValueError(f"{where}: label must be 1 (positive) or 0 (negative), got {label:g}")
            g["points"].append([_num(row, "x", where), _num(row, "y", where)])
            g["labels"].append(int(label))
        elif kind == "box":
            if g["box"] is not None:
                raise ValueError(f"{where}: object {obj!r} has more than one box")
            g["box"] = np.array([_num(row, k, where) for k in ("x0", "y0", "x1", "y1")])
        else:
            raise ValueError(f"{where}: kind must be 'point' or 'box', got {kind!r}")
    table: PromptTable = defaultdict(list)
    for (image, obj), g in groups.items():
        pts = np.array(g["points"], np.float64).reshape(-1, 2) if g["points"] else None
        labels = np.array(g["labels"], np.int64) if g["labels"] else None
        table[image].append(CsvObject(obj, pts, labels, g["box"], g["z"], _rows_text(p, g["rows"])))
    return dict(table)


def unmatched_images(source: str | os.PathLike, images: Sequence[Path]) -> list[tuple[str, str]]:
    """Image names in a prompt CSV ``source`` (a file) that match none of ``images`` (by file
    name or stem, as :func:`prompts_for_image` matches them): ``[(name, where), ...]`` with the
    rows of the first object, so that prompts written for a misspelt or missing image are
    reported rather than silently unused. Empty for a folder of per-image CSVs."""
    src = Path(source)
    if not src.is_file():
        return []
    table = read_prompt_csv(src)
    known = {p.name for p in images} | {image_stem(p) for p in images}
    return [(name, objs[0].source if objs else str(src)) for name, objs in table.items()
            if name and name not in known]


def prompts_for_image(source: str | os.PathLike, image: Path) -> list[CsvObject]:
    """Prompts for ``image`` from ``source``: a CSV (rows whose ``image`` is this file's name
    or stem, plus rows without ``image``) or a folder of per-image CSVs named ``<stem>.csv``,
    ``<stem>_points.csv`` or ``<stem>_shapes.csv``."""
    src = Path(source)
    stem = image_stem(image)
    if src.is_dir():
        files = [src / f"{stem}{tail}.csv" for tail in ("", "_points", "_shapes")]
        out = []
        for f in files:
            if f.is_file():
                table = read_prompt_csv(f)
                out += table.get("", []) + table.get(image.name, []) + table.get(stem, [])
        return out
    if not src.is_file():
        raise FileNotFoundError(f"prompt file not found: {src}")
    table = read_prompt_csv(src)
    return table.get("", []) + table.get(image.name, []) + (table.get(stem, []) if stem != image.name else [])

