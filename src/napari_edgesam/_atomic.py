"""Atomic file writes: the one way this package writes an output file (torch-free, Qt-free).

Every writer goes through :func:`atomic_write` (a writer that takes a path: tifffile, onnx,
``torch.onnx.export``) or :func:`atomic_open` (a writer that takes an open file: ``torch.save``,
``np.save``, ``json.dump``):

1. a temporary file ``.<name>.<pid>.<random><suffix>`` is created in the destination's folder
   (so the final rename never crosses file systems), with the permissions a plain ``open`` would
   give: ``0o666`` minus the process umask (``mkstemp`` would make it owner-only, ``0600``);
2. the data is written and ``fsync``-ed;
3. ``os.replace`` puts it in place (readers see the old file or the new one, never a part);
   the folder is then ``fsync``-ed where the platform allows it;
4. on any failure (an exception, ``KeyboardInterrupt``) the temporary file is removed and the
   old file, if any, is left as it was.

A process killed between 1 and 3 leaves its temporary file behind; :func:`remove_stale_temps`
removes those of processes that no longer run (call it when a run starts).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}(?P<suffix>\.[A-Za-z0-9_]+)$")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_temp(path: Path, suffix: str) -> tuple[int, Path]:
    """Create (exclusively) a temporary file beside ``path``; mode ``0o666 & ~umask``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not create a unique temporary file", str(path.parent))


def temp_path_for(path: str | os.PathLike, suffix: str = TEMP_SUFFIX) -> Path:
    """A fresh (not yet existing) temporary name beside ``path`` in the format this module cleans up."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                suffix: str = TEMP_SUFFIX, fsync: bool = True) -> Iterator[IO[Any]]:
    """``with atomic_open(path, "w") as fh: fh.write(...)`` writes ``path`` atomically.

    ``mode`` is ``"w"`` (text, UTF-8 unless ``encoding``) or ``"wb"``. The parent folder is
    created. If the block raises, the temporary file is removed and ``path`` is unchanged.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path, suffix)
    owned = False  # whether the file object owns (and closes) fd
    try:
        if mode == "w":
            fh = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
        else:
            fh = os.fdopen(fd, "wb")
        owned = True
        with fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if not owned:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], *, suffix: str = TEMP_SUFFIX,
                 fsync: bool = True) -> Path:
    """Call ``write(tmp)`` for a temporary file beside ``path``, then move it onto ``path``.

    ``write`` may create the file anew (it exists, empty, with the right permissions, when
    ``write`` is called; writers that truncate keep those permissions). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path, suffix)
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, **kwargs) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb", **kwargs) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8", **kwargs) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w", encoding=encoding, **kwargs) as fh:
        fh.write(text)
    return Path(path)


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # os.kill(pid, 0) is not a probe on Windows (signal 0 is CTRL_C_EVENT)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: keep its file
    return True


def is_temp_name(name: str, suffix: str | None = None) -> bool:
    """Whether ``name`` is a temporary file name made by this module (optionally with ``suffix``)."""
    m = _TEMP_RE.match(name)
    return m is not None and (suffix is None or m.group("suffix") == suffix)


def remove_stale_temps(folder: str | os.PathLike, *, older_than_s: float = 0.0) -> list[Path]:
    """Remove the temporary files this module left in ``folder`` (not recursive) when their
    writer process has died (killed mid-write) on this machine; files of running processes and
    files younger than ``older_than_s`` seconds are kept. Returns the removed paths.

    The writer is found by the process id in the file name, so this is exact for writers on this
    machine (POSIX); on a folder shared between machines, a temp file of a live writer elsewhere
    whose id is not running here would be removed (that writer's image then fails and is redone
    by the next run). On Windows nothing is removed."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    now = time.time()
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None or _pid_running(int(m.group("pid"))):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if older_than_s and now - entry.stat(follow_symlinks=False).st_mtime < older_than_s:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as err:
            logger.warning("could not remove the stale temporary file %s: %s", entry.path, err)
            continue
        logger.info("removed %s, left by an interrupted write", entry.path)
        removed.append(Path(entry.path))
    return removed


def _file_in_the_way(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` that is not a folder (so nothing can be created
    below it), or None."""
    for parent in reversed(path.parents):
        try:
            if parent.exists() and not parent.is_dir():
                return parent
        except OSError:
            return None
    return None


def check_output_file(path: str | os.PathLike) -> Path:
    """Check, before any work, that a file can be created at ``path``: ValueError naming the
    problem when the path is empty, is an existing folder, or lies below an existing file.
    (Permissions and free space show when writing.)"""
    text = os.fspath(path)
    if not str(text).strip():
        raise ValueError("the output path is empty: give a file name such as labels.tif")
    p = Path(text)
    if p.is_dir():
        raise ValueError(f"the output {p} is a folder: give a file name inside it, e.g. {p / 'labels.tif'}")
    blocker = _file_in_the_way(p)
    if blocker is not None:
        raise ValueError(f"cannot write {p}: {blocker} is a file, not a folder (choose another path)")
    return p


def check_output_folder(folder: str | os.PathLike) -> Path:
    """ValueError naming the problem when ``folder`` (an output folder) is empty text, an
    existing file, or lies below an existing file; otherwise ``Path(folder)``."""
    text = os.fspath(folder)
    if not str(text).strip():
        raise ValueError("the output folder is empty: give a folder name")
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise ValueError(f"cannot write to the output folder {p}: it is a file, not a folder; choose another name")
    blocker = _file_in_the_way(p)
    if blocker is not None:
        raise ValueError(f"cannot write to the output folder {p}: {blocker} is a file, not a folder; "
                         "choose another path")
    return p


def describe_write_error(path: str | os.PathLike, err: OSError) -> str:
    """One line for a failed write of ``path``: the file, the reason and what to do."""
    reason = err.strerror or str(err)
    blocker = _file_in_the_way(Path(path)) if err.errno in (errno.EEXIST, errno.ENOTDIR) else None
    if blocker is not None:
        return f"cannot write {path}: {blocker} is a file, not a folder (choose another path)"
    if err.errno == errno.EISDIR:
        return f"cannot write {path}: a folder of that name is in the way (remove or rename it)"
    if err.errno == errno.ENOSPC:
        hint = "the disk is full: free some space or choose another output folder"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "no permission to write there: fix the folder's permissions or choose another one"
    else:
        hint = "check the output folder's permissions and free space"
    return f"cannot write {path}: {reason} ({hint})"


class OutputWriteError(OSError):
    """An output file that could not be written; the message names it and the likely fix."""


class UnwritableFolderError(OSError):
    """An output folder that cannot be created or written (the message names it and the fix)."""


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and parents) and prove a file can be written there (a temporary file
    is created, written, fsync-ed and removed). Raises OSError naming the folder otherwise."""
    folder = Path(folder)
    try:
        check_output_folder(folder)
    except ValueError as err:
        error = UnwritableFolderError(str(err))
        error.errno = errno.ENOTDIR
        raise error from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}-{secrets.token_hex(4)}"  # unique: runs may share a folder
        with atomic_open(probe, "wb") as fh:
            fh.write(b"napari-edgesam write probe\n")
        probe.unlink(missing_ok=True)
    except OSError as err:
        reason = err.strerror or str(err)
        hint = "free some space" if err.errno == errno.ENOSPC else "fix its permissions"
        error = UnwritableFolderError(f"cannot write to the output folder {folder}: {reason}; "
                                      f"choose another folder or {hint}")
        error.errno = err.errno
        raise error from None
    return folder
