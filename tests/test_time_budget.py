"""The time budget (``facepoints train --minutes``), time-to-accuracy and CPU facts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import facepoints_lib.core.fit as fit_module
import facepoints_lib.tools.budget as budget_module
from facepoints_lib.tools.bench import time_to_err
from facepoints_lib.tools.budget import (RECIPE_CURVE, TimeBudget, WARMUP_SHARE, curve_recipe,
                                         estimate_reserve_seconds, predicted_err_note)
from facepoints_lib.tools.machine import machine_info
from facepoints_lib.core.dataset import load_faces
from facepoints_lib.core.gt_csv import read_gt
from facepoints_lib.core.model import ModelConfig
from facepoints_lib.core.inference import cpu_flags, cpu_has_bf16
from facepoints_lib.core.config import CascadeConfig, full_config, with_epochs
from facepoints_lib.core.fit import fit

from conftest import (REPO_ROOT, quiet_progress, tiny_model_config, tiny_run, tiny_train_config,
                      without_retired_settings)


@pytest.fixture(scope="module")
def faces64(synth_train):
    """48 training and 8 validation faces at 64 px."""
    gt = read_gt(synth_train / "gt.csv")
    names = sorted(gt)
    return (load_faces(synth_train / "images", 64, gt, names[:48]),
            load_faces(synth_train / "images", 64, gt, names[48:56]))


class FakeClock:
    """A clock that moves only when told: each training step costs ``step_seconds[i]``."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _budget_fit(faces, monkeypatch, minutes: float, step_costs, reserve: float = 0.0, **run):
    """Train the tiny recipe on a time budget read from a fake clock that each training step
    moves on by the next of ``step_costs`` (the last repeats): returns (model, history, log
    lines, clock, steps taken)."""
    clock, logs, taken = FakeClock(), [], []
    real_step = fit_module.train_step

    def costly_step(*args, **kwargs):
        clock.now += step_costs[min(len(taken), len(step_costs) - 1)]
        taken.append(clock.now)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(fit_module, "train_step", costly_step)
    budget = TimeBudget(minutes, reserve, log=logs.append, clock=clock)
    cfg = tiny_train_config(model=tiny_model_config(64), batch_size=8, epochs=500, ema_decay=0.0)
    model, history = fit(faces[0], faces[1], cfg, tiny_run(val_size=8, eval_every=1000, **run),
                         schedule=budget.schedule, progress=quiet_progress, log=logs.append)
    return model, history, logs, clock, len(taken)


def test_a_time_budget_stops_on_time_when_the_steps_slow_down(faces64, monkeypatch):
    """--minutes is a promise: the steps get three times slower after the first ten (a busier
    machine), and training still stops on time, with fewer steps than the first rate promised."""
    costs = [1.0] * 10 + [3.0]
    model, history, logs, clock, steps = _budget_fit(faces64, monkeypatch, minutes=1.0, step_costs=costs)
    # 60 s: ten steps of 1 s, then 3 s each; the step that crosses 60 s is the last
    assert steps == 10 + 17 and clock.now - 1000.0 == pytest.approx(61.0)
    rate_line = next(line for line in logs if line.startswith("time budget 1 min: 1000 ms per step measured"))
    assert "about 10.0 epochs fit" in rate_line                    # 6 steps an epoch, at the first rate
    end_line = next(line for line in logs if line.startswith("time budget: 27 steps (4.5 epochs)"))
    assert "set aside" in end_line
    assert history[-1]["step"] == 27                               # the last validation always runs
    trained = model.metadata["trained"]
    assert trained == {"steps": 27, "epochs": 4.5, "schedule": "time", "minutes": 1.0, "reserve_seconds": 0.0}
    assert model.metadata["train_config"]["epochs"] == 500         # the recipe as given, not rewritten


