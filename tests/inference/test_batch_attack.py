"""The batch engine, its inputs and its outputs under attack: invalid prompts, changed and
damaged inputs and outputs on resume, unwritable and full output folders, unreadable images,
odd folder entries, malformed CSVs, and a batch killed (SIGKILL) while it writes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from _helpers import LabelOraclePredictor, synthetic_instances
from napari_edgesam._atomic import UnwritableFolderError, is_temp_name
from napari_edgesam.inference.automatic.grid import AutomaticConfig
from napari_edgesam.inference.batch.engine import BatchConfig, run_batch
from napari_edgesam.inference.batch.io import ImageReadError, find_inputs, read_image
from napari_edgesam.inference.batch.prompt_csv import prompts_for_image, read_prompt_csv
from napari_edgesam.inference.embeddings.tiling import TiledImage

FAST = AutomaticConfig(points_per_side=16)
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture()
def folder(tmp_path):
    """Three 128 x 160 synthetic images a.tif, b.tif, c.png and their true labels."""
    d = tmp_path / "in"
    d.mkdir()
    truths = {}
    for seed, name in ((21, "a.tif"), (22, "b.tif"), (23, "c.png")):
        image, truth = synthetic_instances((128, 160), n=4, rmin=10, rmax=16, seed=seed)
        if name.endswith(".tif"):
            tifffile.imwrite(d / name, image)
        else:
            Image.fromarray(image).save(d / name)
        truths[name.split(".")[0]] = truth
    return d, truths


def _centre(truth, k):
    cy, cx = np.argwhere(truth == k).mean(0)
    return cx, cy


def _statuses(report):
    return {r["key"]: r["status"] for r in report.records}


# -- 1. invalid prompts are errors with the file and the row -----------------------------------
@pytest.mark.parametrize("row,reason", [
    ("a.tif,bad,point,400,20,1,,,,", r"point \(400, 20\) lies outside the image \(width 160, height 128\)"),
    ("a.tif,bad,point,-30,20,1,,,,", "lies outside the image"),
    ("a.tif,bad,box,,,,50,60,10,20", r"x0 <= x1 and y0 <= y1"),
    ("a.tif,bad,box,,,,10,20,500,60", "box corner .* lies outside the image"),
])
def test_invalid_prompt_makes_that_image_an_error_with_file_and_row(folder, tmp_path, row, reason):
    d, truths = folder
    cx, cy = _centre(truths["b"], 1)
    csv = tmp_path / "prompts.csv"
    csv.write_text("image,object,kind,x,y,label,x0,y0,x1,y1\n"
                   f"a.tif,good,point,{_centre(truths['a'], 1)[0]},{_centre(truths['a'], 1)[1]},1,,,,\n"
                   f"{row}\n"
                   f"b.tif,one,point,{cx},{cy},1,,,,\n")
    out = tmp_path / "out"
    report = run_batch([d / "a.tif", d / "b.tif"], out, BatchConfig(mode="prompts", prompts=str(csv)),
                       predictor=LabelOraclePredictor())
    rec = {r["key"]: r for r in report.records}
    assert rec["a"]["status"] == "error" and rec["b"]["status"] == "ok"  # the other image goes on
    import re

    assert f"{csv} row 3: object 'bad'" in rec["a"]["error"] and re.search(reason, rec["a"]["error"]), rec["a"]
    assert not (out / "a_labels.tif").exists()  # nothing half-done: no label image for it
    assert "row 3" in (out / "report.csv").read_text()
    labels_b = tifffile.imread(out / "b_labels.tif")
    assert ((labels_b == 1) == (truths["b"] == 1)).all()


def test_csv_values_that_are_not_finite_real_numbers(tmp_path):
    head = "image,object,kind,x,y,label,x0,y0,x1,y1,z\n"
    cases = {
        "a.tif,1,point,inf,20,1,,,,,\n": r"row 2: x='inf' is not a finite number",
        "a.tif,1,point,nan,20,1,,,,,\n": r"row 2: x='nan' is not a finite number",
        "a.tif,1,point,1+2j,20,1,,,,,\n": r"row 2: x='1\+2j' is not a number",
        "a.tif,1,point,10,20,1,,,,,inf\n": r"row 2: z='inf' is not a finite number",
        "a.tif,1,point,10,20,1,,,,,1.5\n": r"row 2: z=1.5 is not a slice index",
        "a.tif,1,point,10,20,1,,,,,-1\n": r"row 2: z=-1 is not a slice index",
        "a.tif,1,point,10,20,0.5,,,,,\n": r"row 2: label must be 1 \(positive\) or 0 \(negative\), got 0.5",
        "a.tif,1,point,10,20,1,,,,,,7,8\n": r"row 2: 2 more value\(s\) than the header has columns",
    }
    for i, (row, match) in enumerate(cases.items()):
        f = tmp_path / f"p{i}.csv"
        f.write_text(head + row)
        with pytest.raises(ValueError, match=match) as info:
            read_prompt_csv(f)
        assert str(f) in str(info.value)
    pts = tmp_path / "pts.csv"
    pts.write_text("index,axis-0,axis-1,axis-2\n0,inf,5,5\n")
    with pytest.raises(ValueError, match=r"row 2: axis-0='inf' is not a finite number"):
        read_prompt_csv(pts)
    bad = tmp_path / "bin.csv"
    bad.write_bytes(b"x,y\n\xff\xfe\x00\x01\n")
    with pytest.raises(ValueError, match="not a UTF-8 text CSV"):
        read_prompt_csv(bad)
    # trailing extra values on a later row, also in the middle of a good file
    f = tmp_path / "extra.csv"
    f.write_text("object,x,y\n1,10,20\n2,30,40,99\n")
    with pytest.raises(ValueError, match=r"extra.csv row 3: 1 more value"):
        read_prompt_csv(f)


def test_empty_objects_are_named_in_the_record(folder, tmp_path):
    d, truths = folder
    x, y = _centre(truths["a"], 1)
    csv = tmp_path / "p.csv"
    csv.write_text("image,object,kind,x,y,label,x0,y0,x1,y1\n"
                   f"a.tif,first,point,{x},{y},1,,,,\na.tif,again,point,{x},{y},1,,,,\n")
    report = run_batch([d / "a.tif"], tmp_path / "out", BatchConfig(mode="prompts", prompts=str(csv)),
                       predictor=LabelOraclePredictor())
    (rec,) = report.records
    assert rec["status"] == "ok" and rec["n_objects"] == 1 and rec["n_prompted"] == 2
    assert rec["empty_objects"] == ["first"]  # painted over by the later object: said, not silent
    with pytest.raises(FileNotFoundError, match="prompt file or folder not found"):
        run_batch([d], tmp_path / "out", BatchConfig(mode="prompts", prompts=str(tmp_path / "nope.csv")),
                  predictor=LabelOraclePredictor())


def test_objects_know_their_rows(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("image,object,kind,x,y,label,x0,y0,x1,y1\n"
                 "a.tif,1,point,10,20,1,,,,\nb.tif,1,point,1,2,1,,,,\na.tif,1,box,,,,5,6,30,40\n")
    (obj,) = prompts_for_image(f, tmp_path / "a.tif")
    assert obj.source == f"{f} rows 2, 4"


def test_tiled_image_rejects_what_the_predictor_rejects(golden_predictor):
    """One validation: TiledImage (batch prompt mode) gives the predictor's errors, no clamping."""
    image = np.zeros((64, 96), np.uint8)
    tiled = TiledImage(LabelOraclePredictor(), image, 32, 8)
    golden_predictor.set_image(image)
    bad = [
        dict(point_coords=[[200, 10]], point_labels=[1]),
        dict(point_coords=[[-5, 10]], point_labels=[1]),
        dict(point_coords=[[np.inf, 10]], point_labels=[1]),
        dict(point_coords=[[np.nan, 10]], point_labels=[1]),
        dict(point_coords=[[10 + 1j, 10]], point_labels=[1]),
        dict(point_coords=[[10, 10]], point_labels=[0.5]),
        dict(box=[50, 40, 10, 5]),
        dict(box=[0, 0, 500, 10]),
    ]
    for kwargs in bad:
        with pytest.raises(ValueError) as from_tiles:
            tiled.segment(**kwargs)
        with pytest.raises(ValueError) as from_api:
            golden_predictor.segment(**kwargs)
        assert str(from_tiles.value) == str(from_api.value), kwargs
    # half a pixel outside is accepted by both (the edge pixel), and segments
    region = tiled.segment(point_coords=[[96.4, 63.9]], point_labels=[1])
    assert region.mask.shape[0] >= 0


