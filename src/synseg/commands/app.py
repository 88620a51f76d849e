"""`synseg app`: a local web page to segment an image with any labels (gradio). Without a checkpoint it runs the small
world model shipped inside synseg on generated scenes, so it works with no download."""
from __future__ import annotations

import argparse
import sys

from synseg.commands.common import add_model_arguments
from synseg.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: reachable from other machines)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")


def setup_from_args(args: argparse.Namespace):
    """SynSeg (a --checkpoint, else the shipped world model) and every training-free method `synseg eval` offers."""
    from synseg.app import AppSetup
    from synseg.commands.common import build_predictors
    from synseg.methods import method_names, parse_method
    from synseg.predictor import Segmenter

    world = not args.checkpoint and not args.backbone
    if world:
        from synseg.research.world.experiment import WorldConfig
        from synseg.synthetic import SHIPPED_CLIP, SHIPPED_DEMO

        args.checkpoint, args.pretrained = str(SHIPPED_DEMO), args.pretrained or str(SHIPPED_CLIP)
    choices = [parse_method(name) for name in method_names() if name != "synseg" or args.checkpoint]
    predictors = build_predictors(args, choices)
    segmenters = {f"{c.title} (training-free)" if c.training_free else c.title: Segmenter(p) for c, p in predictors.items()}
    threshold = next(iter(predictors.values())).background_threshold
    if world:
        from synseg.app import world_scene

        _, labels = world_scene(0, WorldConfig.scene_size)
        return AppSetup("the world model shipped with synseg (generated scenes)", segmenters, labels, WorldConfig.views,
                        scene_size=WorldConfig.scene_size, threshold=threshold)
    from importlib import resources

    example = resources.files("synseg").joinpath("assets", "aeroplane.jpg")
    return AppSetup(args.checkpoint or f"{args.backbone} (training-free only)", segmenters, "aeroplane, sky, grass", 5,
                    [example], threshold=threshold)


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the page needs gradio: pip install 'synseg[app]'") from None
    from synseg.app import build_app

    app = build_app(setup_from_args(args))
    print(f"synseg app: serving on http://{args.host}:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    app.launch(server_name=args.host, server_port=args.port, show_error=True)
    return 0
