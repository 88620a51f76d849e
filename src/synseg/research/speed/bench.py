"""Speed of SynSeg beside its peers on the user's own machine, and how far each method is from the machine's limit.

Every method runs the same `Segmenter` path for one image: views, encoder, decoder for all classes, stitching at the
image's resolution and argmax, with the labels' text embeddings already cached. Weights are random: speed needs none.
The limit is the method's matmul FLOPs (counted by torch's FlopCounterMode) at the rate this machine multiplies large
matrices.
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from tqdm import tqdm

from synseg.errors import UserError
from synseg.methods import build_training_free, training_free_methods
from synseg.protocols import build_protocol
from synseg.models import fastpath
from synseg.models.backbone import ClipBackbone
from synseg.models.synseg import DEFAULT_TEMPLATES, SynSeg
from synseg.predictor import PRECISIONS, Segmenter  # bf16: the bound uses the bf16 matmul rate

METHODS = ("synseg", "clipseg", *training_free_methods())


@dataclass
class BenchConfig:
    views: tuple[int, ...] = (1, 5)
    protocols: tuple[str, ...] = ()  # further protocols timed for every method and class count (slide, slide-tcl, ...)
    classes: tuple[int, ...] = (1, 21, 150)
    methods: tuple[str, ...] = METHODS
    image_size: tuple[int, int] = (512, 512)  # height, width of the test image
    repeats: int = 3  # timed calls per row after one warm-up call; fewer once a row has used max_call_seconds
    max_call_seconds: float = 10.0  # peers' rows predicted to take longer per call are skipped
    precision: str = "fp32"
    profile: bool = False  # one more call per SynSeg row under torch.profiler: which operators take the time


@dataclass
class Method:
    """A dense predictor and what the table says about it."""

    name: str
    predictor: nn.Module
    total_params: int
    trainable_params: int
    weight_bytes: int
    flops_per_view: float = 0.0  # class-independent work per view (the image encoder)
    flops_per_pair: float = 0.0  # work per view and class (SynSeg: the decoder; CLIPSeg: a whole pass)

    def flops(self, views: int, classes: int) -> float:
        return views * (self.flops_per_view + classes * self.flops_per_pair)


@dataclass
class Row:
    method: str
    device: str
    views: int
    classes: int
    latency_ms: float  # median per image, whole Segmenter path
    fps: float
    peak_mem_mb: float  # weights + peak transient tensors of one call
    flop_bound_ms: float  # matmul FLOPs / the machine's matmul rate
    model_ms: float  # median of the predictor's own part (encoder + decoder), without views, stitching and argmax
    gflops: float
    repeats: int
    protocol: str = ""  # "synseg" (views 5), "whole" (views 1) or a --protocols entry (views = its windows)
    profile: list[dict] | None = None  # the operators that took the most time in one profiled call (BenchConfig.profile)


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


@dataclass
class Report:
    config: BenchConfig
    machine: Machine
    methods: list[Method]
    rows: list[Row] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    @property
    def bound_gflops(self) -> float:
        return self.machine.bf16_gflops if self.config.precision == "bf16" else self.machine.fp32_gflops

    def row(self, method: str, views: int, classes: int, protocol: str | None = None) -> Row | None:
        protocol = protocol or view_protocol(views)
        return next((r for r in self.rows if (r.method, r.views, r.classes, r.protocol) == (method, views, classes, protocol)),
                    None)

    def ratios(self) -> list[dict]:
        """Peer latency / SynSeg latency for each protocol, views and classes measured for both."""
        out = []
        for ours in (r for r in self.rows if r.method == "synseg"):
            for peer in self.config.methods:
                other = self.row(peer, ours.views, ours.classes, ours.protocol) if peer != "synseg" else None
                if other is not None:
                    out.append({"peer": peer, "protocol": ours.protocol, "views": ours.views, "classes": ours.classes,
                                "peer_over_synseg": other.latency_ms / ours.latency_ms})
        return out

    def class_growth(self) -> list[dict]:
        """Extra latency per added class against the decoder's FLOPs per class at the measured matmul rate."""
        out = []
        for method in self.methods:
            for views in self.config.views:
                rows = sorted((r for r in self.rows if r.method == method.name and r.views == views
                               and r.protocol == view_protocol(views)), key=lambda r: r.classes)
                if len(rows) < 2:
                    continue
                low, high = rows[0], rows[-1]
                measured = (high.latency_ms - low.latency_ms) / (high.classes - low.classes)
                bound = views * method.flops_per_pair / self.bound_gflops / 1e6
                out.append({"method": method.name, "views": views, "classes": [low.classes, high.classes],
                            "ms_per_class": measured, "flop_bound_ms_per_class": bound})
        return out

    def to_json(self) -> dict:
        return {
            "note": "random weights (speed needs no trained weights); labels' text embeddings cached before timing; "
                    "latency = whole Segmenter path per image, median after one warm-up call",
            "settings": {**asdict(self.config), "image_size": list(self.config.image_size)},
            "machine": asdict(self.machine),
            "methods": {m.name: {"total_params": m.total_params, "trainable_params": m.trainable_params,
                                 "gflops_per_view": m.flops_per_view / 1e9,
                                 "gflops_per_view_class": m.flops_per_pair / 1e9} for m in self.methods},
            "rows": [asdict(r) for r in self.rows],
            "skipped": self.skipped,
            "ratios": self.ratios(),
            "class_growth": self.class_growth(),
        }


