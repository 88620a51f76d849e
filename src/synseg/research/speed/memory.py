"""Peak memory of a block of work: CUDA's allocator statistics, or on CPU the tensors created while it runs."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from synseg.research.speed.clock import synchronize


class TensorMemory(TorchDispatchMode):
    """Peak bytes of the tensors created while active and alive at op boundaries.

    The CPU allocator keeps no statistics; scratch space inside a fused kernel is not seen, so this is a lower bound.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [key for key, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        if not func.is_view:
            inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
            for tensor in tree_leaves(out):
                if isinstance(tensor, torch.Tensor):
                    storage = tensor.untyped_storage()
                    if storage._cdata not in inputs and storage._cdata not in self.live:
                        self.live[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())
                        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[list[int]]:
    """Yields a list that receives the peak bytes allocated by the block beyond what was allocated before it."""
    result: list[int] = []
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        synchronize(device)
        result.append(torch.cuda.max_memory_allocated(device) - before)
    else:
        tracker = TensorMemory()
        with tracker:
            yield result
        result.append(tracker.peak)
