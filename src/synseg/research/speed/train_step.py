"""`synseg bench --train`: one training step of SynSeg, timed phase by phase and set against the machine's limit.

The step is the library's own: `synseg.train.trainer.TrainStep`, the phases `Trainer.fit` runs on every batch, on a
model built from a recipe's TrainConfig (`recipe_config`) as `synseg train` builds it, in train mode. Weights are
random for `--backbone` (speed needs none); the world CLIP carries its shipped weights. What each part times:

- data: `collate_phrases` (what the loader runs on decoded images: stack, convert to float in [0, 1]) on synthetic
  images of the backbone's size that are already decoded; reading, decoding and resizing images are not timed. Every
  image has K phrases (the setting's max_phrases), all distinct in the batch (the text tower's worst case).
- encoder: `TrainStep.inputs`, the frozen CLIP: the image tower's tokens and the phrases' embeddings (the text tower).
  With the cache, a `FeatureCache` (in a temporary folder) that the warm-up step filled: the timed steps are cache
  hits, the tokens read from their files (from the OS page cache after the warm-up) and the phrases' embeddings from
  the cache's memory, as in every epoch after a cached run's first.
- forward: `TrainStep.loss_terms`: the absent pairs, the decoder and FSS forward and every loss term.
- backward: `TrainStep.backward` (the previous gradients dropped, then backward of the total).
- optimizer: `TrainStep.update` (AdamW, then the learning-rate schedule).

The phases run back to back, and on CUDA the clock waits for the device at each boundary (which costs the overlap
of one phase's host work with the previous one's kernels). ms per step is the whole step, data included (the loader
of a run with workers > 0 makes batches in other processes, beside the step); its parts are those of the same
repeat, the one with the median step time, so they add up to the step. FLOPs are counted by FlopCounterMode over one
more step (encoder: the frozen towers, none with the cache; the rest: forward, backward and the update), and the
bound is the FLOPs at the machine's matmul rate (bf16's when the step runs under bf16 autocast). Peak memory is
taken on that same step: every weight and AdamW's state, plus the peak of the tensors the step creates
(`peak_memory`: CUDA's allocator, or on a CPU the tensors alive at op boundaries).
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from synseg.config import merged
from synseg.data.datasets import collate_phrases
from synseg.errors import UserError
from synseg.models.synseg import build_synseg
from synseg.research.speed.clock import synchronize
from synseg.research.speed.flops import call_flops, unfused_attention
from synseg.research.speed.machine import Machine, load_average, measure_machine
from synseg.research.speed.memory import peak_memory
from synseg.research.speed.profiling import profile_call
from synseg.research.speed.report import machine_lines
from synseg.train.config import DEFAULT_RECIPE, RECIPES, TrainConfig, recipe_config
from synseg.train.trainer import TrainStep, autocast_dtype, feature_cache, seed_everything

SETTINGS = ("backbone", "world")  # --backbone at its own size; the world CLIP at 64 px with its shipped weights
PARTS = ("data", "encoder", "forward", "backward", "optimizer")


@dataclass
class TrainBenchConfig:
    recipes: tuple[str, ...] = (DEFAULT_RECIPE, "paper")
    settings: tuple[str, ...] = SETTINGS
    backbone: str = "ViT-B-16"  # the "backbone" setting's CLIP
    pretrained: str | None = None  # its weights (None: random)
    batch_size: int = 8  # the "backbone" setting's; the world's is the world experiment's
    max_phrases: int | None = None  # K phrases per image; None: the setting's (the recipe's, or the world's)
    cache: tuple[bool, ...] = (False, True)  # without and with the feature cache
    repeats: int = 3  # timed steps per row after one warm-up step
    precision: str | None = None  # "fp32" or "bf16" (autocast); None: the setting's (the recipe's "auto", world fp32)
    profile: bool = False  # one more step per row under torch.profiler: which operators take the time
    overrides: dict = field(default_factory=dict)  # TrainConfig fields over every row's (`synseg train --config`'s)


@dataclass
class TrainRow:
    recipe: str
    setting: str
    backbone: str
    image_size: int
    batch_size: int
    phrases_per_image: int
    cached: bool
    device: str
    precision: str  # fp32, or bf16 autocast
    samples_per_s: float
    ms_per_step: float  # the median step, data included
    data_ms: float  # the parts of that same step
    encoder_ms: float
    forward_ms: float
    backward_ms: float
    optimizer_ms: float
    flops_per_sample: float  # every counted matmul FLOP of the step (frozen CLIP included when not cached) / batch
    encoder_flops_per_sample: float  # the frozen CLIP's share (0 with the cache)
    bound_ms: float  # the step's FLOPs at the machine's matmul rate
    x_bound: float  # ms_per_step / bound_ms
    peak_mem_mb: float  # all weights + AdamW's state + the peak of the tensors one step creates
    trainable_params: int
    repeats: int
    step_ms: list[float] = field(default_factory=list)  # every timed step
    profile: list[dict] | None = None  # the operators with the most time of their own in one more step (profile)


@dataclass
class TrainReport:
    config: TrainBenchConfig
    machine: Machine
    rows: list[TrainRow] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "note": "training step of synseg.train.trainer.TrainStep on synthetic decoded images; parts of the median "
                    "step: data (collate), encoder (frozen CLIP, or feature-cache hits), forward (decoder, FSS, loss "
                    "terms), backward, optimizer (AdamW + schedule)",
            "settings": asdict(self.config),
            "machine": asdict(self.machine),
            "rows": [asdict(r) for r in self.rows],
        }


def setting_config(setting: str, recipe: str, config: TrainBenchConfig) -> TrainConfig:
    """The recipe's TrainConfig for a setting: "backbone" (config.backbone / pretrained at config.batch_size) or
    "world" (the world CLIP with its shipped weights, the world experiment's batch size, phrases, precision and
    decoder), with config.overrides, then config.max_phrases and config.precision laid over it when given."""
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    if setting == "world":
        from synseg.research.world.experiment import TRAIN, WorldConfig
        from synseg.synthetic import SHIPPED_CLIP, WORLD_CLIP

        overrides = {"batch_size": TRAIN["batch_size"], "max_phrases": TRAIN["max_phrases"],
                     "precision": TRAIN["precision"],
                     "model": {"backbone": {"name": WORLD_CLIP, "pretrained": str(SHIPPED_CLIP)},
                               "decoder": WorldConfig(clip=str(SHIPPED_CLIP)).decoder}}
    elif setting == "backbone":
        overrides = {"batch_size": config.batch_size,
                     "model": {"backbone": {"name": config.backbone, "pretrained": config.pretrained}}}
    else:
        raise UserError(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
    overrides = merged(overrides, config.overrides)
    if config.max_phrases is not None:
        overrides["max_phrases"] = config.max_phrases
    if config.precision is not None:
        overrides["precision"] = config.precision
    return recipe_config(recipe, overrides, f"bench --train {setting}")


def synthetic_samples(size: int, batch_size: int, phrases: int) -> list[tuple[Image.Image, list[str], str]]:
    """(image, phrases, key) samples as the loader hands them to collate: RGB noise of size x size (the same on every
    run), K phrases each, all distinct in the batch."""
    rng = np.random.default_rng(0)
    return [(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
             [f"object {i * phrases + k}" for k in range(phrases)], f"image-{i}") for i in range(batch_size)]


def steady_step(config: TrainConfig) -> int:
    """An iteration at which every term of the recipe is on and at full weight (after warm-up and ramps)."""
    loss = config.loss
    return max(config.warmup, loss.absent_start, loss.pairwise_start + loss.pairwise_ramp)


def timed_step(step: TrainStep, samples: list, iteration: int) -> dict[str, float]:
    """Seconds of each part of one step, back to back (on CUDA the clock waits for the device at each boundary)."""
    device = step.device
    synchronize(device)
    marks = [time.perf_counter()]

    def mark() -> None:
        synchronize(device)
        marks.append(time.perf_counter())

    batch = collate_phrases(samples)
    mark()
    inputs = step.inputs(batch.images, batch.phrases, batch.keys)
    mark()
    terms = step.loss_terms(inputs, iteration)
    mark()
    step.backward(terms)
    mark()
    step.update()
    mark()
    return dict(zip(PARTS, np.diff(marks).tolist()))


def step_flops(step: TrainStep, samples: list, iteration: int) -> tuple[float, float]:
    """Matmul FLOPs of one step, counted on attention's unfused path: (frozen CLIP's, the rest's)."""
    batch = collate_phrases(samples)
    held = {}
    with unfused_attention():
        frozen = call_flops(lambda: held.setdefault("inputs", step.inputs(batch.images, batch.phrases, batch.keys)))

        def rest() -> None:
            step.backward(step.loss_terms(held["inputs"], iteration))
            step.update()

        return frozen, call_flops(rest)


