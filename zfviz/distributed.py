"""Multi-process training with PyTorch DDP, launched by ``torchrun`` (Section 3 trained on one GPU
for 12 days; this is how a user with several spreads the same recipe).

``torchrun --nproc_per_node=N -m zfviz train ...`` sets RANK/WORLD_SIZE/LOCAL_RANK; ``setup`` joins
the process group (NCCL on GPUs, gloo on CPUs). Rank 0 alone writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from zfviz.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def check_device(name) -> None:
    """A UserError unless ``name`` is a device this machine has: auto, cpu, cuda, cuda:N or mps."""
    name = str(name)
    kind, _, index = name.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise UserError(f"device={name} is not a device zfviz can use; choose auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name}, but PyTorch sees no GPU on this machine; use device=cpu (or auto)")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise UserError(f"device={name}, but PyTorch sees {torch.cuda.device_count()} GPU(s): cuda:0 and up")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device={name}, but Apple's MPS is not available here; use device=cpu (or auto)")


def setup(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; pick this process's device."""
    check_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(f"cuda:{info.local_rank}" if device_name == "cuda" and info.enabled else device_name)
    if info.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (identity when not distributed)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
