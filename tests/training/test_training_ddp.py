"""Two processes under torchrun (gloo on the CPU): identical weights, only rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from napari_edgesam.training.config import TrainConfig
from napari_edgesam.training.synthetic import write_folder_dataset

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    from napari_edgesam.training import checkpoint, export, trainer
    from napari_edgesam.training.config import TrainConfig
    from napari_edgesam.training.distributed import env_dist_info, shutdown_distributed

    writes = []

    def record(fn):
        def wrapper(obj, path, *args, **kwargs):
            writes.append(str(path))
            return fn(obj, path, *args, **kwargs)
        return wrapper

    # every file the trainer writes goes through these functions
    checkpoint.atomic_torch_save = record(checkpoint.atomic_torch_save)
    export.atomic_torch_save = record(export.atomic_torch_save)
    trainer.atomic_write_text = record(trainer.atomic_write_text)
    export.atomic_write_text = record(export.atomic_write_text)

    cfg = TrainConfig.from_file(sys.argv[1])
    t = trainer.Trainer(cfg)
    result = t.fit()
    info = env_dist_info()
    torch.save(t.student.state_dict(), f"{sys.argv[2]}/rank{info.rank}.pt")
    with open(f"{sys.argv[2]}/rank{info.rank}.json", "w") as fh:
        json.dump({"writes": writes, "step": result.step, "world": info.world_size,
                   "backend": torch.distributed.get_backend()}, fh)
    shutdown_distributed()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    images, labels = write_folder_dataset(tmp_path / "data", n_images=4, shape=(48, 64), n_blobs=4, seed=11)
    cfg = TrainConfig.from_dict(
        {
            "phase": "finetune",
            "model": {"img_size": 64},
            "data": {"images": str(images), "labels": str(labels), "max_instances": 2},
            "optim": {"epochs": 1, "batch_size": 2, "lr": 1e-3, "clip_grad": 1.0},
            "run": {"out_dir": str(tmp_path / "run"), "device": "cpu", "progress": False, "tensorboard": False},
        }
    ).validate()
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "worker.py").write_text(WORKER)
    results = tmp_path / "results"
    results.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(tmp_path / "worker.py"), str(tmp_path / "cfg.json"), str(results),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    info = [json.loads((results / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world"] for i in info] == [2, 2] and info[0]["backend"] == "gloo"
    assert info[0]["step"] == info[1]["step"] == 2  # 4 images, global batch 2
    w0 = torch.load(results / "rank0.pt", weights_only=True)
    w1 = torch.load(results / "rank1.pt", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    assert info[1]["writes"] == []  # rank 1 wrote nothing
    written = {os.path.basename(p) for p in info[0]["writes"]}
    assert {"config.json", "last.pt", "model.pth", "model.json"} <= written
    # the run trained: the saved checkpoint is rank 0's final state and differs from the start
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    for k in w0:
        assert torch.equal(saved[k], w0[k]), k
    torch.manual_seed(0)
    from napari_edgesam.training.student import build_student

    init = build_student(cfg.model).state_dict()
    assert any(not torch.equal(init[k], w0[k]) for k in w0 if k.startswith("mask_decoder."))
