"""The batch engine on a Dask cluster: one task per image, the model loaded in the worker."""

from __future__ import annotations

import json
import pickle

import pytest
import tifffile

from napari_edgesam.inference.automatic.grid import AutomaticConfig
from napari_edgesam.inference.batch.engine import BatchConfig, process_one, run_batch

distributed = pytest.importorskip("distributed")

SMALL = AutomaticConfig(points_per_side=4, points_per_batch=16, stability_thresh=0.0,
                        max_area_fraction=1.0, min_area=0)


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as c:
        yield c


@pytest.fixture()
def folder(tmp_path, make_golden_image):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        tifffile.imwrite(d / f"img{i}.tif", make_golden_image(seed=i, h=64, w=96))
    (d / "img9.tif").write_bytes(b"broken")
    return d


def test_config_and_task_are_picklable(golden_checkpoint):
    cfg = BatchConfig(model=str(golden_checkpoint), automatic=SMALL, out_dir="/tmp/x")
    fn, back = pickle.loads(pickle.dumps((process_one, cfg)))
    assert fn is process_one and back == cfg


def test_run_batch_on_a_dask_cluster(cluster, folder, tmp_path, golden_checkpoint):
    out = tmp_path / "out"
    cfg = BatchConfig(model=str(golden_checkpoint), automatic=SMALL)
    seen = []
    report = run_batch([folder], out, cfg, scheduler=cluster.scheduler_address,
                       progress=lambda d, t, r: seen.append((d, t)))
    assert sorted(seen) == [(1, 4), (2, 4), (3, 4), (4, 4)]
    status = {r["key"]: r for r in report.records}
    assert [status[f"img{i}"]["status"] for i in (0, 1, 2, 9)] == ["ok", "ok", "ok", "error"]
    for i in range(3):
        rec = json.loads((out / f"img{i}.json").read_text())
        assert rec["status"] == "ok" and rec["backend"] == "torch"
        assert tifffile.imread(out / f"img{i}_labels.tif").shape == (64, 96)
    # the same cluster through a Client object; everything done is skipped
    with distributed.Client(cluster) as client:
        again = run_batch([folder], out, cfg, scheduler=client)
    assert [r["status"] for r in again.records] == ["skipped", "skipped", "skipped", "error"]


def test_cli_with_scheduler(cluster, folder, tmp_path, golden_checkpoint):
    from napari_edgesam.cli import main

    out = tmp_path / "cli"
    rc = main(["batch", str(folder / "img0.tif"), str(folder / "img1.tif"), "-o", str(out), "--auto",
               "--model", str(golden_checkpoint), "--scheduler", cluster.scheduler_address,
               "--points-per-side", "4", "--no-progress"])
    assert rc == 0
    assert json.loads((out / "report.json").read_text())["summary"]["ok"] == 2
