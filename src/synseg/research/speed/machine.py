"""The machine a benchmark runs on: its name, threads, load and the rate at which it multiplies large matrices."""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
from dataclasses import dataclass

import torch

from synseg.models import fastpath
from synseg.research.speed.clock import elapsed


@dataclass
class Machine:
    device: str
    name: str
    threads: int
    fp32_gflops: float  # the best large-matmul rate, GFLOP/s
    bf16_gflops: float | None
    gemm_gflops: dict[str, float]  # fp32 rate of each GEMM library
    load_start: tuple[float, float, float] | None
    load_end: tuple[float, float, float] | None = None


def matmul_rates(device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of a large square matrix product through each GEMM library torch offers here (median of `repeats` after
    a warm-up): torch.matmul (MKL on x86 CPUs, cuBLAS on GPUs) and, for CPU fp32, oneDNN. The best is the limit."""
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    products = {"torch.matmul": lambda: a @ b}
    if device.type == "cpu" and dtype == torch.float32 and fastpath.onednn_available():
        products["onednn"] = lambda: fastpath.linear(a, b, None)
    rates = {}
    with torch.inference_mode():
        for name, product in products.items():
            product()
            seconds = statistics.median(elapsed(product, device) for _ in range(repeats))
            rates[name] = 2.0 * size**3 / seconds
    return rates


def machine_name(device: torch.device) -> str:
    """The GPU's name on CUDA, else the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages, or None where the system has none."""
    return tuple(round(v, 2) for v in os.getloadavg()) if hasattr(os, "getloadavg") else None


def measure_machine(device: torch.device, precision: str) -> Machine:
    """The machine's figures, load_start included (load_end is the caller's to set): fp32 rates of every GEMM library,
    and the bf16 rate on CUDA or when `precision` is bf16."""
    load = load_average()
    gemm = {name: rate / 1e9 for name, rate in matmul_rates(device, torch.float32).items()}
    bf16 = max(matmul_rates(device, torch.bfloat16).values()) / 1e9 \
        if device.type == "cuda" or precision == "bf16" else None
    return Machine(str(device), machine_name(device), torch.get_num_threads(), max(gemm.values()), bf16, gemm, load)
