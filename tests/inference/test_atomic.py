"""The one atomic-write helper: permissions from the umask, no temp file or damage on failure,
stale temp files of killed writers removed, the write probe of output folders."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from napari_edgesam._atomic import (
    UnwritableFolderError,
    atomic_open,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    check_writable,
    is_temp_name,
    remove_stale_temps,
)


@pytest.fixture()
def umask():
    def set_(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    os.umask(old)
    yield set_
    os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_mode_follows_the_umask(tmp_path, umask, mask, mode):
    import tifffile

    from napari_edgesam.inference.batch.io import write_csv, write_json, write_labels

    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_bytes(tmp_path / "b.bin", b"x")
    atomic_write(tmp_path / "c.tif", lambda tmp: tifffile.imwrite(tmp, np.zeros((4, 4), np.uint8)))
    write_labels(tmp_path / "d_labels.tif", np.ones((4, 4), np.uint16))
    write_json(tmp_path / "e.json", {"a": 1})
    write_csv(tmp_path / "f.csv", [{"a": 1}], ["a"])
    for p in tmp_path.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == mode, (p.name, oct(p.stat().st_mode))


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_training_and_model_writers_use_it(tmp_path, umask):
    torch = pytest.importorskip("torch")
    from napari_edgesam.training.checkpoint import atomic_torch_save
    from napari_edgesam.training.checkpoint import atomic_write_text as text
    from napari_edgesam.training.evaluate import write_json_atomic

    umask(0o022)
    atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "last.pt")
    text("hello", tmp_path / "t.txt")
    write_json_atomic({"a": 1}, tmp_path / "e.json")
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {
        "last.pt": 0o644, "t.txt": 0o644, "e.json": 0o644}
    assert torch.load(tmp_path / "last.pt", weights_only=True)["w"].shape == (2,)


@pytest.mark.parametrize("how", ["open", "path"])
def test_a_failing_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, how):
    target = tmp_path / "out.json"
    target.write_text("old")

    def boom(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        if how == "open":
            with atomic_open(target, "w") as fh:
                fh.write("new, half written")
                boom()
        else:
            def write(tmp):
                tmp.write_text("new, half written")
                boom()

            atomic_write(target, write)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    with pytest.raises(KeyboardInterrupt):  # also on an interrupt
        with atomic_open(target, "wb") as fh:
            fh.write(b"x")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"] and target.read_text() == "old"


def test_writes_replace_and_create_folders(tmp_path):
    target = tmp_path / "deep" / "er" / "f.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(target, "a"):
            pass


def test_stale_temps_of_dead_writers_are_removed(tmp_path):
    # a writer killed mid-write: its temporary file stays behind
    code = ("import os, sys\nfrom napari_edgesam._atomic import atomic_open\n"
            "with atomic_open(sys.argv[1], 'wb') as fh:\n"
            "    fh.write(b'partial'); fh.flush(); os._exit(9)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x_labels.tif")], timeout=60)
    assert proc.returncode == 9
    (tmp_path / "keep.tif").write_bytes(b"x")
    (tmp_path / ".hidden.tmp").write_bytes(b"not ours")  # not in the helper's format: kept
    orphans = [p for p in tmp_path.iterdir() if is_temp_name(p.name)]
    assert len(orphans) == 1 and orphans[0].name.startswith(".x_labels.tif.")
    # a live writer's temp (this process) is kept
    with atomic_open(tmp_path / "live.txt", "w") as fh:
        fh.write("x")
        fh.flush()
        assert remove_stale_temps(tmp_path) == orphans
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden.tmp", "keep.tif", "live.txt"]
    assert remove_stale_temps(tmp_path / "missing") == []


def test_check_writable(tmp_path, monkeypatch):
    out = check_writable(tmp_path / "new" / "out")
    assert out.is_dir() and list(out.iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UnwritableFolderError, match=f"cannot write to the output folder {blocker}"):
        check_writable(blocker)
    import napari_edgesam._atomic as atomic

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fdopen", full)
    with pytest.raises(UnwritableFolderError, match="No space left on device; choose another folder or free some"):
        check_writable(tmp_path / "full")
    assert not [p for p in (tmp_path / "full").iterdir()]
