"""The batch engine: inputs, image and prompt reading, outputs, skip/resume, errors, cancel."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest
import tifffile
from PIL import Image

from _helpers import (
    BoxOraclePredictor,
    LabelOraclePredictor,
    ThresholdPrior,
    matched_ious,
    synthetic_instances,
)
from napari_edgesam.coords import rowcol_to_xy
from napari_edgesam.inference.automatic.boxes import BoxAutomaticConfig
from napari_edgesam.inference.automatic.grid import AutomaticConfig
from napari_edgesam.inference.batch.engine import BatchConfig, process_one, run_batch
from napari_edgesam.inference.batch.io import discover_inputs, output_keys, read_image
from napari_edgesam.inference.batch.prompt_csv import prompts_for_image, read_prompt_csv

FAST = AutomaticConfig(points_per_side=16)


def _write_ome_zarr(path, data, axes, version="0.4"):
    import zarr

    fmt = 2 if version == "0.4" else 3
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    root.create_array("0", data=data)
    root.create_array("1", data=data[..., ::2, ::2])
    ms = [{"version": version, "axes": [{"name": a} for a in axes], "datasets": [{"path": "0"}, {"path": "1"}]}]
    if version == "0.4":
        root.attrs["multiscales"] = ms
    else:
        root.attrs["ome"] = {"version": version, "multiscales": ms}


@pytest.fixture()
def image_folder(tmp_path):
    """Three synthetic images (TIFF, PNG, OME-Zarr) and their true labels."""
    folder = tmp_path / "in"
    folder.mkdir()
    truths = {}
    for seed, name in ((11, "a.tif"), (12, "b.png"), (13, "c.ome.zarr")):
        image, truth = synthetic_instances((256, 256), n=6, rmin=12, rmax=22, seed=seed)
        if name.endswith(".tif"):
            tifffile.imwrite(folder / name, image)
        elif name.endswith(".png"):
            Image.fromarray(image).save(folder / name)
        else:
            _write_ome_zarr(folder / name, image[None], "cyx")
        truths[name.split(".")[0]] = truth
    (folder / "notes.txt").write_text("not an image")
    return folder, truths


# -- inputs and images ------------------------------------------------------------------------
def test_discover_inputs_pattern_and_keys(image_folder, tmp_path):
    folder, _ = image_folder
    found = discover_inputs([folder])
    assert [p.name for p in found] == ["a.tif", "b.png", "c.ome.zarr"]
    assert [p.name for p in discover_inputs([folder], "*.png")] == ["b.png"]
    assert output_keys(found) == ["a", "b", "c"]
    with pytest.raises(FileNotFoundError):
        discover_inputs([tmp_path / "missing"])
    with pytest.raises(ValueError, match="unsupported"):
        discover_inputs([folder / "notes.txt"])
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(other / "a.png")
    assert output_keys([folder / "a.tif", other / "a.png"]) == ["a_tif", "a_png"]


def test_read_image_formats(tmp_path):
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 4000, (5, 40, 50), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", stack, metadata={"axes": "ZYX"})
    got = read_image(tmp_path / "s.tif")
    assert got.is_stack and not got.has_channels and (got.data == stack).all()
    rgb = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    got = read_image(tmp_path / "rgb.tif")
    assert not got.is_stack and got.has_channels and (got.data == rgb).all()
    Image.fromarray(rgb).save(tmp_path / "x.jpg")
    assert read_image(tmp_path / "x.jpg").data.shape == (30, 40, 3)
    cyx = rng.integers(0, 255, (2, 30, 40), dtype=np.uint8)
    _write_ome_zarr(tmp_path / "v4.ome.zarr", cyx, "cyx")
    got = read_image(tmp_path / "v4.ome.zarr")
    assert got.has_channels and (got.data == np.moveaxis(cyx, 0, -1)).all()
    tzyx = rng.integers(0, 255, (1, 3, 30, 40), dtype=np.uint8)
    _write_ome_zarr(tmp_path / "v5.ome.zarr", tzyx, "tzyx", version="0.5")
    got = read_image(tmp_path / "v5.ome.zarr")
    assert got.is_stack and (got.data == tzyx[0]).all()
    import zarr

    zarr.save_array(str(tmp_path / "plain.zarr"), rgb[..., 0])
    assert (read_image(tmp_path / "plain.zarr").data == rgb[..., 0]).all()


# -- prompts ----------------------------------------------------------------------------------
def test_prompt_csv_formats(tmp_path):
    ours = tmp_path / "prompts.csv"
    ours.write_text(
        "image,object,kind,x,y,label,x0,y0,x1,y1\n"
        "a.tif,1,point,10,20,1,,,,\n"
        "a.tif,1,point,15,25,0,,,,\n"
        "a,2,box,,,,5,6,30,40\n"
        "b.png,1,point,7,8,,,,,\n"
    )
    table = read_prompt_csv(ours)
    assert len(table["a.tif"]) == 1 and len(table["a"]) == 1
    obj = table["a.tif"][0]
    assert obj.points.tolist() == [[10, 20], [15, 25]] and obj.labels.tolist() == [1, 0]
    assert table["a"][0].box.tolist() == [5, 6, 30, 40]
    a_prompts = prompts_for_image(ours, tmp_path / "a.tif")
    assert len(a_prompts) == 2
    assert [o.points.tolist() for o in prompts_for_image(ours, tmp_path / "b.png")] == [[[7, 8]]]

    points = tmp_path / "pts.csv"  # napari Points export: axis-0 = row (y), axis-1 = column (x)
    points.write_text("index,axis-0,axis-1\n0,20.0,10.0\n1,5.5,40.0\n")
    objs = read_prompt_csv(points)[""]
    assert [o.points.tolist() for o in objs] == [[[10.0, 20.0]], [[40.0, 5.5]]]
    shapes = tmp_path / "shp.csv"
    shapes.write_text(
        "index,shape-type,vertex-index,axis-0,axis-1\n"
        "0,rectangle,0,10,20\n0,rectangle,1,10,60\n0,rectangle,2,50,60\n0,rectangle,3,50,20\n"
    )
    (box,) = read_prompt_csv(shapes)[""]
    assert box.box.tolist() == [20, 10, 60, 50]
    shapes3d = tmp_path / "shp3.csv"
    shapes3d.write_text("index,shape-type,vertex-index,axis-0,axis-1,axis-2\n0,rectangle,0,2,10,20\n0,rectangle,1,2,50,60\n")
    assert read_prompt_csv(shapes3d)[""][0].z == 2
    assert rowcol_to_xy(np.array([[1, 2]])).tolist() == [[2, 1]]


@pytest.mark.parametrize("text,match", [
    ("foo,bar\n1,2\n", "unrecognised"),
    ("object,kind,x,y,label\n1,point,1,2,5\n", "label"),
    ("object,kind,x,y\n1,circle,1,2\n", "kind"),
    ("object,kind,x,y\n1,point,a,2\n", "not a number"),
])
def test_prompt_csv_errors_name_the_problem(tmp_path, text, match):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_prompt_csv(f)


# -- runs -------------------------------------------------------------------------------------
def test_run_batch_automatic_outputs_records_and_report(image_folder, tmp_path):
    folder, truths = image_folder
    out = tmp_path / "out"
    stub = LabelOraclePredictor()
    seen = []
    report = run_batch([folder], out, BatchConfig(automatic=FAST), predictor=stub,
                       progress=lambda d, t, r: seen.append((d, t, r["status"])))
    assert seen == [(1, 3, "ok"), (2, 3, "ok"), (3, 3, "ok")]
    assert report.summary["ok"] == 3
    for key, truth in truths.items():
        labels = tifffile.imread(out / f"{key}_labels.tif")
        assert labels.dtype == np.uint16 and labels.shape == truth.shape
        assert (matched_ious(truth, labels) > 0.8).all()
        rec = json.loads((out / f"{key}.json").read_text())
        assert rec["status"] == "ok" and rec["n_objects"] == int(labels.max())
        assert rec["parameters"]["automatic"]["points_per_side"] == 16
        assert rec["model"] == "edgesam" and rec["backend"] == "oracle" and rec["timing"]["segment_s"] > 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["summary"]["ok"] == 3 and len(rep["records"]) == 3
    assert (out / "report.csv").read_text().splitlines()[0] == "input,key,status,n_objects,seconds,error"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_skip_resume_and_error_report(image_folder, tmp_path):
    folder, _ = image_folder
    out = tmp_path / "out"
    cfg = BatchConfig(automatic=FAST)
    run_batch([folder], out, cfg, predictor=LabelOraclePredictor())
    # a second run skips everything without decoding anything
    stub = LabelOraclePredictor()
    report = run_batch([folder], out, cfg, predictor=stub)
    assert report.summary["skipped"] == 3 and stub.calls == 0
    # resume: an image whose record is missing (e.g. interrupted) is redone, alone
    (out / "b.json").unlink()
    report = run_batch([folder], out, cfg, predictor=stub)
    assert [r["status"] for r in report.records] == ["skipped", "ok", "skipped"] and stub.embedded == 1
    # a broken image is reported and the others still run
    (folder / "d.tif").write_bytes(b"this is not a tiff")
    report = run_batch([folder], out, BatchConfig(automatic=FAST, overwrite=True), predictor=LabelOraclePredictor())
    status = {r["key"]: r for r in report.records}
    assert [status[k]["status"] for k in "abcd"] == ["ok", "ok", "ok", "error"]
    assert status["d"]["error"] and not (out / "d_labels.tif").exists()
    assert json.loads((out / "d.json").read_text())["status"] == "error"
    assert "d.tif" in (out / "report.csv").read_text()
    # an error record is retried on the next run; ok ones are skipped
    report = run_batch([folder], out, BatchConfig(automatic=FAST), predictor=LabelOraclePredictor())
    assert [r["status"] for r in report.records] == ["skipped", "skipped", "skipped", "error"]
    # other threads or backend: same result, still skipped
    report = run_batch([folder], out, BatchConfig(automatic=FAST, num_threads=1, backend="torch"),
                       predictor=LabelOraclePredictor())
    assert [r["status"] for r in report.records][:3] == ["skipped"] * 3
    # other result-relevant parameters (here the point grid): everything is redone, not skipped
    other = BatchConfig(automatic=dataclasses.replace(FAST, points_per_side=FAST.points_per_side + 2))
    stub = LabelOraclePredictor()
    report = run_batch([folder], out, other, predictor=stub)
    assert [r["status"] for r in report.records][:3] == ["ok"] * 3 and stub.embedded == 3
    assert json.loads((out / "a.json").read_text())["parameters"]["automatic"]["points_per_side"] == \
        FAST.points_per_side + 2


def test_cancel_stops_after_current_image(image_folder, tmp_path):
    folder, _ = image_folder
    cancel = threading.Event()
    report = run_batch([folder], tmp_path / "out", BatchConfig(automatic=FAST), predictor=LabelOraclePredictor(),
                       cancel=cancel, progress=lambda d, t, r: cancel.set())
    assert [r["status"] for r in report.records] == ["ok", "cancelled", "cancelled"]
    assert report.cancelled
    assert json.loads((tmp_path / "out" / "report.json").read_text())["summary"]["cancelled"] == 2


def test_prompt_mode_segments_the_prompted_objects(image_folder, tmp_path):
    folder, truths = image_folder
    ta = truths["a"]
    ys, xs = np.nonzero(ta == 2)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    cy, cx = np.argwhere(ta == 4).mean(0)
    csv = tmp_path / "prompts.csv"
    csv.write_text(
        "image,object,kind,x,y,label,x0,y0,x1,y1\n"
        f"a.tif,first,point,{cx},{cy},1,,,,\n"
        f"a.tif,second,box,,,,{x0},{y0},{x1},{y1}\n"
    )
    out = tmp_path / "out"
    report = run_batch([folder], out, BatchConfig(mode="prompts", prompts=str(csv), automatic=FAST),
                       predictor=LabelOraclePredictor())
    status = {r["key"]: r for r in report.records}
    assert status["a"]["status"] == "ok" and status["a"]["n_objects"] == 2
    labels = tifffile.imread(out / "a_labels.tif")
    assert ((labels == 1) == (ta == 4)).all() and ((labels == 2) == (ta == 2)).all()
    assert status["b"]["status"] == "error" and "no prompts" in status["b"]["error"]


def test_stack_gives_3d_labels(tmp_path):
    z, h, w = 4, 96, 96
    zz, yy, xx = np.mgrid[:z, :h, :w]
    truth = (((zz - 1.5) * 6) ** 2 + (yy - 48) ** 2 + (xx - 40) ** 2 <= 25**2).astype(np.int32)
    tifffile.imwrite(tmp_path / "vol.tif", (truth * 120).astype(np.uint8), metadata={"axes": "ZYX"})
    record = process_one(tmp_path / "vol.tif", BatchConfig(automatic=FAST, out_dir=str(tmp_path / "o")),
                         predictor=LabelOraclePredictor())
    assert record["status"] == "ok" and record["shape"] == [z, h, w] and record["n_objects"] == 1
    labels = tifffile.imread(tmp_path / "o" / "vol_labels.tif")
    assert labels.shape == (z, h, w) and ((labels > 0) == (truth > 0)).all()


def test_boxes_mode_with_the_prior(image_folder, tmp_path):
    folder, truths = image_folder
    out = tmp_path / "out"
    prior = ThresholdPrior()
    stub = BoxOraclePredictor(prior=prior)
    config = BatchConfig(mode="boxes", boxes=BoxAutomaticConfig(max_proposals=100))
    assert config.prior == "auto"  # the default of mode boxes
    report = run_batch([folder], out, config, predictor=stub)
    assert report.summary["ok"] == 3 and prior.calls == 3 and stub.calls >= 3
    for key, truth in truths.items():
        labels = tifffile.imread(out / f"{key}_labels.tif")
        assert (matched_ious(truth, labels) > 0.85).all() and labels.max() == truth.max()
        rec = json.loads((out / f"{key}.json").read_text())
        assert rec["mode"] == "boxes" and rec["prior"] == "auto" and rec["prior_path"] is None  # 'edgesam' has none
        assert rec["parameters"]["boxes"]["max_proposals"] == 100 and "automatic" not in rec["parameters"]
    # the point-grid records keep their parameters and have no prior
    grid = process_one(folder / "a.tif", BatchConfig(automatic=FAST, out_dir=str(tmp_path / "grid")),
                       predictor=LabelOraclePredictor())
    assert grid["mode"] == "auto" and "prior" not in grid and "boxes" not in grid["parameters"]


def test_boxes_mode_stack_is_merged_in_3d(tmp_path):
    z, h, w = 4, 96, 96
    zz, yy, xx = np.mgrid[:z, :h, :w]
    truth = (((zz - 1.5) * 6) ** 2 + (yy - 48) ** 2 + (xx - 40) ** 2 <= 25**2).astype(np.int32)
    tifffile.imwrite(tmp_path / "vol.tif", (truth * 120).astype(np.uint8), metadata={"axes": "ZYX"})
    prior = ThresholdPrior()
    record = process_one(tmp_path / "vol.tif", BatchConfig(mode="boxes", out_dir=str(tmp_path / "o")),
                         predictor=BoxOraclePredictor(prior=prior))
    assert record["status"] == "ok" and record["shape"] == [z, h, w] and record["n_objects"] == 1
    assert prior.calls == z
    labels = tifffile.imread(tmp_path / "o" / "vol_labels.tif")
    assert ((labels > 0) == (truth > 0)).all()


def test_boxes_mode_without_a_prior_fails_clearly(image_folder, tmp_path):
    folder, _ = image_folder
    config = BatchConfig(mode="boxes", model="my-model.pth")
    with pytest.raises(ValueError, match=r"'my-model.pth' has no granularity prior.*napari-edgesam train prior"):
        run_batch([folder], tmp_path / "out", config, predictor=BoxOraclePredictor())  # no prior attached
    record = process_one(folder / "a.tif", BatchConfig(mode="boxes", out_dir=str(tmp_path / "o")),
                         predictor=BoxOraclePredictor())
    assert record["status"] == "error" and "no granularity prior" in record["error"]
    missing = BatchConfig(mode="boxes", model="edgesam-nuclei", prior=str(tmp_path / "nope.prior.pth"))
    with pytest.raises(FileNotFoundError, match="nope.prior.pth"):
        run_batch([folder], tmp_path / "out2", missing)


def test_config_validation():
    with pytest.raises(ValueError, match="mode"):
        BatchConfig(mode="everything")
    with pytest.raises(ValueError, match="prompt"):
        BatchConfig(mode="prompts")
    with pytest.raises(ValueError, match="out_dir"):
        process_one("x.tif", BatchConfig())
    with pytest.raises(ValueError, match="prior"):
        BatchConfig(mode="auto", prior="auto")
    with pytest.raises(TypeError, match="BoxAutomaticConfig"):
        BatchConfig(mode="boxes", boxes=AutomaticConfig())
