"""`synseg segment`: label map, overlay with legend and per-label heat maps for each image."""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import unicodedata
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from synseg.commands.common import (add_method_arguments, add_model_arguments, add_precision_argument, methods_from,
                                   predictors_from, protocols_from)
from synseg.config import write_json
from synseg.errors import UserError
from synseg.io import atomic_path, check_image, ensure_writable_dir, ensure_writable_files, load_image
from synseg.predictor import Segmenter, parse_labels
from synseg.render import heat_map, label_map_image, overlay


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    parser.add_argument("--labels", required=True, help='comma-separated words, e.g. "cat, sofa, rug"')
    parser.add_argument("--out", required=True, help="output folder")
    add_model_arguments(parser)
    add_precision_argument(parser)
    add_method_arguments(parser)
    parser.add_argument("--threshold", type=float, help="background threshold on the best activation (with --background)")
    parser.add_argument("--background", action="store_true", help="add a background class for weak activations")


LABELS, MANIFEST = "labels.json", "manifest.json"
NAME_BYTES = 120  # of a label or image stem inside an output file name: stem + label stay below 255 bytes
NOT_IN_NAMES = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')  # a folder separator, or refused by Windows disks


def file_part(text: str, tagged: bool = False, key: str | None = None) -> str:
    """`text` as part of a file name, unchanged wherever a file system takes it (spaces, any script). A text that
    cannot be a name (a separator, a control character, '..', too long) is made one and gets 8 hex digits of the hash
    of `key` (default `text`), so "a/b" and "a_b" never share a file; `tagged` adds the hash to any text."""
    fits = (text.strip(" .") == text and text not in ("", ".", "..") and not NOT_IN_NAMES.search(text)
            and len(os.fsencode(text)) <= NAME_BYTES)
    if fits and not tagged:
        return text
    safe = NOT_IN_NAMES.sub("_", text).strip(" ._") or "label"
    digest = hashlib.sha1((key or text).encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{os.fsencode(safe)[: NAME_BYTES - 9].decode('utf-8', errors='ignore')}-{digest}"


def same_on_disk(name: str) -> str:
    """The form under which two names are one file on a case-insensitive or normalising disk (macOS, Windows)."""
    return unicodedata.normalize("NFC", name).casefold()


def heat_names(labels: list[str]) -> list[str]:
    """One file-name part per label, distinct even where only letter case tells two labels apart."""
    parts = [file_part(label) for label in labels]
    folded = [same_on_disk(part) for part in parts]
    return [file_part(label, tagged=True) if folded.count(same_on_disk(part)) > 1 else part
            for label, part in zip(labels, parts)]


def image_files(stem: str, labels: list[str], heats: list[str]) -> dict:
    """The files written for one image, as the manifest lists them."""
    return {"label_map": f"{stem}.png", "overlay": f"{stem}.overlay.png",
            "heat_maps": {label: f"{stem}.heat.{heat}.png" for label, heat in zip(labels, heats)}}


def output_files(paths: list[Path], labels: list[str], heats: list[str]) -> list[dict]:
    """Each image's files, named after the image; an image whose files would meet another's (x.jpg and x.png, a/x
    and b/x, or an image named "x.overlay" beside "x") gets the hash of its path in its names instead."""
    stems = [file_part(path.stem) for path in paths]
    files = [image_files(stem, labels, heats) for stem in stems]
    owners = Counter(same_on_disk(name) for entry in files for name in _names(entry))
    for i, entry in enumerate(files):
        if any(owners[same_on_disk(name)] > 1 for name in _names(entry)):
            files[i] = image_files(file_part(paths[i].stem, tagged=True, key=str(paths[i])), labels, heats)
    return files


def _names(entry: dict) -> list[str]:
    return [entry["label_map"], entry["overlay"], *entry["heat_maps"].values()]


def run(args: argparse.Namespace) -> int:
    labels = parse_labels(args.labels)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold must be within [0, 1], got {args.threshold}")
    paths = list(dict.fromkeys(check_image(p) for p in args.images))
    (protocol,) = protocols_from(args)
    methods = methods_from(args)
    out = ensure_writable_dir(args.out)
    heats = heat_names(labels)
    files = output_files(paths, labels, heats)
    ensure_writable_files([out / name for entry in files for name in _names(entry)] + [out / LABELS, out / MANIFEST])
    (predictor,) = predictors_from(args, methods, allow_untrained=True).values()
    segmenter = Segmenter(predictor, protocol, precision=args.precision)
    names = (["background"] if args.background else []) + labels
    for path, entry in tqdm(list(zip(paths, files)), desc="segment", unit="img", disable=len(paths) < 2, file=sys.stderr):
        image = load_image(path)
        result = segmenter.segment(image, labels, threshold=args.threshold, background=args.background)
        for heat, activation in zip(entry["heat_maps"].values(), result.maps):  # one map at a time to the host
            with atomic_path(out / heat) as tmp:
                heat_map(activation.cpu().numpy()).save(tmp, format="PNG")
        with atomic_path(out / entry["overlay"]) as tmp:
            overlay(image, result.label_map, names).save(tmp, format="PNG")
        with atomic_path(out / entry["label_map"]) as tmp:
            label_map_image(result.label_map, len(names)).save(tmp, format="PNG")
    kinds = {"label_map": "palette PNG" if len(names) <= 256 else "16-bit grey PNG", "heat_maps": dict(zip(labels, heats))}
    write_json({"classes": names, "background": args.background, "files": kinds}, out / LABELS)
    write_json({"images": [{"image": str(path), **entry} for path, entry in zip(paths, files)]}, out / MANIFEST)
    print(f"wrote {len(paths)} label map(s), overlays and heat maps to {out} ({MANIFEST} maps images to files)",
          file=sys.stderr)
    return 0
