"""Bad inputs to training: tables that disagree with the image folder, tables given as a
dict with wrong entries, unreadable labelled images, empty and missing folders, wrong
argument types, model paths that cannot be written and saves that fail after training
(docs/bad-inputs.md, "Training").

Run through ``train_detector``, ``train_model`` and ``facepoints train`` on the session
fixture ``labelled_folder`` (ten faces); the recipes are three steps of a tiny network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bad_inputs import tiny_recipe, tiny_recipe_run
from conftest import quiet_progress
from facepoints_lib.core.checkpoint import load_model
from facepoints_lib.core.detect import detect
from facepoints_lib.core.gt_csv import GtFormatError, write_gt
from facepoints_lib.core.images import ImageReadError
from facepoints_lib.core.train import train_detector, train_model


def test_train_detector_drops_rows_without_images_and_ignores_images_without_rows(labelled_folder):
    folder, table = labelled_folder
    gt = {name: v for name, v in table.items() if name not in ("08.png", "09.png")}   # images without rows
    gt["ghost 1.png"] = table["00.png"]
    gt["ghost 2.png"] = table["01.png"]
    logs: list[str] = []
    with pytest.warns(UserWarning, match=r"2 files listed in the keypoint table are not in .* "
                                         r"left out: ghost 1.png, ghost 2.png"):
        run = train_model(gt, folder, tiny_recipe(), tiny_recipe_run(), progress=quiet_progress, log=logs.append)
    assert any("on 7 faces (1 for validation)" in line for line in logs), logs   # 8 labelled faces: a fifth validates
    assert run.history and np.isfinite(run.history[-1]["val_err"])
    assert "ghost 1.png" not in run.train_names + run.val_names


def test_train_detector_reads_a_gt_csv_path(labelled_folder, tmp_path):
    folder, table = labelled_folder
    path = write_gt(table, tmp_path / "gt.csv")
    run = train_model(str(path), folder, tiny_recipe(), tiny_recipe_run(), progress=quiet_progress, log=lambda line: None)
    assert np.isfinite(run.history[-1]["train_loss"])


@pytest.mark.parametrize("case, message", [
    ("short", "00.png: expected 28 coordinates, got 10"),
    ("nan", "00.png: coordinates must be finite numbers"),
    ("text", "00.png: coordinates are not numbers"),
    ("int key", "file name 7 is not a non-empty string"),
    ("huge", "00.png: a coordinate is beyond"),
])
def test_train_detector_checks_a_table_given_as_dict(labelled_folder, case, message):
    folder, table = labelled_folder
    gt = dict(table)
    if case == "short":
        gt["00.png"] = gt["00.png"][:10]
    elif case == "nan":
        gt["00.png"] = np.full(28, np.nan)
    elif case == "text":
        gt["00.png"] = ["x"] * 28
    elif case == "huge":
        gt["00.png"] = np.full(28, 1e300)
    else:
        gt[7] = gt.pop("07.png")
    with pytest.raises(GtFormatError, match=message):
        train_detector(gt, folder, fast_train=True, config=tiny_recipe(), run=tiny_recipe_run(), progress=quiet_progress,
                       log=lambda line: None)


def test_train_detector_names_an_unreadable_labelled_image(labelled_folder, tmp_path):
    folder, table = labelled_folder
    for name in table:
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "05.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="05.png"):
        train_detector(table, tmp_path, fast_train=True, config=tiny_recipe(), run=tiny_recipe_run(val_size=0),
                       progress=quiet_progress, log=lambda line: None)


def test_many_missing_rows_are_dropped(labelled_folder, monkeypatch):
    """20000 rows for absent files are left out in one pass (the filter once rebuilt a set
    of them per row: 25 s for 16000 rows)."""
    import facepoints_lib.core.train as train_module

    folder, table = labelled_folder
    gt = dict(table)
    gt.update({f"ghost{i:05d}.png": table["00.png"] for i in range(20_000)})
    seen = {}

    def stop(train, val, *args, **kwargs):
        seen["faces"] = len(train) + len(val)
        raise StopIteration

    monkeypatch.setattr(train_module, "fit", stop)
    with pytest.warns(UserWarning, match="20000 files listed"), pytest.raises(StopIteration):
        train_detector(gt, folder, fast_train=True, config=tiny_recipe(), run=tiny_recipe_run(), progress=quiet_progress,
                       log=lambda line: None)
    assert seen["faces"] == len(table)


# --------------------------------------------------------------------------- folders and argument types

def test_empty_folder(tmp_path, hard_model, labelled_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.warns(UserWarning, match="no images to detect keypoints in"):
        assert detect(hard_model, empty) == {}
    with pytest.warns(UserWarning, match="10 files listed in the keypoint table are not in"), \
            pytest.raises(ValueError, match="need at least 2 labelled images .* found 0"):
        train_detector(labelled_folder[1], empty, fast_train=True, config=tiny_recipe(), run=tiny_recipe_run(),
                       progress=quiet_progress, log=lambda line: None)


@pytest.mark.parametrize("fast_train", ["True", "False", 1, 0, None, np.True_])
def test_fast_train_must_be_a_bool(labelled_folder, fast_train):
    folder, table = labelled_folder
    with pytest.raises(TypeError, match="fast_train must be True or False"):
        train_detector(table, folder, fast_train=fast_train)


@pytest.mark.parametrize("train_gt, img_dir, message", [
    (None, ".", "train_gt must be a dict"),
    (5, ".", "train_gt must be a dict"),
    ([("a.jpg", [0] * 28)], ".", "train_gt must be a dict"),
    ({}, None, "train_img_dir must be a folder path"),
    ({}, 3.5, "train_img_dir must be a folder path"),
])
def test_train_detector_wrong_types(train_gt, img_dir, message):
    with pytest.raises(TypeError, match=message):
        train_detector(train_gt, img_dir, fast_train=True)


def test_train_detector_missing_folder(labelled_folder, tmp_path):
    with pytest.raises(NotADirectoryError, match="training image folder not found"):
        train_detector(labelled_folder[1], tmp_path / "nope", fast_train=True)


# --------------------------------------------------------------------------- where the trained model goes

@pytest.mark.parametrize("case", ["missing folder", "a folder", "empty string"])
def test_an_unwritable_model_path_is_refused_before_training(labelled_folder, tmp_path, monkeypatch, case):
    import facepoints_lib.core.train as train_module

    monkeypatch.setattr(train_module, "fit", lambda *a, **k: pytest.fail("trained before checking --out"))
    out = {"missing folder": tmp_path / "nope" / "m.pt", "a folder": tmp_path, "empty string": ""}[case]
    message = {"missing folder": "folder for the model file not found", "a folder": "is a folder",
               "empty string": "is a folder"}[case]
    folder, table = labelled_folder
    with pytest.raises(OSError, match=message):
        train_detector(table, folder, fast_train=False, config=tiny_recipe(), run=tiny_recipe_run(), model_path=out,
                       progress=quiet_progress, log=lambda line: None)


def test_a_failed_save_keeps_the_trained_model_and_says_where(labelled_folder, tmp_path, monkeypatch):
    import tempfile

    import facepoints_lib.core.checkpoint as checkpoint_module

    real_save = checkpoint_module.save_checkpoint

    def disk_full_at_the_target(model, path, metadata=None):
        if Path(path).parent == tmp_path / "out":
            raise OSError(28, "No space left on device")
        return real_save(model, path, metadata)

    (tmp_path / "out").mkdir()
    (tmp_path / "spare").mkdir()
    monkeypatch.setattr(checkpoint_module, "save_checkpoint", disk_full_at_the_target)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "spare"))
    folder, table = labelled_folder
    with pytest.raises(OSError, match=r"could not save the trained model to .*m\.pt .*No space left.*; "
                                      r"it was saved to .*spare.*facepoints_model-.*\.pt instead"):
        train_detector(table, folder, fast_train=False, config=tiny_recipe(), run=tiny_recipe_run(),
                       model_path=tmp_path / "out" / "m.pt", progress=quiet_progress, log=lambda line: None)
    rescued = list((tmp_path / "spare").glob("facepoints_model-*.pt"))
    assert len(rescued) == 1 and load_model(rescued[0]).config == tiny_recipe().model


def test_cli_train_reports_an_unwritable_out_at_once(labelled_folder, tmp_path, capsys):
    from facepoints_lib.tools.cli import main

    folder, table = labelled_folder
    data = tmp_path / "data"
    data.mkdir()
    (data / "images").symlink_to(folder)
    write_gt(table, data / "gt.csv")
    assert main(["train", str(data), "--out", str(tmp_path / "nope" / "m.pt")]) == 2
    assert "folder for the model file not found" in capsys.readouterr().err


def test_train_with_a_missing_exclusion_file_exits_2(tmp_path, capsys):
    from facepoints_lib.tools import cli

    assert cli.main(["train", str(tmp_path), "--exclude", str(tmp_path / "missing.txt"), "--out",
                     str(tmp_path / "m.pt")]) == 2
    assert "missing.txt" in capsys.readouterr().err
