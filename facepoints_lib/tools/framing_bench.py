"""Benchmark of framing and confidence: faces cut by a border, pictures with no face, and
whether the confidence says which answers to trust.

``facepoints bench-framing MODEL DATA CUT NOT_FACES`` detects, with one thread and
``detect_details``, the faces a model never trained on (its own validation faces, named
in the file, or ``--holdout N`` of ``DATA``), the same faces turned by quarter turns
(``rotation_bench.turn_quarter``), their cut copies (``facepoints make-cut``, the same
faces), and pictures that are no face crop (``facepoints make-not-faces``). Each set is
detected with and without the second try, and reports:

* err (mean, median, worst) of each set; cut / uncut and turned / upright ratios;
* the share of the summed err held by the 2 % least confident faces (upright, turned
  and cut pooled);
* pictures flagged as no face crop, per kind, and real faces flagged;
* calibration: in 5 bins of confidence (equal counts, pooled sets), mean expected err
  against mean measured err, with the model's stored calibration and with one refitted
  on the other half of the faces (two folds: no face scores its own fit);
* detect img/s on one thread with and without the second try, and its share of faces.

Results go to ``bench/results/<name>.json``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..core.checkpoint import load_checkpoint
from ..core.confidence import (LEAST_CONFIDENT, Calibration, calibration_bins, expected_err, fit_power_law,
                               least_confident_share)
from ..core.dataset import split_names
from ..core.detect import detect_details
from ..core.gt_csv import read_gt
from ..core.images import read_image, read_image_size
from ..core.inference import restores_torch_threads
from ..core.metrics import course_mark, per_point_err
from .machine import RESULTS_DIR, machine_info, shown_command, write_result
from .rotation_bench import QUARTERS, turn_quarter



def _detect(model_path, folder: Path, names, second_try: bool) -> tuple[dict, dict, float]:
    start = time.perf_counter()
    points, trust = detect_details(model_path, folder, filenames=names, threads=1, second_try=second_try)
    return points, trust, time.perf_counter() - start


def _errors(points: dict, gt: dict, sizes: dict, names) -> np.ndarray:
    """Per point err (N, 14) of the named faces, each in its own picture's size."""
    pred = np.stack([points[n].reshape(-1, 2) for n in names])
    true = np.stack([gt[n].reshape(-1, 2) for n in names])
    return per_point_err(pred, true, np.array([sizes[n] for n in names], dtype=np.float64))


def _summary(err: np.ndarray, seconds: float) -> dict:
    return {"faces": len(err), "err": float(err.mean()), "mark": course_mark(float(err.mean())),
            "median_err": float(np.median(err)), "worst_err": float(err.max()),
            "images_per_second": len(err) / seconds}


