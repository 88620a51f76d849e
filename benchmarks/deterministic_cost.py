"""What deterministic CPU kernels cost a training step, and whether a step repeats to the bit without and with them:

    python benchmarks/deterministic_cost.py --backbone synseg-tiny ViT-B-16 --threads 2 --repeats 5

For each backbone (random weights) one batch of generated images (gpu_check's data) goes through a training step's
forward and backward (frozen CLIP, decoder, every loss term; AdamW's update runs the same kernels either way, and is
left out so that every repeat starts from the same weights) `repeats` times with `synseg.train.trainer.
deterministic_kernels` on and as many times with it off, interleaved so that a busy machine slows both alike. Prints
the median seconds per step of each and the largest gradient difference between repeats of the same step.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gpu_check import write_data
from synseg.config import from_dict
from synseg.train.config import TrainConfig
from synseg.train.trainer import Trainer, deterministic_kernels


def measure(backbone: str, batch_size: int, repeats: int, root: Path) -> dict[str, dict[str, float]]:
    data, phrases = write_data(root, batch_size, size=224 if backbone != "synseg-tiny" else 96)
    config = from_dict(TrainConfig, {"model": {"backbone": {"name": backbone, "pretrained": None}},
                                     "batch_size": batch_size, "workers": 0, "warmup": 1, "iterations": 10,
                                     "loss": {"absent_suppress": 1.0, "absent_text_gate": 0.9999}})  # as gpu_check
    trainer = Trainer(config, str(data), str(phrases), root / "run", torch.device("cpu"))
    trainer.model.train()
    batch = next(iter(trainer.data))
    modes = {"deterministic": lambda: deterministic_kernels(torch.device("cpu")), "default": contextlib.nullcontext}
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
    return {mode: {"median_s": statistics.median(seconds[mode]),
                   "max_grad_difference": max(float((g - h).abs().max()) for run in grads[mode][1:]
                                              for g, h in zip(run, grads[mode][0]))} for mode in modes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", nargs="+", default=["synseg-tiny", "ViT-B-16"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for backbone in args.backbone:
        with tempfile.TemporaryDirectory() as root:
            figures = measure(backbone, args.batch_size, args.repeats, Path(root))
        det, default = figures["deterministic"], figures["default"]
        print(f"{backbone}, batch {args.batch_size}, {args.threads} threads: step {det['median_s']:.3f} s deterministic, "
              f"{default['median_s']:.3f} s default ({det['median_s'] / default['median_s'] - 1:+.1%}); max gradient "
              f"difference between repeats {det['max_grad_difference']:.3g} deterministic, "
              f"{default['max_grad_difference']:.3g} default")


if __name__ == "__main__":
    main()