def measure_row(step: TrainStep, config: TrainConfig, recipe: str, setting: str, cached: bool, repeats: int,
                machine: Machine, profile: bool = False) -> TrainRow:
    """One row: a warm-up step (it fills the cache and makes AdamW's state), a step under the FLOP counter and the
    memory tracker (attention unfused: its probabilities held, a few MB more than the fused kernels'), then `repeats`
    timed steps (and, with `profile`, one more under torch.profiler, counted in none of them)."""
    model, device = step.model, step.device
    size = model.backbone.image_size
    samples = synthetic_samples(size, config.batch_size, config.max_phrases)
    iteration = steady_step(config)
    model.train()
    timed_step(step, samples, iteration)
    resident = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        t.numel() * t.element_size() for state in step.optimizer.state.values() for t in state.values()
        if isinstance(t, torch.Tensor))
    with peak_memory(device) as peak:  # the same step: one step fewer (on a CPU, a ViT-B/16 step takes seconds)
        frozen, rest = step_flops(step, samples, iteration)
    runs = [timed_step(step, samples, iteration) for _ in range(repeats)]
    profiled = profile_call(lambda: timed_step(step, samples, iteration), device) if profile else None
    totals = [sum(run.values()) for run in runs]
    median = runs[totals.index(statistics.median_low(totals))]
    seconds = sum(median.values())
    bf16 = step.amp == torch.bfloat16
    rate = machine.bf16_gflops if bf16 else machine.fp32_gflops
    flops = frozen + rest
    bound = flops / (rate * 1e9)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return TrainRow(
        recipe=recipe, setting=setting, backbone=model.backbone.config.name, image_size=size,
        batch_size=config.batch_size, phrases_per_image=config.max_phrases, cached=cached, device=str(device),
        precision="bf16" if bf16 else "fp32", samples_per_s=config.batch_size / seconds, ms_per_step=seconds * 1e3,
        **{f"{part}_ms": median[part] * 1e3 for part in PARTS},
        flops_per_sample=flops / config.batch_size, encoder_flops_per_sample=frozen / config.batch_size,
        bound_ms=bound * 1e3, x_bound=seconds / bound, peak_mem_mb=(resident + peak[0]) / 2**20,
        trainable_params=trainable, repeats=repeats, step_ms=[t * 1e3 for t in totals], profile=profiled,
    )


