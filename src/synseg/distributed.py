"""Runs under `torchrun`: which process this is, and joining the process group (NCCL on GPUs, gloo on CPU)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Distributed:
    """torchrun sets WORLD_SIZE/RANK: join the group; a plain run is world 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL's collectives run on the current device: this process's own
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size())


def current() -> Distributed:
    """This process's place in the group joined, or world 1 when none was."""
    if dist.is_available() and dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size())
    return Distributed()


def sum_over_ranks(array):
    """Element-wise sum of an integer numpy array over all processes (exact: integers, not floats)."""
    if current().world == 1:
        return array
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.from_numpy(array).to(device)
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()
