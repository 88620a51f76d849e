"""`synseg bench`: parameters, latency, FPS and peak memory of SynSeg beside HF CLIPSeg and the training-free methods,
per method and protocol, on this machine, each latency set against the FLOP-bound latency at its matmul rate;
`synseg bench --train`: one training step instead, phase by phase, per recipe and setting, with and without the
feature cache."""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from synseg.commands.common import add_model_arguments, add_precision_argument
from synseg.config import read_json
from synseg.errors import UserError
from synseg.io import atomic_path, check_size, ensure_writable_file
from synseg.methods import parse_methods
from synseg.research.speed import METHODS, BenchConfig, format_report, run_bench
from synseg.protocols import build_protocol
from synseg.research.speed.methods import REFERENCE
from synseg.research.speed.run import VIEW_PROTOCOLS
from synseg.research.speed.train_step import SETTINGS, TrainBenchConfig, format_train_report, run_train_bench
from synseg.train.config import DEFAULT_RECIPE, RECIPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--method", default=",".join(METHODS), metavar="NAME,...",
                        help=f"which of {', '.join(METHODS)}, each may end in +verify (default: all)")
    parser.add_argument("--protocol", default=",".join(VIEW_PROTOCOLS), metavar="NAME,...",
                        help="protocols to time for every method: whole (the whole image alone), quadrants (the whole "
                             "image + 4 quadrants, the paper's), slide, slide-tcl or slide:SHORT/WINDOW/STRIDE "
                             f"(default {','.join(VIEW_PROTOCOLS)})")
    parser.add_argument("--classes", default="1,21,150", help="comma-separated numbers of classes (default 1,21,150)")
    parser.add_argument("--image-size", default="512x512", metavar="WxH", help="test image size (default 512x512)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row after a warm-up call (default 3)")
    parser.add_argument("--max-call-seconds", type=float, default=10.0,
                        help="skip peers' rows predicted to take longer per image than this (default 10); a row also stops "
                             "repeating once its timed calls add up to this")
    add_precision_argument(parser)
    parser.add_argument("--threads", type=int, help="CPU threads (default: every core this process may use)")
    parser.add_argument("--profile", action="store_true",
                        help="profile one more call per synseg row (--train: one more step per row) and print the operators "
                             "that take the time")
    parser.add_argument("--json", metavar="FILE", help="also write the rows, ratios and machine figures here")
    train = parser.add_argument_group("training step (--train)")
    train.add_argument("--train", action="store_true",
                       help="time one training step instead of inference: samples/s, ms per step split into data, "
                            "frozen encoder, forward, backward and optimizer, FLOPs per sample, bound, peak memory "
                            "(--method, --protocol, --classes, --image-size and --max-call-seconds are inference's)")
    train.add_argument("--recipe", default=f"{DEFAULT_RECIPE},paper", metavar="NAME,...",
                       help=f"training recipes, of {', '.join(RECIPES)} (default {DEFAULT_RECIPE},paper)")
    train.add_argument("--setting", default=",".join(SETTINGS), metavar="NAME,...",
                       help="backbone: --backbone (default ViT-B-16, random weights) at its image size and --batch-size; "
                            "world: the world CLIP at 64 px with its shipped weights, batch 32, 5 phrases per image, "
                            f"as the world experiment trains (default {','.join(SETTINGS)})")
    train.add_argument("--batch-size", type=int, default=8, help="the backbone setting's batch size (default 8)")
    train.add_argument("--max-phrases", type=int,
                       help="phrases per image (default: the setting's, 8 from the recipe or 5 in the world)")
    train.add_argument("--cache", choices=("both", "off", "on"), default="both",
                       help="the frozen CLIP's tokens computed (off), read from the feature cache (on), or both rows "
                            "(default)")
    train.add_argument("--config", metavar="FILE",
                       help="TrainConfig fields as JSON laid over every row's recipe and setting, as synseg train "
                            "--config lays them over --recipe (e.g. {\"model\": {\"decoder\": {\"dropout\": 0}}})")
    # --train's default precision is the recipe's (bf16 autocast on GPUs, fp32 on CPUs; world fp32); inference's fp32
    parser.set_defaults(precision=None)


