"""`synseg info`: parameter counts of a checkpoint or a backbone (built without downloading weights)."""
from __future__ import annotations

import argparse
import json

from synseg.commands.common import add_model_arguments
from synseg.methods import build_predictor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    if args.pretrained is None:
        args.pretrained = "none"  # counting parameters needs no weights
    model = build_predictor("synseg", args.checkpoint, args.backbone, args.pretrained, args.device, allow_untrained=True)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    parts = {name: sum(p.numel() for p in module.parameters()) for name, module in model.named_children()}
    info = {
        "backbone": model.config.backbone.name,
        "layers": list(model.backbone.layers),
        "total_params": total,
        "trainable_params": trainable,
        "params_by_part": parts,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"backbone          {info['backbone']} (blocks {', '.join(map(str, info['layers']))})")
        print(f"total params      {total:,} ({total / 1e6:.1f}M)")
        print(f"trainable params  {trainable:,} ({trainable / 1e6:.2f}M)")
        for name, count in parts.items():
            print(f"  {name:<15} {count:,}")
    return 0
