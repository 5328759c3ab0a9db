"""Tests of the local grader on both folder layouts, with a tiny network to stay fast."""

import shutil

import numpy as np
import pytest

import facepoints_lib.core.grader
import facepoints_lib.core.train
from facepoints_lib.core.detect import detect
from facepoints_lib.core.grader import (compute_err, find_course_tests, grade, grade_course_tests,
                                   grade_train_folder, grader_main)
from facepoints_lib.core.gt_csv import read_gt, read_img_shapes
from facepoints_lib.core.metrics import course_err, course_mark
from facepoints_lib.tools.synth import make_synthetic_faces

from conftest import as_points, tiny_run, tiny_train_config


@pytest.fixture()
def tiny_fast_train(monkeypatch):
    """Make the grader's fast_train use the tiny recipe and run (the same call of
    train_detector, a second long)."""
    calls = []

    def fake_fast_config(**overrides):
        calls.append(overrides)
        return tiny_train_config(**overrides)

    monkeypatch.setattr(facepoints_lib.core.train, "fast_config", fake_fast_config)
    monkeypatch.setattr(facepoints_lib.core.train, "fast_run", tiny_run)
    return calls


@pytest.fixture(scope="module")
def course_tests(tmp_path_factory):
    """A course tests folder: 01_synth_input/{train,test} + 01_synth_gt/{gt.csv,img_shapes.csv}."""
    root = tmp_path_factory.mktemp("course") / "tests"
    make_synthetic_faces(root / "01_synth_input" / "train", 40, seed=3)
    hidden = make_synthetic_faces(root / "01_synth_gt", 10, seed=4)
    (root / "01_synth_input" / "test").mkdir()
    shutil.move(str(hidden / "images"), str(root / "01_synth_input" / "test" / "images"))
    (root / "notes.txt").write_text("ignored")
    return root


def test_compute_err_matches_metrics():
    rng = np.random.default_rng(0)
    names = [f"{i}.jpg" for i in range(6)]
    shapes = {n: (int(rng.integers(40, 200)), int(rng.integers(40, 200))) for n in names}
    true = {n: rng.uniform(0, 40, 28) for n in names}
    pred = {n: true[n] + rng.normal(0, 2, 28) for n in names}
    sizes = np.array([(shapes[n][1], shapes[n][0]) for n in names], dtype=np.float64)
    expected = course_err(as_points(pred, names), as_points(true, names), sizes)
    assert compute_err(pred, true, shapes) == pytest.approx(expected, rel=1e-12)
    pred["extra.jpg"] = np.zeros(28)                       # extra detections are ignored
    assert compute_err(pred, true, shapes) == pytest.approx(expected, rel=1e-12)
    # Hand example: a 100 x 50 image (n_rows 50, n_cols 100), every point off by (1, 1) px.
    assert compute_err({"a": np.ones(28)}, {"a": np.zeros(28)}, {"a": (50, 100)}) == pytest.approx(2.5)


def test_compute_err_refuses_missing_rows():
    true = {"a.jpg": np.zeros(28), "b.jpg": np.zeros(28)}
    shapes = {"a.jpg": (10, 10), "b.jpg": (10, 10)}
    with pytest.raises(KeyError, match="no detection: b.jpg"):
        compute_err({"a.jpg": np.zeros(28)}, true, shapes)
    with pytest.raises(KeyError, match="no image shape: b.jpg"):
        compute_err(true, true, {"a.jpg": (10, 10)})
    with pytest.raises(ValueError):
        compute_err({}, {}, {})


def test_find_course_tests(course_tests):
    pairs = find_course_tests(course_tests)
    assert [(i.name, g.name) for i, g in pairs] == [("01_synth_input", "01_synth_gt")]


def test_grade_course_layout(course_tests, tiny_model_path, tiny_fast_train, tmp_path):
    lines = []
    results = grade(course_tests, tiny_model_path, log=lines.append)
    assert tiny_fast_train == [{}]                      # fast_train ran once, with the recipe's defaults
    assert len(results) == 1
    result = results[0]
    assert result["test"] == "01_synth_input" and result["images"] == 10
    assert np.isfinite(result["fast_train_val_err"]) and result["fast_train_seconds"] > 0
    gt_dir = course_tests / "01_synth_gt"
    expected = compute_err(detect(tiny_model_path, course_tests / "01_synth_input" / "test" / "images"),
                           read_gt(gt_dir / "gt.csv"), read_img_shapes(gt_dir / "img_shapes.csv"))
    assert result["err"] == pytest.approx(expected, rel=1e-9)
    assert result["mark"] == course_mark(result["err"])
    assert any("01_synth_input: err" in line for line in lines)
    assert any(line.startswith("fast_train (the grader's check") and "its validation err" in line for line in lines)


