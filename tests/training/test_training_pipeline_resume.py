"""The trainer with every augmentation and generated images: runs, and resumes bit-identically."""

from __future__ import annotations

import pytest
import torch

from _helpers import one_thread  # noqa: F401
from napari_edgesam.training.checkpoint import load_training_checkpoint
from napari_edgesam.training.config import TrainConfig
from napari_edgesam.training.synthetic import write_folder_dataset
from napari_edgesam.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(Exception):
    pass


def _cfg(out, images, labels, **run) -> TrainConfig:
    return TrainConfig.from_dict({
        "phase": "finetune",
        "model": {"img_size": 64},
        "data": {"images": str(images), "labels": str(labels), "max_instances": 3, "min_instance_area": 4,
                 "augment": ["hflip", "vflip", "rot90", "scale", "intensity"], "synthetic_images": 2},
        "optim": {"epochs": 1, "batch_size": 1, "lr": 1e-3, "min_lr": 1e-5, "clip_grad": 1.0},
        "run": {"out_dir": str(out), "progress": False, "log_every": 1, "tensorboard": False, "num_threads": 1,
                "export_at_end": False, **run},
    }).validate()


def test_augmented_run_resumes_to_identical_weights(tmp_path):
    images, labels = write_folder_dataset(tmp_path / "data", n_images=2, shape=(48, 64), n_blobs=4, seed=3)
    full = train(_cfg(tmp_path / "full", images, labels))
    assert full.step == 4 and full.finished  # 2 images + 2 generated, batch 1

    def kill_at_4(step, metrics):
        if step == 4:
            raise Killed

    run = _cfg(tmp_path / "killed", images, labels, checkpoint_every=2)
    with pytest.raises(Killed):
        train(run, on_step=kill_at_4)
    resumed = train(run)
    assert resumed.step == 4 and resumed.finished
    a = load_training_checkpoint(full.checkpoint)["model"]
    b = load_training_checkpoint(resumed.checkpoint)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
