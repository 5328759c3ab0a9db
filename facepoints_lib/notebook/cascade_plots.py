"""The cascade's figures: how good it can get (notebook 04) and the single network against
the cascade at equal training time (notebook 03), read from ``bench/results``.

* ``how_good`` gathers each point's err of the label floor (both estimates of
  ``facepoints label-floor``), the shipped file's first stage alone and the whole cascade
  as detection runs it (``facepoints bench-cascade``); ``plot_how_good`` draws them side
  by side per point.
* ``equal_time`` gathers holdout err and median against training work (optimiser steps
  weighted by each network's forward FLOPs; minutes beside) for the single network (the
  ``curve-e*`` benchmarks and the 90-epoch ``turn-seed0``) and for the cascades
  (benchmarks whose recipe has a second stage, second stages trained behind a benchmark's
  model) on that curve's CPU kind; ``plot_equal_time`` draws either figure for both.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..core.inference import predict
from ..core.metrics import per_image_err
from ..core.model import build_model
from ..core.schema import NUM_POINTS, POINT_NAMES
from ..tools.budget import RECIPE_CURVE
from .figure_layout import MIN_FONT, place_labels

FLOOR_RESULT = "label-floor"
CASCADE_RESULT = "cascade-shipped-native-bf16"     # the shipped file, on its validation faces
SINGLE_CURVE = ("curve-e6-seed0", "curve-e12-seed0", "curve-e24-seed0", "turn-seed0")   # turn-seed0: 90 epochs
SHIPPED_CURVE = tuple(name for _, _, name in RECIPE_CURVE)          # the shipped cascade at 12, 24, 90 epochs
SERIES_COLOURS = {"labels (duplicates)": "#999999", "labels, upper bound (two networks)": "#cccccc",
                  "the first network alone": "#1f77b4", "cascade": "#d62728"}


def _read(results_dir: Path, name: str) -> dict | None:
    path = Path(results_dir) / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def how_good(results_dir: str | Path, floor: str = FLOOR_RESULT, cascade: str = CASCADE_RESULT) -> dict:
    """``{"series": {name: 14 per-point errs}, "overall": {name: err}, "faces": {...}}`` from
    the result files (a series whose file is missing is left out)."""
    series, overall, faces = {}, {}, {}
    floor_result = _read(results_dir, floor)
    if floor_result is not None:
        for key, name in (("duplicates", "labels (duplicates)"), ("two_networks", "labels, upper bound (two networks)")):
            part = floor_result.get(key, {})
            if "per_point_err" in part:
                series[name], overall[name] = part["per_point_err"], part["err"]
                faces[name] = part.get("pairs", part.get("faces"))
    cascade_result = _read(results_dir, cascade)
    if cascade_result is not None:
        for key, name in (("first_stage_shrunk", "the first network alone"),   # as the cascade runs it
                          ("cascade_second_unmirrored", "cascade")):                # as detection runs it
            row = cascade_result["ways"][key]
            series[name], overall[name] = row["per_point_err"], row["err"]
            faces[name] = cascade_result["faces"]
    return {"series": series, "overall": overall, "faces": faces}


def how_good_report(found: dict) -> str:
    """``how_good``'s overall figures as lines of text (with how many faces or pairs)."""
    if not found["series"]:
        return "no result files yet: facepoints label-floor and facepoints bench-cascade write them"
    return "\n".join(f"{name}: err {found['overall'][name]:.2f} ({found['faces'][name]} "
                     f"{'pairs' if name == 'labels (duplicates)' else 'faces'})" for name in found["series"])


def live_stages(model, faces) -> str:
    """The loaded model's first stage alone against the whole of it, on ``faces`` (decoded
    at ``model.decode_side()``), as a line of text; a single network says so."""
    if model.refiner is None:
        return "the loaded model is a single network (no second stage to compare)"
    first = copy.deepcopy(model)
    first.attach_refiner(None)
    truth = faces.keypoints.double().numpy()
    alone = per_image_err(predict(first, faces.images), truth)
    both = per_image_err(predict(model, faces.images), truth)
    return (f"on the {len(truth)} faces loaded here: first stage alone err {alone.mean():.2f} "
            f"(median {np.median(alone):.2f}), the cascade {both.mean():.2f} (median {np.median(both):.2f})")


