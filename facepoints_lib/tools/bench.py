"""Benchmarks that print numbers: holdout accuracy, training and detection speed.

``facepoints bench DATA_DIR`` (a course-format ``train/`` folder) does, with fixed seeds:

1. split off a holdout (500 faces by default) that training never sees;
2. train the recipe (``full_config`` plus any ``--set key=value`` overrides) with
   ``train_model`` on the rest, timing it;
3. detect the holdout in a fresh process with one thread (images/s including JPEG
   decoding, peak resident memory) and score it: course err, mark, NME, CED AUC;
4. time ``fast_train`` with one thread in another fresh process;
5. write everything, with the command, commit, machine and versions, to
   ``bench/results/<name>.json``.

Experiments are the same command with overrides, e.g.
``facepoints bench DATA --name head-regression --set model.head=regression``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.config import full_config, full_run
from ..core.fit import evaluate
from ..core.dataset import load_faces, split_names
from ..core.gt_csv import read_gt
from ..core.images import read_image_size
from ..core.metrics import ced_auc, course_mark, per_image_err, per_image_nme
from ..core.train import train_model
from .machine import RESULTS_DIR, machine_info, run_script, shown_command, write_result
from .overrides import apply_overrides


DETECT_SCRIPT = """
import json, resource, sys, time
import torch
from facepoints_lib.core.detect import detect
torch.set_num_threads(1)
names = json.loads(open(sys.argv[3]).read())
look = False if "--single-look" in sys.argv else None
start = time.perf_counter()
out = detect(sys.argv[1], sys.argv[2], filenames=names, threads=1, second_look=look)
seconds = time.perf_counter() - start
def peak_mb():   # this process's own peak (VmHWM): ru_maxrss keeps the forking parent's size on Linux
    try:
        line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
rss = peak_mb()
plain = {} if "--tta-only" in sys.argv else detect(sys.argv[1], sys.argv[2], filenames=names, threads=1, flip_tta=False)
print(json.dumps({"seconds": seconds, "peak_rss_mb": rss,
                  "detections": {k: v.tolist() for k, v in out.items()},
                  "detections_no_tta": {k: v.tolist() for k, v in plain.items()}}))