def int_list(text: str, what: str) -> tuple[int, ...]:
    """'1,21,150' -> (1, 21, 150): distinct positive integers in the order given."""
    try:
        values = tuple(dict.fromkeys(int(v) for v in text.split(",")))
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got '{text}'") from None
    bad = [v for v in values if v < 1]
    if bad:
        raise UserError(f"{what} {bad[0]} is not allowed (must be >= 1)")
    return values


def protocol_names(text: str) -> tuple[str, ...]:
    """'whole,slide' -> ('whole', 'slide'): distinct protocol names in the order given, each checked by building it."""
    names = tuple(dict.fromkeys(name.strip().lower() for name in text.split(",")))
    if not all(names):
        raise UserError(f"--protocol must be a comma-separated list with no empty entries, got '{text}'")
    for name in names:
        build_protocol(name)
    return names


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (height, width)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--image-size must look like 512x512, got '{text}'") from None
    if min(width, height) < 2:
        raise UserError(f"--image-size must be at least 2x2, got '{text}'")
    check_size(width, height, f"size {text}")
    return height, width


def names(text: str, what: str, known) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b'): distinct names in the order given, each one of `known`."""
    chosen = tuple(dict.fromkeys(name.strip() for name in text.split(",")))
    for name in chosen:
        if name not in known:
            raise UserError(f"unknown {what} '{name}' (choose from {', '.join(known)})")
    return chosen


def set_threads(threads: int | None) -> None:
    """--threads, or every core this process may use."""
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads or cores)


def write_report(path: str | None, data: dict) -> None:
    if path:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {path}", file=sys.stderr)


def run_train(args: argparse.Namespace) -> int:
    if args.checkpoint:
        raise UserError("--train times an untrained model (or the world CLIP's shipped one): drop --checkpoint")
    if args.repeats < 1 or args.batch_size < 1 or (args.max_phrases is not None and args.max_phrases < 1):
        raise UserError("--repeats, --batch-size and --max-phrases must be at least 1")
    config = TrainBenchConfig(
        recipes=names(args.recipe, "recipe", tuple(RECIPES)), settings=names(args.setting, "setting", SETTINGS),
        backbone=args.backbone or "ViT-B-16", pretrained=args.pretrained or "none", batch_size=args.batch_size,
        max_phrases=args.max_phrases, cache={"both": (False, True), "off": (False,), "on": (True,)}[args.cache],
        repeats=args.repeats, precision=args.precision, profile=args.profile,
        overrides=read_json(args.config, "--config") if args.config else {},
    )
    if args.json:
        ensure_writable_file(args.json)
    set_threads(args.threads)
    report = run_train_bench(config, args.device)
    print(format_train_report(report))
    write_report(args.json, report.to_json())
    return 0


def run(args: argparse.Namespace) -> int:
    if args.train:
        return run_train(args)
    args.precision = args.precision or "fp32"
    methods = tuple(str(choice) for choice in parse_methods(args.method))
    if REFERENCE not in methods:
        methods = (REFERENCE, *methods)  # the others are set against it
    if args.repeats < 1 or args.max_call_seconds <= 0:
        raise UserError("--repeats must be at least 1 and --max-call-seconds positive")
    config = BenchConfig(
        protocols=protocol_names(args.protocol), classes=int_list(args.classes, "--classes"), methods=methods,
        image_size=parse_size(args.image_size), repeats=args.repeats, max_call_seconds=args.max_call_seconds,
        precision=args.precision, profile=args.profile,
    )
    if args.json:
        ensure_writable_file(args.json)
    set_threads(args.threads)
    # speed needs no weights, and none need downloading
    report = run_bench(config, args.checkpoint, args.backbone, args.pretrained or "none", args.device)
    print(format_report(report))
    write_report(args.json, report.to_json())
    return 0
