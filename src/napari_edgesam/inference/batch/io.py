"""Files for batch processing: finding and reading images, atomic writes of the outputs.

Images: ``.tif``/``.tiff`` (tifffile, axes from the file's metadata), ``.png``/``.jpg``/``.jpeg``
(PIL), ``.npy`` (numpy, plain numeric arrays only: never unpickled), and ``.zarr`` directories:
a plain zarr array, a group holding one array, or OME-Zarr (``multiscales``, v0.4 and v0.5; the
full-resolution level is read). Every image is returned as ``[Z] x Y x X [x C]``. A file that
cannot be read raises :class:`ImageReadError` (a ValueError) with one line naming the file and
what is wrong with it (empty, truncated, not that format...). Prompt CSVs are read by
:mod:`napari_edgesam.inference.batch.prompt_csv`.

napari's (row, column) coordinates become (x, y) in :func:`napari_edgesam.coords.rowcol_to_xy`.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..._atomic import atomic_write, atomic_write_bytes

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")
ZARR_SUFFIX = ".zarr"

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
    pattern = pattern or "*"
    parts = Path(pattern).parts
    if Path(pattern).is_absolute() or ".." in parts or Path(pattern).drive:
        raise ValueError(f"pattern {pattern!r} must be relative to the input folder and stay inside it "
                         "(e.g. '*.tif', or '**/*.tif' for sub-folders)")
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
            for q in sorted(p.glob(pattern)):
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


#: Output names of the run itself (``report.json``/``report.csv``): an image named like one
#: gets its suffix added (``report.tif`` -> ``report_tif``), else its record would be overwritten.
RESERVED_KEYS = ("report",)


def output_keys(paths: Sequence[Path]) -> list[str]:
    """Unique output names: the stem, with the suffix (then the parent folder) added on clashes
    (also with the run's own ``report`` files, compared without case)."""
    keys = [f"{image_stem(p)}_{p.suffix.lstrip('.').lower() or 'zarr'}" if image_stem(p).lower() in RESERVED_KEYS
            else image_stem(p) for p in paths]
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
    """Reorder to ``[Z]YX[C]`` using axis names (``TZCYXS``-style) or, without them, the shape.
    Only real numbers (bool, int, float) and non-empty arrays are images (ImageReadError)."""
    if arr.dtype.kind not in "buif":  # complex, strings, dates, objects: from any format
        raise ImageReadError(f"{source} holds a {arr.dtype} array; images must be real numbers (bool, int, float)"
                             + ("; convert it, e.g. to its magnitude" if arr.dtype.kind == "c" else ""))
    if arr.size == 0:
        raise ImageReadError(f"{source} holds an empty image (shape {arr.shape}): nothing to segment")
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
        except Exception as err:  # noqa: BLE001 - any reader failure becomes one clear line
            if isinstance(err, (ValueError, FileNotFoundError)) and str(p) in str(err):
                raise  # ours, naming the store already
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
        with open(p, "rb") as fh:
            if fh.read(6) != b"\x93NUMPY":  # numpy would call any other file "pickled data"
                raise ImageReadError(f"{p} is not a .npy file (damaged, or another format with this suffix)")
        return np.load(p, allow_pickle=False), None
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
    low = text.lower()
    if ("failed to read" in low or "truncated" in low or "not fully written" in low or isinstance(err, EOFError)
            or low.startswith("eof") or ("buffer" in low and "size" in low)):
        return f"{p} is truncated (the file ends before its image data; copy it again): {text}"
    if type(err).__name__ in ("UnidentifiedImageError", "TiffFileError") or "not a TIFF" in text:
        return f"{p} is not a readable {kind} file (damaged, or another format with this suffix)"
    if "object arrays cannot be loaded" in low:  # a real .npy of Python objects: never unpickled
        return f"{p} holds Python objects (pickled); only plain numeric .npy arrays are read"
    if isinstance(err, OSError) and err.strerror:
        return f"cannot read {p}: {err.strerror}"
    return f"cannot read {p} as an image ({type(err).__name__}: {text})"


def _read_zarr(p: Path) -> ImageData:
    import zarr

    try:
        node = zarr.open(str(p), mode="r")
    except Exception as err:  # noqa: BLE001 - zarr's "no group/array found" and format errors
        detail = " ".join(str(err).split())[:200]
        raise ImageReadError(f"{p} is not a readable zarr store (no array or group metadata, or damaged: "
                             f"{type(err).__name__}: {detail})") from None
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
