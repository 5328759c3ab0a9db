"""A local grader that does what the course's ``run.py`` does, and a bit more.

Two folder layouts are understood:

* **The course's tests folder**: ``NN_name_input/{train,test}`` beside ``NN_name_gt/``
  (``gt.csv`` and ``img_shapes.csv``), one pair per test. For each test: fast-train on
  ``train/`` (to prove training works in the grader's limits), detect ``test/images``
  with the model file, and compare with the hidden ``gt.csv``.
* **A plain ``train/`` folder** (``gt.csv`` + ``images/``): a seeded holdout is split
  off; fast training uses the rest, detection runs on the holdout.

The err is the course's (``metrics.course_err`` on the stored image sizes) and the mark
its table. Note that a model trained on the faces it is graded on scores too well: use
a holdout the model never saw (``facepoints bench`` does) for an honest figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .checkpoint import MODEL_FILENAME, default_model_path, load_checkpoint
from .dataset import split_names
from .detect import detect
from .gt_csv import read_gt, read_img_shapes, write_gt
from .images import read_image_size
from .metrics import course_mark, per_image_err
from .progress import format_seconds
from .train import train_detector


def compute_err(detected: dict[str, np.ndarray], gt: dict[str, np.ndarray],
                img_shapes: dict[str, tuple[int, int]]) -> float:
    """The course's err of ``detected`` against ``gt``; shapes are ``(n_rows, n_cols)``.

    Every file of ``gt`` must have a detection and a shape; a missing one is an error
    that names it (the course counts it as a failed test).
    """
    names = sorted(gt)
    if not names:
        raise ValueError("no ground-truth rows to grade against")
    for table, what in ((detected, "detection"), (img_shapes, "image shape")):
        missing = [name for name in names if name not in table]
        if missing:
            raise KeyError(f"{len(missing)} files have no {what}: {', '.join(missing[:5])}")
    pred = np.stack([np.asarray(detected[n], dtype=np.float64).reshape(-1, 2) for n in names])
    true = np.stack([np.asarray(gt[n], dtype=np.float64).reshape(-1, 2) for n in names])
    sizes = np.array([(img_shapes[n][1], img_shapes[n][0]) for n in names], dtype=np.float64)
    err = float(per_image_err(pred, true, sizes).mean())
    if not np.isfinite(err):          # a non-finite detection or answer: no mark can be given
        raise ValueError(f"the err is {err}: a detection or an answer is not a finite number")
    return err


def find_course_tests(tests_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Pairs ``(NN_*_input, NN_*_gt)`` of a course tests folder, sorted by name.

    An input folder without its ``_gt`` folder is an error (``FileNotFoundError`` naming
    it), not a test skipped without a word.
    """
    tests_dir = Path(tests_dir)
    pairs, orphans = [], []
    for input_dir in sorted(tests_dir.glob("*_input")):
        gt_dir = input_dir.with_name(input_dir.name[: -len("_input")] + "_gt")
        if input_dir.is_dir():
            (pairs if gt_dir.is_dir() else orphans).append((input_dir, gt_dir))
    if orphans:
        raise FileNotFoundError(f"{len(orphans)} test input folders have no answers folder beside them, "
                                f"so they cannot be scored: " +
                                ", ".join(f"{i.name} (no {g.name})" for i, g in orphans[:5]))
    return pairs


def _grader_fast_train(gt: dict, img_dir: Path, log: Callable[[str], None]) -> dict:
    """The course grader's check that training runs: ``train_detector(gt, img_dir,
    fast_train=True)``, called exactly as the course calls it; returns its time and the
    validation err of the small model it trains (not the one scored)."""
    started = time.monotonic()
    history = train_detector(gt, img_dir, fast_train=True).metadata["history"]
    seconds = time.monotonic() - started
    val_err = history[-1]["val_err"] if history else float("nan")
    log(f"fast_train (the grader's check that training runs; it trains a small model of its own, "
        f"not the one scored here): {format_seconds(seconds)} ({seconds:.1f} s), its validation err {val_err:.3f}")
    return {"fast_train_seconds": seconds, "fast_train_val_err": val_err}


def grade_course_tests(tests_dir: str | os.PathLike, model_path: str | os.PathLike | None = None, *,
                       fast_train: bool = True, output_dir: str | os.PathLike | None = None,
                       log: Callable[[str], None] = print) -> list[dict]:
    """Run every test of a course tests folder; return one result dict per test."""
    pairs = find_course_tests(tests_dir)
    if not pairs:
        raise FileNotFoundError(f"no NN_*_input / NN_*_gt test pairs in {tests_dir}")
    model_path = Path(model_path) if model_path is not None else default_model_path()
    results = []
    for input_dir, gt_dir in pairs:
        log(f"== {input_dir.name}")
        result: dict = {"test": input_dir.name}
        if fast_train:
            train_dir = input_dir / "train"
            result.update(_grader_fast_train(read_gt(train_dir / "gt.csv"), train_dir / "images", log))
        started = time.monotonic()
        detected = detect(model_path, input_dir / "test" / "images")
        result["detect_seconds"] = time.monotonic() - started
        if output_dir is not None:
            out = Path(output_dir) / input_dir.name
            out.mkdir(parents=True, exist_ok=True)
            write_gt(detected, out / "output.csv")
        err = compute_err(detected, read_gt(gt_dir / "gt.csv"), read_img_shapes(gt_dir / "img_shapes.csv"))
        result.update(err=err, mark=course_mark(err), images=len(detected))
        log(f"{input_dir.name}: err {err:.4f}, mark {result['mark']}")
        results.append(result)
    return results


