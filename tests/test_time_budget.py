"""Progressive resizing, the time budget (``minutes``), time-to-accuracy and CPU facts."""

from __future__ import annotations

import json

import pytest
import torch

import facepoints_lib.core.budget as budget_module
import facepoints_lib.core.fit as train_module
from facepoints_lib.tools.bench import time_to_err
from facepoints_lib.tools.machine import machine_info
from facepoints_lib.core.dataset import load_faces
from facepoints_lib.core.gt_csv import read_gt
from facepoints_lib.core.model import ModelConfig
from facepoints_lib.core.inference import cpu_flags, cpu_has_bf16
from facepoints_lib.core.budget import RECIPE_CURVE, epochs_for_budget, predicted_err_note
from facepoints_lib.core.config import TrainConfig, full_config
from facepoints_lib.core.fit import fit

from conftest import REPO_ROOT, quiet_progress, tiny_model_config, tiny_train_config, without_retired_settings


@pytest.fixture(scope="module")
def faces64(synth_train):
    """48 training and 8 validation faces at 64 px."""
    gt = read_gt(synth_train / "gt.csv")
    names = sorted(gt)
    return (load_faces(synth_train / "images", 64, gt, names[:48]),
            load_faces(synth_train / "images", 64, gt, names[48:56]))


def _config(**overrides) -> TrainConfig:
    values = dict(model=tiny_model_config(64), batch_size=8, val_size=8, epochs=2, ema_decay=0.0)
    values.update(overrides)
    return tiny_train_config(**values)


def _fit(faces, cfg, **kwargs):
    logs: list[str] = []
    model, history = fit(faces[0], faces[1], cfg, progress=quiet_progress, log=logs.append, **kwargs)
    return model, history, logs


def test_epochs_for_budget_counts_steps_and_validations():
    cfg = TrainConfig(eval_every=10)
    # 10 steps of 1 s, plus a 5 s validation every 10 epochs (and the last one)
    assert epochs_for_budget(1000, 10, 1.0, cfg, eval_seconds=5.0) == int(995 / 10.5)
    assert epochs_for_budget(1000, 10, 0.5, TrainConfig(eval_every=1)) == 200
    assert epochs_for_budget(3, 10, 1.0, TrainConfig()) == 1               # never below one epoch


def test_predicted_err_follows_the_measured_curve(monkeypatch):
    if not RECIPE_CURVE:     # the shipped recipe measured at no budget yet: no number is made up
        assert predicted_err_note(90, full_config()).startswith("no measured")
    monkeypatch.setattr(budget_module, "RECIPE_CURVE", ((30, 3.5, "a"), (90, 3.2, "b")))
    assert "3.20 at 90 epochs" in predicted_err_note(90, full_config(seed=3, threads=1))
    assert "fewer epochs do worse" in predicted_err_note(1, full_config())
    # between two measured budgets: log-linear interpolation
    middle = predicted_err_note(60, full_config())
    value = float(middle.split("about ")[1].split()[0])
    assert 3.2 <= value <= 3.5
    other = full_config(model=ModelConfig(head="regression"))
    assert predicted_err_note(45, other).startswith("no measured")
    assert predicted_err_note(45, full_config(lr=0.1)).startswith("no measured")


def test_recipe_curve_is_read_from_the_bench_results():
    """The curve quotes bench/results: the numbers, the epochs and the recipe must match."""
    free = budget_module._CURVE_FREE_KEYS
    recipe = {k: v for k, v in full_config().to_dict().items() if k not in free}
    for epochs, err, name in RECIPE_CURVE:
        result = json.loads((REPO_ROOT / "bench" / "results" / f"{name}.json").read_text())
        assert result["config"]["epochs"] == epochs, name
        assert round(result["holdout"]["err"], 2) == err, name
        stored = {k: v for k, v in without_retired_settings(result["config"]).items() if k not in free}
        # a setting since removed from the code (progressive resizing) was off in the run
        if "early_size" in stored:
            assert stored.pop("early_size") is None, name
            stored.pop("early_fraction")
        # older files lack settings added since at the values the recipe still has
        model, recipe_model = stored.pop("model"), recipe["model"]
        assert set(recipe_model) <= set(model), name
        assert model == {k: v for k, v in recipe_model.items() if k in model}, name
        assert stored == {k: v for k, v in recipe.items() if k in stored}, name
        assert result["data"] == {"dir": "train", "faces": 5000, "train": 4500, "holdout": 500,
                                  "split_seed": 0}, name