# -- 2. resume follows content, not names -----------------------------------------------------
def test_resume_redoes_changed_images_prompts_and_damaged_labels(folder, tmp_path):
    d, truths = folder
    csv = tmp_path / "prompts.csv"

    def write_prompts(bx):
        csv.write_text("image,object,kind,x,y,label,x0,y0,x1,y1\n"
                       + "".join(f"{k}.{'png' if k == 'c' else 'tif'},1,point,{x},{y},1,,,,\n"
                                 for k, (x, y) in (("a", _centre(truths["a"], 1)), ("b", bx),
                                                   ("c", _centre(truths["c"], 1)))))

    write_prompts(_centre(truths["b"], 1))
    out = tmp_path / "out"
    config = BatchConfig(mode="prompts", prompts=str(csv))
    first = run_batch([d], out, config, predictor=LabelOraclePredictor())
    assert set(_statuses(first).values()) == {"ok"}
    rec = json.loads((out / "a.json").read_text())
    assert set(rec["identity"]) == {"image", "prompts", "labels", "model_files"}
    assert rec["identity"]["image"]["size"] == (d / "a.tif").stat().st_size

    def rerun():
        stub = LabelOraclePredictor()
        return _statuses(run_batch([d], out, config, predictor=stub)), stub

    assert rerun()[0] == {"a": "skipped", "b": "skipped", "c": "skipped"}
    # the same content with a new mtime (a copy): still skipped
    data = (d / "a.tif").read_bytes()
    (d / "a.tif").unlink()
    (d / "a.tif").write_bytes(data)
    os.utime(d / "a.tif", ns=(1, 1))
    assert rerun()[0] == {"a": "skipped", "b": "skipped", "c": "skipped"}
    # a replaced image of the same size: redone
    image, truth = synthetic_instances((128, 160), n=4, rmin=10, rmax=16, seed=99)
    tifffile.imwrite(d / "a.tif", image)
    assert (d / "a.tif").stat().st_size == len(data)
    statuses, stub = rerun()
    assert statuses == {"a": "ok", "b": "skipped", "c": "skipped"} and stub.embedded == 1
    # b's prompt row edited in the same CSV: only b is redone
    write_prompts(_centre(truths["b"], 2))
    assert rerun()[0] == {"a": "skipped", "b": "ok", "c": "skipped"}
    assert (tifffile.imread(out / "b_labels.tif") == 1).sum() == (truths["b"] == 2).sum()
    # a damaged label file (same size, other bytes; and truncated): redone
    lab = out / "c_labels.tif"
    raw = bytearray(lab.read_bytes())
    raw[-20:] = b"\0" * 20
    lab.write_bytes(bytes(raw))
    assert rerun()[0] == {"a": "skipped", "b": "skipped", "c": "ok"}
    lab.write_bytes(lab.read_bytes()[:50])
    assert rerun()[0] == {"a": "skipped", "b": "skipped", "c": "ok"}
    assert ((tifffile.imread(lab) == 1) == (truths["c"] == 1)).all()
    # threads / backend / device alone: skipped
    other = BatchConfig(mode="prompts", prompts=str(csv), num_threads=1, backend="torch", device="cpu")
    assert set(_statuses(run_batch([d], out, other, predictor=LabelOraclePredictor())).values()) == {"skipped"}
    # a record from before content identities: redone once, then skipped
    rec = json.loads((out / "a.json").read_text())
    del rec["identity"]
    (out / "a.json").write_text(json.dumps(rec))
    assert rerun()[0]["a"] == "ok" and rerun()[0]["a"] == "skipped"


