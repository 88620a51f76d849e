"""The `synseg` command. Each subcommand lives in `synseg.commands.<name>` and is imported only when used."""
from __future__ import annotations

import argparse
import importlib
import sys

from synseg.errors import UserError

COMMANDS = {
    "demo": "Segment generated scenes with the small model shipped inside synseg: figure and mIoU, no download.",
    "segment": "Segment images with any list of words.",
    "app": "A local web page to segment an image with any labels (gradio); no checkpoint: the shipped world model.",
    "info": "Print parameter counts of a model or checkpoint.",
    "train": "Train SynSeg from images and their noun phrases (one GPU, many with torchrun, or CPU).",
    "prepare": "Turn a benchmark's official downloads into the layout `synseg eval` reads.",
    "eval": "mIoU on the standard benchmarks (VOC, Context, Object, Stuff, City, ADE) for any method.",
    "world": "Run the whole method in the synthetic world: SynSeg vs ablations, MaskCLIP, supervised, chance.",
    "phrases": "Extract the noun phrases of training captions (spaCy) into PHRASES.jsonl.",
    "bench": "Latency, FPS, memory and FLOP bound of SynSeg beside CLIPSeg and MaskCLIP on this machine.",
    "viz": "Figures: activation map and masks at several thresholds (Fig. 3), overlays, comparison grids.",
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synseg", description="Open-vocabulary semantic segmentation (SynSeg).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            importlib.import_module(f"synseg.commands.{name}").add_arguments(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    module = importlib.import_module(f"synseg.commands.{args.command}")
    try:
        return module.run(args) or 0
    except UserError as error:
        print(f"synseg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        sys.stderr.close()  # output piped into `head` and the like: stop quietly
        return 0
    except KeyboardInterrupt:
        print(f"synseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
