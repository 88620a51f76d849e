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
    group.add_argument("--checkpoint", help="a trained synseg checkpoint folder (or its model.safetensors)")
    group.add_argument("--backbone", help="open_clip model name or architecture .json (default: the checkpoint's, else ViT-B-16)")
    group.add_argument("--pretrained", help="open_clip pretrained tag, a local CLIP weights file, or 'none' for random weights")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (default) or bf16 autocast (GPUs with bf16; activation maps stay fp32)")


def resolve_device(name: str) -> torch.device:
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


def build_predictors(args: argparse.Namespace, methods: list[str]) -> dict[str, object]:
    """One dense predictor per method ("synseg", "maskclip"); MaskCLIP shares the SynSeg model's backbone when one is
    built (a --checkpoint, or SynSeg asked for), else runs on --backbone/--pretrained alone."""
    from synseg.eval.maskclip import MaskCLIP, build_maskclip

    model = build_model(args) if args.checkpoint or "synseg" in methods else None
    predictors: dict[str, object] = {}
    for method in methods:
        if method == "synseg":
            predictors[method] = model
        elif model is not None:
            predictors[method] = MaskCLIP(model.backbone)
        else:
            config = BackboneConfig(name=args.backbone or "ViT-B-16", pretrained=args.pretrained or "openai")
            predictors[method] = build_maskclip(config).to(resolve_device(args.device)).eval()
    return predictors
