"""The ``facepoints`` commands of the cascade: ``second-stage`` (train a second stage
behind a trained model), ``bench-cascade`` (the cascade against its first stage alone)
and ``label-floor`` (what the labels allow); registered by ``cli.build_parser``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .overrides import parse_override


def _cmd_second_stage(args: argparse.Namespace) -> int:
    from .second_stage import add_second_stage

    results = Path(args.results_dir) / f"{args.name}.json" if args.name else None
    add_second_stage(args.model, args.data_dir, args.out, args.set, threads=args.threads, results=results,
                     holdout=args.holdout, split_seed=args.split_seed, replace=args.replace)
    return 0


def _cmd_bench_cascade(args: argparse.Namespace) -> int:
    from .cascade_bench import bench_cascade

    bench_cascade(args.model, args.data_dir, Path(args.results_dir) / f"{args.name}.json", threads=args.threads,
                  baseline=args.baseline)
    return 0


def _cmd_label_floor(args: argparse.Namespace) -> int:
    from .label_floor import label_floor

    if len(args.model) != 2:
        raise SystemExit("label-floor: give exactly two --model files (networks trained apart)")
    label_floor(args.data_dir, tuple(args.model), Path(args.results_dir) / f"{args.name}.json", threads=args.threads)
    return 0


def add_set(p: argparse.ArgumentParser) -> None:
    """``--set key=value`` (repeatable): recipe overrides, as ``facepoints train`` takes them."""
    p.add_argument("--set", action="append", default=[], type=_override, metavar="KEY=VALUE",
                   help="override a recipe setting, e.g. --set cascade.epochs=12 (repeatable)")


def _override(text: str) -> str:
    try:
        parse_override(text)             # refuses what is not key=value, before any work
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_cascade_commands(sub, default_data: Path) -> None:
    """Add the cascade's sub-commands to the ``facepoints`` parser's ``sub``."""
    p = sub.add_parser("second-stage", help="train the cascade's second stage behind a trained model, on the "
                       "faces it trained on; scored on its validation faces")
    p.add_argument("model", help="the trained first stage (a model file without a second stage)")
    p.add_argument("data_dir", nargs="?", default=str(default_data), help=f"train folder (default {default_data})")
    p.add_argument("--out", required=True, help="the two-stage model file to write")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--holdout", type=int, default=0, help="behind a benchmark's model: its holdout's size, left "
                   "out of training and scored (default 0: none)")
    p.add_argument("--split-seed", type=int, default=0, help="the benchmark's holdout split seed (default 0)")
    p.add_argument("--replace", action="store_true", help="train a new second stage in place of the model's own")
    p.add_argument("--name", default=None, help="results file name (bench/results/NAME.json); none: no file")
    p.add_argument("--results-dir", default="bench/results", help="where the JSON goes (default bench/results)")
    add_set(p)
    p.set_defaults(func=_cmd_second_stage)

    p = sub.add_parser("bench-cascade", help="a two-stage model against its first stage alone, on its validation "
                       "faces: err upright, turned and cut, FLOPs and faces per second, saved as JSON")
    p.add_argument("model", help="a two-stage model file (facepoints second-stage, or a cascade recipe)")
    p.add_argument("data_dir", nargs="?", default=str(default_data), help=f"train folder (default {default_data})")
    p.add_argument("--name", default="cascade", help="results file name (bench/results/NAME.json)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the scoring (speed: 1 thread)")
    p.add_argument("--baseline", default=None, metavar="MODEL",
                   help="another model file (e.g. the one this cascade replaces) scored and timed on the same "
                        "faces in the same run")
    p.add_argument("--results-dir", default="bench/results", help="where the JSON goes (default bench/results)")
    p.set_defaults(func=_cmd_bench_cascade)

    p = sub.add_parser("label-floor", help="the err the labels' own noise sets, estimated from duplicate "
                       "pictures and from two networks' answers, saved as JSON")
    p.add_argument("data_dir", nargs="?", default=str(default_data), help=f"train folder (default {default_data})")
    p.add_argument("--model", action="append", default=[], required=True,
                   help="a model file; give two, trained apart: the first one's validation faces are "
                        "scored, which the second must not have trained on (e.g. a benchmark's model)")
    p.add_argument("--name", default="label-floor", help="results file name (bench/results/NAME.json)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--results-dir", default="bench/results", help="where the JSON goes (default bench/results)")
    p.set_defaults(func=_cmd_label_floor)
