"""`synseg eval`: mIoU on the standard benchmarks for any registered methods under any protocols, in one pass over
the images, or for any method's saved label maps."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from synseg.card import write_evaluation
from synseg.commands.common import (add_method_arguments, add_model_arguments, add_precision_argument, predictors_from,
                                   protocols_from)
from synseg.data.benchmarks import BENCHMARKS, Benchmark, benchmark_class, get_benchmark
from synseg.distributed import init_distributed
from synseg.errors import UserError
from synseg.eval.evaluator import (EvalResult, PredictionFolder, evaluate, evaluate_many, markdown_table,
                                   segmenter_predict, split)
from synseg.methods import parse_methods, resolve_device
from synseg.io import atomic_path, ensure_writable_file, read_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, metavar="NAME[,NAME...]",
                        help=f"benchmarks to score: {', '.join(BENCHMARKS)}")
    parser.add_argument("--root", action="append", default=[], metavar="DIR|NAME=DIR",
                        help="folder holding the benchmark layouts (for object and stuff: the folder holding images/ "
                             "and annotations/); repeat NAME=DIR to give one benchmark its own folder")
    parser.add_argument("--predictions", metavar="DIR",
                        help="score saved label maps instead of running a model: DIR/<image stem>.png holding class "
                             "indices in --list-classes order, 255 = no prediction (DIR/<benchmark>/ for several)")
    add_model_arguments(parser)
    add_precision_argument(parser)
    add_method_arguments(parser, several=True)
    parser.add_argument("--threshold", type=float,
                        help="background threshold on the best probability for VOC and Object (default: each method's own)")
    parser.add_argument("--class-names", action="append", default=[], metavar="FILE|NAME=FILE",
                        help="one line per class, several names separated by commas (a class scores the best of its "
                             "names), in --list-classes order without background; a first line for background makes it "
                             "a class of its own as in SCLIP's files; repeat NAME=FILE for several benchmarks")
    parser.add_argument("--limit", type=int, metavar="N", help="score only the first N images of each split")
    parser.add_argument("--json", metavar="FILE", help="also write mIoU, pixel accuracy and per-class IoU here")
    parser.add_argument("--card", action="store_true",
                        help="write the table into the --checkpoint folder's model card (README.md)")
    parser.add_argument("--list-classes", action="store_true",
                        help="print each benchmark's class indices and names (the order --predictions uses) and exit")


def split_list(text: str, what: str, choices) -> list[str]:
    names = [name.strip().lower() for name in text.split(",")]
    if not all(names):
        raise UserError(f"{what} must be a comma-separated list with no empty entries")
    unknown = [name for name in names if name not in choices]
    if unknown:
        raise UserError(f"unknown {what} '{unknown[0]}' (choose from {', '.join(choices)})")
    return list(dict.fromkeys(names))


def list_classes(names: list[str], roots: list[str]) -> None:
    for name in names:
        if len(names) > 1:
            print(f"# {name}")
        source = get_benchmark(name, roots_by_benchmark(roots, [name])[name]) if name == "folder" else benchmark_class(name)
        for index, class_name in enumerate(source.class_names()):
            print(f"{index}\t{class_name}")


def roots_by_benchmark(entries: list[str], names: list[str]) -> dict[str, Path]:
    """`DIR` applies to every benchmark, `NAME=DIR` to one; each requested benchmark needs one of the two."""
    default, specific = None, {}
    for entry in entries:
        name, sep, folder = entry.partition("=")
        if sep and name in BENCHMARKS:
            specific[name] = Path(folder)
        else:
            default = Path(entry)
    missing = [name for name in names if name not in specific and default is None]
    if missing:
        raise UserError(f"--root is required (the folder holding the {', '.join(missing)} layout)")
    return {name: specific.get(name, default) for name in names}


def check_arguments(args: argparse.Namespace) -> list:
    """Reject contradictory or out-of-range options before any slow work; returns the methods to run."""
    if args.predictions:
        for option, value in (("--checkpoint", args.checkpoint), ("--method", args.method),
                              ("--threshold", args.threshold), ("--protocol", args.protocol),
                              ("--class-names", args.class_names or None), ("--pamr", args.pamr or None)):
            if value is not None:
                raise UserError(f"{option} runs a model; --predictions scores saved label maps: use one or the other")
        methods = []
    else:
        methods = parse_methods(args.method or "synseg")
        needs = [m for m in methods if m.spec.needs_checkpoint]
        if needs and not args.checkpoint:
            raise UserError(f"--method {needs[0]} needs --checkpoint (or score saved label maps with --predictions)")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold must be within [0, 1], got {args.threshold}")
    if args.card and not (args.checkpoint and Path(args.checkpoint).is_dir()):
        raise UserError("--card writes into a local --checkpoint folder's README.md; none was given")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    return methods


def class_name_files(entries: list[str], benchmarks: dict[str, Benchmark]) -> dict[str, tuple[list, tuple[str, ...]]]:
    """Per benchmark: its prompt labels (each a tuple of names) and background's names (empty: by threshold alone)."""
    files = roots_by_benchmark(entries, list(benchmarks)) if entries else {}
    out = {}
    for name, path in files.items():
        benchmark = benchmarks[name]
        if not path.is_file():
            raise UserError(f"--class-names file not found: {path}")
        lines = [line for line in read_text(path, "--class-names file").splitlines() if line.strip()]
        classes = [tuple(n.strip() for n in line.split(",") if n.strip()) for line in lines]
        labels = benchmark.prompt_labels()
        if len(classes) == len(labels):
            out[name] = (classes, ())
        elif benchmark.has_background and len(classes) == len(labels) + 1:
            out[name] = (classes[1:], classes[0])
        else:
            expected = f"{len(labels)}" + (f" (or {len(labels) + 1} with background first)" if benchmark.has_background else "")
            raise UserError(f"--class-names {path} has {len(classes)} classes but {name} has {expected}")
    return out


