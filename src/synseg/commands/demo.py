"""`synseg demo`: the checkpoint shipped inside synseg segments freshly generated world scenes; figure and mIoU, no download."""
from __future__ import annotations

import argparse
import sys

from synseg.errors import UserError

SCENE_SEED = 20_000  # the experiment's worlds use seeds 1 (train) and 10_001 (test): demo scenes are new to the model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo", help="folder for the scenes, demo.png and scores.json (default: demo/)")
    parser.add_argument("--scenes", type=int, default=24, help="scenes to generate and score (default 24)")
    parser.add_argument("--show", type=int, default=4, help="scenes drawn in demo.png (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="which scenes to generate (default 0)")
    parser.add_argument("--checkpoint", help="a checkpoint trained by `synseg world` to show instead of the shipped one")


def run(args: argparse.Namespace) -> int:
    from synseg.config import write_json
    from synseg.data.benchmarks import get_benchmark
    from synseg.eval.evaluator import segmenter_predict
    from synseg.io import ensure_writable_dir
    from synseg.methods import build_predictors, showcase_methods
    from synseg.predictor import Segmenter
    from synseg.research.world.experiment import chance_counts, per_class_iou, scene_counts, summarise, table
    from synseg.synthetic import BACKDROP, PROTOCOL, SCENE_SIZE, SHIPPED_CLIP, SHIPPED_DEMO
    from synseg.synthetic.world import write_split
    from synseg.viz import benchmark_grid_rows, grid_figure, require_matplotlib, save_figure

    require_matplotlib()
    if args.scenes < 1 or not 1 <= args.show <= args.scenes:
        raise UserError(f"need --scenes >= 1 and 1 <= --show <= --scenes, got --scenes {args.scenes} --show {args.show}")
    out = ensure_writable_dir(args.out)
    scenes = write_split(out / f"scenes-seed{args.seed}", args.scenes, SCENE_SEED + args.seed, "test",
                         SCENE_SIZE, BACKDROP)
    checkpoint, pretrained = (args.checkpoint, None) if args.checkpoint else (str(SHIPPED_DEMO), str(SHIPPED_CLIP))
    predictors = build_predictors(showcase_methods(), checkpoint, pretrained=pretrained, distinct=True)
    benchmark = get_benchmark("folder", scenes)
    segmenters = {(c.title if not c.spec.training_free else f"{c.title} (training-free, same CLIP)"):
                  Segmenter(predictor, PROTOCOL) for c, predictor in predictors.items()}
    training_free = [name for c, name in zip(predictors, segmenters) if c.spec.training_free]
    counts = {name: scene_counts(benchmark, segmenter_predict(segmenter, benchmark))
              for name, segmenter in segmenters.items()}
    counts["Chance (uniform random labels)"] = chance_counts(scenes, args.seed)
    scores = {name: summarise(per_class_iou(scene.sum(axis=0))) for name, scene in counts.items()}
    write_json(scores, out / "scores.json")

    # beside SynSeg, the strongest training-free row on things
    synseg = next(iter(segmenters))
    baseline = max(training_free, key=lambda name: scores[name]["things"])
    shown = [segmenters[synseg], segmenters[baseline]]
    rows = benchmark_grid_rows(benchmark, shown, benchmark.samples[: args.show])
    figure = save_figure(grid_figure(rows, [synseg, baseline.split(" (")[0]], list(benchmark.class_names()),
                                      benchmark.has_background, alpha=0.85), out / "demo.png")
    print(table({name: {key: [value] for key, value in row.items()} for name, row in scores.items()}))
    print(f"\n(mIoU % over {args.scenes} generated scenes; figure: {figure}; scenes: {scenes}; scores: {out / 'scores.json'})")
    if not args.checkpoint:
        print("The shipped model is synseg train's default recipe (docs/world.md: a correction of the frozen CLIP's "
              "per-token readout learned from the synthetic world's captions for 1,200 iterations, segmenting with "
              "region verification); its CLIP is the 7.8M-parameter world CLIP.", file=sys.stderr)
    return 0
