"""What deterministic CPU training costs, and whether a training step repeats to the bit:

    python tools/deterministic_cost.py --backbone synseg-tiny ViT-B-16 --threads 2 --repeats 5 [--recipe paper]

1. The kernel that made CPU training differ run to run, at its real shapes: the decoder hands each image's tokens to
   that image's (image, phrase) pairs. Indexing (`x[index]`, backward `index_put_` with accumulate: atomics across
   threads) against `index_select` (backward `index_add_`: a fixed order), forward and backward, median of 50.
2. A whole training step's forward and backward (frozen CLIP, decoder, every loss term; AdamW's update is left out so
   that every repeat starts from the same weights) for each backbone (random weights) on one batch of generated images
   (gpu_check's data), as shipped and under PyTorch's global deterministic mode (`torch.use_deterministic_algorithms`,
   the other way to get there), interleaved so that a busy machine slows both alike: median seconds per step, and the
   largest gradient difference between repeats of the same step.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from gpu_check import write_data
from synseg.train.config import DEFAULT_RECIPE, RECIPES, recipe_config
from synseg.train.trainer import Trainer


@contextlib.contextmanager
def global_deterministic_mode() -> Iterator[None]:
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def gather_kernels(trainer: Trainer, batch) -> dict[str, float]:
    """Seconds of the decoder's gather, forward and backward, both ways, at this batch's shapes."""
    pairs = sum(min(len(p), trainer.config.max_phrases) for p in batch.phrases)
    images, tokens = len(batch.keys), trainer.model.backbone.grid[0] * trainer.model.backbone.grid[1] + 1
    reduced = torch.randn(images, tokens, trainer.config.model.decoder.reduce_dim, requires_grad=True)
    index = torch.randint(0, images, (pairs * 2,))  # named and absent pairs
    weight = torch.randn(len(index), tokens, reduced.shape[-1])

    def run(gather: Callable[[], torch.Tensor]) -> None:
        reduced.grad = None
        (gather() * weight).sum().backward()

    return {"indexing": median_seconds(lambda: run(lambda: reduced[index]), 50),
            "index_select": median_seconds(lambda: run(lambda: reduced.index_select(0, index)), 50)}


def measure(backbone: str, recipe: str, batch_size: int, repeats: int, root: Path) -> dict[str, dict[str, float]]:
    data, phrases = write_data(root, batch_size, size=224 if backbone != "synseg-tiny" else 96)
    config = recipe_config(recipe, {"model": {"backbone": {"name": backbone, "pretrained": None}},
                                    "batch_size": batch_size, "workers": 0, "warmup": 1, "iterations": 10,
                                    "loss": {"absent_suppress": 1.0, "absent_text_quantile": 1.0}})  # as gpu_check
    trainer = Trainer(config, str(data), str(phrases), root / "run", torch.device("cpu"))
    trainer.model.train()
    batch = next(iter(trainer.data))
    modes = {"shipped": contextlib.nullcontext, "global deterministic mode": global_deterministic_mode}
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    grads: dict[str, list[list[torch.Tensor]]] = {mode: [] for mode in modes}
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    for _ in range(repeats):
        for mode, context in modes.items():
            torch.manual_seed(0)  # the same dropout masks in every repeat
            with context():
                started = time.perf_counter()
                terms = trainer.loss(batch.images, batch.phrases, batch.keys)
                trainer.optimizer.zero_grad(set_to_none=True)
                terms["total"].backward()
                seconds[mode].append(time.perf_counter() - started)
                grads[mode].append([p.grad.clone() for p in params])
    figures = {mode: {"median_s": statistics.median(seconds[mode]),
                      "max_grad_difference": max(float((g - h).abs().max()) for run in grads[mode][1:]
                                                 for g, h in zip(run, grads[mode][0]))} for mode in modes}
    return {**figures, "gather": gather_kernels(trainer, batch)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", nargs="+", default=["synseg-tiny", "ViT-B-16"])
    parser.add_argument("--recipe", choices=tuple(RECIPES), default=DEFAULT_RECIPE)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for backbone in args.backbone:
        with tempfile.TemporaryDirectory() as root:
            figures = measure(backbone, args.recipe, args.batch_size, args.repeats, Path(root))
        shipped, mode, gather = figures["shipped"], figures["global deterministic mode"], figures["gather"]
        print(f"{backbone}, recipe {args.recipe}, batch {args.batch_size}, {args.threads} threads: decoder gather "
              f"{gather['indexing'] * 1e3:.2f} ms indexing, {gather['index_select'] * 1e3:.2f} ms index_select; step "
              f"{shipped['median_s']:.3f} s shipped, {mode['median_s']:.3f} s global deterministic mode "
              f"({mode['median_s'] / shipped['median_s'] - 1:+.1%}); max gradient difference between repeats "
              f"{shipped['max_grad_difference']:.3g} shipped, {mode['max_grad_difference']:.3g} global mode")


if __name__ == "__main__":
    main()
