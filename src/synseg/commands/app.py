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


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the page needs gradio: pip install 'synseg[app]'") from None
    from synseg.app import build_app, build_setup

    app = build_app(build_setup(args.checkpoint, args.backbone, args.pretrained, args.device))
    print(f"synseg app: serving on http://{args.host}:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    app.launch(server_name=args.host, server_port=args.port, show_error=True)
    return 0
