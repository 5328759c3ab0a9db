"""The cascade's commands on synthetic faces: ``second-stage`` adds a second stage to a
trained model file, ``bench-cascade`` compares it with its first stage alone, and
``label-floor`` estimates what the labels allow."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import quiet_progress, tiny_run, tiny_train_config
from facepoints_lib.core.checkpoint import load_checkpoint, load_model
from facepoints_lib.core.dataset import split_names
from facepoints_lib.core.gt_csv import read_gt
from facepoints_lib.core.train import train_model
from facepoints_lib.tools.cascade_bench import bench_cascade
from facepoints_lib.tools.cli import main
from facepoints_lib.tools.label_floor import duplicate_floor, two_network_floor
from facepoints_lib.tools.second_stage import add_second_stage

SECOND = ["cascade.model.image_size=32", "cascade.model.stem_width=8", "cascade.model.widths=(8, 12, 16, 16)",
          "cascade.model.depths=(1, 1, 1, 1)", "cascade.model.decoder_width=8", "cascade.epochs=1"]


@pytest.fixture(scope="module")
def first_stage(synth_train, tmp_path_factory):
    path = tmp_path_factory.mktemp("cascade_tools") / "first.pt"
    train_model(synth_train / "gt.csv", synth_train / "images", tiny_train_config(),
                tiny_run(max_images=None, val_size=40), model_path=path, progress=quiet_progress, log=lambda _: None)
    return path


def test_second_stage_trains_on_the_first_stages_faces_and_scores_its_validation_faces(
        first_stage, synth_train, tmp_path):
    out, results = tmp_path / "cascade.pt", tmp_path / "second.json"
    result = add_second_stage(first_stage, synth_train, out, SECOND, threads=1, results=results, log=lambda _: None)
    stored = load_checkpoint(first_stage)["metadata"]
    assert result["faces"] == {"train": 260, "validation": 40}           # 300 faces, the first stage's split
    assert load_model(out).refiner is not None
    written = load_checkpoint(out)["metadata"]
    assert written["val_names"] == stored["val_names"] and written["calibration"] is not None
    assert written["cascade"]["val_err"] == pytest.approx(result["cascade_scores"]["err"])
    on_disk = json.loads(results.read_text())
    assert on_disk["first_stage"]["faces"] == 40 and set(on_disk["cpu_flags"]) >= {"avx2"}
    with pytest.raises(ValueError, match="second stage already"):
        add_second_stage(out, synth_train, tmp_path / "again.pt", SECOND, threads=1, log=lambda _: None)


def test_second_stage_behind_a_benchmark_model_leaves_its_holdout_out_and_scores_it(
        first_stage, synth_train, tmp_path):
    """--holdout: the benchmark's holdout is neither trained on nor lost; --replace: a
    two-stage file gets a new second stage behind the same first stage; the result file
    records the command with every option the run took."""
    two_stage = tmp_path / "cascade.pt"
    add_second_stage(first_stage, synth_train, two_stage, SECOND, threads=1, log=lambda _: None)
    again = tmp_path / "again.pt"
    result = add_second_stage(two_stage, synth_train, again, SECOND, threads=1, holdout=30, split_seed=1,
                              replace=True, log=lambda _: None)
    held = set(split_names(sorted(read_gt(synth_train / "gt.csv")), 30, 1)[1])
    val_names = set(load_checkpoint(first_stage)["metadata"]["val_names"])
    assert result["faces"] == {"train": 300 - len(held | val_names), "validation": 40}
    assert result["holdout"]["faces"] == 30 and result["holdout"]["cascade"]["faces"] == 30
    assert result["command"] == (f"facepoints second-stage {two_stage} {synth_train} --out {again} --threads 1 "
                                 "--holdout 30 --split-seed 1 --replace " + " ".join(f"--set {o}" for o in SECOND))
    before, after = load_model(two_stage).state_dict(), load_model(again).state_dict()
    assert before.keys() == after.keys()
    firsts = [key for key in before if not key.startswith("refiner.")]
    assert firsts and all(torch.equal(before[key], after[key]) for key in firsts)       # the first stage kept
    assert not all(torch.equal(before[key], after[key]) for key in before if key.startswith("refiner."))


def test_bench_cascade_scores_every_way_of_answering(first_stage, synth_train, tmp_path):
    out = tmp_path / "cascade.pt"
    add_second_stage(first_stage, synth_train, out, SECOND, threads=1, log=lambda _: None)
    result = bench_cascade(out, synth_train, tmp_path / "bench.json", threads=1, log=lambda _: None,
                           baseline=first_stage)
    assert set(result["ways"]) == {"first_stage", "first_stage_shrunk", "cascade", "cascade_second_unmirrored",
                                   "baseline"}
    assert result["baseline"] == first_stage.name and f"--baseline {first_stage}" in result["command"]
    assert result["file_vs_baseline"]["flops_per_face"] == pytest.approx(   # the file as detection runs it
        result["ways"]["cascade_second_unmirrored"]["flops_per_face"] / result["ways"]["baseline"]["flops_per_face"])
    for row in result["ways"].values():
        assert row["faces"] == 40 and len(row["per_point_err"]) == 14
        assert row["flops_per_face"] > 0 and row["images_per_second"] > 0
    ways = result["ways"]        # (an untrained first stage doubts every face: no second stage runs)
    assert ways["cascade"]["flops_per_face"] >= ways["cascade_second_unmirrored"]["flops_per_face"] \
        >= ways["first_stage_shrunk"]["flops_per_face"]
    assert json.loads((tmp_path / "bench.json").read_text())["faces"] == 40
    assert result["file_mirrors_second_stage"] is False           # the recipe's default; both ways still scored
    with pytest.raises(ValueError, match="no second stage"):
        bench_cascade(first_stage, synth_train, None, threads=1, log=lambda _: None)


def test_flops_count_the_second_stage_and_its_mirror():
    from test_cascade import FACE, _cascade
    from facepoints_lib.core.cascade import canonical_frame
    from facepoints_lib.tools.cascade_bench import _flops_per_face

    frame = canonical_frame(FACE, 1.3, 0.46)
    model = _cascade(FACE, frame, frame)                      # a first stage that never doubts
    images = torch.randint(0, 256, (4, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    both = _flops_per_face(model, images, bf16=False)
    model.refiner.flip_tta = False
    unmirrored = _flops_per_face(model, images, bf16=False)
    model.attach_refiner(None)
    first = _flops_per_face(model, images, bf16=False)
    assert both - first == pytest.approx(2 * (unmirrored - first), rel=1e-3) and unmirrored > first > 0


def test_duplicate_floor_is_half_the_err_between_two_labellings():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 32, 32), generator=g, dtype=torch.uint8)
    images[3] = images[0]                                    # one picture twice ...
    points = 0.3 + 0.4 * torch.rand((6, 14, 2), generator=g)
    points[3] = points[0] + 0.01                             # ... its labels 1 % of the side apart
    found = duplicate_floor(images, points)
    assert (found["groups"], found["pairs"]) == (1, 1)
    assert found["err"] == pytest.approx(1.0 / 2, rel=1e-4)  # (100 * 0.01)^2 per coordinate, halved
    assert found["err_without_similarity"] == pytest.approx(0.0, abs=1e-6)   # a pure shift
    assert duplicate_floor(images[:3], points[:3]) == {"groups": 0, "pairs": 0}


def test_two_network_floor_reads_the_shared_part_of_the_residuals():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.2, 0.8, (4000, 14, 2))
    noise = rng.normal(0, 0.01, truth.shape)                 # the labels' noise: err 1 per coordinate
    labels = truth + noise
    first = truth + rng.normal(0, 0.02, truth.shape)         # two networks with errors of their own
    second = truth + rng.normal(0, 0.02, truth.shape)
    found = two_network_floor(first, second, labels)
    assert found["err"] == pytest.approx(1.0, abs=0.05)
    assert found["networks_err"][0] == pytest.approx(5.0, rel=0.05)


def test_commands_refuse_a_second_stage_setting_that_is_not_key_value(capsys):
    with pytest.raises(SystemExit):
        main(["second-stage", "m.pt", "--out", "o.pt", "--set", "epochs"])
    assert "key=value" in capsys.readouterr().err


def test_equal_time_counts_a_second_stage_with_its_benchmarks_first_stage(tmp_path):
    """notebook 03's figure: a second-stage run behind a benchmark's model is a cascade
    whose work and minutes include that benchmark's first stage, each stage's steps
    weighted by its network's FLOPs (a 64 px first stage's by (64/96)^2); runs on another
    CPU kind and second stages without a holdout are left out."""
    from facepoints_lib.core.model import ModelConfig
    from facepoints_lib.notebook.cascade_plots import equal_time

    avx2 = {"cpu_flags": {"avx2": True}, "bf16_native": False}
    net96, net64 = ModelConfig().to_dict(), ModelConfig(image_size=64).to_dict()

    def bench(name, steps, err, cascade=None, machine=avx2, model=net96):
        return {"name": name, "config": {"cascade": cascade, "model": model, "epochs": 6}, "machine": machine,
                "train": {"steps": steps, "wall_seconds": 600.0, "fit_seconds": 540.0},
                "holdout": {"err": err, "median_err": err - 1}}

    def second(base, step, err, median, holdout=True):
        return {"base_model": f"{base}.pt", "machine": avx2, "history": [{"step": step}], "seconds": {"train": 300.0},
                "cascade": {"model": net96},
                "holdout": {"first_stage": {}, "cascade": {"err": err, "median_err": median}} if holdout else None}

    files = {"curve-e6-seed0": bench("curve-e6-seed0", 100, 9.0), "curve-e12-seed0": bench("curve-e12-seed0", 200, 6.0),
             "first": bench("first", 100, 7.0, cascade={"epochs": 6}), "cheap": bench("cheap", 180, 8.0, model=net64),
             "native": bench("native", 50, 5.0, cascade={"epochs": 6}, machine={"bf16_native": True}),
             "second-j3": second("bench-first", 120, 4.5, 2.7), "second-none": second("bench-first", 120, 4.0, 2.0, False),
             "second-lost": second("bench-gone", 120, 4.0, 2.0), "second-cheap": second("bench-cheap", 120, 4.2, 2.5)}
    for name, result in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
    points = equal_time(tmp_path, single=("curve-e6-seed0", "curve-e12-seed0"), shipped=("native", "absent"))
    assert [row["name"] for row in points["single"]] == ["curve-e6-seed0", "curve-e12-seed0"]
    assert [row["name"] for row in points["cascade"]] == ["first", "second-cheap", "second-j3"]
    assert [(row["name"], row["steps"]) for row in points["shipped"]] == [("shipped e6", 50)]   # whatever its CPU
    assert [row["work"] for row in points["single"]] == [100, 200]
    cheap, added = points["cascade"][1:]
    assert (added["steps"], added["work"], added["err"], added["median_err"]) == (220, 220, 4.5, 2.7)
    assert cheap["steps"] == 300
    assert cheap["work"] == pytest.approx(180 * (64 / 96) ** 2 + 120, rel=0.01)
    assert added["minutes"] == pytest.approx((540 + 300) / 60)
