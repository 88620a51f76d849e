"""`synseg segment`: label map, overlay with legend and per-label heat maps for each image."""
from __future__ import annotations

import argparse
import json
import re
import sys

from tqdm import tqdm

from synseg.commands.common import add_method_arguments, add_model_arguments, build_predictors, protocols_from
from synseg.errors import UserError
from synseg.io import atomic_path, check_image, ensure_writable_dir, load_image
from synseg.predictor import Segmenter, parse_labels
from synseg.render import heat_map, label_map_image, overlay


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    parser.add_argument("--labels", required=True, help='comma-separated words, e.g. "cat, sofa, rug"')
    parser.add_argument("--out", required=True, help="output folder")
    add_model_arguments(parser)
    add_method_arguments(parser)
    parser.add_argument("--views", type=int, choices=(1, 5), default=5,
                        help="views of the synseg protocol: 5 = whole image + 4 quadrants (default)")
    parser.add_argument("--threshold", type=float, help="background threshold on the best activation (with --background)")
    parser.add_argument("--background", action="store_true", help="add a background class for weak activations")


def safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "label"


def run(args: argparse.Namespace) -> int:
    labels = parse_labels(args.labels)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold must be within [0, 1], got {args.threshold}")
    paths = [check_image(p) for p in args.images]
    stems = [p.stem for p in paths]
    clashing = sorted({s for s in stems if stems.count(s) > 1})
    if clashing:
        raise UserError(f"several images are named {clashing[0]}; their outputs would overwrite each other")
    out = ensure_writable_dir(args.out)
    (protocol,) = protocols_from(args)
    (predictor,) = build_predictors(args, [args.method]).values()
    segmenter = Segmenter(predictor)
    names = (["background"] if args.background else []) + labels
    for path in tqdm(paths, desc="segment", unit="img", disable=len(paths) < 2, file=sys.stderr):
        image = load_image(path)
        result = segmenter.segment(image, labels, threshold=args.threshold, background=args.background, protocol=protocol)
        for label, activation in zip(labels, result.activations):
            with atomic_path(out / f"{path.stem}.heat.{safe_name(label)}.png") as tmp:
                heat_map(activation).save(tmp, format="PNG")
        with atomic_path(out / f"{path.stem}.overlay.png") as tmp:
            overlay(image, result.label_map, names).save(tmp, format="PNG")
        with atomic_path(out / f"{path.stem}.png") as tmp:
            label_map_image(result.label_map).save(tmp, format="PNG")
    with atomic_path(out / "labels.json") as tmp:
        tmp.write_text(json.dumps({"classes": names, "background": args.background}, indent=2) + "\n")
    print(f"wrote {len(paths)} label map(s), overlays and heat maps to {out}", file=sys.stderr)
    return 0
