"""`synseg viz`: the paper's Fig. 3 (one label's activation map and the masks at thresholds 0.1-0.6), overlays with a
legend, and comparison grids of a benchmark's images (image | ground truth | each --method)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from synseg.commands.common import add_method_arguments, add_model_arguments, methods_from, predictors_from, protocols_from
from synseg.errors import UserError
from synseg.io import ensure_writable_file, load_image
from synseg.predictor import Segmenter, parse_labels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    figures = parser.add_subparsers(dest="figure", required=True, metavar="FIGURE")

    fig3 = figures.add_parser("fig3", help="one label's activation map and the segmentation at several thresholds")
    fig3.add_argument("image", metavar="IMAGE")
    fig3.add_argument("--labels", required=True, help='comma-separated words, e.g. "person, taxi, road"')
    fig3.add_argument("--label", help="whose activation map to show (default: the first label)")
    fig3.add_argument("--thresholds", default="0.1,0.2,0.3,0.4,0.5,0.6",
                      help="background thresholds, one panel each (default 0.1,...,0.6)")
    _common(fig3)

    overlay = figures.add_parser("overlay", help="one image's segmentation over it, with a legend")
    overlay.add_argument("image", metavar="IMAGE")
    overlay.add_argument("--labels", required=True, help='comma-separated words, e.g. "cat, sofa, rug"')
    overlay.add_argument("--background", action="store_true", help="add a background class for weak activations")
    overlay.add_argument("--threshold", type=float, help="background threshold (with --background)")
    _common(overlay)

    grid = figures.add_parser("grid", help="benchmark images: image | ground truth | each method (default SynSeg, MaskCLIP)")
    grid.add_argument("--benchmark", required=True, help="voc, context, object, stuff, city or ade")
    grid.add_argument("--root", required=True, help="folder holding the benchmark's layout")
    grid.add_argument("--limit", type=int, default=4, help="how many images, first of the split (default 4)")
    grid.add_argument("--threshold", type=float, help="background threshold for benchmarks with background")
    _common(grid, several=True, default=GRID_METHODS)


GRID_METHODS = "synseg,maskclip"


def _common(parser: argparse.ArgumentParser, several: bool = False, default: str = "synseg") -> None:
    parser.add_argument("--out", required=True, help="the PNG to write")
    add_model_arguments(parser)
    add_method_arguments(parser, several=several, default=default)


def _segmenter(args: argparse.Namespace) -> Segmenter:
    """The one --method's Segmenter under the --protocol."""
    (protocol,) = protocols_from(args)
    (predictor,) = predictors_from(args, methods_from(args), allow_untrained=True).values()
    return Segmenter(predictor, protocol)


def _fraction(value: float | None, option: str) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise UserError(f"{option} must be within [0, 1], got {value}")


def _out(path: str) -> Path:
    if not path.lower().endswith(".png"):
        raise UserError(f"--out must name a .png file, got {path}")
    return ensure_writable_file(path)


def run_fig3(args: argparse.Namespace):
    from synseg.viz import fig3_figure, threshold_label_maps

    labels = parse_labels(args.labels)
    label = (args.label or labels[0]).strip()
    if label not in labels:
        raise UserError(f"--label '{label}' is not one of --labels")
    try:
        thresholds = tuple(float(v) for v in args.thresholds.split(","))
    except ValueError:
        raise UserError(f"--thresholds must be comma-separated numbers, got '{args.thresholds}'") from None
    for value in thresholds:
        _fraction(value, "--thresholds")
    image = load_image(args.image)
    activations = _segmenter(args).activations(image, labels).cpu().numpy()
    return fig3_figure(image, activations[labels.index(label)], label, threshold_label_maps(activations, thresholds),
                       thresholds, ["background", *labels])


def run_overlay(args: argparse.Namespace):
    from synseg.viz import overlay_figure

    labels = parse_labels(args.labels)
    _fraction(args.threshold, "--threshold")
    image = load_image(args.image)
    segmenter = _segmenter(args)
    result = segmenter.segment(image, labels, threshold=args.threshold, background=args.background)
    names = (["background"] if args.background else []) + labels
    return overlay_figure(image, result.label_map, names, args.background, title=str(methods_from(args)[0]))


def run_grid(args: argparse.Namespace):
    from synseg.data.benchmarks import get_benchmark
    from synseg.viz import benchmark_grid_rows, grid_figure

    _fraction(args.threshold, "--threshold")
    if args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    benchmark = get_benchmark(args.benchmark, args.root)
    (protocol,) = protocols_from(args)
    predictors = predictors_from(args, methods_from(args, GRID_METHODS, several=True))
    segmenters = {method.title: Segmenter(predictor, protocol) for method, predictor in predictors.items()}
    samples = tqdm(benchmark.samples[: args.limit], desc="grid", unit="img", file=sys.stderr)
    rows = benchmark_grid_rows(benchmark, list(segmenters.values()), samples, args.threshold)
    return grid_figure(rows, list(segmenters), list(benchmark.class_names()), benchmark.has_background)


def run(args: argparse.Namespace) -> int:
    from synseg.viz import require_matplotlib, save_figure

    require_matplotlib()  # before any slow model loading
    out = _out(args.out)
    figure = {"fig3": run_fig3, "overlay": run_overlay, "grid": run_grid}[args.figure](args)
    print(f"wrote {save_figure(figure, out)}", file=sys.stderr)
    return 0