"""

_FAST_SCRIPT = """
import json, sys, time
import torch
from facepoints_lib.core.gt_csv import read_gt
from facepoints_lib.core.train import train_detector
torch.set_num_threads(1)
gt = read_gt(sys.argv[1])
names = set(json.loads(open(sys.argv[3]).read()))
train_gt = {k: v for k, v in gt.items() if k in names}
start = time.perf_counter()
model = train_detector(train_gt, sys.argv[2], fast_train=True)       # as the course's grader calls it
print(json.dumps({"seconds": time.perf_counter() - start, "val_err": model.metadata["history"][-1]["val_err"]}))
"""


TIME_TO_ERR_TARGETS = (3.5, 3.22)    # issue targets: err 3.5, and the 90-epoch recipe's 3.22


def time_to_err(history: list[dict], targets: Sequence[float]) -> dict[str, float | None]:
    """Training seconds (evaluations excluded) until the holdout err first reached each
    target, from a history with ``track_err`` (None: never reached)."""
    out: dict[str, float | None] = {}
    for target in targets:
        hit = next((r for r in history if r.get("track_err") is not None and r["track_err"] <= target), None)
        out[f"{target:g}"] = hit["train_seconds"] if hit else None
    return out


def run_bench(data_dir: str | os.PathLike, *, name: str = "recipe", overrides: Sequence[str] = (),
              holdout: int = 500, seed: int = 0, split_seed: int = 0, time_fast_train: bool = True,
              results_dir: str | os.PathLike = RESULTS_DIR, model_path: str | os.PathLike | None = None,
              command: str | None = None, exclude: Sequence[str] = ()) -> dict:
    """Train on all but a seeded holdout, score the holdout, time detect and fast_train; save JSON.

    ``exclude``: faces left out of training (never of the holdout, which stays comparable)."""
    data_dir = Path(data_dir)
    img_dir = data_dir / "images"
    gt = read_gt(data_dir / "gt.csv")
    rest, held = split_names(sorted(gt), holdout, split_seed)
    cfg, train_run = full_config(seed=seed), full_run()
    apply_overrides(cfg, overrides, train_run)
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    model_path = Path(model_path) if model_path else Path("artifacts") / f"bench-{name}.pt"
    model_path.parent.mkdir(parents=True, exist_ok=True)

    holdout_faces = load_faces(img_dir, cfg.decode_side(), gt, held)

    def score_holdout(model, record: dict) -> None:       # at each validation: time-to-accuracy
        record["track_err"] = evaluate(model, holdout_faces, cfg.flip_tta)["err"]

    started = time.perf_counter()
    run = train_model({n: gt[n] for n in rest}, img_dir, cfg, train_run, model_path=model_path,
                      on_validation=score_holdout, exclude=exclude)
    train_seconds = time.perf_counter() - started
    model, history = run.model, run.history
    fit_seconds = history[-1]["seconds"] if history else float("nan")
    steps = history[-1]["step"] if history else 0

    with tempfile.TemporaryDirectory() as tmp:
        names_file = Path(tmp) / "names.json"
        names_file.write_text(json.dumps(held))
        detected = run_script(DETECT_SCRIPT, str(model_path), str(img_dir), str(names_file))
        fast = None
        if time_fast_train:
            names_file.write_text(json.dumps(rest))
            fast = run_script(_FAST_SCRIPT, str(data_dir / "gt.csv"), str(img_dir), str(names_file))

    holdout_figures = _score_holdout(detected, held, gt, img_dir)
    err = holdout_figures["err"]
    result = {
        "name": name,
        "command": command or shown_command(),
        "data": {"dir": data_dir.name, "faces": len(gt), "train": len(rest), "holdout": len(held),
                 "split_seed": split_seed},
        "config": cfg.to_dict(),
        "run_config": train_run.to_dict(),
        "overrides": list(overrides),
        "excluded": sorted(set(exclude) & set(rest)),
        "parameters": sum(p.numel() for p in model.parameters()),   # the EMA copy has requires_grad off
        "model_mb": model_path.stat().st_size / 2**20,
        "holdout": holdout_figures,
        "train": {"wall_seconds": train_seconds, "fit_seconds": fit_seconds, "steps": steps,
                  "epochs": history[-1]["epoch"] if history else 0,
                  "images_per_second": steps * min(cfg.batch_size, len(rest)) / fit_seconds,
                  "threads": torch.get_num_threads(), "history": history,
                  "time_to_holdout_err": time_to_err(history, TIME_TO_ERR_TARGETS),
                  "second_stage": model.metadata.get("cascade")},      # (None: one network)
        "detect_1thread": {"images": len(held), "seconds": detected["seconds"],
                           "images_per_second": len(held) / detected["seconds"],
                           "peak_rss_mb": detected["peak_rss_mb"]},
        "fast_train_1thread": fast,
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = write_result(result, results_dir, name)
    print(f"{name}: holdout err {err:.3f} (mark {result['holdout']['mark']}), NME {result['holdout']['nme']:.4f}, "
          f"AUC@0.08 {result['holdout']['auc08']:.3f}; train {train_seconds / 60:.1f} min "
          f"({result['train']['images_per_second']:.0f} img/s); detect {result['detect_1thread']['images_per_second']:.0f} "
          f"img/s, peak RSS {detected['peak_rss_mb']:.0f} MB"
          + (f"; fast_train {fast['seconds']:.1f} s" if fast else "") + f" -> {out}")
    return result


def _score_holdout(detected: dict, held: list[str], gt: dict, img_dir: Path) -> dict:
    """Holdout figures from ``DETECT_SCRIPT``'s output: err, mark, NME, AUC, median, worst."""
    pred = np.stack([np.asarray(detected["detections"][n]).reshape(-1, 2) for n in held])
    pred_no_tta = np.stack([np.asarray(detected["detections_no_tta"][n]).reshape(-1, 2) for n in held])
    true = np.stack([gt[n].reshape(-1, 2) for n in held])
    sizes = np.array([read_image_size(img_dir / n) for n in held], dtype=np.float64)
    err_per_image = per_image_err(pred, true, sizes)
    err = float(err_per_image.mean())
    nme = per_image_nme(pred, true)
    return {"err": err, "mark": course_mark(err), "nme": float(nme.mean()), "auc08": ced_auc(nme, 0.08),
            "median_err": float(np.median(err_per_image)), "worst_err": float(err_per_image.max()),
            "err_without_flip_tta": float(per_image_err(pred_no_tta, true, sizes).mean())}


def rescore_bench(name: str, data_dir: str | os.PathLike, *, model_path: str | os.PathLike | None = None,
                  results_dir: str | os.PathLike = RESULTS_DIR, command: str | None = None) -> dict:
    """Detect and score a finished benchmark's holdout again with today's code (after a
    change of detection only), keeping its training figures.

    The weights are the ones the run saved (``artifacts/bench-NAME.pt``); the file's
    ``holdout`` and ``detect_1thread`` are replaced, the former figures kept under
    ``rescored.before`` with the commit and date of the rescoring.
    """
    path = Path(results_dir) / f"{name}.json"
    result = json.loads(path.read_text())
    data_dir = Path(data_dir)
    img_dir = data_dir / "images"
    gt = read_gt(data_dir / "gt.csv")
    _, held = split_names(sorted(gt), result["data"]["holdout"], result["data"]["split_seed"])
    model_path = Path(model_path) if model_path else Path("artifacts") / f"bench-{name}.pt"
    with tempfile.TemporaryDirectory() as tmp:
        names_file = Path(tmp) / "names.json"
        names_file.write_text(json.dumps(held))
        detected = run_script(DETECT_SCRIPT, str(model_path), str(img_dir), str(names_file))
    before = {"holdout": result["holdout"], "detect_1thread": result["detect_1thread"],
              "commit": result["machine"].get("commit")}
    result["holdout"] = _score_holdout(detected, held, gt, img_dir)
    result["detect_1thread"] = {"images": len(held), "seconds": detected["seconds"],
                                "images_per_second": len(held) / detected["seconds"],
                                "peak_rss_mb": detected["peak_rss_mb"]}
    result["rescored"] = {"command": command or shown_command(),
                          "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(), "before": before}
    write_result(result, results_dir, name)
    h = result["holdout"]
    print(f"{name} rescored: holdout err {h['err']:.3f} (was {before['holdout']['err']:.3f}), median "
          f"{h['median_err']:.2f}, worst {h['worst_err']:.1f}; detect "
          f"{result['detect_1thread']['images_per_second']:.0f} img/s -> {path}")
    return result