def test_a_changed_model_file_redoes_and_outputs_in_the_input_folder_are_not_inputs(folder, tmp_path):
    d, _ = folder
    model = tmp_path / "my_model.pth"
    model.write_bytes(b"weights v1")
    config = BatchConfig(automatic=FAST, model=str(model))
    run_batch([d], d, config, predictor=LabelOraclePredictor())  # outputs into the input folder
    assert json.loads((d / "a.json").read_text())["identity"]["model_files"]["model"]["size"] == 10
    report = run_batch([d], d, config, predictor=LabelOraclePredictor())
    assert _statuses(report) == {"a": "skipped", "b": "skipped", "c": "skipped"}  # not a_labels etc.
    assert {Path(r["input"]).name for r in report.ignored if r["error"] == "a label image this batch wrote"} == {
        "a_labels.tif", "b_labels.tif", "c_labels.tif"}
    os.utime(model, ns=(5, 5))  # touched, same bytes: still skipped
    assert set(_statuses(run_batch([d], d, config, predictor=LabelOraclePredictor())).values()) == {"skipped"}
    model.write_bytes(b"weights v2")  # retrained over the same path: redone
    assert set(_statuses(run_batch([d], d, config, predictor=LabelOraclePredictor())).values()) == {"ok"}


def test_skipped_rows_keep_the_earlier_results(folder, tmp_path):
    d, _ = folder
    out = tmp_path / "out"
    first = {r["key"]: r for r in run_batch([d], out, BatchConfig(automatic=FAST),
                                            predictor=LabelOraclePredictor()).records}
    second = run_batch([d], out, BatchConfig(automatic=FAST), predictor=LabelOraclePredictor())
    import csv as csv_

    rows = {r["key"]: r for r in csv_.DictReader((out / "report.csv").open())}
    for r in second.records:
        assert r["status"] == "skipped"
        assert r["n_objects"] == first[r["key"]]["n_objects"] > 0
        assert r["seconds"] == first[r["key"]]["seconds"] > 0
        assert float(rows[r["key"]]["seconds"]) == pytest.approx(first[r["key"]]["seconds"])
        assert int(rows[r["key"]]["n_objects"]) == first[r["key"]]["n_objects"]


