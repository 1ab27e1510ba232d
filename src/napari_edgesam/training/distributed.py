"""Process-group setup for single-process and ``torchrun`` (DDP) runs.

``torchrun --nproc_per_node N`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; with ``WORLD_SIZE > 1`` we join a process group: NCCL on GPUs, gloo on CPUs.
Only rank 0 writes files (checkpoints, logs, exports).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def env_dist_info() -> DistInfo:
    """Rank, world size and local rank from the torchrun environment (defaults 0, 1, 0)."""
    def _int(name: str, default: int) -> int:
        raw = os.environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None

    info = DistInfo(_int("RANK", 0), _int("WORLD_SIZE", 1), _int("LOCAL_RANK", 0))
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise ValueError(f"invalid RANK={info.rank} / WORLD_SIZE={info.world_size} in the environment")
    return info


def select_device(requested: str, info: DistInfo) -> torch.device:
    """``"auto"``: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("run.device is 'cuda' but CUDA is not available; use 'cpu' or 'auto'")
        if requested == "cuda":
            requested = f"cuda:{info.local_rank}"
        device = torch.device(requested)
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def init_distributed(requested_device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; return ``(info, device)``.

    Idempotent: an already initialised default group is reused.
    """
    info = env_dist_info()
    device = select_device(requested_device, info)
    if info.is_distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise RuntimeError(
                    f"WORLD_SIZE={info.world_size} but {name} is not set: launch with "
                    "torchrun --nproc_per_node N ..."
                )
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
        logger.info("joined process group: rank %d/%d, backend %s", info.rank, info.world_size, backend)
    return info, device


def shutdown_distributed() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over all ranks (a copy; unchanged when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (e.g. BatchNorm statistics) to every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src)
