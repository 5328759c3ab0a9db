"""``facepoints second-stage``: train the cascade's second stage behind a trained model.

The full recipe trains both stages in one run (``train_model``); this command adds a
second stage to a model file that has only the first, training it on the same faces the
first stage trained on (every labelled face except the ones its file names as
validation faces and exclusions), so that its validation faces stay unseen by both. It
writes the two-stage model file and a result file with the errs of the first stage
alone and of the cascade on those validation faces, measured as ``detect`` runs them.
The second stage trains by the shipped recipe's optimiser settings and ``CascadeConfig``
(``--set cascade.KEY=VALUE`` changes them); the file records both stages' recipe.

Behind a benchmark's model (``facepoints bench`` writes ``artifacts/bench-NAME.pt``),
``--holdout N --split-seed S`` leaves that benchmark's holdout out of the second stage's
training too and scores both ways on it; ``--replace`` trains a new second stage in
place of the one a two-stage file holds (the first stage is kept as it is).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..core.checkpoint import load_checkpoint, load_model, save_checkpoint
from ..core.config import CascadeConfig, RunConfig, TrainConfig
from ..core.cascade import train_refiner
from ..core.confidence import calibrate
from ..core.dataset import load_faces, split_names
from ..core.gt_csv import read_gt
from .machine import machine_info
from ..core.inference import cpu_flags, predict, restores_torch_threads
from ..core.metrics import per_image_err
from ..core.model import fold_batch_norm
from ..core.progress import TextProgress
from .overrides import apply_overrides


def _scores(model, faces) -> dict:
    """err, median and worst per-face err of ``model`` on labelled ``faces`` (as detect runs)."""
    errs = per_image_err(predict(fold_batch_norm(model), faces.images), faces.keypoints.double().numpy())
    return {"err": float(errs.mean()), "median_err": float(np.median(errs)), "worst_err": float(errs.max()),
            "faces": len(errs)}


def _command(base, data_dir, out, overrides, threads, results, holdout, split_seed, replace) -> str:
    """The ``facepoints second-stage`` command line that repeats this run, every option it took."""
    words = [str(base), str(data_dir), "--out", str(out)]
    words += [] if threads == 2 else ["--threads", str(threads)]
    words += ["--holdout", str(holdout), "--split-seed", str(split_seed)] if holdout > 0 else []
    words += ["--replace"] if replace else []
    words += [f"--set {o}" for o in overrides]
    words += ["--name", Path(results).stem] if results is not None else []
    return "facepoints second-stage " + " ".join(words)


@restores_torch_threads
def add_second_stage(base: str | Path, data_dir: str | Path, out: str | Path, overrides: Sequence[str] = (),
                     threads: int = 2, results: Path | None = None, holdout: int = 0, split_seed: int = 0,
                     replace: bool = False, log: Callable[[str], None] = print) -> dict:
    """Train a second stage behind the model in ``base`` on the faces of ``data_dir`` it
    trained on, save the cascade to ``out`` and return (and write to ``results``) the
    errs on the base model's validation faces, and on the benchmark holdout of
    ``holdout`` faces (split ``split_seed``) when ``holdout`` > 0: those faces are left out
    of training. ``replace``: a second stage in ``base`` is dropped and trained anew."""
    import torch

    started = time.monotonic()
    stored = load_checkpoint(base)["metadata"]
    first = load_model(base)
    if first.refiner is not None and not replace:
        raise ValueError(f"{base} has a second stage already (--replace trains a new one in its place)")
    first.attach_refiner(None)
    cfg = TrainConfig(cascade=CascadeConfig(), seed=int(stored.get("seed", 0)))
    cfg.model = first.config
    run = RunConfig(threads=threads)
    apply_overrides(cfg, overrides, run)
    torch.set_num_threads(run.threads)
    data_dir = Path(data_dir)
    gt = read_gt(data_dir / "gt.csv")
    val_names = sorted(set(stored.get("val_names", [])) & set(gt))
    held = split_names(sorted(gt), holdout, split_seed)[1] if holdout > 0 else []
    left_out = set(val_names) | set(stored.get("excluded", [])) | set(held)
    train_names = sorted(name for name in gt if name not in left_out)
    side = cfg.decode_side()
    with TextProgress(total=len(gt), desc="decode", unit="img") as bar:
        train = load_faces(data_dir / "images", side, gt, train_names, bar.update)
        val = load_faces(data_dir / "images", side, gt, val_names, bar.update)
        held_faces = load_faces(data_dir / "images", side, gt, held, bar.update) if held else None
    log(f"{len(train)} training faces, {len(val)} validation faces (the base model's), decoded at {side} px")
    decoded = time.monotonic()
    refiner, history, residuals = train_refiner(first, train, val, cfg, run, log=log)
    trained = time.monotonic()
    before = _scores(first, val)
    held_before = _scores(first, held_faces) if held_faces is not None else None
    first.attach_refiner(refiner)
    after = _scores(first, val)
    held_after = _scores(first, held_faces) if held_faces is not None else None
    calibration = calibrate(fold_batch_norm(first), val, cfg.seed).to_dict() if len(val) >= 2 else None
    log(f"validation faces: first stage err {before['err']:.3f} (median {before['median_err']:.3f}), "
        f"cascade err {after['err']:.3f} (median {after['median_err']:.3f})")
    if held_faces is not None:
        log(f"holdout ({len(held)} faces): first stage err {held_before['err']:.3f} (median "
            f"{held_before['median_err']:.3f}), cascade err {held_after['err']:.3f} (median {held_after['median_err']:.3f})")
    record = {"residuals": residuals, "history": history, "val_err_first_stage": before["err"],
              "val_err": after["err"]}
    recipe = {**stored.get("train_config", {}), "cascade": cfg.cascade.to_dict()}   # both stages' recipe
    metadata = {**stored, "train_config": recipe, "calibration": calibration, "cascade": record,
                "base_model": Path(base).name}
    save_checkpoint(first, out, metadata)
    log(f"saved {out}")
    result = {"command": _command(base, data_dir, out, overrides, threads, results, holdout, split_seed, replace),
              "base_model": Path(base).name, "cascade": cfg.cascade.to_dict(), "residuals": residuals,
              "faces": {"train": len(train), "validation": len(val)},
              "first_stage": before, "cascade_scores": after, "history": history,
              "holdout": None if held_faces is None else {"faces": len(held), "split_seed": split_seed,
                                                          "first_stage": held_before, "cascade": held_after},
              "seconds": {"decode": decoded - started, "train": trained - decoded},
              "threads": run.threads, "cpu_flags": cpu_flags(), "machine": machine_info()}
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(result, indent=1) + "\n")
        log(f"wrote {results}")
    return result