# -- 3. unwritable and full output folders ----------------------------------------------------
def test_unwritable_output_folder_fails_before_the_first_image(folder, tmp_path, monkeypatch):
    d, _ = folder
    import napari_edgesam._atomic as atomic

    def denied(path, suffix):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(atomic, "_create_temp", denied)  # as a read-only folder does (tests run as root)
    stub = LabelOraclePredictor()
    with pytest.raises(UnwritableFolderError, match=f"cannot write to the output folder {tmp_path / 'out'}: "
                                                    "Permission denied; choose another folder or fix"):
        run_batch([d], tmp_path / "out", BatchConfig(automatic=FAST), predictor=stub)
    assert stub.embedded == 0
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(UnwritableFolderError):
        run_batch([d], blocker / "out", BatchConfig(automatic=FAST), predictor=stub)
    assert stub.embedded == 0


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(folder, tmp_path):
    d, _ = folder
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(UnwritableFolderError, match="Permission denied"):
            run_batch([d], out, BatchConfig(automatic=FAST), predictor=LabelOraclePredictor())
    finally:
        out.chmod(0o755)


def test_full_disk_is_reported_per_image_and_the_report_is_written(folder, tmp_path, monkeypatch):
    d, _ = folder
    import napari_edgesam.inference.batch.io as io_

    real = io_.atomic_write

    def full(path, write, **kwargs):
        if str(path).endswith("_labels.tif"):
            def partial(tmp):
                tmp.write_bytes(b"II*\0partial")
                raise OSError(errno.ENOSPC, "No space left on device")

            return real(path, partial, **kwargs)
        return real(path, write, **kwargs)

    monkeypatch.setattr(io_, "atomic_write", full)
    out = tmp_path / "out"
    report = run_batch([d], out, BatchConfig(automatic=FAST), predictor=LabelOraclePredictor())
    assert [r["status"] for r in report.records] == ["error"] * 3  # every image was tried
    for r in report.records:
        assert r["error"] == (f"cannot write {out / (r['key'] + '_labels.tif')}: No space left on device "
                              "(the disk is full: free some space or choose another output folder)")
    rep = json.loads((out / "report.json").read_text())
    assert rep["summary"]["error"] == 3 and "No space left" in (out / "report.csv").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.json", "c.json", "report.csv", "report.json"]
    monkeypatch.setattr(io_, "atomic_write", real)  # space freed: the rerun does them
    report = run_batch([d], out, BatchConfig(automatic=FAST), predictor=LabelOraclePredictor())
    assert [r["status"] for r in report.records] == ["ok"] * 3