def test_course_layout_output_csv_without_training(course_tests, tiny_model_path, tmp_path):
    results = grade_course_tests(course_tests, tiny_model_path, fast_train=False,
                                 output_dir=tmp_path / "out", log=lambda s: None)
    assert "fast_train_seconds" not in results[0]
    written = read_gt(tmp_path / "out" / "01_synth_input" / "output.csv")
    assert sorted(written) == sorted(read_gt(course_tests / "01_synth_gt" / "gt.csv"))
    shapes = read_img_shapes(course_tests / "01_synth_gt" / "img_shapes.csv")
    # The csv keeps two decimals: its err is the graded err up to rounding.
    assert compute_err(written, read_gt(course_tests / "01_synth_gt" / "gt.csv"), shapes) == \
        pytest.approx(results[0]["err"], rel=1e-3)


def test_grade_plain_train_folder(synth_train, tiny_model_path, tiny_fast_train):
    lines = []
    results = grade(synth_train, tiny_model_path, holdout=20, seed=5, log=lines.append)
    assert len(tiny_fast_train) == 1 and len(results) == 1
    result = results[0]
    assert result["holdout"] == 20 and result["images"] == 20
    held = facepoints_lib.core.train.split_names(sorted(read_gt(synth_train / "gt.csv")), 20, 5)[1]
    detected = detect(tiny_model_path, synth_train / "images", filenames=held)
    gt = read_gt(synth_train / "gt.csv")
    expected = compute_err(detected, {n: gt[n] for n in held},
                           read_img_shapes(synth_train / "img_shapes.csv"))
    assert result["err"] == pytest.approx(expected, rel=1e-9)
    assert any("holdout of 20" in line for line in lines)


def test_grade_says_when_the_model_trained_on_the_holdout(tmp_path, synth_train, tiny_model_path):
    """A model trained on the faces it is graded on gets a note: exactly how many, from the
    validation names the file records, else at least the excess over the other faces."""
    from facepoints_lib.core.checkpoint import load_model, save_checkpoint

    gt = read_gt(synth_train / "gt.csv")
    held = facepoints_lib.core.train.split_names(sorted(gt), 20, 0)[1]
    model = load_model(tiny_model_path)
    honest = save_checkpoint(model, tmp_path / "honest.pt", {"train_images": len(gt) - 20})
    recorded = save_checkpoint(model, tmp_path / "recorded.pt",
                               {"train_images": len(gt) - 5, "val_names": held[:5]})
    unrecorded = save_checkpoint(model, tmp_path / "unrecorded.pt", {"train_images": len(gt) - 12})
    notes = {}
    for path in (honest, recorded, unrecorded):
        lines = []
        result = grade_train_folder(synth_train, path, holdout=20, fast_train=False, log=lines.append)
        notes[path.stem] = (result.get("holdout_faces_seen"), [line for line in lines if "NOTE" in line])
    assert notes["honest"] == (None, [])
    assert notes["recorded"][0] == 15 and "trained on 15 of these 20 faces" in notes["recorded"][1][0]
    assert notes["unrecorded"][0] == 8 and "at least 8 of these 20" in notes["unrecorded"][1][0]


def test_plain_folder_without_img_shapes(tmp_path, small_faces, tiny_model_path):
    folder = tmp_path / "train"
    shutil.copytree(small_faces, folder)
    with_shapes = grade_train_folder(folder, tiny_model_path, holdout=5, fast_train=False,
                                     log=lambda s: None)
    (folder / "img_shapes.csv").unlink()
    without = grade_train_folder(folder, tiny_model_path, holdout=5, fast_train=False,
                                 log=lambda s: None)
    assert without["err"] == pytest.approx(with_shapes["err"], rel=1e-12)


def test_grade_refuses_unknown_layouts(tmp_path, tiny_model_path):
    with pytest.raises(NotADirectoryError):
        grade(tmp_path / "nothere", tiny_model_path)
    (tmp_path / "junk").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a train folder"):
        grade(tmp_path / "junk", tiny_model_path)
    with pytest.raises(FileNotFoundError, match="no NN_"):
        grade_course_tests(tmp_path / "junk", tiny_model_path)


def test_grader_main(course_tests, small_faces, tiny_model_path, tmp_path, capsys):
    code = grader_main([str(course_tests), "--model", str(tiny_model_path), "--no-fast-train",
                        "--output-dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    assert "err " in out and "mark " in out and "1 test(s)" in out
    assert (tmp_path / "out" / "01_synth_input" / "output.csv").is_file()
    code = grader_main([str(small_faces), "--model", str(tiny_model_path), "--no-fast-train",
                        "--holdout", "4"])
    assert code == 0 and "holdout of 4" in capsys.readouterr().out
    assert grader_main([str(tmp_path / "missing"), "--model", str(tiny_model_path)]) == 2
    assert "error:" in capsys.readouterr().err
    assert grader_main([str(small_faces), "--model", str(tmp_path / "no.pt"), "--no-fast-train"]) == 2
    assert "no.pt" in capsys.readouterr().err
