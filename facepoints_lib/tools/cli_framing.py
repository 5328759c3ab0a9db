"""The ``facepoints`` commands for framing and confidence: ``calibrate``, ``make-cut``,
``make-not-faces`` and ``bench-framing`` (registered by ``cli.build_parser``)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .confidence_report import calibrate_file

    cal = calibrate_file(args.model, args.data_dir, args.seed)
    a, b, c = cal["face"]
    print(f"calibrated {args.model} on {cal['faces']} views of its validation faces: expected err = "
          f"{math.exp(a):.3g} * spread^{b:.3f} * blur^{c:.3f}; no face crop above blur {cal['no_face_blur']:.3g}")
    return 0


def _cmd_bench_framing(args: argparse.Namespace) -> int:
    from .framing_bench import run_framing_bench

    run_framing_bench(args.model, args.data_dir, args.cut, args.not_faces, name=args.name, holdout=args.holdout,
                      split_seed=args.split_seed, results_dir=args.results_dir)
    return 0


def _cmd_make_cut(args: argparse.Namespace) -> int:
    from ..core.progress import TextProgress
    from .framing_sets import make_cut_set

    done = make_cut_set(args.data_dir, args.out, holdout=0 if args.all else args.holdout,
                        split_seed=args.split_seed, seed=args.seed, progress=TextProgress)
    print(f"wrote {done['faces']} cut faces to {args.out}: {done['faces_with_points_outside']} with "
          f"points outside the picture ({done['points_outside']} points in all)")
    return 0


def _cmd_make_not_faces(args: argparse.Namespace) -> int:
    from ..core.progress import TextProgress
    from .framing_sets import make_not_face_set

    done = make_not_face_set(args.out, count=args.count, seed=args.seed, data_dir=args.data,
                             progress=TextProgress)
    kinds = ", ".join(f"{kind} {n}" for kind, n in done["kinds"].items())
    print(f"wrote {done['count']} pictures that are not faces to {args.out} ({kinds})")
    return 0


def add_framing_commands(sub, default_data: Path) -> None:
    """Add the framing and confidence sub-commands to the ``facepoints`` parser's ``sub``."""
    p = sub.add_parser("calibrate", help="fit a model file's confidence calibration on its validation "
                                         "faces and store it in the file (training does this itself)")
    p.add_argument("model", help="model file (trained by this project; names its validation faces)")
    p.add_argument("data_dir", nargs="?", default=str(default_data),
                   help=f"the train folder it was trained from (default {default_data})")
    p.add_argument("--seed", type=int, default=0, help="seed of the turned and cut views (default 0)")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("bench-framing", help="faces cut by a border, pictures with no face, and the "
                                             "confidence's calibration, saved as JSON")
    p.add_argument("model", help="model file (scored on faces it never trained on: its validation faces)")
    p.add_argument("data_dir", help="the course train folder the faces come from")
    p.add_argument("cut", help="cut copies of the same faces (facepoints make-cut)")
    p.add_argument("not_faces", help="pictures that are no face crop (facepoints make-not-faces)")
    p.add_argument("--holdout", type=int, default=None, help="score this seeded holdout instead of the "
                                                             "model's validation faces (a model from bench)")
    p.add_argument("--split-seed", type=int, default=0, help="holdout split seed, as in bench")
    p.add_argument("--name", default="framing", help="results file name (bench/results/NAME.json)")
    p.add_argument("--results-dir", default="bench/results", help="where the JSON goes (default bench/results)")
    p.set_defaults(func=_cmd_bench_framing)

    p = sub.add_parser("make-cut", help="copy the holdout faces with one border cutting the face "
                                        "(points kept, some outside the picture)")
    p.add_argument("data_dir", help="course-format folder (gt.csv + images/)")
    p.add_argument("out", help="output folder (gets images/, gt.csv, img_shapes.csv, cut.json)")
    p.add_argument("--holdout", type=int, default=500, help="faces held out, as in bench (default 500)")
    p.add_argument("--split-seed", type=int, default=0, help="holdout split seed, as in bench")
    p.add_argument("--seed", type=int, default=0, help="seed of the cuts (default 0)")
    p.add_argument("--all", action="store_true", help="cut every face, not the holdout")
    p.set_defaults(func=_cmd_make_cut)

    p = sub.add_parser("make-not-faces", help="write pictures that are not a face crop "
                                              "(blank, noise, texture, scene, painted_out)")
    p.add_argument("out", help="output folder (gets images/ and kinds.csv)")
    p.add_argument("--count", type=int, default=200, help="pictures to write (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pictures (default 0)")
    p.add_argument("--data", default=None, help="course-format folder: adds its pictures with the face painted out")
    p.set_defaults(func=_cmd_make_not_faces)
