"""Files for batch processing: finding and reading images, reading prompt CSVs, atomic writes.

Images: ``.tif``/``.tiff`` (tifffile, axes from the file's metadata), ``.png``/``.jpg``/``.jpeg``
(PIL), ``.npy`` (numpy, plain numeric arrays only: never unpickled), and ``.zarr`` directories: a plain zarr array, a group holding one array, or OME-Zarr
(``multiscales``, v0.4 and v0.5; the full-resolution level is read). Every image is returned as
``[Z] x Y x X [x C]``. A file that cannot be read raises :class:`ImageReadError` (a ValueError)
with one line naming the file and what is wrong with it (empty, truncated, not that format...).

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

napari's (row, column) coordinates become (x, y) in :func:`rowcol_to_xy` and nowhere else.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._atomic import atomic_write, atomic_write_bytes

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")
ZARR_SUFFIX = ".zarr"


# -- coordinates ------------------------------------------------------------------------------
def rowcol_to_xy(rowcol: np.ndarray) -> np.ndarray:
    """napari ``... x 2`` (row, column) -> ``... x 2`` (x, y). The only such conversion here."""
    arr = np.asarray(rowcol, np.float64)
    if arr.shape[-1] != 2:
        raise ValueError(f"expected (row, column) pairs in the last axis; got shape {arr.shape}")
    return arr[..., ::-1].copy()


# -- inputs -----------------------------------------------------------------------------------
def is_zarr(path: Path) -> bool:
    return path.is_dir() and (
        path.suffix.lower() == ZARR_SUFFIX
        or any((path / m).exists() for m in (".zarray", ".zgroup", "zarr.json"))
    )


def is_image_file(path: Path) -> bool:
    return (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES) or is_zarr(path)


@dataclass(frozen=True)
class Discovery:
    """What :func:`find_inputs` found: the images, and the entries it left out with the reason."""

    images: list[Path]
    ignored: list[tuple[Path, str]]


def _why_not_an_image(q: Path) -> str | None:
    """None if ``q`` is an image file or zarr store, else why it is left out (one phrase)."""
    try:
        st = os.lstat(q)
    except FileNotFoundError:
        return "vanished while the folder was read"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    import stat as stat_

    if stat_.S_ISLNK(st.st_mode):
        try:
            os.stat(q)
        except FileNotFoundError:
            return f"a broken symbolic link (its target {os.readlink(q)} does not exist)"
        except OSError as err:
            if err.errno == errno.ELOOP:
                return "a symbolic link loop"
            return f"a symbolic link that cannot be followed ({err.strerror or err})"
    if q.name.startswith("."):
        return "a hidden file"
    if is_zarr(q):
        return None
    if q.is_dir():
        if q.suffix.lower() in IMAGE_SUFFIXES:
            return f"a folder named like an image ({q.suffix}), not an image file"
        return "a folder (folders are not searched recursively; a zarr store needs .zarray, .zgroup or zarr.json)"
    if not q.is_file():
        return "not a regular file"
    if q.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image (supported: {', '.join(IMAGE_SUFFIXES)}, .zarr)"
    return None


def find_inputs(inputs: Iterable[str | os.PathLike], pattern: str = "*") -> Discovery:
    """Image files and zarr stores named by ``inputs``: files are taken as they are, folders
    are searched (not recursively) for entries matching ``pattern``.

    Entries of a searched folder that are not images (other files, sub-folders, folders named
    like images, broken links and link loops, hidden files) are returned in ``ignored`` with the
    reason, never dropped silently. An input named explicitly must exist (FileNotFoundError) and
    be an image or a folder (ValueError).
    """
    found: dict[Path, None] = {}
    ignored: dict[Path, str] = {}
    for item in inputs:
        p = Path(item)
        if not p.exists():
            if p.is_symlink():
                raise FileNotFoundError(f"input {p} is a broken symbolic link or a link loop")
            raise FileNotFoundError(f"input not found: {p}")
        if is_image_file(p):
            found[p] = None
        elif p.is_dir():
            for q in sorted(p.glob(pattern or "*")):
                reason = _why_not_an_image(q)
                if reason is None:
                    found[q] = None
                else:
                    ignored[q] = reason
        else:
            raise ValueError(
                f"unsupported input {p}: expected a folder, a zarr store or a file ending in "
                f"{', '.join(IMAGE_SUFFIXES)}"
            )
    return Discovery(sorted(found), [(q, r) for q, r in sorted(ignored.items()) if q not in found])


def discover_inputs(inputs: Iterable[str | os.PathLike], pattern: str = "*") -> list[Path]:
    """The images of :func:`find_inputs` (sorted, de-duplicated paths)."""
    return find_inputs(inputs, pattern).images


def image_stem(path: Path) -> str:
    """``cells.ome.zarr`` -> ``cells``; ``a.tif`` -> ``a``."""
    name = path.name
    for suffix in (".ome.zarr", ".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def output_keys(paths: Sequence[Path]) -> list[str]:
    """Unique output names: the stem, with the suffix (then the parent folder) added on clashes."""
    keys = [image_stem(p) for p in paths]
    for attempt in (lambda p: f"{image_stem(p)}_{p.suffix.lstrip('.').lower()}",
                    lambda p: f"{p.parent.name}_{image_stem(p)}_{p.suffix.lstrip('.').lower()}"):
        counts = defaultdict(int)
        for k in keys:
            counts[k] += 1
        keys = [attempt(p) if counts[k] > 1 else k for p, k in zip(paths, keys, strict=False)]
    if len(set(keys)) != len(keys):
        raise ValueError("input images have clashing names; rename them or process them separately")
    return keys


# -- reading images ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageData:
    """An image as ``[Z] x Y x X [x C]`` with flags saying which optional axes it has."""

    data: np.ndarray
    is_stack: bool
    has_channels: bool

    @property
    def plane_shape(self) -> tuple[int, int]:
        off = 1 if self.is_stack else 0
        return tuple(self.data.shape[off : off + 2])


def _arrange(arr: np.ndarray, axes: str | None, source: str) -> ImageData:
    """Reorder to ``[Z]YX[C]`` using axis names (``TZCYXS``-style) or, without them, the shape."""
    if axes is None:
        if arr.ndim == 2:
            axes = "YX"
        elif arr.ndim == 3:
            axes = "YXC" if arr.shape[-1] <= 4 else "ZYX"
        elif arr.ndim == 4:
            axes = "ZYXC" if arr.shape[-1] <= 4 else "CZYX" if arr.shape[0] <= 4 else None
        if axes is None:
            raise ValueError(f"cannot tell the axes of {source} (shape {arr.shape}); expected [Z]YX[C]")
    axes = axes.upper().replace("S", "C")
    if len(axes) != arr.ndim:
        raise ValueError(f"{source}: axes {axes!r} do not match shape {arr.shape}")
    keep = []
    for i, a in enumerate(axes):
        if a in "YX":
            keep.append(i)
        elif arr.shape[i] == 1:
            continue
        else:
            keep.append(i)
    names = [axes[i] for i in keep]
    stack_axes = [n for n in names if n not in "YXC"]
    if len(stack_axes) > 1:
        raise ValueError(
            f"{source} has several non-spatial axes of length > 1 ({''.join(names)}, shape {arr.shape}); "
            "batch processing handles 2D images and single stacks (Z or T) only"
        )
    if names.count("C") > 1:
        raise ValueError(f"{source} has more than one channel axis ({axes})")
    arr = arr.reshape([arr.shape[i] for i in keep])
    order = [names.index(n) for n in stack_axes] + [names.index("Y"), names.index("X")]
    if "C" in names:
        order.append(names.index("C"))
    return ImageData(np.ascontiguousarray(np.transpose(arr, order)), bool(stack_axes), "C" in names)


class ImageReadError(ValueError):
    """An image file that cannot be read; the message names the file and the problem."""


def read_image(path: str | os.PathLike) -> ImageData:
    """Read a TIFF, PNG/JPEG, ``.npy`` or zarr/OME-Zarr image (see the module docstring).

    Raises FileNotFoundError for a missing file and :class:`ImageReadError` (a ValueError) for
    one that is not a readable image (a folder, empty, truncated, damaged, another format).
    """
    p = Path(path)
    if is_zarr(p):
        try:
            return _read_zarr(p)
        except (ValueError, FileNotFoundError):
            raise
        except Exception as err:  # noqa: BLE001 - any reader failure becomes one clear line
            raise ImageReadError(_read_failure(p, err)) from err
    if p.is_dir():
        raise ImageReadError(f"{p} is a folder, not an image file (a zarr store needs .zarray, .zgroup "
                             "or zarr.json inside)")
    if not p.exists():
        raise FileNotFoundError(f"image not found: {p}")
    suffix = p.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageReadError(f"unsupported image {p}: expected {', '.join(IMAGE_SUFFIXES)} or a .zarr store")
    try:
        if p.stat().st_size == 0:
            raise ImageReadError(f"{p} is empty (0 bytes)")
        arr, axes = _read_file(p, suffix)
    except (ImageReadError, FileNotFoundError):
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure becomes one clear line
        raise ImageReadError(_read_failure(p, err)) from err
    return _arrange(arr, axes, str(p))


def _read_file(p: Path, suffix: str) -> tuple[np.ndarray, str | None]:
    """The pixels of an image file and its axis names (None: guess from the shape)."""
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(p) as tif:
            if not tif.series:
                raise ImageReadError(f"{p} is a TIFF without image data (a header only, or damaged)")
            series = tif.series[0]
            return series.asarray(), series.axes
    if suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
        if arr.dtype.kind not in "buif":
            raise ImageReadError(f"{p} holds a {arr.dtype} array; images must be numbers (bool, int, float)")
        return arr, None
    from PIL import Image

    with Image.open(p) as im:
        if im.mode not in ("L", "I;16", "I;16B", "I", "F", "RGB", "RGBA"):
            im = im.convert("RGB")
        return np.asarray(im), None


def _read_failure(p: Path, err: BaseException) -> str:
    """One line saying why ``p`` could not be read, from the reader's exception."""
    text = str(err)
    kind = p.suffix.lower().lstrip(".").upper() or "image"
    if isinstance(err, PermissionError):
        return f"cannot read {p}: permission denied"
    if isinstance(err, OSError) and err.errno == errno.EISDIR:
        return f"{p} is a folder, not an image file"
    if "failed to read" in text or "truncated" in text.lower() or isinstance(err, EOFError) or (
            "buffer" in text and "size" in text):
        return f"{p} is truncated (the file ends before its image data; copy it again): {text}"
    if type(err).__name__ in ("UnidentifiedImageError", "TiffFileError") or "not a TIFF" in text:
        return f"{p} is not a readable {kind} file (damaged, or another format with this suffix)"
    if "allow_pickle" in text or "pickle" in text:
        return f"{p} holds Python objects (pickled); only plain numeric .npy arrays are read"
    if isinstance(err, OSError) and err.strerror:
        return f"cannot read {p}: {err.strerror}"
    return f"cannot read {p} as an image ({type(err).__name__}: {text})"