def test_a_failing_report_write_is_one_clear_error(folder, tmp_path, monkeypatch):
    d, _ = folder
    import napari_edgesam.inference.batch.engine as batch

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(batch, "write_csv", full)
    with pytest.raises(OSError, match=r"cannot write .*report.csv: No space left on device \(the disk is full"):
        run_batch([d], tmp_path / "out", BatchConfig(automatic=FAST), predictor=LabelOraclePredictor())
    assert json.loads((tmp_path / "out" / "a.json").read_text())["status"] == "ok"


# -- 5. unreadable images and odd folder entries ---------------------------------------------
def _broken_files(d: Path) -> dict[str, str]:
    """name -> what the error must say."""
    (d / "text.png").write_text("x\n")
    tifffile.imwrite(d / "full.tif", np.random.default_rng(0).integers(0, 255, (512, 1024), np.uint8))
    raw = (d / "full.tif").read_bytes()
    (d / "full.tif").unlink()
    (d / "trunc.tif").write_bytes(raw[:2752])
    (d / "header.tif").write_bytes(raw[:8])
    (d / "empty.tif").write_bytes(b"")
    np.save(d / "pickle.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (d / "junk.npy").write_bytes(b"hello world")  # not "pickled": numpy would say so
    np.save(d / "whole.npy", np.zeros((100, 100)))
    (d / "cut.npy").write_bytes((d / "whole.npy").read_bytes()[:1000])
    (d / "whole.npy").unlink()
    return {
        "junk.npy": "is not a .npy file",
        "cut.npy": "is truncated",
        "text.png": "is not a readable PNG file",
        "trunc.tif": "is truncated",
        "header.tif": "is a TIFF without image data",
        "empty.tif": "is empty (0 bytes)",
        "pickle.npy": "holds Python objects (pickled)",
    }


def test_unreadable_images_say_what_is_wrong(tmp_path):
    for name, message in _broken_files(tmp_path).items():
        with pytest.raises(ImageReadError) as info:
            read_image(tmp_path / name)
        assert message in str(info.value)
        assert str(tmp_path / name) in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "dir.tif").mkdir()
    with pytest.raises(ImageReadError, match="is a folder, not an image file"):
        read_image(tmp_path / "dir.tif")
    with pytest.raises(FileNotFoundError, match="image not found"):
        read_image(tmp_path / "missing.tif")
    arr = np.arange(40 * 50, dtype=np.uint16).reshape(40, 50)
    np.save(tmp_path / "ok.npy", arr)
    got = read_image(tmp_path / "ok.npy")
    assert not got.is_stack and (got.data == arr).all()


def test_discovery_lists_what_it_ignores(folder, tmp_path):
    d, _ = folder
    (d / "notes.txt").write_text("x")
    (d / "dir.tif").mkdir()
    (d / "sub").mkdir()
    os.symlink(d / "nowhere.tif", d / "gone.tif")
    os.symlink(d / "loop.tif", d / "loop.tif")
    (d / ".hidden.tif").write_bytes(b"x")
    np.save(d / "e.npy", np.zeros((128, 160), np.uint8))
    found = find_inputs([d])
    assert [p.name for p in found.images] == ["a.tif", "b.tif", "c.png", "e.npy"]
    reasons = {p.name: r for p, r in found.ignored}
    assert set(reasons) == {"notes.txt", "dir.tif", "sub", "gone.tif", "loop.tif", ".hidden.tif"}
    assert reasons["dir.tif"].startswith("a folder named like an image")
    assert reasons["gone.tif"].startswith("a broken symbolic link")
    assert reasons["loop.tif"] == "a symbolic link loop"
    assert reasons["notes.txt"].startswith("not an image")
    out = tmp_path / "out"
    report = run_batch([d], out, BatchConfig(automatic=FAST), predictor=LabelOraclePredictor())
    assert _statuses(report) == {"a": "ok", "b": "ok", "c": "ok", "e": "ok"}
    rep = json.loads((out / "report.json").read_text())
    assert rep["summary"]["ignored"] == 6 and {Path(r["input"]).name for r in rep["ignored"]} == set(reasons)
    text = (out / "report.csv").read_text()
    assert text.count(",ignored,") == 6 and "a symbolic link loop" in text


