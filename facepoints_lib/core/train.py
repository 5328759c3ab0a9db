"""Training from a folder: ``choose_faces`` picks the training and validation faces of a
gt table, ``train_model`` decodes and trains them (the loop itself is ``fit.fit``), and
the course's ``train_detector`` calls both.

``train_detector(train_gt, train_img_dir, fast_train=...)`` is the course's entry point.
Both modes run the same code: ``fast_train=True`` only swaps in a smaller recipe and run
(``config.fast_config``, ``config.fast_run``: a subset of the faces, few steps, one
thread, CPU) and writes nothing; ``fast_train=False`` trains ``config.full_config`` and
saves ``facepoints_model.pt``. The recipe is in ``config``, the loss in ``losses`` and
prediction in ``inference``.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from .checkpoint import default_model_path, save_checkpoint, save_or_rescue
from .config import RunConfig, TrainConfig, fast_config, fast_run, full_config, full_run
from .confidence import calibrate
from .cascade import train_refiner
from .dataset import FaceSet, load_faces, shrunk, split_names
from .files import check_writable
from .fit import TrainingInterrupted, evaluate, fit
from .gt_csv import check_gt_table, read_gt
from .inference import restores_torch_threads
from .model import KeypointNet, fold_batch_norm
from .progress import TextProgress


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning raised in this module at the first caller
    outside it (the user's line, whether it called ``train_detector`` or ``train_model``;
    the thread-restoring wrapper of ``inference`` in between is skipped too)."""
    ours = {__name__, restores_torch_threads.__module__}
    frame, level = sys._getframe(2), 2          # 1: the function that warns
    while frame.f_back is not None and frame.f_globals.get("__name__") in ours:
        frame, level = frame.f_back, level + 1  # (the outermost frame, at worst: a script's own line)
    return level


@dataclass
class FaceChoice:
    """The faces one run trains and validates on (``choose_faces``), those the exclusion
    list left out, and their keypoint table."""

    gt: dict
    img_dir: Path
    train_names: list[str]
    val_names: list[str]
    excluded: list[str] = field(default_factory=list)


@dataclass
class TrainingRun:
    """What ``train_model`` did: the model (EMA weights, eval mode), one record per
    validation (see ``fit``), the faces it trained and validated on, those left out, and
    the model file it wrote (None when it wrote none)."""

    model: KeypointNet
    history: list[dict]
    train_names: list[str]
    val_names: list[str]
    excluded: list[str] = field(default_factory=list)
    model_path: Path | None = None


def _check_inputs(train_gt, train_img_dir) -> tuple[dict, Path]:
    """The gt table as a dict and the image folder, with clear errors for the wrong kinds."""
    if not isinstance(train_gt, (dict, str, os.PathLike)):
        raise TypeError(f"train_gt must be a dict {{filename: 28 coordinates}} or the path of a "
                        f"gt.csv, got {type(train_gt).__name__}")
    if not isinstance(train_img_dir, (str, os.PathLike)):
        raise TypeError(f"train_img_dir must be a folder path, got {type(train_img_dir).__name__}")
    gt = check_gt_table(train_gt, "train_gt") if isinstance(train_gt, dict) else read_gt(train_gt)
    img_dir = Path(train_img_dir)
    if not img_dir.is_dir():
        raise NotADirectoryError(f"training image folder not found: {img_dir}")
    return gt, img_dir