def test_the_learning_rate_follows_the_clock(monkeypatch):
    clock = FakeClock()
    budget = TimeBudget(10.0, reserve_seconds=60.0, log=lambda _: None, clock=clock)
    schedule = budget.schedule(full_config(), tiny_run(), steps_per_epoch=10)
    span = 10 * 60 - 60                                             # the reserve is set aside first
    factors = []
    for fraction in (0.0, WARMUP_SHARE / 2, WARMUP_SHARE, 0.5 + WARMUP_SHARE / 2, 1.0):
        clock.now = 1000.0 + fraction * span
        factors.append(schedule.lr_factor(step=123))                # the step count does not matter
    assert factors[1] == pytest.approx(0.5) and factors[2] == pytest.approx(1.0)
    assert factors[3] == pytest.approx(0.5) and factors[4] == pytest.approx(0.0, abs=1e-12)
    assert 0 < factors[0] < 0.1
    assert not schedule.finished(0)                                 # at least one step, always
    assert schedule.finished(1) and schedule.to_dict()["minutes"] == 10.0


def test_a_cascade_splits_the_budget_between_its_stages_by_their_epochs():
    """Two fits share one budget: the first stage ends at its share of the time, the second
    (asked for its schedule later, when the first is done) at the budget's end."""
    clock = FakeClock()
    cfg = full_config(epochs=30)
    cfg.cascade = CascadeConfig(epochs=10)
    shares = TimeBudget.stage_shares(cfg)
    assert shares == (30.0, 10.0) and TimeBudget.stage_shares(full_config(cascade=None)) == (1.0,)
    assert TimeBudget.stage_shares(cfg, (0.1, 0.3)) == pytest.approx((3.0, 3.0))   # a dearer step: more time
    budget = TimeBudget(10.0, reserve_seconds=60.0, log=lambda _: None, clock=clock, shares=shares)
    first = budget.schedule(cfg, tiny_run(), steps_per_epoch=10)
    clock.now = 1000.0 + 0.75 * 540 - 1
    assert not first.finished(50)
    clock.now += 2
    assert first.finished(51)                                       # 3/4 of the 540 s left for training
    clock.now += 30                                                 # the stages' hand-over takes a while
    second = budget.schedule(cfg, tiny_run(), steps_per_epoch=10)
    clock.now = 1000.0 + 540 - 1
    assert not second.finished(20)
    clock.now += 2
    assert second.finished(21)                                      # the budget's end, reserve kept
    with pytest.raises(ValueError, match="shares"):
        TimeBudget(1.0, shares=(1.0, 0.0))


def test_a_budget_spent_before_training_says_so_and_trains_one_step(faces64, monkeypatch):
    _, history, logs, clock, steps = _budget_fit(faces64, monkeypatch, minutes=0.01, step_costs=[1.0],
                                                 reserve=30.0)
    assert steps == 1 and history[-1]["step"] == 1
    assert any(line.startswith("warning: the time budget of 0.01 min is spent before training starts")
               and "overshoots the budget" in line for line in logs)


def test_a_step_cap_still_applies_under_a_time_budget(faces64, monkeypatch):
    _, history, _, _, steps = _budget_fit(faces64, monkeypatch, minutes=10.0, step_costs=[1.0], max_steps=4)
    assert steps == 4 and history[-1]["step"] == 4


def test_the_reserve_counts_validation_calibration_and_saving():
    cfg = tiny_train_config(model=tiny_model_config(32))
    none = estimate_reserve_seconds(cfg, tiny_run(), 0)
    some, more = estimate_reserve_seconds(cfg, tiny_run(), 50), estimate_reserve_seconds(cfg, tiny_run(), 5000)
    assert none == budget_module.SAVE_SECONDS < some < more


@pytest.mark.parametrize("minutes, message", [
    (0, "minutes must be a number above 0 to 43200, got 0"),
    ("10", "minutes must be a number above 0 to 43200, got '10'"),
    (1e308, r"minutes must be a number above 0 to 43200, got 1e\+308"),
    (float("nan"), "minutes must be a number above 0 to 43200, got nan"),
])
def test_bad_budgets_are_refused(minutes, message):
    with pytest.raises(ValueError, match=message):
        TimeBudget(minutes)