def grade_train_folder(train_dir: str | os.PathLike, model_path: str | os.PathLike | None = None, *,
                       holdout: int = 500, seed: int = 0, fast_train: bool = True,
                       log: Callable[[str], None] = print) -> dict:
    """Grade on a plain ``train/`` folder: fast-train on all but a seeded holdout, detect the holdout."""
    train_dir = Path(train_dir)
    gt = read_gt(train_dir / "gt.csv")
    img_dir = train_dir / "images"
    rest, held = split_names(sorted(gt), holdout, seed)
    result: dict = {"test": train_dir.name, "holdout": len(held)}
    if fast_train:
        result.update(_grader_fast_train({n: gt[n] for n in rest}, img_dir, log))
    model_path = Path(model_path) if model_path is not None else default_model_path()
    started = time.monotonic()
    detected = detect(model_path, img_dir, filenames=held)
    result["detect_seconds"] = time.monotonic() - started
    shapes_file = train_dir / "img_shapes.csv"
    if shapes_file.is_file():
        shapes = read_img_shapes(shapes_file)
    else:
        shapes = {}
        for name in held:
            width, height = read_image_size(img_dir / name)
            shapes[name] = (height, width)
    err = compute_err(detected, {n: gt[n] for n in held}, shapes)
    result.update(err=err, mark=course_mark(err), images=len(detected))
    log(f"{train_dir.name} holdout of {len(held)}: err {err:.4f}, mark {result['mark']} "
        f"(detect {result['detect_seconds']:.1f} s)")
    seen, exact = _faces_seen(model_path, held, len(gt) - len(held))
    if seen:
        result["holdout_faces_seen"] = seen
        log(f"NOTE: the model trained on {'' if exact else 'at least '}{seen} of these {len(held)} faces, "
            f"so this err flatters it; "
            f"`facepoints bench` trains without the holdout and gives an honest figure")
    return result


def _faces_seen(model_path: Path, held: list[str], outside: int) -> tuple[int, bool]:
    """How many holdout faces the model trained on, as far as its file tells, and whether
    that count is exact: all but its recorded validation faces when it trained on more
    faces than lie outside the holdout (without that record, at least the excess)."""
    try:
        meta = load_checkpoint(model_path).get("metadata", {})
    except (OSError, ValueError, RuntimeError):
        return 0, True
    trained = int(meta.get("train_images", 0) or 0)
    if trained <= outside:
        return 0, True
    kept_out = set(meta.get("val_names", []))
    if kept_out:
        return sum(1 for name in held if name not in kept_out), True
    return min(trained - outside, len(held)), False


def grade(data_dir: str | os.PathLike, model_path: str | os.PathLike | None = None, *,
          holdout: int = 500, seed: int = 0, fast_train: bool = True,
          log: Callable[[str], None] = print) -> list[dict]:
    """Grade ``data_dir``, whichever of the two layouts it has (see the module docstring)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise NotADirectoryError(f"data folder not found: {data_dir}")
    if (data_dir / "gt.csv").is_file() and (data_dir / "images").is_dir():
        return [grade_train_folder(data_dir, model_path, holdout=holdout, seed=seed,
                                   fast_train=fast_train, log=log)]
    if find_course_tests(data_dir):
        return grade_course_tests(data_dir, model_path, fast_train=fast_train, log=log)
    raise FileNotFoundError(f"{data_dir} is neither a train folder (gt.csv + images/) nor a "
                            f"course tests folder (NN_*_input + NN_*_gt)")


def grader_main(argv: Sequence[str] | None = None) -> int:
    """``python solution.py DATA_DIR``: the local grader as a script."""
    parser = argparse.ArgumentParser(
        prog="solution.py",
        description="Grade the facial keypoint detector locally, as the course's run.py does: "
                    "fast-train on the training part, detect with the model file, print err and mark.")
    parser.add_argument("data_dir", help="a course tests folder (NN_*_input + NN_*_gt) "
                                         "or a train folder (gt.csv + images/)")
    parser.add_argument("--model", default=None,
                        help=f"model file (default: {MODEL_FILENAME} beside the code)")
    parser.add_argument("--holdout", type=int, default=500,
                        help="faces held out of a train folder for grading (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the holdout split")
    parser.add_argument("--no-fast-train", action="store_true",
                        help="skip the fast training run, only detect and score")
    parser.add_argument("--output-dir", default=None,
                        help="write each course test's detections as output.csv here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        data_dir = Path(args.data_dir)
        if (data_dir / "gt.csv").is_file() or not find_course_tests(data_dir):
            results = grade(data_dir, args.model, holdout=args.holdout, seed=args.seed,
                            fast_train=not args.no_fast_train)
        else:
            results = grade_course_tests(data_dir, args.model, fast_train=not args.no_fast_train,
                                         output_dir=args.output_dir)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mean_err = float(np.mean([r["err"] for r in results]))
    print(f"err {mean_err:.4f}, mark {course_mark(mean_err)}, "
          f"{len(results)} test(s), {time.monotonic() - started:.1f} s, torch {torch.__version__}")
    return 0