def view_protocol(views: int) -> str:
    return "synseg" if views == 5 else "whole"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def elapsed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


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


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _linear_flops(x, weight, *args, out_shape=None, **kwargs) -> int:
    return 2 * math.prod(x) * weight[0]


def extra_flop_formulas() -> dict:
    """FLOP formulas FlopCounterMode lacks: the CPU attention kernel scaled_dot_product_attention picks for some shapes,
    and oneDNN's linear (synseg.models.fastpath)."""
    formulas = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}
    if fastpath.onednn_available():
        formulas[torch.ops.mkldnn._linear_pointwise] = _linear_flops
    return formulas


def count_flops(predictor: nn.Module, views: int, classes: int) -> float:
    """Matmul FLOPs of one `activation_maps` call, counted by FlopCounterMode on attention's unfused path
    (the fused fast-path kernels carry no FLOP formula)."""
    backbone = predictor.backbone
    size = backbone.image_size
    pixels = torch.zeros(views, 3, size, size, device=backbone.device)
    text = F.normalize(torch.ones(classes, backbone.embed_dim, device=backbone.device), dim=-1)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as counter:
            predictor.activation_maps(pixels, text)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return float(counter.get_total_flops())


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


class Clocked:
    """A dense predictor that records how long its own part of each call takes (the rest is views and stitching)."""

    def __init__(self, method: Method) -> None:
        self.method = method
        self.backbone: ClipBackbone = method.predictor.backbone
        self.background_threshold = getattr(method.predictor, "background_threshold", 0.5)
        self.seconds: list[float] = []

    def _timed(self, fn, *args):
        device = args[0].device
        synchronize(device)
        start = time.perf_counter()
        out = fn(*args)
        synchronize(device)
        self.seconds.append(time.perf_counter() - start)
        return out

    def activation_maps(self, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self._timed(self.method.predictor.activation_maps, pixels, text)

    def logits(self, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self._timed(self.method.predictor.logits, pixels, text)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return self.method.predictor.activate(logits)


class CLIPSegPeer(nn.Module):
    """HF transformers' CLIPSegForImageSegmentation as a dense predictor, used as HF's CLIPSeg is used: the image is
    repeated once per prompt. Its conditional embeddings are the same cached prompt-ensemble text embeddings SynSeg
    gets, so neither method pays for text."""

    def __init__(self, backbone: ClipBackbone) -> None:
        super().__init__()
        try:
            from transformers import CLIPSegConfig, CLIPSegForImageSegmentation
        except ImportError:
            raise UserError("the clipseg peer needs transformers: pip install 'synseg[bench]' (or leave clipseg out of "
                            "--methods)") from None
        self.backbone = backbone
        self.background_threshold = 0.4
        self.model = CLIPSegForImageSegmentation(CLIPSegConfig(**clipseg_dims(backbone))).eval()

    @torch.inference_mode()
    def activation_maps(self, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        views, classes = pixels.shape[0], text.shape[0]
        logits = self.model(pixel_values=pixels.repeat_interleave(classes, dim=0),
                            conditional_embeddings=text.repeat(views, 1)).logits
        return torch.sigmoid(logits.reshape(views, classes, *logits.shape[-2:]))


def clipseg_dims(backbone: ClipBackbone) -> dict:
    """CLIPSeg on the same CLIP as ours (CLIPSegConfig's own default image tower is ViT-B/32), decoder left at
    CLIPSeg's defaults (reduce_dim 64, FFN 2048, 4 heads: the same as SynSeg's)."""
    architecture = backbone.config.architecture
    vision, text = architecture["vision_cfg"], architecture["text_cfg"]
    width = backbone.width
    return {
        "vision_config": {
            "hidden_size": width,
            "num_hidden_layers": int(vision["layers"]),
            "num_attention_heads": width // int(vision.get("head_width", 64)),
            "intermediate_size": int(width * float(vision.get("mlp_ratio", 4.0))),
            "image_size": backbone.image_size,
            "patch_size": backbone.patch_size,
        },
        "text_config": {
            "hidden_size": int(text["width"]),
            "num_hidden_layers": int(text["layers"]),
            "num_attention_heads": int(text["heads"]),
            "intermediate_size": 4 * int(text["width"]),
            "max_position_embeddings": int(text.get("context_length", 77)),
            "vocab_size": int(text.get("vocab_size", 49408)),
        },
        "projection_dim": backbone.embed_dim,
        "extract_layers": list(backbone.layers),
    }


def build_methods(model: SynSeg, names: tuple[str, ...]) -> list[Method]:
    """SynSeg and the peers on the same backbone, with parameter counts and FLOPs per view and per (view, class)."""
    device = model.backbone.device
    methods = []
    for name in names:
        if name == "synseg":
            predictor, own = model, list(model.parameters())
            trainable = sum(p.numel() for p in own if p.requires_grad)
        elif name in training_free_methods():
            predictor, trainable = build_training_free(name, model.backbone), 0
            own = list(predictor.parameters())
        elif name == "clipseg":
            predictor = CLIPSegPeer(model.backbone).to(device)
            own = list(predictor.model.parameters())  # the shared backbone only supplies the cached text embeddings
            trainable = sum(p.numel() for p in predictor.model.decoder.parameters())  # CLIPSeg trains its decoder only
        else:
            raise UserError(f"unknown method '{name}' (choose from {', '.join(METHODS)})")
        method = Method(name, predictor, sum(p.numel() for p in own), trainable,
                        sum(p.numel() * p.element_size() for p in own))
        one, two = count_flops(predictor, 1, 1), count_flops(predictor, 1, 2)
        method.flops_per_view, method.flops_per_pair = 2 * one - two, two - one
        methods.append(method)
    return methods


def random_image(height: int, width: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


def measure(method: Method, image: Image.Image, views: int, classes: int, config: BenchConfig,
            bound_gflops: float, protocol: str | None = None) -> Row:
    """One warm-up call (which also measures peak memory), then up to `repeats` timed calls. Under a --protocols entry
    `views` is unused: the row's views are the protocol's windows and its FLOPs are counted on the call itself."""
    clocked = Clocked(method)
    device = clocked.backbone.device
    segmenter = Segmenter(clocked, templates=DEFAULT_TEMPLATES, precision=config.precision)
    labels = [f"class {index}" for index in range(classes)]
    clocked.backbone.embed_labels(labels, DEFAULT_TEMPLATES)  # cached: no method pays for text below
    run = build_protocol(protocol) if protocol else None
    call = lambda: segmenter.segment(image, labels, views=views, protocol=run)  # noqa: E731
    with peak_memory(device) as peak:
        call()
    if run is None:
        flops = method.flops(views, classes)
    else:
        views = run.view_count(image.height, image.width)
        with FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as counter:
            call()
        flops = float(counter.get_total_flops())
    clocked.seconds.clear()
    seconds: list[float] = []
    while len(seconds) < config.repeats and (not seconds or sum(seconds) < config.max_call_seconds):
        seconds.append(elapsed(call, device))
    model_seconds = list(clocked.seconds)  # before the profiled call, whose time the profiler inflates
    profiled = profile_call(call, device) if config.profile and method.name == "synseg" else None
    latency = statistics.median(seconds)
    return Row(
        method=method.name, device=str(device), views=views, classes=classes,
        latency_ms=latency * 1e3, fps=1.0 / latency, peak_mem_mb=(method.weight_bytes + peak[0]) / 2**20,
        flop_bound_ms=flops / bound_gflops / 1e6, model_ms=statistics.median(model_seconds) * 1e3,
        gflops=flops / 1e9, repeats=len(seconds), protocol=protocol or view_protocol(views), profile=profiled,
    )


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


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> tuple[float, float, float] | None:
    return tuple(round(v, 2) for v in os.getloadavg()) if hasattr(os, "getloadavg") else None


def run_bench(model: SynSeg, config: BenchConfig, progress: bool = True) -> Report:
    """Measure every method at every (views, classes); peers' rows predicted to exceed max_call_seconds are skipped."""
    if config.precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {config.precision}")
    device = model.backbone.device
    load = load_average()
    gemm = {name: rate / 1e9 for name, rate in matmul_rates(device, torch.float32).items()}
    bf16 = max(matmul_rates(device, torch.bfloat16).values()) / 1e9 \
        if device.type == "cuda" or config.precision == "bf16" else None
    machine = Machine(str(device), machine_name(device), torch.get_num_threads(), max(gemm.values()), bf16, gemm, load)
    report = Report(config, machine, build_methods(model, config.methods))
    image = random_image(*config.image_size)
    grid = [(v, k, None) for v in sorted(config.views) for k in sorted(config.classes)]
    grid += [(0, k, p) for p in config.protocols for k in sorted(config.classes)]
    achieved: dict[str, float] = {}  # FLOP/s each method reached on its last row: predicts the next row's time
    with tqdm(total=len(grid) * len(report.methods), desc="bench", unit="row", disable=not progress, file=sys.stderr) as bar:
        for views, classes, protocol in grid:
            for method in report.methods:
                flops = method.flops(views, classes) if protocol is None else 0.0  # a protocol row counts its own
                rate = achieved.get(method.name)
                predicted = flops / rate if flops and rate else 0.0
                if method.name != "synseg" and predicted > config.max_call_seconds:
                    report.skipped.append({"method": method.name, "views": views, "classes": classes,
                                           "predicted_s": round(predicted, 1)})
                else:
                    row = measure(method, image, views, classes, config, report.bound_gflops, protocol)
                    report.rows.append(row)
                    achieved[method.name] = row.gflops * 1e9 / (row.latency_ms / 1e3)
                bar.update()
    machine.load_end = load_average()
    return report


def format_report(report: Report) -> str:
    """The table users read: one line per measured row, then the ratios and the class-growth check."""
    config, machine = report.config, report.machine
    height, width = config.image_size
    backbone = report.methods[0].predictor.backbone
    lines = [
        f"random weights (speed needs no trained weights); {backbone.config.name} at {backbone.image_size}x"
        f"{backbone.image_size} per view; image {width}x{height}; labels' text embeddings cached before timing; "
        f"{config.precision}",
        f"machine: {machine.name} ({machine.device}), {machine.threads} threads; fp32 matmul GFLOP/s "
        + ", ".join(f"{rate:.0f} ({name})" for name, rate in machine.gemm_gflops.items())
        + (f"; bf16 {machine.bf16_gflops:.0f}" if machine.bf16_gflops else "")
        + f"; bound = FLOPs / {report.bound_gflops:.0f} GFLOP/s"
        + f"; load average {_load(machine.load_start)} at start, {_load(machine.load_end)} at end",
        *(["note: other processes kept this machine's cores busy: latencies include waiting for a core; re-run when "
           "it is idle"] if machine.load_start and machine.load_start[0] > (os.cpu_count() or 1) else []),
        "",
        f"{'method':<10}{'params':>9}{'trainable':>11}{'GFLOP/view':>12}{'GFLOP/view/class':>18}",
    ]
    for m in report.methods:
        lines.append(f"{m.name:<10}{m.total_params / 1e6:>8.1f}M{m.trainable_params / 1e6:>10.2f}M"
                     f"{m.flops_per_view / 1e9:>12.2f}{m.flops_per_pair / 1e9:>18.3f}")
    lines += ["", f"{'method':<10}{'protocol':<20}{'views':>6}{'classes':>8}{'latency ms':>12}{'model ms':>10}{'FPS':>8}{'peak MB':>9}"
                  f"{'GFLOP':>8}{'bound ms':>10}{'x bound':>9}{'runs':>6}"]
    for r in sorted(report.rows, key=lambda r: (config.methods.index(r.method), r.protocol != view_protocol(r.views),
                                                r.protocol, r.views, r.classes)):
        lines.append(f"{r.method:<10}{r.protocol:<20}{r.views:>6}{r.classes:>8}{r.latency_ms:>12.1f}{r.model_ms:>10.1f}{r.fps:>8.2f}"
                     f"{r.peak_mem_mb:>9.0f}{r.gflops:>8.1f}{r.flop_bound_ms:>10.1f}"
                     f"{r.latency_ms / r.flop_bound_ms:>9.2f}{r.repeats:>6}")
    for s in report.skipped:
        lines.append(f"{s['method']:<10}{'':<20}{s['views']:>6}{s['classes']:>8}  skipped: predicted {s['predicted_s']} s per "
                     f"image > --max-call-seconds {config.max_call_seconds:g}")
    ratios = report.ratios()
    if ratios:
        lines += ["", "peer latency / synseg latency (same views, classes, resolution):"]
        lines += [f"  {r['peer']:<10} {r['protocol']:<20} views {r['views']} classes {r['classes']:>4}: {r['peer_over_synseg']:.2f}x"
                  for r in ratios]
    growth = [g for g in report.class_growth() if g["method"] == "synseg"]
    if growth:
        lines += ["", "synseg latency per added class vs the decoder's FLOPs per class at the measured rate:"]
        lines += [f"  views {g['views']} classes {g['classes'][0]}->{g['classes'][1]}: {g['ms_per_class']:.2f} ms/class "
                  f"(bound {g['flop_bound_ms_per_class']:.2f} ms/class, {g['ms_per_class'] / g['flop_bound_ms_per_class']:.2f}x)"
                  for g in growth]
    for r in (r for r in report.rows if r.profile):
        views = f"{r.views} view{'s' * (r.views > 1)}"
        lines += ["", f"where synseg's time goes at {views} and {r.classes} classes (one profiled call, own time per "
                      "operator):"]
        lines += [f"  {p['op']:<52}{p['self_ms']:>9.1f} ms{p['share']:>7.1%}{p['calls']:>6} calls" for p in r.profile]
    return "\n".join(lines)


def _load(load: tuple[float, float, float] | None) -> str:
    return "n/a" if load is None else " / ".join(f"{v:.2f}" for v in load)
