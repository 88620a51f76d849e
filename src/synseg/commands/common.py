"""Arguments shared by the commands that run a method (segment, eval, viz, app, info, bench), and their translation
into the library's plain arguments."""
from __future__ import annotations

import argparse
import sys

from synseg.errors import UserError
from synseg.predictor import PRECISIONS


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--checkpoint", help="a trained synseg checkpoint: its folder (or model.safetensors), or a "
                       "Hugging Face hub id org/name[@revision]")
    group.add_argument("--backbone", help="open_clip model name or architecture .json (default: the checkpoint's, else ViT-B-16)")
    group.add_argument("--pretrained", help="open_clip pretrained tag, a local CLIP weights file, or 'none' for random "
                                            "weights (CLIPSeg: a local folder of its weights)")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (default) or bf16 autocast (GPUs with bf16; activation maps stay fp32)")


def add_method_arguments(parser: argparse.ArgumentParser, several: bool = False, default: str = "synseg") -> None:
    """--method, --protocol and --pamr, the same for every command that runs a method. Both default to None when a
    command must tell "not given" apart (eval, whose --predictions runs no method); None means `default` and the
    default protocol."""
    from synseg.methods import list_methods
    from synseg.protocols import DEFAULT_PROTOCOL, PROTOCOL_NAMES

    many = ",..." if several else ""
    parser.add_argument("--method", default=None, metavar="NAME[:PRESET]" + many,
                        help=f"{', '.join(list_methods())} (default {default}); synseg needs --checkpoint, the "
                             "training-free methods only CLIP weights; :PRESET picks one of a method's published "
                             "defaults, e.g. sclip:voc")
    parser.add_argument("--protocol", default=None, metavar="NAME" + many,
                        help=f"{', '.join(PROTOCOL_NAMES)} or slide:SHORT/WINDOW/STRIDE (default {DEFAULT_PROTOCOL}: the "
                             "whole image and its 4 quadrants at the backbone's size; whole: the whole image alone; "
                             "see docs/training-free.md)")
    parser.add_argument("--pamr", action="store_true", help="refine each view's or window's maps with PAMR, as TCL does")


def protocols_from(args: argparse.Namespace, several: bool = False) -> list:
    """The --protocol list (one entry unless `several`)."""
    from synseg.protocols import DEFAULT_PROTOCOL, parse_protocols

    protocols = parse_protocols(args.protocol or DEFAULT_PROTOCOL, getattr(args, "pamr", False))
    if len(protocols) > 1 and not several:
        raise UserError("--protocol takes one protocol here")
    return protocols


def methods_from(args: argparse.Namespace, default: str = "synseg", several: bool = False) -> list:
    """The --method list (`default` when not given; one entry unless `several`) as MethodChoices."""
    from synseg.methods import parse_methods

    methods = parse_methods(args.method or default)
    if len(methods) > 1 and not several:
        raise UserError("--method takes one method here")
    return methods


def predictors_from(args: argparse.Namespace, methods: list, allow_untrained: bool = False) -> dict:
    """`synseg.methods.build_predictors` with the model arguments; an untrained SynSeg (allowed) is said so once."""
    from synseg.methods import build_predictors, parse_method

    choices = [parse_method(method) for method in methods]
    predictors = build_predictors(choices, args.checkpoint, args.backbone, args.pretrained, args.device, allow_untrained)
    if not args.checkpoint and any(c.spec.needs_checkpoint for c in choices):
        print("synseg: no --checkpoint given: the decoder is untrained and its masks mean nothing", file=sys.stderr)
    return predictors