def _read_zarr(p: Path) -> ImageData:
    import zarr

    node = zarr.open(str(p), mode="r")
    if hasattr(node, "shape"):
        return _arrange(np.asarray(node[...]), None, str(p))
    attrs = dict(node.attrs)
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if ms:
        level = ms[0]["datasets"][0]["path"]
        axes = ms[0].get("axes")
        names = None
        if axes:
            names = "".join((a["name"] if isinstance(a, dict) else str(a))[0] for a in axes).upper()
        return _arrange(np.asarray(node[level][...]), names, f"{p} (OME-Zarr level {level})")
    arrays = [k for k, _ in node.arrays()]
    if len(arrays) != 1:
        raise ValueError(f"{p} is a zarr group with {len(arrays)} arrays and no OME-Zarr metadata; "
                         "point to one array instead")
    return _arrange(np.asarray(node[arrays[0]][...]), None, f"{p}/{arrays[0]}")


# -- prompts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectPrompt:
    """Prompts for one object: ``points`` ``N x 2`` (x, y) pixels with ``labels`` ``N``
    (1 positive, 0 negative), and/or ``box`` ``(x0, y0, x1, y1)``; ``z`` is the slice of a stack.
    ``source`` says where it came from (``"<file> row 3"``, ``"<file> rows 2, 5"``) for errors."""

    name: str
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    z: int | None = None
    source: str = ""


