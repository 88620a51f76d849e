"""Seconds per training epoch from images vs from the frozen-feature cache (`synseg train --cache`).

    python tools/cache_speedup.py --data ../shared/data/real/coco_captions [--backbone ViT-B-16] [--batch-size 16]

Runs one epoch three ways on the same data: no cache, cache cold (computes and stores), cache warm (reads).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from synseg.config import from_dict
from synseg.train.config import TrainConfig
from synseg.train.trainer import Trainer


def epoch_seconds(config: TrainConfig, data: str, phrases: str, out: Path, cache: Path | None) -> float:
    trainer = Trainer(config, data, phrases, out, torch.device("cpu"), cache=cache)
    started = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        phrases = tmp / "phrases.jsonl"
        subprocess.run([sys.executable, "-m", "synseg.cli", "phrases", args.data, "--out", str(phrases)], check=True, capture_output=True)
        records = sum(1 for _ in phrases.open())
        config = from_dict(TrainConfig, {
            "model": {"backbone": {"name": args.backbone, "pretrained": None}},
            "batch_size": args.batch_size, "iterations": records // args.batch_size, "workers": 0,
            "checkpoint_every": 10**9, "log_every": 10**9,
        })
        times = {
            "images": epoch_seconds(config, args.data, str(phrases), tmp / "a", None),
            "cache_cold": epoch_seconds(config, args.data, str(phrases), tmp / "b", tmp / "cache"),
            "cache_warm": epoch_seconds(config, args.data, str(phrases), tmp / "c", tmp / "cache"),
        }
        size = sum(f.stat().st_size for f in (tmp / "cache").rglob("*") if f.is_file())
    result = {
        "backbone": args.backbone, "images_per_epoch": config.iterations * args.batch_size, "batch_size": args.batch_size,
        "seconds_per_epoch": {k: round(v, 1) for k, v in times.items()},
        "speedup_warm_vs_images": round(times["images"] / times["cache_warm"], 2),
        "cache_mb": round(size / 2**20, 1), "load_average": os.getloadavg()[0], "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