def validation_size(faces: int, run: RunConfig) -> int:
    """How many of ``faces`` (after ``run.max_images``) validate: ``run.val_size``, or a
    fifth of them when there are fewer than five times as many (the rest train)."""
    faces = min(faces, run.max_images) if run.max_images else faces
    if faces < 5 * run.val_size:
        return min(run.val_size, max(faces // 5, 1))
    return run.val_size


def choose_faces(train_gt, train_img_dir, run: RunConfig, seed: int = 0, exclude: Sequence[str] = (),
                 log: Callable[[str], None] = print) -> FaceChoice:
    """The faces of a labelled folder one run trains and validates on.

    ``train_gt`` is ``{filename: 28 coordinates}`` or the path of a gt.csv. Rows for files
    missing from the folder are dropped with a warning; a malformed table raises
    ``GtFormatError``. ``exclude``: file names to leave out (faces whose labels look
    wrong, see notebook 01's label audit). Then at most ``run.max_images`` faces (a subset
    seeded by ``seed``), of which ``run.val_size`` validate (a fifth of them when there
    are fewer than five times as many), split by ``seed``.
    """
    gt, img_dir = _check_inputs(train_gt, train_img_dir)
    listed = set(gt)
    missing = sorted(name for name in gt if not (img_dir / name).is_file())
    if missing:
        warnings.warn(f"{len(missing)} files listed in the keypoint table are not in {img_dir} "
                      f"and are left out: {', '.join(missing[:5])}", stacklevel=_caller_stacklevel())
        left_out = set(missing)                                   # one set: linear in the rows
        gt = {name: coords for name, coords in gt.items() if name not in left_out}
    if isinstance(exclude, (str, os.PathLike)):
        raise TypeError("exclude must be a list of file names, not a single name")
    unmatched = sorted(set(exclude) - listed)
    if unmatched:         # a typo, another data set's list, or a name the table spells otherwise
        warnings.warn(f"{len(unmatched)} names in the exclusion list match no face in the keypoint "
                      f"table and leave nothing out: {', '.join(map(repr, unmatched[:5]))}",
                      stacklevel=_caller_stacklevel())
    excluded = sorted(set(exclude) & set(gt))
    if excluded:
        log(f"leaving out {len(excluded)} faces named in the exclusion list")
        gt = {name: coords for name, coords in gt.items() if name not in set(excluded)}
    if len(gt) < 2:
        raise ValueError(f"need at least 2 labelled images in {img_dir}, found {len(gt)}")
    names = sorted(gt)
    if run.max_images and len(names) > run.max_images:
        keep = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed))
        names = sorted(names[i] for i in keep[:run.max_images].tolist())
    val_size = validation_size(len(names), run)
    if val_size < run.val_size:
        log(f"only {len(names)} faces: validating on {val_size} of them (val_size={run.val_size} would leave "
            f"{max(len(names) - run.val_size, 1)} to train on)")
    train_names, val_names = split_names(names, val_size, seed)
    return FaceChoice(gt, img_dir, train_names, val_names, excluded)


@restores_torch_threads
def train_model(train_gt, train_img_dir, cfg: TrainConfig, run: RunConfig | None = None, *,
                model_path: str | Path | None = None, schedule=None,
                progress: Callable[..., object] = TextProgress, log: Callable[[str], None] = print,
                on_validation: Callable[[KeypointNet, dict], None] | None = None,
                exclude: Sequence[str] = ()) -> TrainingRun:
    """Train ``cfg`` on the labelled faces of a folder; save the model to ``model_path`` if given.

    The faces are ``choose_faces``'s (``train_gt``, ``exclude`` and ``run`` as there); an
    unreadable listed image raises ``ImageReadError``. With validation faces, the trained
    model's confidence is calibrated on them at the end (``confidence.calibrate``) and
    stored with it (``model.metadata["calibration"]``); the model file records the faces
    and the exclusions too. ``schedule`` and ``on_validation``: see ``fit``. A recipe with a
    second stage (``cfg.cascade``) decodes the faces at ``cfg.decode_side()``, trains the
    first network on them shrunk to its input, then the second behind it
    (``cascade.train_refiner``; ``schedule`` is asked once per stage).
    """
    run = run if run is not None else RunConfig()
    cfg.validate()                                                # before any image is decoded
    run.validate()
    path = Path(model_path) if model_path is not None else None
    if path is not None:
        check_writable(path, "model file")                      # before any training is spent on it
    faces = choose_faces(train_gt, train_img_dir, run, cfg.seed, exclude, log)
    if run.threads:
        torch.set_num_threads(run.threads)
    with progress(total=len(faces.train_names) + len(faces.val_names), desc="decode", unit="img") as bar:
        train_set = load_faces(faces.img_dir, cfg.decode_side(), faces.gt, faces.train_names, bar.update)
        val_set = load_faces(faces.img_dir, cfg.decode_side(), faces.gt, faces.val_names, bar.update)
    about = {"seed": cfg.seed, "train_images": len(train_set), "val_images": len(val_set),
             "val_names": list(val_set.filenames), "excluded": faces.excluded}
    try:
        model, history = fit(shrunk(train_set, cfg.model.image_size), shrunk(val_set, cfg.model.image_size),
                             cfg, run, schedule=schedule, progress=progress, log=log, on_validation=on_validation)
        if cfg.cascade is not None:
            model.metadata["cascade"] = _second_stage(model, history, train_set, val_set, cfg, run, schedule,
                                                      progress, log)
    except TrainingInterrupted as stop:
        if path is not None and stop.step > 0:       # keep what was trained, beside the model file
            _keep_interrupted(stop, path, about, log)
        raise
    if len(val_set) >= 2:                 # the confidence of detect_details, fitted on unseen faces
        calibration = calibrate(fold_batch_norm(model), val_set, cfg.seed).to_dict()   # as detect runs it
        model.metadata = {**model.metadata, "calibration": calibration}
        log(f"confidence calibrated on {calibration['faces']} views of the validation faces")
    if path is not None:
        save_or_rescue(model, path, {**model.metadata, "history": history, **about,
                                      "calibration": model.metadata.get("calibration")}, log)
    return TrainingRun(model, history, faces.train_names, faces.val_names, faces.excluded, path)


