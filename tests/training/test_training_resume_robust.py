"""Training resume after a kill: orphan temp files are removed, log.jsonl holds every step once,
and a damaged last.pt falls back to the previous good checkpoint (issue 12, item 9)."""

from __future__ import annotations

import json
import logging
import os

import pytest

torch = pytest.importorskip("torch")

from _helpers import one_thread  # noqa: E402, F401
from napari_edgesam.model.build import CheckpointError  # noqa: E402
from napari_edgesam.training.checkpoint import (  # noqa: E402
    PREVIOUS_NAME,
    load_resume_checkpoint,
    load_training_checkpoint,
    remove_temp_files,
)
from napari_edgesam.training.config import TrainConfig  # noqa: E402
from napari_edgesam.training.runlog import truncate_log  # noqa: E402
from napari_edgesam.training.synthetic import write_folder_dataset  # noqa: E402
from napari_edgesam.training.trainer import train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    root = tmp_path_factory.mktemp("blobs")
    return write_folder_dataset(root, n_images=3, shape=(48, 64), n_blobs=4, seed=7)


def _cfg(out, images, labels, **run) -> TrainConfig:
    return TrainConfig.from_dict({
        "phase": "finetune",
        "model": {"img_size": 64},
        "data": {"images": str(images), "labels": str(labels), "max_instances": 3},
        "optim": {"epochs": 2, "batch_size": 1, "lr": 1e-3, "min_lr": 1e-5, "warmup_epochs": 0.5, "clip_grad": 1.0},
        "run": {"out_dir": str(out), "progress": False, "log_every": 1, "tensorboard": False, "num_threads": 1, **run},
    }).validate()


class Killed(Exception):
    pass


def _kill_at(n):
    def on_step(step, metrics):
        if step == n:
            raise Killed

    return on_step


def _steps(out):
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_resume_cleans_temp_files_and_logs_every_step_once(tmp_path, blobs):
    images, labels = blobs
    out = tmp_path / "run"
    cfg = _cfg(out, images, labels, checkpoint_every=2)
    with pytest.raises(Killed):
        train(cfg, on_step=_kill_at(5))
    assert _steps(out) == [1, 2, 3, 4, 5]  # step 5 was logged after the checkpoint of step 4
    orphan = out / ".last.pt.k1ll3d_.tmp"  # what a SIGKILL inside torch.save leaves
    orphan.write_bytes(os.urandom(4096))
    keep = out / "notes.tmp"  # not ours: left alone
    keep.write_text("x")
    result = train(cfg)
    assert result.step == 6 and result.finished
    assert _steps(out) == [1, 2, 3, 4, 5, 6]
    assert not orphan.exists() and keep.exists()


def test_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path, blobs, caplog):
    images, labels = blobs
    full = train(_cfg(tmp_path / "full", images, labels))
    out = tmp_path / "run"
    cfg = _cfg(out, images, labels, checkpoint_every=2)
    with pytest.raises(Killed):
        train(cfg, on_step=_kill_at(5))
    assert load_training_checkpoint(out / PREVIOUS_NAME)["step"] == 3  # saves: 2, 3 (epoch end), 4
    (out / "last.pt").write_bytes(os.urandom(10_000))  # e.g. a disk fault
    with caplog.at_level(logging.WARNING, logger="napari_edgesam.training.checkpoint"):
        resumed = train(cfg)
    assert any("resuming from" in r.message and PREVIOUS_NAME in r.message and "step 3" in r.message
               for r in caplog.records)
    assert resumed.step == 6 and resumed.finished
    assert _steps(out) == [1, 2, 3, 4, 5, 6]
    a, b = load_training_checkpoint(full.checkpoint)["model"], load_training_checkpoint(resumed.checkpoint)["model"]
    for k in a:  # resuming from step 3 is as exact as from step 4
        assert torch.equal(a[k], b[k]), k


def test_no_loadable_checkpoint_is_an_error(tmp_path):
    (tmp_path / "last.pt").write_bytes(os.urandom(1000))
    (tmp_path / PREVIOUS_NAME).write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no checkpoint .* can be resumed from(.|\n)*last\.pt(.|\n)*previous\.pt"):
        load_resume_checkpoint(tmp_path)
    assert load_resume_checkpoint(tmp_path / "empty") is None


def test_missing_last_uses_previous(tmp_path, caplog):
    """A kill between the two renames of a save leaves previous.pt and no last.pt."""
    state = {"format": "napari-edgesam-train/1", "model": {"w": torch.ones(2)}, "model_config": {},
             "step": 7, "epoch": 1, "step_in_epoch": 0}
    torch.save(state, tmp_path / PREVIOUS_NAME)
    with caplog.at_level(logging.WARNING):
        path, ckpt = load_resume_checkpoint(tmp_path)
    assert path.name == PREVIOUS_NAME and ckpt["step"] == 7
    assert "last.pt is missing" in caplog.text


def test_remove_temp_files_and_truncate_log(tmp_path):
    (tmp_path / ".last.pt.abcd1234.tmp").write_bytes(b"x" * 100)
    (tmp_path / ".config.json.zz_9.tmp").write_text("{")
    (tmp_path / "last.pt").write_bytes(b"keep")
    (tmp_path / ".hidden").write_text("keep")
    assert remove_temp_files(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "last.pt"]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)) + '{"step": 5, "lo')
    assert truncate_log(log, 2) == 3
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2]
    assert truncate_log(log, 2) == 0