def test_broken_images_in_a_batch_are_error_rows(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    expected = _broken_files(d)
    image, _ = synthetic_instances((64, 64), n=2, rmin=8, rmax=10, seed=1)
    tifffile.imwrite(d / "good.tif", image)
    report = run_batch([d], tmp_path / "out", BatchConfig(automatic=FAST), predictor=LabelOraclePredictor())
    rec = {Path(r["input"]).name: r for r in report.records}
    assert rec["good.tif"]["status"] == "ok"
    for name, message in expected.items():
        assert rec[name]["status"] == "error" and message in rec[name]["error"], rec[name]
        assert "Traceback" not in rec[name]["error"]


# -- 6. SIGKILL while writing, then resume ----------------------------------------------------
_KILLED_RUN = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
import napari_edgesam.inference.batch.io as io_
from _helpers import LabelOraclePredictor
from napari_edgesam.inference.automatic.grid import AutomaticConfig
from napari_edgesam.inference.batch.engine import BatchConfig, run_batch
from napari_edgesam._atomic import atomic_open

victim, stage = sys.argv[3], sys.argv[5]
real_write, real_bytes = io_.atomic_write, io_.atomic_write_bytes

def slow_write(path, write, **kw):
    if stage == "labels" and Path(path).name == victim + "_labels.tif":
        def stuck(tmp):
            write(tmp)
            print("WRITING", flush=True)
            time.sleep(120)
        return real_write(path, stuck, **kw)
    return real_write(path, write, **kw)

def slow_bytes(path, data, **kw):
    if stage == "record" and Path(path).name == victim + ".json":
        with atomic_open(path, "wb") as fh:
            fh.write(data[: len(data) // 2]); fh.flush()
            print("WRITING", flush=True)
            time.sleep(120)
    return real_bytes(path, data, **kw)

io_.atomic_write, io_.atomic_write_bytes = slow_write, slow_bytes
run_batch([sys.argv[1]], sys.argv[2], BatchConfig(automatic=AutomaticConfig(points_per_side=16)),
          predictor=LabelOraclePredictor())
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
@pytest.mark.parametrize("stage", ["labels", "record"])
def test_sigkill_while_writing_then_resume_is_exact(folder, tmp_path, stage):
    d, _ = folder
    reference = tmp_path / "reference"
    run_batch([d], reference, BatchConfig(automatic=FAST), predictor=LabelOraclePredictor())

    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(d), str(out), "b", str(TESTS), stage],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    import threading

    watchdog = threading.Timer(240, proc.kill)  # never hang the suite
    watchdog.start()
    try:
        line = proc.stdout.readline()  # blocks until the victim's write is under way
        assert line.strip() == "WRITING", proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    orphans = [p.name for p in out.iterdir() if is_temp_name(p.name)]
    victim = "b_labels.tif" if stage == "labels" else "b.json"
    assert len(orphans) == 1 and orphans[0].startswith(f".{victim}."), orphans
    assert (out / "a.json").is_file() and not (out / "b.json").exists() and not (out / "report.csv").exists()
    assert (out / "b_labels.tif").exists() == (stage == "record")

    stub = LabelOraclePredictor()
    report = run_batch([d], out, BatchConfig(automatic=FAST), predictor=stub)
    assert _statuses(report) == {"a": "skipped", "b": "ok", "c": "ok"} and stub.embedded == 2
    assert not [p for p in out.iterdir() if is_temp_name(p.name) or p.name.endswith(".tmp")]
    for key in "abc":
        np.testing.assert_array_equal(tifffile.imread(out / f"{key}_labels.tif"),
                                      tifffile.imread(reference / f"{key}_labels.tif"))
        new, ref = (json.loads((o / f"{key}.json").read_text()) for o in (out, reference))
        assert new["n_objects"] == ref["n_objects"] and new["identity"]["labels"] == ref["identity"]["labels"]
    again = run_batch([d], out, BatchConfig(automatic=FAST), predictor=LabelOraclePredictor())
    assert set(_statuses(again).values()) == {"skipped"}
