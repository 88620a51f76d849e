"""`synseg world`: run the whole method in the synthetic world and print mIoU beside baselines and ablations."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from synseg.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="experiment folder (world, phrases, cache, runs, report.json); reruns reuse it")
    parser.add_argument("--clip", help="world CLIP weights (default: the one shipped with synseg for the config's "
                                       "held-out set, `unseen`)")
    parser.add_argument("--quick", action="store_true",
                        help="the quick variant (a test): one seed of the previous default recipe, a decoder that "
                             "learns from nothing, on a smaller world vs MaskCLIP vs chance")
    parser.add_argument("--seeds", help="comma-separated training seeds (default 0,1,2)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="processes the table's (seed, row) cells run in, one thread each (default 2; a single "
                             "cell to train trains on every thread; docs/world.md)")
    parser.add_argument("--config", help="JSON file of WorldConfig fields to override, e.g. {\"model\": {\"pool_source\": "
                                         "\"unconditional\"}} (merged over the --quick settings when both are given)")


def run(args: argparse.Namespace) -> int:
    from synseg.config import from_dict, read_json
    from synseg.research.world.experiment import QUICK, WorldConfig, run_experiment
    from synseg.synthetic import DEFAULT_UNSEEN, SHIPPED_CLIP, SHIPPED_CLIPS

    overrides = read_json(args.config) if args.config else {}
    if not isinstance(overrides, dict):
        raise UserError(f"{args.config}: expected a JSON object of WorldConfig fields")
    clip = args.clip or str(SHIPPED_CLIPS.get(overrides.get("unseen", DEFAULT_UNSEEN), SHIPPED_CLIP))
    if not Path(clip).is_file():
        raise UserError(f"world CLIP weights not found: {clip}")
    config = from_dict(WorldConfig, {"clip": clip, **(QUICK if args.quick else {}), **overrides}, "world config")
    if args.seeds is not None:
        try:
            config = dataclasses.replace(config, seeds=tuple(int(s) for s in args.seeds.split(",")))
        except ValueError:
            raise UserError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    report = run_experiment(config, Path(args.out), args.jobs)
    print(report["table"])
    print(f"\n(mIoU %, mean ± std over seeds {', '.join(map(str, config.seeds))}; {report['minutes']} min; {args.out}/report.json)")
    return 0
