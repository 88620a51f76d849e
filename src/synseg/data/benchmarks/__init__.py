"""The six benchmarks of the paper's Table II, by the short names the CLI uses."""
from __future__ import annotations

from pathlib import Path

from synseg.data.benchmarks.ade import ADE
from synseg.data.benchmarks.base import IGNORE_INDEX, Benchmark, Sample
from synseg.data.benchmarks.cityscapes import Cityscapes
from synseg.data.benchmarks.coco import COCOObject, COCOStuff
from synseg.data.benchmarks.context import Context
from synseg.data.benchmarks.folder import Folder
from synseg.data.benchmarks.voc import VOC
from synseg.errors import UserError

BENCHMARKS: dict[str, type[Benchmark]] = {cls.name: cls for cls in (VOC, Context, COCOObject, COCOStuff, Cityscapes, ADE, Folder)}


def benchmark_class(name: str) -> type[Benchmark]:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise UserError(f"unknown benchmark '{name}' (choose from {', '.join(BENCHMARKS)})") from None


def get_benchmark(name: str, root: str | Path) -> Benchmark:
    """The named benchmark's validation split under `root`, with its layout checked."""
    return benchmark_class(name)(root)


__all__ = ["BENCHMARKS", "IGNORE_INDEX", "Benchmark", "Sample", "benchmark_class", "get_benchmark"]
