"""Speed of SynSeg beside its peers on the user's own machine, and how far each method is from the machine's limit.

Every method runs the same `Segmenter` path for one image: its protocol's views, encoder, decoder for all classes,
stitching at the image's resolution and argmax, with the labels' text embeddings already cached. Weights are random:
speed needs none. The limit is the method's matmul FLOPs (counted by torch's FlopCounterMode) at the rate this machine
multiplies large matrices.
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from synseg.encoding import EncodedViews
from synseg.errors import UserError
from synseg.models.backbone import ClipBackbone
from synseg.models.synseg import DEFAULT_TEMPLATES
from synseg.predictor import PRECISIONS, Segmenter  # bf16: the bound uses the bf16 matmul rate
from synseg.protocols import build_protocol
from synseg.research.speed.clock import elapsed, synchronize
from synseg.research.speed.flops import call_flops
from synseg.research.speed.machine import load_average, measure_machine
from synseg.research.speed.memory import peak_memory
from synseg.research.speed.methods import METHODS, REFERENCE, Method, build_methods
from synseg.research.speed.profiling import profile_call
from synseg.research.speed.report import Report

VIEW_PROTOCOLS = ("whole", "quadrants")  # the whole image alone, and with its 4 quadrants: FLOPs by Method.flops


@dataclass
class BenchConfig:
    protocols: tuple[str, ...] = VIEW_PROTOCOLS  # each timed for every method and class count
    classes: tuple[int, ...] = (1, 21, 150)
    methods: tuple[str, ...] = METHODS
    image_size: tuple[int, int] = (512, 512)  # height, width of the test image
    repeats: int = 3  # timed calls per row after one warm-up call; fewer once a row has used max_call_seconds
    max_call_seconds: float = 10.0  # peers' rows predicted to take longer per call are skipped
    precision: str = "fp32"
    profile: bool = False  # one more call per SynSeg row under torch.profiler: which operators take the time

    def view_protocols(self) -> tuple[str, ...]:
        """The configured protocols of VIEW_PROTOCOLS, in that order (whole, then quadrants)."""
        return tuple(p for p in VIEW_PROTOCOLS if p in self.protocols)


@dataclass
class Row:
    method: str
    device: str
    views: int  # the protocol's views (or windows) for the test image
    classes: int
    latency_ms: float  # median per image, whole Segmenter path
    fps: float
    peak_mem_mb: float  # weights + peak transient tensors of one call
    flop_bound_ms: float  # matmul FLOPs / the machine's matmul rate
    model_ms: float  # median of the predictor's own part (encoder + decoder), without views, stitching and argmax
    gflops: float
    repeats: int
    protocol: str = ""  # a BenchConfig.protocols entry: whole, quadrants, slide, ...
    profile: list[dict] | None = None  # the operators that took the most time in one profiled call (BenchConfig.profile)


class Clocked:
    """A dense predictor that records how long its own part of each call takes (the rest is views and stitching)."""

    def __init__(self, method: Method) -> None:
        self.method = method
        self.backbone: ClipBackbone = method.predictor.backbone
        self.background_threshold = getattr(method.predictor, "background_threshold", 0.5)
        self.seconds: list[float] = []

    def _timed(self, fn, *args):
        device = self.backbone.device
        synchronize(device)
        start = time.perf_counter()
        out = fn(*args)
        synchronize(device)
        self.seconds.append(time.perf_counter() - start)
        return out

    def activation_maps(self, views: EncodedViews, text: torch.Tensor) -> torch.Tensor:
        return self._timed(self.method.predictor.activation_maps, views, text)

    def logits(self, views: EncodedViews, text: torch.Tensor) -> torch.Tensor:
        return self._timed(self.method.predictor.logits, views, text)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return self.method.predictor.activate(logits)


def random_image(height: int, width: int) -> Image.Image:
    """The test image: [height, width] RGB noise, the same on every run."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


