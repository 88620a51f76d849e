"""Where one call's time goes: torch.profiler's operators ranked by their own time."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator

import torch

from synseg.research.speed.clock import synchronize


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Silence what C++ libraries write to fd 2: the profiler's tracing library logs its start and stop (and, on a CUDA
    build without a GPU, an 'ERROR' that is not one) whatever its log level."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profile_call(call: Callable[[], object], device: torch.device, top: int = 8) -> list[dict]:
    """The `top` operators by their own time in one call (on CUDA, time on the GPU), with call counts and shares."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with native_stderr_silenced(), profile(activities=activities) as profiler:
        call()
        synchronize(device)
    own = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)  # noqa: E731
    events = [e for e in profiler.key_averages() if own(e) > 0]
    total = sum(own(e) for e in events)
    ranked = sorted(events, key=own, reverse=True)[:top]
    return [{"op": e.key, "self_ms": own(e) / 1e3, "calls": e.count, "share": own(e) / total} for e in ranked]
