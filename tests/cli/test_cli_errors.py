"""The CLI never shows a traceback for bad input: one line naming the file, with a hint
(``--debug`` shows the traceback); Ctrl+C exits 130; ``--help`` is plain text."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import tifffile

import napari_edgesam.cli.segment as segment_cli
from napari_edgesam.cli import main


def _run(capsys, argv):
    try:
        rc = main(argv)
    except SystemExit as exit_:
        rc = exit_.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("napari-edgesam")]


def test_top_level_help_is_plain_text(capsys):
    rc, out, _ = _run(capsys, ["--help"])
    assert rc == 0 and "``" not in out and "napari-edgesam COMMAND --help" in " ".join(out.split())
    assert "--debug" in out


def test_unreadable_images_are_one_line(tmp_path, capsys):
    (tmp_path / "text.png").write_text("x\n")
    tifffile.imwrite(tmp_path / "full.tif", np.random.default_rng(0).integers(0, 255, (512, 1024), np.uint8))
    raw = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "trunc.tif").write_bytes(raw[:2752])
    (tmp_path / "header.tif").write_bytes(raw[:8])
    (tmp_path / "dir.tif").mkdir()
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases = {"text.png": "is not a readable PNG file", "trunc.tif": "is truncated",
             "header.tif": "TIFF without image data", "dir.tif": "is a folder, not an image file",
             "obj.npy": "holds Python objects", "missing.tif": "image not found"}
    for name, message in cases.items():
        rc, _, err = _run(capsys, ["segment", str(tmp_path / name), "--point", "1,1", "-o",
                                   str(tmp_path / "o.tif")])
        lines = _error_lines(err)
        assert rc == 1 and "Traceback" not in err, err
        assert len(lines) == 1 and str(tmp_path / name) in lines[0] and message in lines[0], err
        assert err.strip().splitlines() == lines  # nothing else (e.g. tifffile's own warnings)
    assert not (tmp_path / "o.tif").exists()


def test_point_label_must_be_0_or_1(tmp_path, capsys):
    rc, _, err = _run(capsys, ["segment", "x.tif", "--point", "10,10,0.5", "-o", str(tmp_path / "o.tif")])
    assert rc == 2 and "--point label must be 1 (positive) or 0 (negative), got 0.5" in err


def test_unexpected_errors_are_one_line_unless_debug(tmp_path, capsys, monkeypatch):
    def crash(args):
        raise IndexError("index 0 is out of bounds")

    monkeypatch.setattr(segment_cli, "run", crash)
    argv = ["segment", "x.tif", "--point", "1,1", "-o", str(tmp_path / "o.tif")]
    rc, _, err = _run(capsys, argv)
    assert rc == 1 and _error_lines(err) == [
        "napari-edgesam segment: error: IndexError: index 0 is out of bounds (unexpected; run with --debug "
        "for the traceback and report it)"]
    with pytest.raises(IndexError):
        main(["--debug", *argv])
    with pytest.raises(IndexError):
        main([*argv, "--debug"])  # also after the command

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/x_labels.tif")

    monkeypatch.setattr(segment_cli, "run", full)
    rc, _, err = _run(capsys, argv)
    assert rc == 1 and _error_lines(err) == [
        "napari-edgesam segment: error: /data/out/x_labels.tif: No space left on device (the disk is full: "
        "free some space or write elsewhere)"]

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(segment_cli, "run", interrupted)
    rc, _, err = _run(capsys, argv)
    assert rc == 130 and "cancelled" in err and "Traceback" not in err


def test_segment_writes_npy_input_and_reports_write_failures(tmp_path, capsys, golden_checkpoint, edge_golden,
                                                            golden_predictor, monkeypatch):
    np.save(tmp_path / "img.npy", edge_golden["image"])
    out = tmp_path / "labels.tif"
    argv = ["segment", str(tmp_path / "img.npy"), "--box", "60,45,260,205", "-o", str(out),
            "--model", str(golden_checkpoint)]
    rc, _, err = _run(capsys, argv)
    assert rc == 0, err
    golden_predictor.set_image(edge_golden["image"])
    mask, _, _ = golden_predictor.segment(box=[60, 45, 260, 205])
    np.testing.assert_array_equal(tifffile.imread(out) == 1, mask)

    import napari_edgesam.inference.batch.io as io_

    def full(path, write, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_, "atomic_write", full)
    rc, _, err = _run(capsys, [*argv[:-4], "-o", str(tmp_path / "second.tif"), *argv[-2:]])
    assert rc == 1 and _error_lines(err) == [
        f"napari-edgesam segment: error: cannot write {tmp_path / 'second.tif'}: No space left on device "
        "(the disk is full: free some space or choose another output folder)"]


def test_batch_cli_errors(tmp_path, capsys, golden_checkpoint, make_golden_image):
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "one.tif", make_golden_image(seed=1, h=96, w=128)[..., 0])
    (folder / "two.png").write_text("x\n")
    (folder / "dir.tif").mkdir()
    (folder / "notes.txt").write_text("x")
    prompts = tmp_path / "p.csv"
    prompts.write_text("image,object,kind,x,y,label\none.tif,1,point,50,40,1\ntwo.png,1,point,5,5,1\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    base = ["batch", str(folder), "--prompts", str(prompts), "--model", str(golden_checkpoint), "--no-progress"]
    # an output folder that cannot be made: one line, before any image
    rc, _, err = _run(capsys, [*base, "-o", str(blocker / "out")])
    assert rc == 1 and "Traceback" not in err
    assert _error_lines(err) == [f"napari-edgesam batch: error: cannot write to the output folder {blocker / 'out'}: "
                                 f"{blocker} is a file, not a folder; choose another path"]
    # a broken image is an error row, the good one is done, the odd entries are listed
    out = tmp_path / "out"
    rc, printed, err = _run(capsys, [*base, "-o", str(out)])
    assert rc == 1 and "Traceback" not in err
    assert "2 images: 1 ok, 0 skipped, 1 failed, 0 cancelled" in printed and "2 other entries ignored" in printed
    assert f"\n{folder / 'two.png'} is not a readable PNG file" in "\n" + err  # said, not only in the report
    assert err.count("is not a readable PNG file") == 1  # once
    report = json.loads((out / "report.json").read_text())
    rec = {r["key"]: r for r in report["records"]}
    assert rec["one"]["status"] == "ok" and "is not a readable PNG file" in rec["two"]["error"]
    assert {r["error"].split(" (")[0] for r in report["ignored"]} == {
        "a folder named like an image", "not an image"}
    # a prompt CSV with a broken row: one line per image, with the file and row
    prompts.write_text("image,object,kind,x,y,label\none.tif,1,point,50,40,1,extra\n")
    rc, _, err = _run(capsys, [*base, "-o", str(tmp_path / "out2")])
    report = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert rc == 1 and "Traceback" not in err
    assert f"{prompts} row 2: 1 more value(s) than the header" in report["records"][0]["error"]
