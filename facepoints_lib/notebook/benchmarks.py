"""Benchmark results for the notebooks: ``bench/results/*.json`` (written by
``facepoints bench``) read, tabulated, grouped by what their ``--set`` overrides change,
and the shipped recipe's measured figures summed up.

Not frozen into ``solution.py``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from ..core.model import build_model


# Overrides that only set the budget of a run; results are compared within one budget.
BUDGET_KEYS = ("epochs", "threads", "max_steps", "device", "eval_every", "seed")
# Stored settings that do not change what a run learns (left out of config comparisons).
_NOT_RECIPE = BUDGET_KEYS + ("val_size", "max_images", "bf16")

# First matching prefix of an override key -> the comparison it belongs to.
GROUP_PREFIXES = (
    ("model.head", "head"), ("model.image_size", "resolution"), ("loss", "loss"), ("heatmap_", "loss"),
    ("augment.", "augmentation"), ("model.", "capacity"), ("optimizer", "optimisation"),
    ("lr", "optimisation"), ("batch_size", "optimisation"), ("ema_decay", "optimisation"),
    ("weight_decay", "optimisation"), ("warmup_epochs", "optimisation"), ("schedule", "optimisation"),
)


def load_bench_results(results_dir: str | Path) -> list[dict]:
    """Every readable ``*.json`` training result in ``results_dir``, sorted by name ([] if none).

    The speed and detection benchmarks' files (no ``holdout``, but a ``machine`` record)
    and ``facepoints second-stage``'s (a ``base_model``: a second network trained behind
    a model, not a training run of its own) are passed over quietly; anything else
    unreadable is skipped with a warning.
    """
    results = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(result, dict) and "machine" in result and ("holdout" not in result
                                                                   or "base_model" in result):
                continue                                 # bench-speed / bench-detect / second-stage output
            if not isinstance(result["holdout"]["err"], (int, float)) or "history" not in result["train"]:
                raise ValueError("missing holdout.err or train.history")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"skipped {path.name}: not a benchmark result ({exc})", stacklevel=2)
            continue
        result.setdefault("name", path.stem)
        results.append(result)
    return results


def split_overrides(result: dict) -> tuple[dict, dict]:
    """(budget overrides, other overrides) of a result, each as {key: value text}."""
    budget, changes = {}, {}
    for text in result.get("overrides", []):
        key, _, value = str(text).partition("=")
        (budget if key.strip() in BUDGET_KEYS else changes)[key.strip()] = value.strip()
    return budget, changes


def _flat_config(result: dict) -> dict:
    """The stored recipe as {dotted key: value}, budget settings left out."""
    flat = {}
    for key, value in result.get("config", {}).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif key not in _NOT_RECIPE:
            flat[key] = value
    return flat


def _value_text(value) -> str:
    return f"({','.join(map(str, value))})" if isinstance(value, (list, tuple)) else str(value)


def budget_baselines(results: list[dict]) -> dict[str, dict]:
    """{budget: baseline}: per budget, the first result (by name) run without changes."""
    baselines: dict[str, dict] = {}
    for r in sorted(results, key=lambda r: r["name"]):
        if not split_overrides(r)[1]:
            baselines.setdefault(budget_label(r), r)
    return baselines


def config_changes(result: dict, baseline: dict | None = None) -> dict:
    """What ``result`` changes against ``baseline`` (same budget), as {key: value text}.

    Its overrides come first, less those that only restate the baseline's setting (the
    experiment table pins its baseline's optimiser); then any other stored setting that
    differs, which catches a default that changed between the two runs.
    """
    _, changes = split_overrides(result)
    if baseline is None or baseline is result:
        return changes
    base, mine = _flat_config(baseline), _flat_config(result)
    changes = {k: v for k, v in changes.items()
               if k not in base or _value_text(base[k]) != _value_text(mine.get(k, v))}
    for key, value in mine.items():
        if key in base and key not in changes and _value_text(base[key]) != _value_text(value):
            changes[key] = _value_text(value)
    return changes


def experiment_group(result: dict, baseline: dict | None = None) -> str:
    """What a result compares: "baseline", "head", "loss", "augmentation", ...

    Judged from its changes against ``baseline`` (see ``config_changes``); without one,
    from its overrides alone. Changes that belong to several comparisons: "combination".
    """
    changes = config_changes(result, baseline)
    if not changes:
        return "baseline"
    groups = {next((group for prefix, group in GROUP_PREFIXES if key.startswith(prefix)), key)
              for key in changes}
    return groups.pop() if len(groups) == 1 else "combination"


def budget_label(result: dict) -> str:
    """The training budget a result belongs to, e.g. ``"8 epochs, 1 thread"``."""
    cfg = result.get("config", {})
    threads = result.get("train", {}).get("threads", cfg.get("threads"))
    return f"{cfg.get('epochs', '?')} epochs, {threads} thread{'' if threads == 1 else 's'}"


def result_parameters(result: dict) -> int | None:
    """The network's parameter count: as recorded, else counted from the stored model config.

    Results written before ``bench`` counted the EMA copy (whose weights do not require
    gradients) record 0.
    """
    if result.get("parameters"):
        return int(result["parameters"])
    try:
        return sum(p.numel() for p in build_model(result["config"]["model"]).parameters())
    except (KeyError, TypeError, ValueError):
        return None


def bench_rows(results: list[dict]) -> list[dict]:
    """One flat row per result: name, group, budget, change, parameters, err, mark, nme, auc, time."""
    rows = []
    baselines = budget_baselines(results)
    for r in results:
        baseline = baselines.get(budget_label(r))
        changes = config_changes(r, baseline)
        train = r.get("train", {})
        group = "shipped recipe" if r["name"] in RECIPE_RESULTS else experiment_group(r, baseline)
        rows.append({
            "name": r["name"], "group": group, "budget": budget_label(r),
            "change": ", ".join(f"{k}={v}" for k, v in changes.items()) or "-",
            "parameters": result_parameters(r), "err": r["holdout"]["err"],
            "mark": r["holdout"].get("mark"), "nme": r["holdout"].get("nme"),
            "auc08": r["holdout"].get("auc08"),
            "train_minutes": train.get("wall_seconds", float("nan")) / 60,
            "images_per_second": train.get("images_per_second"),
        })
    return rows


def format_table(rows: list[dict], columns: list[str], formats: dict | None = None) -> str:
    """A plain-text table of ``rows`` (dicts) with the given columns and format specs."""
    formats = formats or {}

    def cell(row, col):
        value = row.get(col)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "-"
        return format(value, formats[col]) if col in formats else str(value)

    cells = [[cell(r, c) for c in columns] for r in rows]
    numeric = [all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows) for c in columns]
    widths = [max([len(c)] + [len(line[k]) for line in cells]) for k, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(columns, widths, numeric)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(line, widths, numeric))
              for line in cells]
    return "\n".join(line.rstrip() for line in lines)


def budget_epochs(label: str) -> float:
    """The epoch count of a ``budget_label`` (for sorting; unknown: 0)."""
    head = label.split(" ", 1)[0]
    return float(head) if head.replace(".", "", 1).isdigit() else 0.0


def _by_budget(items: list[dict], label) -> dict[str, list[dict]]:
    """``items`` split by ``label(item)``, a training budget, largest budget first."""
    budgets: dict[str, list[dict]] = {}
    for item in items:
        budgets.setdefault(label(item), []).append(item)
    return {b: budgets[b] for b in sorted(budgets, key=lambda b: (-budget_epochs(b), b))}


def rows_by_budget(rows: list[dict]) -> dict[str, list[dict]]:
    """``bench_rows`` split by training budget, largest budget first, each sorted by err."""
    return {b: sorted(members, key=lambda r: r["err"])
            for b, members in _by_budget(rows, lambda r: r["budget"]).items()}


def results_by_budget(results: list[dict]) -> dict[str, list[dict]]:
    """Benchmark results split by training budget, largest budget first."""
    return _by_budget(results, budget_label)


def shorten(text: str, width: int = 44) -> str:
    """``text`` cut to ``width`` characters with an ellipsis (table cells)."""
    return text if len(text) <= width else text[:width - 1] + "…"


def group_experiments(results: list[dict]) -> dict[str, list[dict]]:
    """{"group · budget": results}, each with the baseline(s) of that budget first.

    Runs are compared only within one training budget (an 8-epoch baseline beside a
    90-epoch candidate says nothing about the change); groups without a baseline in
    their budget keep just their own results.
    """
    first = budget_baselines(results)
    baselines: dict[str, list[dict]] = {}
    for r in results:
        if experiment_group(r, first.get(budget_label(r))) == "baseline":
            baselines.setdefault(budget_label(r), []).append(r)
    groups: dict[str, list[dict]] = {}
    for r in results:
        group = experiment_group(r, first.get(budget_label(r)))
        if group != "baseline":
            members = groups.setdefault(f"{group} · {budget_label(r)}", [])
            for base in baselines.get(budget_label(r), []):
                if base not in members:
                    members.insert(0, base)
            members.append(r)
    return groups



# ---- the shipped recipe's measured figures ------------------------------------------------

# Benchmark files of the shipped recipe (``facepoints bench --seed N`` and ``facepoints
# bench-rotation`` on its model); notebooks quote figures from them, never typed.
RECIPE_RESULTS = ("turn-seed0", "turn-seed1")
ROTATION_RESULTS = ("rotation-turn-seed0", "rotation-turn-seed1")


def _flags(result: dict) -> str:
    flags = result.get("machine", {}).get("cpu_flags", {})
    return " ".join(k for k, v in flags.items() if v) or "unknown CPU flags"


def recipe_summary(results_dir: str | Path) -> str:
    """A few lines with the shipped recipe's holdout, turned-face and speed figures, read
    from ``RECIPE_RESULTS`` / ``ROTATION_RESULTS`` in ``results_dir``."""
    results_dir = Path(results_dir)

    def present(names: tuple[str, ...]) -> list[tuple[str, dict]]:
        return [(name, json.loads((results_dir / f"{name}.json").read_text())) for name in names
                if (results_dir / f"{name}.json").is_file()]

    lines = []
    for name, r in present(RECIPE_RESULTS):
        h, t = r["holdout"], r["train"]
        lines.append(f"{name}: holdout err {h['err']:.3f} (mark {h['mark']}), median {h['median_err']:.2f}, "
                     f"worst {h['worst_err']:.1f} on {r['data']['holdout']} faces never trained on; "
                     f"trained in {t['fit_seconds'] / 60:.1f} min on {t['threads']} threads ({_flags(r)})")
    for name, r in present(ROTATION_RESULTS):
        s, rolled = r["sets"], r["rolled_over_45_vs_2x_upright_median"]
        speed = r["detect_1thread_images_per_second"]
        lines.append(f"{name}: upright err {s['upright/second']['err']:.3f}; quarter turns "
                     f"{s['quarter/second']['err']:.3f} ({s['quarter/second']['ratio_to_upright']:.2f}x upright); "
                     f"any angle {s['any/second']['err']:.3f} ({s['any/second']['ratio_to_upright']:.2f}x); first look "
                     f"only: {s['quarter/single']['err']:.2f} and {s['any/single']['err']:.2f}; faces turned past 45 "
                     f"degrees: median err {rolled['any_angle']:.2f} (twice the upright median: {rolled['limit']:.2f}); "
                     f"detect {speed['second']:.0f} img/s on 1 thread ({speed['single']:.0f} with one look; "
                     f"{_flags(r)})")
    if not lines:
        return (f"no benchmark results of the shipped recipe in {results_dir.name}/ "
                f"({', '.join(RECIPE_RESULTS + ROTATION_RESULTS)}): see bench/README.md")
    return "\n".join(lines)


def bench_conclusion(rows: list[dict]) -> str:
    """Per budget, the best run against that budget's baseline, in a few lines."""
    lines = []
    for budget, members in rows_by_budget(rows).items():
        best = members[0]
        base = next((r for r in members if r["group"] == "baseline"), None)
        line = f"{budget} ({len(members)} run{'s' if len(members) != 1 else ''}): best {best['name']} err {best['err']:.3f}"
        if best["change"] != "-":
            line += f" ({shorten(best['change'], 60)})"
        if base is not None and base is not best:
            line += f"; baseline {base['name']} {base['err']:.3f} ({best['err'] - base['err']:+.3f})"
        lines.append(line)
    return "\n".join(lines) or "no results"