def test_predicted_err_follows_the_measured_curve(monkeypatch):
    if len(RECIPE_CURVE) < 3:   # fewer than three measured points: no number is made up
        assert predicted_err_note(90, curve_recipe()).startswith("no measured")
    curve = ((10, 4.0, "a"), (30, 3.5, "b"), (90, 3.2, "c"))
    monkeypatch.setattr(budget_module, "RECIPE_CURVE", curve)
    assert "3.20 at 90 epochs" in predicted_err_note(90, full_config(seed=3))        # the seed is free
    assert "fewer epochs do worse" in predicted_err_note(1, curve_recipe())
    # between two measured budgets: log-linear interpolation
    middle = predicted_err_note(60, curve_recipe())
    value = float(middle.split("about ")[1].split()[0])
    assert 3.2 <= value <= 3.5
    # the stages' epochs are free together, in the recipe's proportion (76 of 90)
    assert "3.20 at 90" in predicted_err_note(90, full_config(epochs=45, cascade=CascadeConfig(epochs=38)))
    assert predicted_err_note(45, full_config(epochs=45, cascade=CascadeConfig(epochs=10))).startswith("no measured")
    other = full_config(model=ModelConfig(head="regression"))
    assert predicted_err_note(45, other).startswith("no measured")
    assert predicted_err_note(45, full_config(lr=0.1)).startswith("no measured")
    assert predicted_err_note(45, full_config(cascade=None)).startswith("no measured")    # one network
    monkeypatch.setattr(budget_module, "RECIPE_CURVE", curve[:2])
    assert predicted_err_note(45, curve_recipe()).startswith("no measured")   # two points are no curve


def test_only_the_first_stage_quotes_the_curve():
    """The curve counts the first stage's epochs: the second fit of a cascade's budget
    says it takes the time left instead of quoting it for its own epochs."""
    clock, logs = FakeClock(), []
    cfg = full_config()
    budget = TimeBudget(10.0, log=logs.append, clock=clock, shares=TimeBudget.stage_shares(cfg))
    for _ in range(2):
        schedule = budget.schedule(cfg, tiny_run(), steps_per_epoch=10)
        clock.now += budget_module.RATE_STEPS
        schedule.finished(budget_module.RATE_STEPS)
    assert "holdout err" in logs[0] and "second stage gets the time the first one left" in logs[1]


def test_step_seconds_are_measured_for_each_stage():
    cfg = tiny_train_config(model=tiny_model_config(32), batch_size=4,
                            cascade=CascadeConfig(epochs=1, model=tiny_model_config(32), source_scale=2))
    cfg.cascade.model.second_look = False
    seconds = budget_module.estimate_step_seconds(cfg, tiny_run(), timed=1)
    assert len(seconds) == 2 and all(0 < s < 60 for s in seconds)
    assert len(budget_module.estimate_step_seconds(replace(cfg, cascade=None), tiny_run(), timed=1)) == 1


def test_recipe_curve_is_read_from_the_bench_results():
    """The curve quotes bench/results: the numbers, each stage's epochs and the recipe must match."""
    assert len(RECIPE_CURVE) >= 3
    recipe = budget_module._recipe_key(curve_recipe().to_dict())
    for epochs, err, name in RECIPE_CURVE:
        result = json.loads((REPO_ROOT / "bench" / "results" / f"{name}.json").read_text())
        stored = without_retired_settings(result["config"])
        assert stored["epochs"] == epochs, name
        assert stored["cascade"]["epochs"] == with_epochs(curve_recipe(), epochs).cascade.epochs, name
        assert round(result["holdout"]["err"], 2) == err, name
        assert budget_module._recipe_key(stored) == recipe, name
        assert result["data"] == {"dir": "train", "faces": 5000, "train": 4500, "holdout": 500,
                                  "split_seed": 0}, name
    assert [e for e, _, _ in RECIPE_CURVE] == sorted(e for e, _, _ in RECIPE_CURVE)


