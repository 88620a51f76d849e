"""`synseg bench`: parameters, latency, FPS and peak memory of SynSeg beside HF CLIPSeg and the training-free methods,
per method and protocol, on this machine, each latency set against the FLOP-bound latency at its matmul rate."""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from synseg.commands.common import add_model_arguments, add_precision_argument
from synseg.errors import UserError
from synseg.io import atomic_path, check_size, ensure_writable_file
from synseg.research.speed import METHODS, BenchConfig, format_report, run_bench
from synseg.protocols import build_protocol
from synseg.research.speed.methods import REFERENCE
from synseg.research.speed.run import VIEW_PROTOCOLS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--method", default=",".join(METHODS), metavar="NAME,...",
                        help=f"which of {', '.join(METHODS)} (default: all)")
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
                        help="profile one more call per synseg row and print the operators that take the time")
    parser.add_argument("--json", metavar="FILE", help="also write the rows, ratios and machine figures here")


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


def run(args: argparse.Namespace) -> int:
    methods = tuple(dict.fromkeys(m.strip().lower() for m in args.method.split(",")))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method '{unknown[0]}' (choose from {', '.join(METHODS)})")
    if REFERENCE not in methods:
        methods = (REFERENCE, *methods)  # the others are set against it
    if args.repeats < 1 or args.max_call_seconds <= 0:
        raise UserError("--repeats must be at least 1 and --max-call-seconds positive")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    config = BenchConfig(
        protocols=protocol_names(args.protocol), classes=int_list(args.classes, "--classes"), methods=methods,
        image_size=parse_size(args.image_size), repeats=args.repeats, max_call_seconds=args.max_call_seconds,
        precision=args.precision, profile=args.profile,
    )
    if args.json:
        ensure_writable_file(args.json)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(args.threads or cores)
    # speed needs no weights, and none need downloading
    report = run_bench(config, args.checkpoint, args.backbone, args.pretrained or "none", args.device)
    print(format_report(report))
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
