"""The ``facepoints`` command (also ``python -m facepoints_lib``).

Sub-commands: ``demo`` (the main job on synthetic faces), ``train``, ``detect``,
``calibrate``, ``grade``, ``bench``, ``bench-rotation``, ``bench-framing``, ``bench-memory``, ``freeze``,
``synth``, ``make-cut``, ``make-not-faces``, ``jupyter-config``, ``render-docs``. Each has
``--help``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from .cli_cascade import add_cascade_commands
from .cli_framing import add_framing_commands
from .photo_cli import add_photo_commands
from .reference_models import add_reference_commands
from .render_docs import add_docs_command
from .cli_guards import Terminated, check_result_target, interrupted_message, read_names, sigterm_raises

DEFAULT_DATA = Path("data") / "train"
DEBUG_ENV = "FACEPOINTS_DEBUG"         # set: an unexpected error shows its traceback
DEMO_DIR = Path("data") / "synthetic"


def _cmd_train(args: argparse.Namespace) -> int:
    from ..core.config import fast_config, fast_run, full_config, full_run
    from ..core.gt_csv import read_gt
    from ..core.train import train_detector, validation_size
    from .budget import TimeBudget, check_minutes, estimate_reserve_seconds, estimate_step_seconds
    from .overrides import apply_overrides

    started = time.monotonic()                                     # a time budget counts from here
    data = Path(args.data_dir)
    cfg = fast_config(seed=args.seed) if args.fast else full_config(seed=args.seed)
    run = fast_run() if args.fast else full_run()
    apply_overrides(cfg, args.set, run)
    schedule = None
    if args.minutes is not None:
        check_minutes(args.minutes)                                # before any work
        val_faces = validation_size(len(read_gt(data / "gt.csv")), run)
        step_seconds = estimate_step_seconds(cfg, run) if cfg.cascade is not None else None
        schedule = TimeBudget(args.minutes, estimate_reserve_seconds(cfg, run, val_faces), started=started,
                              shares=TimeBudget.stage_shares(cfg, step_seconds)).schedule
    train_detector(data / "gt.csv", data / "images", fast_train=args.fast, config=cfg, run=run,
                   schedule=schedule, model_path=args.out, exclude=read_names(args.exclude))
    return 0


def _cmd_detect(args: argparse.Namespace) -> int:
    from ..core.detect import detect, detect_details
    from ..core.checkpoint import default_model_path
    from ..core.files import check_writable, is_stream_target
    from ..core.gt_csv import write_gt
    from ..core.progress import TextProgress
    from .confidence_report import no_face_warning, write_confidence

    out, model = Path(args.out), Path(args.model) if args.model else default_model_path()
    target = Path(args.img_dir)
    outputs = [("--out", out)] + ([("--confidence", Path(args.confidence))] if args.confidence else [])
    for flag, path in outputs:
        check_writable(path, "output file")                  # before detecting, not after
        check_result_target(path, flag, model, target)
    if args.confidence and not is_stream_target(out) and out.resolve() == Path(args.confidence).resolve():
        raise ValueError("--out and --confidence name the same file")
    folder, names = (target.parent, [target.name]) if target.is_file() else (target, None)  # one picture
    progress = None if target.is_file() else TextProgress
    if args.confidence:
        points, trust = detect_details(model, folder, filenames=names, threads=args.threads,
                                       progress=progress)
        write_confidence(trust, args.confidence)
        warning = no_face_warning(trust)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    else:
        points = detect(model, folder, filenames=names, threads=args.threads, progress=progress)
    write_gt(points, args.out)
    print(f"wrote {len(points)} detection{'s' if len(points) != 1 else ''} to {args.out}"        # stdout may be the output itself
          + (f" and their confidence to {args.confidence}" if args.confidence else ""),
          file=sys.stderr if is_stream_target(out) else sys.stdout)
    return 0


def _cmd_grade(args: argparse.Namespace) -> int:
    from ..core.grader import grader_main

    argv = [str(args.data_dir), "--holdout", str(args.holdout), "--seed", str(args.seed)]
    if args.model:
        argv += ["--model", str(args.model)]
    if args.no_fast_train:
        argv.append("--no-fast-train")
    return grader_main(argv)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench
    from .machine import shown_command

    run_bench(args.data_dir, name=args.name, overrides=args.set, holdout=args.holdout,
              exclude=read_names(args.exclude),
              seed=args.seed, split_seed=args.split_seed, time_fast_train=not args.no_fast_train,
              results_dir=args.results_dir, command=shown_command())
    return 0


def _cmd_bench_rescore(args: argparse.Namespace) -> int:
    from .bench import rescore_bench
    from .machine import shown_command

    rescore_bench(args.name, args.data_dir, model_path=args.model, results_dir=args.results_dir,
                  command=shown_command())
    return 0


def _cmd_bench_rotation(args: argparse.Namespace) -> int:
    from .machine import shown_command
    from .rotation_bench import run_rotation_bench

    run_rotation_bench(args.model, args.data_dir, name=args.name, holdout=args.holdout,
                       split_seed=args.split_seed, results_dir=args.results_dir,
                       command=shown_command())
    return 0


def _cmd_bench_detect(args: argparse.Namespace) -> int:
    from ..core.checkpoint import default_model_path
    from .machine import shown_command
    from .speed import run_detect_bench

    run_detect_bench(args.model or default_model_path(), img_dir=args.img_dir, synthetic=args.synthetic,
                     name=args.name, results_dir=args.results_dir, command=shown_command(),
                     single_look=args.single_look)
    return 0


def _cmd_bench_memory(args: argparse.Namespace) -> int:
    from .machine import shown_command
    from .memory_bench import run_memory_bench

    run_memory_bench(args.data_dir, args.faces, name=args.name, steps=args.steps, threads=args.threads,
                     overrides=args.set, results_dir=args.results_dir, command=shown_command())
    return 0


def _cmd_bench_speed(args: argparse.Namespace) -> int:
    from .machine import shown_command
    from .speed import run_speed_bench

    run_speed_bench(name=args.name, threads=args.threads, seconds=args.seconds,
                    results_dir=args.results_dir, command=shown_command())
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from .speed import profile_training

    print(profile_training(steps=args.steps, threads=args.threads, overrides=args.set, out=args.out))
    return 0


def _cmd_jupyter_config(args: argparse.Namespace) -> int:
    from ..notebook.clean import write_jupyter_config

    print(f"wrote {write_jupyter_config(args.prefix)}: JupyterLab now saves the project's notebooks "
          f"without their outputs")
    return 0


def _cmd_freeze(args: argparse.Namespace) -> int:
    from .freeze import main as freeze_main

    return freeze_main((["--check"] if args.check else []) + (["--out", args.out] if args.out else []))


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synth import make_synthetic_faces

    out = make_synthetic_faces(args.out, args.count, seed=args.seed, progress=True)
    print(f"wrote {args.count} synthetic faces to {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic faces -> train a short recipe -> grade on a holdout, all on the CPU."""
    from ..core.config import full_config, full_run, with_epochs
    from ..core.dataset import split_names
    from .overrides import apply_overrides
    from ..core.grader import grade
    from .synth import make_synthetic_faces
    from ..core.train import train_detector
    from ..core.gt_csv import read_gt

    started = time.monotonic()
    data = Path(args.workdir) / "train"
    if not (data / "gt.csv").is_file():
        print(f"generating {args.count} synthetic faces in {data}")
        make_synthetic_faces(data, args.count, seed=args.seed, progress=True)
    gt = read_gt(data / "gt.csv")
    rest, _ = split_names(sorted(gt), args.holdout, args.seed)
    cfg, run = with_epochs(full_config(seed=args.seed), args.epochs), full_run(val_size=100)  # a second stage
                                                                                          # keeps its share
    apply_overrides(cfg, args.set, run)
    model_path = Path(args.workdir) / "demo_model.pt"
    train_detector({n: gt[n] for n in rest}, data / "images", fast_train=False, config=cfg, run=run,
                   model_path=model_path)
    results = grade(data, model_path, holdout=args.holdout, seed=args.seed)
    print(f"demo done in {time.monotonic() - started:.0f} s: holdout err {results[0]['err']:.3f}, "
          f"mark {results[0]['mark']} (synthetic faces; the course data lives in {DEFAULT_DATA})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="facepoints", description="Facial keypoints: train, detect, grade and benchmark "
                                       "(also run as: python -m facepoints_lib).")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_set(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe setting, e.g. epochs=30, model.head=regression, "
                            "augment.flip_prob=0 (repeatable)")

    p = sub.add_parser("demo", help="main job on synthetic faces: generate, train, grade")
    p.add_argument("--workdir", default=str(DEMO_DIR), help=f"where data and model go (default {DEMO_DIR})")
    p.add_argument("--count", type=int, default=1200, help="synthetic faces to generate")
    p.add_argument("--epochs", type=int, default=12, help="training epochs (of the first stage; a second gets the recipe's share)")
    p.add_argument("--holdout", type=int, default=200, help="faces held out for grading")
    p.add_argument("--seed", type=int, default=0, help="seed of the faces, the split and the training")
    add_set(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "train", help="train on a course train/ folder (gt.csv + images/)",
        description="Train the recipe on a course train/ folder. The full recipe (90 epochs on "
                    "5000 faces) takes about half an hour on a 2-core CPU with native bfloat16 "
                    "(AVX512-BF16 or AMX) and 1.5 to 2 hours on one with AVX2 only (README.md, "
                    "'Speed on your CPU'): "
                    "--minutes trains to a time budget instead. Without --out it overwrites the "
                    "shipped facepoints_model.pt.")
    p.add_argument("data_dir", nargs="?", default=str(DEFAULT_DATA),
                   help=f"train folder (default {DEFAULT_DATA})")
    p.add_argument("--out", default=None,
                   help="model file (default: facepoints_model.pt at the root, overwritten)")
    p.add_argument("--fast", action="store_true", help="the grader's fast_train (writes nothing)")
    p.add_argument("--seed", type=int, default=0, help="training seed (split, initialisation, batches)")
    p.add_argument("--exclude", default=None, metavar="FILE", help="leave out the faces named in FILE, one file name per line (e.g. labels that look wrong, see notebook 01)")
    p.add_argument("--minutes", type=float, default=None,
                   help="time budget for the whole command: the learning rate follows the clock "
                        "and training stops on time, however fast the steps run (it says how many "
                        "epochs the measured step rate gives, and the holdout err the recipe's "
                        "measured curve predicts for them)")
    add_set(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("detect", help="detect keypoints in a folder (or one image), write a gt.csv-format file")
    p.add_argument("img_dir", help="folder of images, or one image file")
    p.add_argument("--model", default=None, help="model file (default: facepoints_model.pt at the root)")
    p.add_argument("--out", default="output.csv",
                   help="output csv (default output.csv); an existing FIFO or device, e.g. /dev/stdout, "
                        "is written through")
    p.add_argument("--confidence", default=None, metavar="CSV",
                   help="also write each picture's expected err and confidence (0-1, 1 = trust it), "
                        "overall and per point, and warn about pictures that look like no face crop")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=_cmd_detect)

    p = sub.add_parser("grade", help="grade locally as the course's run.py does (on a train folder it says how "
                                      "many holdout faces the model trained on)")
    p.add_argument("data_dir", nargs="?", default=str(DEFAULT_DATA),
                   help="course tests folder or train folder")
    p.add_argument("--model", default=None, help="model file (default: facepoints_model.pt at the root)")
    p.add_argument("--holdout", type=int, default=500,
                   help="train folder only: faces held out and detected (default 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the holdout split (default 0)")
    p.add_argument("--no-fast-train", action="store_true",
                   help="skip the grader's fast_train run and only detect with the model")
    p.set_defaults(func=_cmd_grade)

    p = sub.add_parser("bench", help="holdout accuracy and speed benchmark, saved as JSON")
    p.add_argument("data_dir", nargs="?", default=str(DEFAULT_DATA), help=f"train folder (default {DEFAULT_DATA})")
    p.add_argument("--name", default="recipe", help="results file name (bench/results/NAME.json)")
    p.add_argument("--holdout", type=int, default=500, help="faces held out and scored (default 500)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--exclude", default=None, metavar="FILE", help="leave out the faces named in FILE, one file name per line (e.g. labels that look wrong, see notebook 01)")
    p.add_argument("--split-seed", type=int, default=0, help="holdout split seed")
    p.add_argument("--no-fast-train", action="store_true", help="skip timing fast_train")
    p.add_argument("--results-dir", default="bench/results", help="where the JSON goes (default bench/results)")
    add_set(p)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("bench-rescore", help="detect and score a finished benchmark's holdout again with "
                                             "today's detection code, keeping its training figures")
    p.add_argument("name", help="the result to rescore (bench/results/NAME.json)")
    p.add_argument("data_dir", nargs="?", default=str(DEFAULT_DATA), help=f"train folder (default {DEFAULT_DATA})")
    p.add_argument("--model", default=None, help="model file (default artifacts/bench-NAME.pt)")
    p.add_argument("--results-dir", default="bench/results", help="where the JSON is (default bench/results)")
    p.set_defaults(func=_cmd_bench_rescore)

    p = sub.add_parser("bench-rotation", help="err on the holdout turned by quarter turns and by any "
                                              "angle, with and without the second look, saved as JSON")
    p.add_argument("model", help="model file; one trained without the holdout (facepoints bench "
                                 "writes artifacts/bench-NAME.pt) gives honest figures")
    p.add_argument("data_dir", nargs="?", default=str(DEFAULT_DATA), help=f"train folder (default {DEFAULT_DATA})")
    p.add_argument("--name", default="rotation", help="results file name (bench/results/NAME.json)")
    p.add_argument("--holdout", type=int, default=500, help="faces held out, as in bench (default 500)")
    p.add_argument("--split-seed", type=int, default=0, help="holdout split seed, as in bench")
    p.add_argument("--results-dir", default="bench/results", help="where the JSON goes (default bench/results)")
    p.set_defaults(func=_cmd_bench_rotation)

    p = sub.add_parser("bench-detect", help="detect speed (1 thread) and peak memory, saved as JSON")
    p.add_argument("--model", default=None, help="model file (default: facepoints_model.pt at the root)")
    p.add_argument("--img-dir", default=None, help="folder of images (default: synthetic faces)")
    p.add_argument("--synthetic", type=int, default=10_000, help="synthetic faces to generate")
    p.add_argument("--single-look", action="store_true", help="without the second look (its cost)")
    p.add_argument("--name", default=None, help="results file name (default detect-<images>)")
    p.add_argument("--results-dir", default="bench/results", help="where the JSON goes (default bench/results)")
    p.set_defaults(func=_cmd_bench_detect)

    p = sub.add_parser("bench-memory", help="peak memory of a short training against the number of "
                                            "faces, each in a fresh process, saved as JSON")
    p.add_argument("data_dir", nargs="?", default=str(DEFAULT_DATA), help=f"train folder (default {DEFAULT_DATA})")
    p.add_argument("--faces", type=int, nargs="+", default=[2000, 5000, 20000],
                   help="numbers of faces (more than the folder holds: its pictures repeated)")
    p.add_argument("--steps", type=int, default=4, help="training steps per run (default 4)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--name", default="train-memory", help="results file name (bench/results/NAME.json)")
    p.add_argument("--results-dir", default="bench/results", help="where the JSON goes (default bench/results)")
    add_set(p)
    p.set_defaults(func=_cmd_bench_memory)

    p = sub.add_parser("bench-speed", help="training and detection throughput per memory layout "
                                           "on this CPU, saved as JSON")
    p.add_argument("--name", default="speed", help="results file name (bench/results/NAME.json)")
    p.add_argument("--threads", type=int, default=2, help="training threads (detection uses 1)")
    p.add_argument("--seconds", type=float, default=8.0, help="timing per measurement")
    p.add_argument("--results-dir", default="bench/results", help="where the JSON goes (default bench/results)")
    p.set_defaults(func=_cmd_bench_speed)

    p = sub.add_parser("profile", help="where a training step's time goes (torch.profiler)")
    p.add_argument("--steps", type=int, default=20, help="training steps profiled (default 20)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--out", default=None, help="also write the table to this file")
    add_set(p)
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser("jupyter-config", help="make this environment's JupyterLab save the project's "
                                              "notebooks without their outputs (a pre-save hook)")
    p.add_argument("--prefix", default=sys.prefix, help="the environment (default: the running one)")
    p.set_defaults(func=_cmd_jupyter_config)

    p = sub.add_parser("freeze", help="regenerate solution.py from facepoints_lib/core")
    p.add_argument("--check", action="store_true", help="exit 1 when solution.py is out of date")
    p.add_argument("--out", default=None, help="output file (default solution.py at the root)")
    p.set_defaults(func=_cmd_freeze)

    p = sub.add_parser("synth", help="write a course-format folder of synthetic faces")
    p.add_argument("out", help="output folder (gets images/, gt.csv, img_shapes.csv)")
    p.add_argument("--count", type=int, default=500, help="faces to write (default 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the faces (default 0)")
    p.set_defaults(func=_cmd_synth)

    add_framing_commands(sub, DEFAULT_DATA)
    add_cascade_commands(sub, DEFAULT_DATA)
    add_docs_command(sub)
    add_photo_commands(sub, DEFAULT_DATA)
    add_reference_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (2: bad input or a failure it names,
    130: Ctrl-C, 143: SIGTERM, 1: anything unforeseen)."""
    args = build_parser().parse_args(argv)
    try:
        with sigterm_raises():
            return args.func(args)
    except (OSError, ValueError, KeyError) as exc:
        print(f"facepoints {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ArithmeticError, MemoryError, RuntimeError) as exc:   # diverged training, no memory, a torch error
        print(f"facepoints {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(interrupted_message(args.command, exc), file=sys.stderr)
        return 143 if isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated) else 130
    except Exception as exc:  # noqa: BLE001 - a message, not a traceback; the variable gives the traceback
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"facepoints {args.command}: unexpected error: {type(exc).__name__}: {exc} "
              f"(set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return 1
