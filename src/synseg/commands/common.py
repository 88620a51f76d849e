"""Arguments and model loading shared by the commands that run a model (segment, eval, info, bench)."""
from __future__ import annotations

import argparse
import sys

import torch

from synseg.errors import UserError
from synseg.models import BackboneConfig, SynSegConfig, build_synseg
from synseg.models.synseg import SynSeg
from synseg.predictor import PRECISIONS


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--checkpoint", help="a trained synseg checkpoint: its folder (or model.safetensors), or a "
                       "Hugging Face hub id org/name[@revision]")
    group.add_argument("--backbone", help="open_clip model name or architecture .json (default: the checkpoint's, else ViT-B-16)")
    group.add_argument("--pretrained", help="open_clip pretrained tag, a local CLIP weights file, or 'none' for random weights")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (default) or bf16 autocast (GPUs with bf16; activation maps stay fp32)")


def resolve_device(name: str) -> torch.device:
    """`auto`: the GPU, else the CPU. Under torchrun, `synseg.distributed.place` makes cuda:LOCAL_RANK the current
    GPU, the one that `cuda` then names."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is available")
    return device


def build_model(args: argparse.Namespace, warn_untrained: bool = True) -> SynSeg:
    """A checkpoint's model, or an untrained one on the chosen backbone (for speed and smoke tests)."""
    from synseg.checkpoint import load_config, load_weights

    if args.checkpoint:
        config = load_config(args.checkpoint)
        if args.backbone and args.backbone != config.backbone.name:
            raise UserError(f"--backbone {args.backbone} differs from the checkpoint's backbone {config.backbone.name}")
    else:
        config = SynSegConfig(backbone=BackboneConfig(name=args.backbone or "ViT-B-16"))
    if args.pretrained is not None:
        config.backbone.pretrained = args.pretrained
    model = build_synseg(config)
    if args.checkpoint:
        load_weights(model, args.checkpoint)
    elif warn_untrained:
        print("synseg: no --checkpoint given: the decoder is untrained and its masks mean nothing", file=sys.stderr)
    return model.to(resolve_device(args.device)).eval()


def add_method_arguments(parser: argparse.ArgumentParser, several: bool = False) -> None:
    """--method, --protocol and --pamr, the same for every command that runs a method."""
    from synseg.methods import method_names
    from synseg.protocols import PROTOCOL_NAMES

    names = ", ".join(method_names())
    parser.add_argument("--method", default=None if several else "synseg", metavar="NAME[:PRESET]" + (",..." if several else ""),
                        help=f"{names} (default synseg, which needs --checkpoint); the training-free methods need only "
                             "CLIP weights; :PRESET picks one of a method's published defaults, e.g. sclip:voc")
    parser.add_argument("--protocol", default=None, metavar="NAME" + (",..." if several else ""),
                        help=f"{', '.join(PROTOCOL_NAMES)} or slide:SHORT/WINDOW/STRIDE (default synseg: 5 views at the "
                             "backbone's size; see docs/training-free.md)")
    parser.add_argument("--pamr", action="store_true", help="refine each view's or window's maps with PAMR, as TCL does")


def protocols_from(args: argparse.Namespace, several: bool = False) -> list:
    """The --protocol list (one entry unless `several`); --views is the synseg protocol's view count."""
    from synseg.protocols import parse_protocols

    protocols = parse_protocols(args.protocol or "synseg", getattr(args, "pamr", False), getattr(args, "views", None))
    if len(protocols) > 1 and not several:
        raise UserError("--protocol takes one protocol here")
    return protocols


def build_predictors(args: argparse.Namespace, methods: list) -> dict:
    """One dense predictor per method (synseg.methods.MethodChoice or its name). The training-free methods share
    the SynSeg model's backbone when one is built (a --checkpoint, or SynSeg asked for), else one backbone loaded from
    --backbone/--pretrained."""
    from synseg.methods import build_training_free, parse_method

    choices = [parse_method(m) if isinstance(m, str) else m for m in methods]
    model = build_model(args) if args.checkpoint or any(not c.training_free for c in choices) else None
    backbone = model.backbone if model is not None else None
    predictors: dict = {}
    for choice in choices:
        if not choice.training_free:
            predictors[choice] = model
            continue
        if backbone is None:
            from synseg.models.backbone import ClipBackbone

            config = BackboneConfig(name=args.backbone or "ViT-B-16", pretrained=args.pretrained or "openai")
            backbone = ClipBackbone(config).to(resolve_device(args.device))
        predictors[choice] = build_training_free(choice, backbone).eval()
    return predictors