def _second_stage(first: KeypointNet, history: list[dict], train_set: FaceSet, val_set: FaceSet,
                  cfg: TrainConfig, run: RunConfig, schedule, progress, log: Callable[[str], None]) -> dict:
    """Train the cascade's second stage behind ``first`` and attach it; returns what the
    model file records of it. A second stage that makes the validation faces worse than
    the first stage alone (a budget too short for it: 1.5 minutes of ``--minutes`` gave
    it one step) is left off, and the record says so (``kept``). Stopped, it leaves the
    first stage alone to be kept."""
    log(f"second stage: {cfg.cascade.epochs} epochs on the faces aligned by their points")
    try:
        refiner, stage_history, residuals = train_refiner(first, train_set, val_set, cfg, run, schedule=schedule,
                                                          progress=progress, log=log)
    except TrainingInterrupted as stop:
        stop.model, stop.record = first, (history[-1] if history else None)
        raise
    first.attach_refiner(refiner)
    record = {"residuals": residuals, "history": stage_history, "kept": True}
    if len(val_set) and history:
        record["val_err_first_stage"] = history[-1]["val_err"]
        record["val_err"] = evaluate(first, val_set)["err"]
        log(f"cascade: val err {record['val_err']:.3f} (first stage alone {record['val_err_first_stage']:.3f})")
        if record["val_err"] > record["val_err_first_stage"]:      # too short a training for the second stage
            first.attach_refiner(None)
            record["kept"] = False
            log("warning: the second stage made the validation faces worse, so the model keeps the first "
                "stage alone (a longer training, or a larger --minutes budget, gives the second stage its share)")
    return record


def interrupted_path(model_path: Path) -> Path:
    """Where a stopped training keeps its model: ``NAME.interrupted.pt`` beside ``NAME.pt``
    (the model file itself, and whatever it held before, stay as they were)."""
    return model_path.with_name(f"{model_path.stem}.interrupted{model_path.suffix or '.pt'}")


def _keep_interrupted(stop: TrainingInterrupted, path: Path, about: dict, log: Callable[[str], None]) -> None:
    """Save a stopped training's best model so far (see ``TrainingInterrupted``) beside
    the model file, so that it can be used (it has no confidence calibration: see
    ``facepoints calibrate``). A failure to save it is reported, not raised over the stop."""
    keep = interrupted_path(path)
    where = (f"best validation so far: epoch {stop.record['epoch']}, val err {stop.record['val_err']:.3f}"
             if stop.record else f"no validation yet; the weights at step {stop.step}")
    try:
        save_checkpoint(stop.model, keep, {**stop.model.metadata, "history": stop.history, **about,
                                           "calibration": None,
                                           "interrupted": {"step": stop.step, "total_steps": stop.total_steps}})
    except OSError as exc:
        log(f"training stopped at step {stop.step} of {stop.total_steps}; its model could not be kept: {exc}")
        return
    stop.saved_to = keep
    log(f"training stopped at step {stop.step} of {stop.total_steps}: kept the model ({where}) in {keep}")


def train_detector(train_gt, train_img_dir, fast_train: bool = True, *,
                   config: TrainConfig | None = None, run: RunConfig | None = None,
                   model_path: str | Path | None = None, schedule=None,
                   progress: Callable[..., object] = TextProgress,
                   log: Callable[[str], None] = print, exclude: Sequence[str] = ()) -> KeypointNet:
    """Train a keypoint detector on the course's data and return it (in eval mode).

    The course's interface: ``train_gt`` is ``{filename: 28 coordinates}`` (as the course's
    run.py reads it) or the path of a gt.csv; ``train_img_dir`` the folder of the images.
    With ``fast_train=True`` a short run on one CPU thread checks that training works and
    writes nothing; with ``fast_train=False`` the full recipe runs and the model is saved
    to ``model_path`` (default: ``facepoints_model.pt`` beside the code). ``config`` and
    ``run`` replace the recipe and the run; the rest as in ``train_model``, which returns
    the history too (so does this model's ``metadata["history"]``).
    """
    if not isinstance(fast_train, bool):
        raise TypeError(f"fast_train must be True or False, got {fast_train!r}")
    cfg = config if config is not None else (fast_config() if fast_train else full_config())
    run = run if run is not None else (fast_run() if fast_train else full_run())
    path = None if fast_train else (model_path if model_path is not None else default_model_path())
    result = train_model(train_gt, train_img_dir, cfg, run, model_path=path, schedule=schedule,
                         progress=progress, log=log, exclude=exclude)
    result.model.metadata["history"] = result.history
    return result.model