def plot_how_good(ax, found: dict) -> None:
    """Grouped bars: each point's err for every series of ``how_good``."""
    series = found["series"]
    if not series:
        ax.text(0.5, 0.5, "no result files yet (facepoints label-floor, bench-cascade)", ha="center",
                transform=ax.transAxes)
        return
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        ax.bar(np.arange(NUM_POINTS) + (k - (len(series) - 1) / 2) * width, values, width,
               color=SERIES_COLOURS.get(name), label=f"{name}: {found['overall'][name]:.2f}")
    ax.set_xticks(np.arange(NUM_POINTS))
    ax.set_xticklabels([f"{i} {name}" for i, name in enumerate(POINT_NAMES)], rotation=60, ha="right",
                       fontsize=MIN_FONT)
    ax.set_ylabel("err of the point")
    ax.legend(fontsize=MIN_FONT, loc="upper right", title="overall err", title_fontsize=MIN_FONT)
    ax.grid(axis="y", alpha=0.3)


def _cpu(result: dict) -> str:
    machine = result.get("machine", {})
    flags = machine.get("cpu_flags", {})
    return "native bf16" if machine.get("bf16_native") or flags.get("avx512_bf16") else "AVX2 only"


@functools.lru_cache(maxsize=None)
def _forward_flops(model_json: str) -> int:
    """Forward FLOPs of one face through the network a result file's model config describes."""
    net = build_model(json.loads(model_json)).eval()
    side = net.config.image_size
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(1, 3, side, side))
    return counter.get_total_flops()


def _cost(model: dict, reference: dict) -> float:
    """What one training step of ``model`` costs in steps of ``reference`` (forward FLOPs:
    a 64 px network's step counts 0.44 of a 96 px one's)."""
    return _forward_flops(json.dumps(model, sort_keys=True)) / _forward_flops(json.dumps(reference, sort_keys=True))


def _stages(result: dict) -> list[tuple[int, dict]]:
    """``(optimiser steps, model config)`` of each stage a benchmark trained."""
    stages = [(result["train"]["steps"], result["config"]["model"])]
    second = result["train"].get("second_stage") or {}
    if second.get("history"):
        stages.append((second["history"][-1]["step"], result["config"]["cascade"]["model"]))
    return stages


def _row(name: str, stages: list[tuple[int, dict]], holdout: dict, seconds: float, reference: dict) -> dict:
    """One point of ``equal_time``: the stages' steps, their FLOPs-weighted work, the holdout figures."""
    return {"name": name, "steps": sum(steps for steps, _ in stages),
            "work": sum(steps * _cost(model, reference) for steps, model in stages),
            "err": holdout["err"], "median_err": holdout["median_err"], "minutes": seconds / 60}


def _bench_row(r: dict, reference: dict) -> dict:
    return _row(r["name"], _stages(r), r["holdout"], r["train"]["wall_seconds"], reference)


def _second_stage_row(results_dir: Path, name: str, r: dict, reference: dict) -> dict | None:
    """A ``facepoints second-stage --holdout`` run behind a benchmark's model, counted with
    that benchmark's first stage (its steps and training minutes); None without them."""
    base_name = Path(r.get("base_model", "")).stem
    base = _read(results_dir, base_name[len("bench-"):]) if base_name.startswith("bench-") else None
    if base is None or not r.get("history"):
        return None
    stages = _stages(base)[:1] + [(r["history"][-1]["step"], r["cascade"]["model"])]
    return _row(name, stages, r["holdout"]["cascade"], base["train"]["fit_seconds"] + r["seconds"]["train"],
                reference)