def test_timing_steps_do_not_change_the_weights(faces64, monkeypatch):
    """The throwaway timing run uses its own random numbers: the trained weights are those
    of a run that timed nothing (both given the same number of epochs)."""
    step_seconds = []
    real = train_module.measure_step_seconds

    def timed(*args, **kwargs):
        step_seconds.append(real(*args, **kwargs))
        return step_seconds[-1]

    monkeypatch.setattr(train_module, "measure_step_seconds", timed)
    monkeypatch.setattr(train_module, "measure_eval_seconds", lambda *args, **kwargs: 0.0)
    monkeypatch.setattr(train_module, "epochs_for_budget", lambda *args, **kwargs: 2)   # same schedule
    first, _, _ = _fit(faces64, _config(minutes=0.05, epochs=500))
    monkeypatch.setattr(train_module, "measure_step_seconds", lambda *args, **kwargs: step_seconds[0])
    second, _, _ = _fit(faces64, _config(minutes=0.05, epochs=500))
    assert len(step_seconds) == 1
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_time_budget_chooses_and_records_the_epochs(faces64):
    cfg = _config(minutes=0.05, epochs=500)                              # 3 s
    model, history, logs = _fit(faces64, cfg)
    assert cfg.epochs == 500                                             # the caller's config is its own
    ran = model.metadata["train_config"]                                 # what ran, for the checkpoint
    assert 1 <= ran["epochs"] < 500 and ran["minutes"] == 0.05
    assert history[-1]["epoch"] == ran["epochs"]
    line = next(line for line in logs if line.startswith("time budget 0.05 min"))
    assert f"so {ran['epochs']} epoch" in line and "ms per step measured" in line
    assert history[-1]["train_seconds"] <= history[-1]["seconds"]


@pytest.mark.parametrize("setting, message", [
    (dict(minutes=0), "minutes must be a number above 0 to 43200, got 0"),
    (dict(minutes="10"), "minutes must be a number above 0 to 43200, got '10'"),
    (dict(minutes=1e308), r"minutes must be a number above 0 to 43200, got 1e\+308"),
])
def test_bad_budget_settings_are_refused(faces64, setting, message):
    with pytest.raises(ValueError, match=message):
        _fit(faces64, _config(**setting))


def test_tracked_faces_are_scored_at_each_validation(faces64):
    cfg = _config(epochs=2, eval_every=1)
    _, history, _ = _fit(faces64, cfg, track=faces64[1])
    assert [r["epoch"] for r in history] == [1, 2]
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
    """``facepoints profile`` runs ``fit.train_step`` (its labelled phases) on faces loaded
    as training loads them, and reports each phase's time and the CPU."""
    from facepoints_lib.tools.speed import profile_training

    tiny = ["model.image_size=32", "model.stem_width=8", "model.widths=(8,12,16,16)",
            "model.depths=(1,1,1,1)", "model.decoder_width=8", "bf16='off'"]
    text = profile_training(steps=2, batch_size=8, threads=1, overrides=tiny, out=tmp_path / "p.txt")
    assert (tmp_path / "p.txt").read_text() == text
    assert "heatmap head, 32 px, batch 8, 1 threads, bf16=False" in text and "flags:" in text
    phases = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("  ") and line.rstrip().endswith("ms/step")}
    assert set(phases) == {"augment", "forward", "backward", "optimizer"}
    assert all(ms > 0 for ms in phases.values())