def _cross_fitted(spread: np.ndarray, blur: np.ndarray, err: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Expected err of each face from a face calibration fitted on the other fold only."""
    out = np.empty(len(err))
    for k in (0, 1):
        fit = fold != k
        coef = fit_power_law(spread[fit], blur[fit], err[fit])
        cal = Calibration(face=coef, point=coef, no_face_blur=1.0, faces=int(fit.sum()))
        out[~fit] = expected_err(spread[~fit, None], blur[~fit, None], cal)[0]
    return out


@restores_torch_threads
def run_framing_bench(model_path, data_dir, cut_dir, not_face_dir, *, name: str = "framing",
                      holdout: int | None = None, split_seed: int = 0, seed: int = 0,
                      results_dir=RESULTS_DIR, command: str | None = None) -> dict:
    """Run the benchmark described in the module docstring; write and return its result."""
    torch.set_num_threads(1)
    data_dir, cut_dir, not_face_dir = Path(data_dir), Path(cut_dir), Path(not_face_dir)
    gt = read_gt(data_dir / "gt.csv")
    if holdout:
        names, source = split_names(sorted(gt), holdout, split_seed)[1], f"holdout {holdout}, split seed {split_seed}"
    else:
        names, source = load_checkpoint(model_path)["metadata"].get("val_names") or [], "the model's validation faces"
    cut_gt = read_gt(cut_dir / "gt.csv")
    missing = sorted(set(names) - set(cut_gt))
    if not names or missing:
        raise ValueError(f"{cut_dir} must hold cut copies of the same faces ({source}); "
                         f"{len(missing)} missing, e.g. {missing[:3]}")
    rng = np.random.default_rng(seed)
    sizes = {n: read_image_size(data_dir / "images" / n) for n in names}
    sets: dict[str, tuple] = {"upright": (data_dir / "images", gt, sizes)}
    with tempfile.TemporaryDirectory() as tmp:
        turned_gt, turned_sizes = {}, {}
        for i, n in enumerate(names):
            img, pts = turn_quarter(read_image(data_dir / "images" / n), gt[n].reshape(-1, 2),
                                    QUARTERS[(i + int(rng.integers(4))) % 4])
            out = f"{Path(n).stem}.png"
            img.save(Path(tmp) / out)
            turned_gt[out], turned_sizes[out] = pts.reshape(-1), img.size
        sets["turned"] = (Path(tmp), turned_gt, turned_sizes)
        sets["cut"] = (cut_dir / "images", cut_gt, {n: read_image_size(cut_dir / "images" / n) for n in names})
        result_sets, pooled = {}, {}
        for label, (folder, truth, shapes) in sets.items():
            chosen = names if label != "turned" else sorted(truth)
            entry = {}
            for second_try in (True, False):
                points, trust, seconds = _detect(model_path, folder, chosen, second_try)
                err = _errors(points, truth, shapes, chosen)
                summary = _summary(err.mean(1), seconds)
                summary["flagged_no_face"] = float(np.mean([trust[n].no_face for n in chosen]))
                summary["second_try_share"] = float(np.mean([trust[n].look == "padded" for n in chosen]))
                entry["with_second_try" if second_try else "without_second_try"] = summary
                if second_try:
                    pooled[label] = (err, trust, chosen)
            result_sets[label] = entry
        not_faces = sorted(p.name for p in (not_face_dir / "images").iterdir())
        kinds = dict(line.strip().split(",", 1) for line in
                     (not_face_dir / "kinds.csv").read_text().splitlines()[1:] if line.strip())
        _, trust, seconds = _detect(model_path, not_face_dir / "images", not_faces, True)
    flagged = {k: float(np.mean([trust[n].no_face for n in not_faces if kinds.get(n) == k]))
               for k in sorted(set(kinds.values()))}

    err = np.concatenate([pooled[k][0].mean(1) for k in pooled])
    expected = np.concatenate([[pooled[k][1][n].expected_err for n in pooled[k][2]] for k in pooled])
    worst_faces, worst_share = least_confident_share(expected, err)
    # the signals again, for the cross-fitted calibration (detect_details keeps them per face)
    cal = Calibration.from_dict(load_checkpoint(model_path)["metadata"]["calibration"])
    spread_face = np.concatenate([[pooled[k][1][n].spread for n in pooled[k][2]] for k in pooled])
    blur_face = np.concatenate([[pooled[k][1][n].blur for n in pooled[k][2]] for k in pooled])
    fold = np.tile(np.arange(len(names)) % 2, len(pooled))
    up, tu, cu = (result_sets[k]["with_second_try"] for k in ("upright", "turned", "cut"))
    cu_before = result_sets["cut"]["without_second_try"]
    result = {
        "name": name, "command": command or shown_command(), "model": Path(model_path).name,
        "faces": {"source": source, "count": len(names)}, "sets": result_sets,
        "ratios": {"cut_over_uncut": cu["err"] / up["err"], "cut_over_uncut_without_second_try":
                   cu_before["err"] / result_sets["upright"]["without_second_try"]["err"],
                   "turned_over_upright": tu["err"] / up["err"]},
        "least_confident": {"share_of_faces": LEAST_CONFIDENT, "faces": worst_faces,
                            "share_of_summed_err": worst_share},
        "no_face": {"not_faces": len(not_faces), "flagged": float(np.mean([trust[n].no_face for n in not_faces])),
                    "flagged_by_kind": flagged, "real_faces_flagged": {k: v["with_second_try"]["flagged_no_face"]
                                                                       for k, v in result_sets.items()},
                    "images_per_second": len(not_faces) / seconds},
        "calibration": {"stored": cal.to_dict(), "bins": calibration_bins(expected, err),
                        "bins_cross_fitted": calibration_bins(_cross_fitted(spread_face, blur_face, err, fold), err)},
        "detect_speed_ratio_upright": up["images_per_second"]
        / result_sets["upright"]["without_second_try"]["images_per_second"],
        "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = write_result(result, results_dir, name)
    worst_bin = max(abs(b["ratio"] - 1) for b in result["calibration"]["bins"])
    print(f"{name}: upright err {up['err']:.3f} (median {up['median_err']:.2f}), turned {tu['err']:.3f} "
          f"({result['ratios']['turned_over_upright']:.2f}x), cut {cu['err']:.2f} "
          f"({result['ratios']['cut_over_uncut']:.2f}x uncut; {result['ratios']['cut_over_uncut_without_second_try']:.2f}x "
          f"without the second try); 2 % least confident hold {100 * result['least_confident']['share_of_summed_err']:.0f} % "
          f"of the err; not-faces flagged {100 * result['no_face']['flagged']:.1f} %, real faces "
          f"{100 * result['no_face']['real_faces_flagged']['upright']:.1f} %; calibration bins within "
          f"{100 * worst_bin:.0f} %; detect {up['images_per_second']:.0f} img/s "
          f"({result['detect_speed_ratio_upright']:.2f}x without the second try) -> {out}")
    return result
