"""Runs under `torchrun`: which process this is, and joining the process group (NCCL on GPUs, gloo on CPU)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from synseg.errors import UserError


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def place(device: torch.device) -> torch.device:
    """The GPU this process runs on, made current: under torchrun GPU LOCAL_RANK when none is named. Without
    set_device every rank would land on GPU 0 (NCCL, `device_ids`, pin-memory threads and plain `cuda` tensors
    all follow the current device)."""
    if device.type != "cuda":
        return device
    if device.index is None:
        local = os.environ.get("LOCAL_RANK")
        device = torch.device("cuda", int(local) if local is not None else torch.cuda.current_device())
    if device.index >= torch.cuda.device_count():
        raise UserError(f"{device} asked for, but this process sees {torch.cuda.device_count()} GPU(s)")
    torch.cuda.set_device(device)
    return device


def init_distributed(device: torch.device) -> Distributed:
    """torchrun sets WORLD_SIZE/RANK: join the group on this process's own GPU (`place`), also as its only member (one
    GPU then still runs NCCL); a plain run is world 1 without a group."""
    if "WORLD_SIZE" not in os.environ:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if place(device).type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size())


def every_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` holds on every rank. A rank whose batch holds no readable image skips its step; the others must
    skip with it, or they would wait for it in the gradient all-reduce forever."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


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