def test_benchmarks_score_a_holdout_at_each_validation(faces64):
    """fit's ``on_validation`` hook (how ``facepoints bench`` tracks its holdout) sees each
    validation's model and record, and what it adds is kept in the history."""
    from facepoints_lib.core.fit import evaluate

    seen = []

    def score(model, record):
        seen.append(record["epoch"])
        record["track_err"] = evaluate(model, faces64[1])["err"]

    cfg = tiny_train_config(model=tiny_model_config(64), batch_size=8, epochs=2, ema_decay=0.0)
    _, history = fit(faces64[0], faces64[1], cfg, tiny_run(val_size=8), progress=quiet_progress,
                     log=lambda _: None, on_validation=score)
    assert seen == [1, 2] and [r["epoch"] for r in history] == [1, 2]
    assert all(r["track_err"] == pytest.approx(r["val_err"]) for r in history)   # the same faces


def test_time_to_err_reads_the_tracked_history():
    history = [{"track_err": 4.0, "train_seconds": 10.0}, {"track_err": 3.4, "train_seconds": 20.0},
               {"track_err": 3.3, "train_seconds": 30.0}]
    assert time_to_err(history, (3.5, 3.22)) == {"3.5": 20.0, "3.22": None}
    assert time_to_err([{"val_err": 1.0, "train_seconds": 1.0}], (3.5,)) == {"3.5": None}


def test_cpu_flags_and_the_onednn_cap(monkeypatch):
    flags = cpu_flags()
    assert set(flags) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert all(isinstance(v, bool) for v in flags.values())
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_has_bf16() is False                       # capped as on a CPU without bf16
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    assert cpu_has_bf16() == (flags["avx512_bf16"] or flags["amx_bf16"])


def test_machine_info_names_the_cpu_flags_and_kernels(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    info = machine_info()
    assert set(info["cpu_flags"]) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert info["isa_overrides"]["ONEDNN_MAX_CPU_ISA"] == "AVX2" and info["bf16_native"] is False
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_speed_bench_records_rates_per_layout_and_the_cpu(tmp_path):
    from facepoints_lib.tools.speed import run_speed_bench

    run_speed_bench(name="speed-test", seconds=0.0, results_dir=tmp_path)
    saved = json.loads((tmp_path / "speed-test.json").read_text())
    assert set(saved["train_images_per_second"]) == {"channels_last", "contiguous"}
    assert all(rate > 0 for rate in saved["train_images_per_second"].values())
    for rates in saved["detect_network_faces_per_second"].values():
        assert set(rates) == {"as_trained", "batch_norm_folded"} and all(v > 0 for v in rates.values())
    assert set(saved["machine"]["cpu_flags"]) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}


def test_profile_times_the_training_step_itself(tmp_path):
    """``facepoints profile`` runs ``fit.train_step`` (its phases labelled from outside) on
    faces loaded as training loads them, and reports each phase's time and the CPU."""
    from facepoints_lib.tools.speed import profile_training

    tiny = ["model.image_size=32", "model.stem_width=8", "model.widths=(8,12,16,16)",
            "model.depths=(1,1,1,1)", "model.decoder_width=8", "bf16='off'"]
    before = (fit_module.augment_batch, fit_module.train_step)
    text = profile_training(steps=2, batch_size=8, threads=1, overrides=tiny, out=tmp_path / "p.txt")
    assert (tmp_path / "p.txt").read_text() == text
    assert "heatmap head, 32 px, batch 8, 1 thread, bf16=False" in text and "flags:" in text
    assert (fit_module.augment_batch, fit_module.train_step) == before      # the labels are gone again
    phases = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("  ") and line.rstrip().endswith("ms/step")}
    assert set(phases) == {"augment", "forward", "backward", "optimizer"}
    assert all(ms > 0 for ms in phases.values())
