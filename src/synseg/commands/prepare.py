"""`synseg prepare`: turn a benchmark's official downloads into the layout `synseg eval` reads (restartable)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from synseg.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from synseg.data.prepare import PREPARERS

    parser.add_argument("name", choices=list(PREPARERS), metavar="NAME", help=f"one of {', '.join(PREPARERS)}")
    parser.add_argument("--from", dest="source", required=True, metavar="DOWNLOADS",
                        help="folder holding the downloads, extracted: " + "; ".join(
                            f"{name}: {cls.downloads}" for name, cls in PREPARERS.items()))
    parser.add_argument("--out", required=True, metavar="ROOT", help="the folder to pass to `synseg eval --root`")
    parser.add_argument("--split", default="val", metavar="val[,train]", help="splits to convert (default: val)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes (default: up to 8)")
    parser.add_argument("--partial", action="store_true",
                        help="accept splits smaller than their official size (a sample, a test); the default fails")


def run(args: argparse.Namespace) -> int:
    from synseg.commands.eval import split_list
    from synseg.data.benchmarks import get_benchmark
    from synseg.data.prepare import PREPARERS, run_tasks
    from synseg.io import ensure_writable_dir, ensure_writable_files

    preparer = PREPARERS[args.name]()
    splits = split_list(args.split, "split", preparer.official)
    source = Path(args.source)
    if not source.is_dir():
        raise UserError(f"--from {source} is not a folder")
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    out = ensure_writable_dir(args.out)
    planned = [(split, *preparer.tasks(source, out, split)) for split in splits]
    ensure_writable_files(target for _, tasks, report in planned for _, target, *_ in [*tasks, *report.lists])
    reports = []
    for split, tasks, report in planned:
        written, skipped = run_tasks(tasks, f"{args.name} {split}", args.workers)
        for function, target, *inputs in report.lists:
            function(target, *inputs)
        print(f"{args.name} {split}: wrote {written} files, {skipped} already there", file=sys.stderr)
        reports.append(report)
    for report in reports:
        print(report.line(args.name))
    if "val" in splits and any(r.split == "val" and r.samples for r in reports):
        benchmark = get_benchmark(preparer.benchmark, out)
        print(f"`synseg eval --benchmark {preparer.benchmark} --root {out}` reads {len(benchmark)} images")
    incomplete = [r for r in reports if not r.complete]
    if incomplete and not args.partial:
        raise UserError(f"{', '.join(r.split for r in incomplete)} incomplete (see above); what is there is converted: "
                        "complete the download and rerun (finished files are skipped), or pass --partial")
    return 0
