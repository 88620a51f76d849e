"""`synseg train` (and `torchrun -m synseg.train`): SynSeg from images and their noun phrases."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from synseg.config import read_json
from synseg.errors import UserError
from synseg.methods.spec import resolve_device
from synseg.io import ensure_folder_target, ensure_writable_dir, ensure_writable_files
from synseg.train.losses import TERMS
from synseg.train.config import DEFAULT_RECIPE, RECIPES, TrainConfig, recipe_config


def loader_processes(text: str) -> int | str:
    """--workers: "auto" or a whole number."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="webdataset shards (a .tar, a {a..b} pattern, a folder of .tar) or a jsonl folder")
    parser.add_argument("--phrases", required=True, help="PHRASES.jsonl written by `synseg phrases` from the same data")
    parser.add_argument("--out", required=True, help="run folder: config.json, log.jsonl, last/ (resumable), final/")
    parser.add_argument("--recipe", choices=tuple(RECIPES), default=DEFAULT_RECIPE,
                        help="starting point under --config: 'measured' (default), the best recipe measured in the "
                             "synthetic world (a correction of the frozen CLIP's per-token readout learned with L1, "
                             "absent, present and caption-readout terms, segmenting with region verification); 'paper', "
                             "the paper's literal reading (all four MCCL terms; see docs/world.md)")
    parser.add_argument("--config", help="TrainConfig as JSON (any subset of its fields, over --recipe; see docs/training.md)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--cache", help="folder for the frozen backbone's features, reused on later epochs and runs")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available; under torchrun each "
                                                         "process takes GPU LOCAL_RANK)")
    parser.add_argument("--backbone", help="override the config's backbone (open_clip name or .json)")
    parser.add_argument("--pretrained", help="override the backbone weights (tag, file, or 'none')")
    parser.add_argument("--iterations", type=int, help="override the number of iterations")
    parser.add_argument("--batch-size", type=int, help="override the global batch size")
    parser.add_argument("--lr", type=float, help="override the learning rate")
    parser.add_argument("--workers", type=loader_processes,
                        help="override the data loader processes per rank: a divisor of the config's streams, or auto")
    parser.add_argument("--losses", help=f"ablation: comma-separated terms to keep, of {', '.join(TERMS)} (or L1..L4)")


def load_train_config(args: argparse.Namespace) -> TrainConfig:
    config = recipe_config(args.recipe, read_json(args.config) if args.config else {}, args.config or "--recipe")
    if args.backbone:
        config.model.backbone.name = args.backbone
    if args.pretrained:
        config.model.backbone.pretrained = None if args.pretrained.lower() == "none" else args.pretrained
    overrides = {"iterations": args.iterations, "batch_size": args.batch_size, "lr": args.lr, "workers": args.workers}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if args.losses:
        keep = set()
        for name in (n.strip() for n in args.losses.split(",")):
            if name.upper() in ("L1", "L2", "L3", "L4"):
                name = TERMS[int(name[1]) - 1]
            if name not in TERMS:
                raise UserError(f"unknown loss term '{name}' (terms: {', '.join(TERMS)} or L1..L4)")
            keep.add(name)
        for name in TERMS:
            if name not in keep:
                setattr(config.loss, name, 0.0)
    return config


def run(args: argparse.Namespace) -> int:
    from synseg.train.trainer import FINAL, LAST, Trainer

    config = load_train_config(args)
    out = Path(args.out)
    if (out / LAST).exists() and not args.resume:
        raise UserError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    ensure_writable_dir(out)  # before any slow work: an unwritable --out would otherwise fail at the first checkpoint
    ensure_writable_files([out / "config.json", out / "log.jsonl"])
    for folder in (LAST, FINAL):
        ensure_folder_target(out / folder)
    if args.cache:
        ensure_writable_dir(args.cache)
    trainer = Trainer(config, args.data, args.phrases, out, resolve_device(args.device), cache=args.cache)
    if args.resume:
        trainer.resume()
    trainer.fit()
    if trainer.dist.main:
        print(f"trained {config.iterations} iterations; checkpoint: {out / 'final'}", file=sys.stderr)
    return 0