def prediction_folders(folder: Path, benchmarks: dict[str, Benchmark], limit: int | None) -> dict[str, PredictionFolder]:
    """DIR/<benchmark>/ when it exists (required for several benchmarks), else DIR itself."""
    folders = {}
    for name, benchmark in benchmarks.items():
        own = folder / name
        if len(benchmarks) > 1 and not own.is_dir():
            raise UserError(f"with several benchmarks, predictions go in one folder each: {own} not found")
        folders[name] = PredictionFolder(own if own.is_dir() else folder, split(benchmark, limit), benchmark.num_classes())
    return folders


def command_line(args: argparse.Namespace) -> str:
    """The scoring options of this run, as a command to put beside its figures."""
    words = ["synseg eval", f"--benchmark {args.benchmark}", "--root DATA", f"--checkpoint {Path(args.checkpoint).name}"]
    for option in ("method", "protocol", "threshold", "limit", "backbone", "pretrained"):
        value = getattr(args, option)
        if value is not None:
            words.append(f"--{option} {value}")
    return " ".join(words)


def run(args: argparse.Namespace) -> int:
    names = split_list(args.benchmark, "benchmark", BENCHMARKS)
    if args.list_classes:
        list_classes(names, args.root)
        return 0
    methods = check_arguments(args)
    ranks = init_distributed(resolve_device(args.device))  # world 1 unless started by torchrun
    roots = roots_by_benchmark(args.root, names)
    benchmarks = {name: get_benchmark(name, roots[name]) for name in names}
    if args.json:
        ensure_writable_file(args.json)
    results: list[EvalResult] = []
    if args.predictions:
        folder = Path(args.predictions)
        folders = prediction_folders(folder, benchmarks, args.limit)
        row = folder.resolve().name
        for name, benchmark in benchmarks.items():
            results.append(evaluate(benchmark, folders[name], row, args.limit))
    else:
        results = run_methods(args, methods, benchmarks)
    if not ranks.main:
        return 0
    table = markdown_table(results)
    print(table)
    if args.card:
        print(f"wrote {write_evaluation(Path(args.checkpoint), table, command_line(args))}", file=sys.stderr)
    if args.json:
        settings = {key: getattr(args, key) for key in ("checkpoint", "predictions", "backbone", "pretrained", "precision",
                                                        "threshold", "limit", "pamr", "class_names")}
        settings["methods"] = [str(m) for m in methods]
        settings["protocols"] = [] if args.predictions else [p.describe() for p in protocols_from(args, several=True)]
        settings["roots"] = {name: str(root) for name, root in roots.items()}
        report = {"units": "percent", "table": table, "settings": settings, "results": [r.to_json() for r in results]}
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def run_methods(args: argparse.Namespace, methods: list, benchmarks: dict[str, Benchmark]) -> list[EvalResult]:
    """Every (method, protocol) row on every benchmark, each image read once per benchmark for all rows; rows ordered
    by method, then protocol."""
    from synseg.predictor import Segmenter

    protocols = protocols_from(args, several=True)
    names = class_name_files(args.class_names, benchmarks)
    predictors = predictors_from(args, methods)
    results: list[EvalResult] = []
    for name, benchmark in benchmarks.items():
        labels, background = names.get(name, (None, ()))
        predicts = {(method.title, protocol.describe()): segmenter_predict(
                        Segmenter(predictor, protocol, precision=args.precision), benchmark, args.threshold, labels,
                        background)
                    for protocol in protocols for method, predictor in predictors.items()}
        results += evaluate_many(benchmark, predicts, args.limit)
    rank = {row: i for i, row in enumerate((m.title, p.describe()) for m in methods for p in protocols)}
    return sorted(results, key=lambda r: rank[(r.method, r.protocol)])
