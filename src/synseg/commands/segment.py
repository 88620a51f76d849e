"""`synseg segment`: label map, overlay with legend and per-label heat maps for each image."""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys

from tqdm import tqdm

from synseg.commands.common import (add_method_arguments, add_model_arguments, add_precision_argument, build_predictors,
                                   protocols_from)
from synseg.errors import UserError
from synseg.io import atomic_path, check_image, ensure_writable_dir, load_image
from synseg.predictor import Segmenter, parse_labels
from synseg.render import heat_map, label_map_image, overlay


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    parser.add_argument("--labels", required=True, help='comma-separated words, e.g. "cat, sofa, rug"')
    parser.add_argument("--out", required=True, help="output folder")
    add_model_arguments(parser)
    add_precision_argument(parser)
    add_method_arguments(parser)
    parser.add_argument("--views", type=int, choices=(1, 5), default=5,
                        help="views of the synseg protocol: 5 = whole image + 4 quadrants (default)")
    parser.add_argument("--threshold", type=float, help="background threshold on the best activation (with --background)")
    parser.add_argument("--background", action="store_true", help="add a background class for weak activations")


NAME_BYTES = 64  # of a label or image stem inside an output file name: every name stays far below 255 bytes


def file_part(text: str, tagged: bool = False) -> str:
    """`text` as part of a file name: letters (any script), digits, '.', '-' and '_' kept, at most NAME_BYTES bytes.
    A text that had to change gets 8 hex digits of its hash, so "a/b" and "a b", or "Cat" and "cat" on a
    case-insensitive disk, never share a file (`tagged` adds the hash to an unchanged text too)."""
    safe = re.sub(r"[^\w.-]+", "_", text).strip("_.") or "label"
    if safe == text and len(safe.encode()) <= NAME_BYTES and not tagged:
        return safe
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe.encode()[: NAME_BYTES - 9].decode(errors='ignore')}-{digest}"


def heat_names(labels: list[str]) -> list[str]:
    """One file-name part per label, distinct even where only letter case tells two labels apart."""
    parts = [file_part(label) for label in labels]
    folded = [part.casefold() for part in parts]
    return [file_part(label, tagged=True) if folded.count(part.casefold()) > 1 else part for label, part in zip(labels, parts)]


def run(args: argparse.Namespace) -> int:
    labels = parse_labels(args.labels)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold must be within [0, 1], got {args.threshold}")
    paths = [check_image(p) for p in args.images]
    stems = [file_part(p.stem) for p in paths]
    clashing = sorted({s for s in stems if [x.casefold() for x in stems].count(s.casefold()) > 1})
    if clashing:
        raise UserError(f"several images are named {clashing[0]}; their outputs would overwrite each other")
    (protocol,) = protocols_from(args)
    out = ensure_writable_dir(args.out)
    (predictor,) = build_predictors(args, [args.method]).values()
    segmenter = Segmenter(predictor, precision=args.precision)
    names = (["background"] if args.background else []) + labels
    heats = heat_names(labels)
    for path, stem in tqdm(list(zip(paths, stems)), desc="segment", unit="img", disable=len(paths) < 2, file=sys.stderr):
        image = load_image(path)
        result = segmenter.segment(image, labels, threshold=args.threshold, background=args.background, protocol=protocol)
        for heat, activation in zip(heats, result.maps):  # one map at a time to the host
            with atomic_path(out / f"{stem}.heat.{heat}.png") as tmp:
                heat_map(activation.cpu().numpy()).save(tmp, format="PNG")
        with atomic_path(out / f"{stem}.overlay.png") as tmp:
            overlay(image, result.label_map, names).save(tmp, format="PNG")
        with atomic_path(out / f"{stem}.png") as tmp:
            label_map_image(result.label_map, len(names)).save(tmp, format="PNG")
    with atomic_path(out / "labels.json") as tmp:
        files = {"label_map": "palette PNG" if len(names) <= 256 else "16-bit grey PNG", "heat_maps": dict(zip(labels, heats))}
        tmp.write_text(json.dumps({"classes": names, "background": args.background, "files": files},
                                  indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(paths)} label map(s), overlays and heat maps to {out}", file=sys.stderr)
    return 0
