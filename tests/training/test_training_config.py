"""Config dataclasses: files, overrides, validation, shipped recipes; the LR schedule."""

from __future__ import annotations

import json
import math

import pytest

from napari_edgesam.cli.train import resolve_config, shipped_configs
from napari_edgesam.training.config import ConfigError, TrainConfig
from napari_edgesam.training.config_files import apply_override
from napari_edgesam.training.schedule import CosineSchedule


def _base(tmp_path, **extra):
    data = {"phase": "finetune", "data": {"images": str(tmp_path), "labels": str(tmp_path)}}
    data.update(extra)
    return data


def test_json_file_with_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_base(tmp_path, _comment="ignored", optim={"lr": 1e-3})))
    cfg = TrainConfig.from_file(path, ["optim.lr=2e-4", "data.augment=[\"hflip\"]", "model.checkpoint=null", "run.out_dir=x y"])
    assert cfg.optim.lr == 2e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.data.augment == ["hflip"]
    assert cfg.model.checkpoint is None
    assert cfg.run.out_dir == "x y"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # round trip


def test_toml_and_yaml_files(tmp_path):
    (tmp_path / "c.toml").write_text(f'phase = "finetune"\n[data]\nimages = "{tmp_path}"\nlabels = "{tmp_path}"\n[optim]\nepochs = 3\n')
    assert TrainConfig.from_file(tmp_path / "c.toml").optim.epochs == 3
    pytest.importorskip("yaml")
    (tmp_path / "c.yaml").write_text(f"phase: finetune\ndata:\n  images: {tmp_path}\n  labels: {tmp_path}\nmodel:\n  img_size: 256\n")
    assert TrainConfig.from_file(tmp_path / "c.yaml").model.img_size == 256


@pytest.mark.parametrize(
    "override, match",
    [
        ("optim.lrr=1", "unknown key.*lrr"),
        ("optim.epochs=1.5", "optim.epochs must be an integer"),
        ("model.img_size=100", "multiple of 32"),
        ("model.train_encoder=yes", "true or false"),
        ("teacher.kind=gpt", "teacher.kind must be one of"),
        ("optim.min_lr=1", "must not exceed"),
        ("loop.prompt_types=[\"box\",\"scribble\"]", "prompt_types entry"),
        ("data.augment=[\"rot\"]", "augment entry"),
        ("phase=phase1", "distils a teacher"),
        ("loop.point_supervision=min", None),
    ],
)
def test_bad_values_name_the_field(tmp_path, override, match):
    cfg = TrainConfig.from_dict(_base(tmp_path))
    if match is None:
        assert cfg.with_overrides([override]).loop.point_supervision == "min"
        return
    with pytest.raises(ConfigError, match=match):
        cfg.with_overrides([override])


def test_cross_field_rules(tmp_path):
    cfg = TrainConfig.from_dict(_base(tmp_path))
    with pytest.raises(ConfigError, match="data.labels"):
        cfg.with_overrides(["data.labels=null"])
    with pytest.raises(ConfigError, match="augment"):
        cfg.with_overrides(["teacher.kind=sam", "teacher.cache_dir=c", "data.augment=[\"vflip\"]"])
    with pytest.raises(ConfigError, match="nothing to train"):
        cfg.with_overrides(["model.train_encoder=false", "model.train_decoder=false"])
    with pytest.raises(ConfigError, match="section.field=value"):
        apply_override({}, "optim.lr")


def test_shipped_paper_configs_carry_the_paper_hyperparameters():
    names = shipped_configs()
    assert {"paper_phase1", "paper_phase2", "cpu_phase1", "cpu_phase2", "cpu_finetune"} <= set(names)
    for name in names:
        TrainConfig.from_file(resolve_config(name))  # every shipped config validates
    p1 = TrainConfig.from_file(resolve_config("paper_phase1"))
    assert (p1.phase, p1.optim.epochs, p1.optim.batch_size, p1.optim.lr, p1.optim.min_lr) == ("phase1", 10, 64, 1.25e-2, 6.25e-7)
    assert (p1.optim.warmup_epochs, p1.optim.weight_decay, p1.optim.clip_grad) == (5, 0.01, 5.0)
    assert p1.teacher.kind == "sam" and p1.teacher.variant == "vit_h" and p1.model.img_size == 1024
    p2 = TrainConfig.from_file(resolve_config("paper_phase2"))
    assert (p2.phase, p2.optim.epochs, p2.optim.batch_size, p2.optim.lr, p2.optim.min_lr) == ("phase2", 5, 16, 1e-4, 1e-5)
    assert (p2.optim.weight_decay, p2.optim.clip_grad, p2.optim.warmup_epochs) == (0.05, 0.01, 0)
    assert (p2.loop.box_probability, p2.loop.num_refinements, p2.loop.min_error_pixels) == (0.5, 1, 10)
    assert (p2.loop.bce_weight, p2.loop.dice_weight, p2.data.max_instances) == (5.0, 5.0, 16)
    assert p2.model.init_decoder_from_teacher


def test_cosine_schedule_with_warmup():
    s = CosineSchedule(base_lr=1.0, min_lr=0.1, total_steps=110, warmup_steps=10, warmup_start_lr=0.0)
    assert s(0) == 0.0 and s(5) == pytest.approx(0.5) and s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.55)  # half-way through the cosine: the mean of base and min
    assert s(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert s(110) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)
    lrs = [s(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))  # monotone after warm-up
    with pytest.raises(ValueError):
        CosineSchedule(1.0, 0.1, total_steps=5, warmup_steps=6)