def measure(method: Method, image: Image.Image, protocol: str, classes: int, config: BenchConfig,
            bound_gflops: float) -> Row:
    """One row: `method` on `image` under the protocol named `protocol` with `classes` labels. One warm-up call (which
    also measures peak memory), then up to `repeats` timed calls. FLOPs are Method.flops for VIEW_PROTOCOLS and counted
    on one more call otherwise; the bound is FLOPs at `bound_gflops` GFLOP/s."""
    clocked = Clocked(method)
    device = clocked.backbone.device
    run = build_protocol(protocol)
    segmenter = Segmenter(clocked, run, templates=DEFAULT_TEMPLATES, precision=config.precision)
    labels = [f"class {index}" for index in range(classes)]
    clocked.backbone.embed_labels(labels, DEFAULT_TEMPLATES)  # cached: no method pays for text below
    views = run.view_count(image.height, image.width)
    call = lambda: segmenter.segment(image, labels)  # noqa: E731
    with peak_memory(device) as peak:
        call()
    flops = method.flops(views, classes) if protocol in VIEW_PROTOCOLS else call_flops(call)
    clocked.seconds.clear()
    seconds: list[float] = []
    while len(seconds) < config.repeats and (not seconds or sum(seconds) < config.max_call_seconds):
        seconds.append(elapsed(call, device))
    model_seconds = list(clocked.seconds)  # before the profiled call, whose time the profiler inflates
    profiled = profile_call(call, device) if config.profile and method.name == REFERENCE else None
    latency = statistics.median(seconds)
    return Row(
        method=method.name, device=str(device), views=views, classes=classes,
        latency_ms=latency * 1e3, fps=1.0 / latency, peak_mem_mb=(method.weight_bytes + peak[0]) / 2**20,
        flop_bound_ms=flops / bound_gflops / 1e6, model_ms=statistics.median(model_seconds) * 1e3,
        gflops=flops / 1e9, repeats=len(seconds), protocol=protocol, profile=profiled,
    )


def run_bench(config: BenchConfig, checkpoint: str | None = None, backbone: str | None = None,
              pretrained: str | None = "none", device: str = "auto", progress: bool = True) -> Report:
    """Measure every method under every protocol (VIEW_PROTOCOLS first) at every class count; peers' rows predicted
    to exceed max_call_seconds are skipped (only VIEW_PROTOCOLS rows have FLOPs known beforehand)."""
    if config.precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {config.precision}")
    methods = build_methods(config.methods, checkpoint, backbone, pretrained, device)
    device = methods[0].predictor.backbone.device
    machine = measure_machine(device, config.precision)
    report = Report(config, machine, methods)
    image = random_image(*config.image_size)
    protocols = [*config.view_protocols(), *(p for p in config.protocols if p not in VIEW_PROTOCOLS)]
    views = {p: build_protocol(p).view_count(image.height, image.width) for p in protocols}
    grid = [(p, k) for p in protocols for k in sorted(config.classes)]
    achieved: dict[str, float] = {}  # FLOP/s each method reached on its last row: predicts the next row's time
    with tqdm(total=len(grid) * len(report.methods), desc="bench", unit="row", disable=not progress, file=sys.stderr) as bar:
        for protocol, classes in grid:
            for method in report.methods:
                # other protocols' rows count their own FLOPs
                flops = method.flops(views[protocol], classes) if protocol in VIEW_PROTOCOLS else 0.0
                rate = achieved.get(method.name)
                predicted = flops / rate if flops and rate else 0.0
                if method.name != REFERENCE and predicted > config.max_call_seconds:
                    report.skipped.append({"method": method.name, "protocol": protocol, "views": views[protocol],
                                           "classes": classes, "predicted_s": round(predicted, 1)})
                else:
                    row = measure(method, image, protocol, classes, config, report.bound_gflops)
                    report.rows.append(row)
                    achieved[method.name] = row.gflops * 1e9 / (row.latency_ms / 1e3)
                bar.update()
    machine.load_end = load_average()
    return report
