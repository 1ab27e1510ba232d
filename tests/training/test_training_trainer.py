"""The trainer end to end on tiny synthetic data: phases, kill-and-resume, export round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _helpers import one_thread  # noqa: F401
from napari_edgesam.model import build_edge_sam
from napari_edgesam.training.checkpoint import load_training_checkpoint
from napari_edgesam.training.config import ConfigError, TrainConfig
from napari_edgesam.training.synthetic import blob_image, write_folder_dataset
from napari_edgesam.training.trainer import Trainer, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    root = tmp_path_factory.mktemp("blobs")
    images, labels = write_folder_dataset(root, n_images=3, shape=(48, 64), n_blobs=4, seed=7)
    return images, labels


def _cfg(out, images, labels, phase="finetune", **sections) -> TrainConfig:
    data = {
        "phase": phase,
        "model": {"img_size": 64},
        "data": {"images": str(images), "labels": str(labels) if labels else None, "max_instances": 3},
        "optim": {"epochs": 2, "batch_size": 1, "lr": 1e-3, "min_lr": 1e-5, "warmup_epochs": 0.5, "clip_grad": 1.0},
        "run": {"out_dir": str(out), "progress": False, "log_every": 1, "tensorboard": False},
    }
    for key, values in sections.items():
        data.setdefault(key, {}).update(values)
    return TrainConfig.from_dict(data).validate()


def _weights(path):
    return load_training_checkpoint(path)["model"]


class Killed(Exception):
    pass


def test_kill_and_resume_gives_identical_weights(tmp_path, blobs):
    # run.num_threads=1: multi-threaded CPU reductions may sum in another order from run to run
    # (~1e-5 apart even without an interruption); bit-identical weights need one thread.
    images, labels = blobs
    full = train(_cfg(tmp_path / "full", images, labels, run={"num_threads": 1}))
    assert (full.step, full.epoch, full.finished) == (6, 2, True)

    def kill_at_5(step, metrics):
        if step == 5:
            raise Killed

    run = _cfg(tmp_path / "killed", images, labels, run={"checkpoint_every": 2, "num_threads": 1})
    with pytest.raises(Killed):
        train(run, on_step=kill_at_5)
    ckpt = load_training_checkpoint(tmp_path / "killed" / "last.pt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["step_in_epoch"]) == (4, 1, 1)  # saved at step 4, killed in 5
    resumed = train(run)
    assert resumed.step == 6 and resumed.finished
    a, b = _weights(full.checkpoint), _weights(resumed.checkpoint)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(line) for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log][-2:] == [5, 6]


def test_finetune_writes_checkpoint_log_and_official_export(tmp_path, blobs):
    images, labels = blobs
    res = train(_cfg(tmp_path / "ft", images, labels, run={"max_steps": 2}))
    assert res.step == 2 and not res.finished
    ckpt = load_training_checkpoint(res.checkpoint)
    assert ckpt["model_config"] == {"arch": "edgesam", "img_size": 64, "upsample_mode": "bicubic"}
    assert ckpt["config"]["phase"] == "finetune" and ckpt["phase"] == "finetune"
    sd = torch.load(res.exported, weights_only=True)
    assert len(sd) == 821 and all(isinstance(v, torch.Tensor) for v in sd.values())
    model = build_edge_sam(res.exported)  # strict official layout
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k])
    meta = json.loads(res.exported.with_suffix(".json").read_text())
    assert meta["trained_img_size"] == 64 and meta["step"] == 2
    # the prompt encoder is frozen: unchanged by training (same seed -> same initial weights)
    torch.manual_seed(0)
    from napari_edgesam.training.student import build_student

    init = build_student(TrainConfig.from_dict(ckpt["config"]).model)
    for k, v in init.prompt_encoder.state_dict().items():
        assert torch.equal(v, ckpt["model"][f"prompt_encoder.{k}"])


def test_export_round_trip_into_the_predictor(tmp_path, blobs):
    from napari_edgesam.inference.loading.api import load_model

    images, labels = blobs
    res = train(_cfg(tmp_path / "rt", images, labels, run={"max_steps": 1}))
    predictor = load_model(res.exported, backend="torch", device="cpu")
    image, _ = blob_image((70, 90), 3, np.random.default_rng(0))
    predictor.set_image(image)
    masks, scores, low = predictor.predict(box=np.array([10, 10, 50, 40]))
    assert masks.shape == (1, 70, 90) and masks.dtype == bool and low.shape == (1, 256, 256)
    assert np.isfinite(scores).all()


def test_resume_refuses_another_input_size(tmp_path, blobs):
    images, labels = blobs
    train(_cfg(tmp_path / "r", images, labels, run={"max_steps": 1, "export_at_end": False}))
    with pytest.raises(ConfigError, match="img_size"):
        Trainer(_cfg(tmp_path / "r", images, labels, model={"img_size": 96})).setup()


def test_phase1_from_cached_teacher_embeddings(tmp_path, blobs, golden_checkpoint):
    from napari_edgesam.cli import main

    images, _ = blobs
    cfg = _cfg(
        tmp_path / "p1", images, None, phase="phase1",
        teacher={"kind": "edgesam", "checkpoint": str(golden_checkpoint), "cache_dir": str(tmp_path / "cache")},
        optim={"epochs": 1, "batch_size": 2}, run={"export_at_end": False},
    )
    path = tmp_path / "p1.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert main(["train", "precompute", "--config", str(path)]) == 0
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
    trainer = Trainer(cfg)
    trainer.setup()
    assert trainer.teacher is None  # embeddings come from the cache
    enc_before = {k: v.clone() for k, v in trainer.student.image_encoder.state_dict().items()}
    dec_before = {k: v.clone() for k, v in trainer.student.mask_decoder.state_dict().items()}
    res = trainer.fit()
    assert res.step == 2  # ceil(3 / 2)
    log = [json.loads(line) for line in (tmp_path / "p1" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["embed_mse"]) for r in log)
    enc_after = trainer.student.image_encoder.state_dict()
    assert any(not torch.equal(enc_before[k], enc_after[k]) for k in enc_before)
    assert all(torch.equal(dec_before[k], v) for k, v in trainer.student.mask_decoder.state_dict().items())


def test_phase2_with_a_sam_teacher_on_unlabelled_images(tmp_path, blobs):
    images, _ = blobs
    cfg = _cfg(
        tmp_path / "p2", images, None, phase="phase2",
        model={"init_decoder_from_teacher": True},
        teacher={"kind": "sam", "variant": "vit_b"},
        data={"max_instances": 2}, optim={"epochs": 1}, run={"max_steps": 2, "export_at_end": False},
    )
    trainer = Trainer(cfg)
    trainer.setup()
    for k, v in trainer.teacher.model.mask_decoder.state_dict().items():
        assert torch.equal(v, trainer.student.mask_decoder.state_dict()[k])
    res = trainer.fit()
    assert res.step == 2
    log = [json.loads(line) for line in (tmp_path / "p2" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["mask_loss"]) and "iou_last" in r for r in log)


def test_phase2_on_sa1b_with_an_edgesam_teacher(tmp_path, golden_checkpoint):
    from napari_edgesam.training.synthetic import write_sa1b_dataset

    root = write_sa1b_dataset(tmp_path / "sa1b", n_images=2, shape=(48, 64), n_blobs=4, seed=4)
    cfg = _cfg(
        tmp_path / "p2sa", root, None, phase="phase2",
        teacher={"kind": "edgesam", "checkpoint": str(golden_checkpoint)},
        data={"kind": "sa1b", "max_instances": 3, "min_instance_area": 4},
        loop={"prompt_types": ["point"], "num_refinements": 2},
        optim={"epochs": 1}, run={"export_at_end": False},
    )
    res = train(cfg)
    assert res.step == 2 and res.finished
    log = [json.loads(line) for line in (tmp_path / "p2sa" / "log.jsonl").read_text().splitlines()]
    assert all(r["box_mode"] == 0.0 and 0.0 <= r["refine_ignored"] <= 1.0 for r in log)


@pytest.mark.slow
def test_onnx_export_round_trip(tmp_path, blobs):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from napari_edgesam.inference.loading.api import load_model
    from napari_edgesam.training.export import export_checkpoint, onnx_exporter_available

    if not onnx_exporter_available():
        pytest.skip("napari_edgesam.export.onnx_export is not installed")
    images, labels = blobs
    res = train(_cfg(tmp_path / "onnx", images, labels, run={"max_steps": 1, "export_at_end": False}))
    paths = export_checkpoint(res.checkpoint, tmp_path / "out" / "student.pth", onnx_dir=tmp_path / "out")
    assert paths["onnx_encoder"].name == "student_encoder.onnx" and paths["onnx_decoder"].is_file()
    assert oct(paths["pth"].stat().st_mode & 0o777) == "0o644"
    image, _ = blob_image((60, 80), 3, np.random.default_rng(2))
    lows = []
    for path, backend in ((paths["pth"], "torch"), (paths["onnx_encoder"], "onnxruntime")):
        predictor = load_model(path, backend=backend, device="cpu")
        predictor.set_image(image)
        lows.append(predictor.predict(point_coords=np.array([[30.0, 20.0]]), point_labels=np.array([1]))[2])
    np.testing.assert_allclose(lows[0], lows[1], rtol=1e-3, atol=2e-3)