def equal_time(results_dir: str | Path, single: tuple[str, ...] = SINGLE_CURVE,
               shipped: tuple[str, ...] = SHIPPED_CURVE) -> dict:
    """``{"single": [row], "cascade": [row], "shipped": [row], "cpu": kind}``, each row
    ``{"name", "steps", "work", "err", "median_err", "minutes"}``: holdout err against
    training work for the single network's curve, for every other cascade on the CPU kind
    of that curve (benchmarks whose recipe has a second stage, and ``second-stage
    --holdout`` runs behind a benchmark's model) and for the shipped cascade's curve (the
    benchmarks ``--minutes`` predicts from, on whichever CPU ran them: work does not
    depend on it). Work is counted in optimiser steps of 64 faces, both stages, each step
    weighted by its network's forward FLOPs against the curve's network (a busy machine
    changes neither), with the minutes each run took beside them."""
    results_dir = Path(results_dir)
    curve = [r for r in (_read(results_dir, name) for name in single) if r is not None]
    kind = _cpu(curve[0]) if curve else None
    reference = curve[0]["config"]["model"] if curve else None
    points = {"single": [_bench_row(r, reference) for r in curve], "cascade": [], "shipped": [], "cpu": kind}
    if reference is not None:                 # the shipped recipe's own curve, on whichever CPU measured it
        for r in (_read(results_dir, name) for name in shipped):
            if r is not None:                 # named short: the figure is crowded at the small budgets
                points["shipped"].append({**_bench_row(r, reference), "name": f"shipped e{r['config']['epochs']}"})
    for path in sorted(results_dir.glob("*.json")):
        r = json.loads(path.read_text())
        if not isinstance(r, dict) or _cpu(r) != kind or path.stem in shipped:
            continue
        if (r.get("config") or {}).get("cascade") and "holdout" in r:
            points["cascade"].append(_bench_row(r, reference))
        elif isinstance(r.get("holdout"), dict) and "cascade" in r["holdout"]:
            row = _second_stage_row(results_dir, path.stem, r, reference)
            if row is not None:
                points["cascade"].append(row)
    for key in ("single", "cascade", "shipped"):
        points[key].sort(key=lambda row: (row["work"], row["name"]))
    return points


def plot_equal_time(ax, points: dict, figure: str = "err") -> None:
    """Holdout ``figure`` (``"err"``, the mean, or ``"median_err"``) against training
    work (``equal_time``'s FLOPs-weighted steps): the single network's curve and the cascades."""
    size = 49.0                                     # marker area, points^2 (markersize 7)
    series = (("single", "o-", "#1f77b4", "single network"), ("cascade", "s", "#d62728", "cascade (both stages)"),
              ("shipped", "D-", "#2ca02c", "the shipped cascade"))
    dots = [(row["work"], row[figure]) for key, *_ in series for row in points.get(key, [])]
    names, colours = [], []
    for key, style, colour, label in series:
        rows = points.get(key, [])
        if rows:
            xs, ys = [row["work"] for row in rows], [row[figure] for row in rows]
            if style.endswith("-"):
                ax.plot(xs, ys, "-", color=colour, lw=1)
            ax.scatter(xs, ys, s=size, marker=style[0], color=colour, label=label, zorder=3)
            names += [row["name"] for row in rows]
            colours += [colour] * len(rows)
    place_labels(ax, dots, names, colours, dots, size)        # all at once: no label over another
    if dots:                                        # room for the labels inside the axes
        xs, ys = [m for m, _ in dots], [e for _, e in dots]
        ax.set_xlim(0, max(xs) * 1.35)
        ax.set_ylim(min(ys) * 0.85, max(ys) * 1.12)
    ax.set_xlabel("training work: steps of 64 faces, both stages, in the single network's FLOPs")
    ax.set_ylabel("holdout err (500 faces)" if figure == "err" else "median per-face err (500 faces)")
    ax.grid(alpha=0.3)
    if dots:
        ax.legend(fontsize=MIN_FONT)