def prompt_identity(prompts: Sequence[ObjectPrompt]) -> str:
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
PromptTable = dict[str, list[ObjectPrompt]]


def _num(row: dict, key: str, where: str, default: float | None = None) -> float:
    """A finite real number from column ``key`` (ValueError naming the row otherwise)."""
    value = (row.get(key) or "").strip()
    if value == "":
        if default is not None:
            return default
        raise ValueError(f"{where}: column {key!r} is empty")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{where}: {key}={value!r} is not a number") from None
    if not np.isfinite(number):
        raise ValueError(f"{where}: {key}={value!r} is not a finite number")
    return number


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
    raise ValueError(
        f"{p}: unrecognised prompt CSV header {header}; expected napari-edgesam columns "
        "(object,kind,x,y,label,x0,y0,x1,y1[,image,z]) or a napari Points/Shapes CSV export"
    )


def _axes(row: dict) -> list[str]:
    return sorted((k for k in row if k.startswith("axis-")), key=lambda k: int(k.split("-")[1]))


def _napari_points(rows: list[dict], p: Path) -> list[ObjectPrompt]:
    out = []
    for i, row in enumerate(rows):
        where = f"{p} row {i + 2}"
        coords = [_num(row, a, where) for a in _axes(row)]
        if len(coords) not in (2, 3):
            raise ValueError(f"{where}: napari points must have 2 or 3 axes, got {len(coords)}")
        z = _slice_index(coords[0], where, "axis-0") if len(coords) == 3 else None
        xy = rowcol_to_xy(np.array(coords[-2:]))[None]
        out.append(ObjectPrompt(f"point{i}", xy, np.ones(1, np.int64), None, z, where))
    return out


def _napari_shapes(rows: list[dict], p: Path) -> list[ObjectPrompt]:
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
        out.append(ObjectPrompt(f"shape{index}", None, None, box, z, where))
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
        table[image].append(ObjectPrompt(obj, pts, labels, g["box"], g["z"], _rows_text(p, g["rows"])))
    return dict(table)


def prompts_for_image(source: str | os.PathLike, image: Path) -> list[ObjectPrompt]:
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


# -- atomic writes (napari_edgesam._atomic: temp file, fsync, umask permissions, os.replace) --


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write a label image as a zlib-compressed TIFF (uint16 when it fits, else uint32), atomically."""
    import tifffile

    labels = np.asarray(labels)
    dtype = np.uint16 if labels.size == 0 or labels.max() < 2**16 else np.uint32
    axes = "ZYX" if labels.ndim == 3 else "YX"
    atomic_write(path, lambda tmp: tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib",
                                                   metadata={"axes": axes}))


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    data = json.dumps(obj, indent=2, default=_json_default).encode("utf-8")
    atomic_write_bytes(path, data)


def write_csv(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Write ``rows`` (dicts) with the given ``columns``, atomically."""
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    data = buf.getvalue().encode("utf-8")
    atomic_write_bytes(path, data)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