def run_train_bench(config: TrainBenchConfig, device: str = "auto", progress: bool = True) -> TrainReport:
    """Every (setting, recipe) without and with the cache, on `device` ("auto": cuda when there is one)."""
    from synseg.distributed import place
    from synseg.methods.spec import resolve_device

    if config.repeats < 1 or config.batch_size < 1 or (config.max_phrases is not None and config.max_phrases < 1):
        raise UserError("--repeats, --batch-size and --max-phrases must be at least 1")
    torch_device = place(resolve_device(device))
    configs = [(setting, recipe, setting_config(setting, recipe, config))
               for setting in config.settings for recipe in config.recipes]
    any_bf16 = any(autocast_dtype(c.precision, torch_device) == torch.bfloat16 for _, _, c in configs)
    machine = measure_machine(torch_device, "bf16" if any_bf16 else "fp32")
    report = TrainReport(config, machine)
    with tempfile.TemporaryDirectory(prefix="synseg-bench-") as tmp, \
            tqdm(total=len(configs) * len(config.cache), desc="bench --train", unit="row", disable=not progress,
                 file=sys.stderr) as bar:
        for number, (setting, recipe, train) in enumerate(configs):
            seed_everything(train.seed)
            model = build_synseg(train.model).to(torch_device)
            for cached in config.cache:
                cache = feature_cache(Path(tmp) / str(number), model, train) if cached else None
                step = TrainStep(train, model, torch_device, cache)
                report.rows.append(measure_row(step, train, recipe, setting, cached, config.repeats, machine,
                                               config.profile))
                bar.update()
            del model
    machine.load_end = load_average()
    return report


def format_train_report(report: TrainReport) -> str:
    """The table: one line per (setting, recipe, cache), ms per step and its parts, FLOPs, the bound, peak memory."""
    config, machine = report.config, report.machine
    lines = [
        "one training step (synseg.train.trainer.TrainStep) on synthetic decoded images, K distinct phrases per image; "
        f"median of {config.repeats} after a warm-up step; data = collate only (no decoding); cached = feature-cache "
        "hits for the frozen CLIP",
        *machine_lines(machine, f"bound = FLOPs / {machine.fp32_gflops:.0f} GFLOP/s (fp32)"
                       + (f" or {machine.bf16_gflops:.0f} (bf16 rows)" if machine.bf16_gflops else "")),
        *([f"every row's TrainConfig with --config's fields laid over it: {json.dumps(config.overrides)}"]
          if config.overrides else []),
        "",
        f"{'setting':<24}{'recipe':<10}{'cache':>6}{'batch':>6}{'K':>3}{'prec':>5}{'samples/s':>10}{'ms/step':>9}"
        f"{'data':>7}{'encoder':>8}{'forward':>8}{'backward':>9}{'optim':>7}{'GFLOP/sample':>13}{'bound ms':>9}"
        f"{'x bound':>8}{'peak MB':>8}",
    ]
    for r in report.rows:
        setting = f"{r.backbone} {r.image_size}px"
        lines.append(f"{setting:<24}{r.recipe:<10}{'yes' if r.cached else 'no':>6}{r.batch_size:>6}"
                     f"{r.phrases_per_image:>3}{r.precision:>5}{r.samples_per_s:>10.2f}{r.ms_per_step:>9.1f}"
                     f"{r.data_ms:>7.1f}{r.encoder_ms:>8.1f}{r.forward_ms:>8.1f}{r.backward_ms:>9.1f}"
                     f"{r.optimizer_ms:>7.1f}{r.flops_per_sample / 1e9:>13.3f}{r.bound_ms:>9.1f}{r.x_bound:>8.2f}"
                     f"{r.peak_mem_mb:>8.0f}")
    for r in (r for r in report.rows if r.profile):
        lines += ["", f"where the step's time goes, {r.backbone} {r.image_size}px, {r.recipe}, "
                      f"{'cached' if r.cached else 'not cached'} (one profiled step, own time per operator):"]
        lines += [f"  {p['op']:<52}{p['self_ms']:>9.1f} ms{p['share']:>7.1%}{p['calls']:>6} calls" for p in r.profile]
    return "\n".join(lines)
