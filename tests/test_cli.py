"""Tests of the ``facepoints`` command line."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import facepoints_lib.core.config
from facepoints_lib.core.checkpoint import load_model
from facepoints_lib.tools.cli import build_parser, main
from facepoints_lib.core.detect import detect
from facepoints_lib.core.gt_csv import GT_HEADER, read_gt

from conftest import REPO_ROOT, tiny_run, tiny_train_config

SUBCOMMANDS = ["demo", "train", "detect", "grade", "bench", "freeze", "synth"]
TINY_SETS = ["epochs=1", "batch_size=16", "max_images=40", "val_size=8", "threads=1", "bf16='off'",
             "model.image_size=32", "model.stem_width=8", "model.widths=(8,12,16,16)",
             "model.depths=(1,1,1,1)", "model.decoder_width=8"]


def _sets(values):
    return [arg for value in values for arg in ("--set", value)]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help_exits_zero(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: facepoints {command}")


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in SUBCOMMANDS)
    with pytest.raises(SystemExit) as exc:
        main([])                                   # a sub-command is required
    assert exc.value.code == 2
    args = build_parser().parse_args(["detect", "imgs"])
    assert (args.command, args.img_dir, args.model, args.out) == ("detect", "imgs", None, "output.csv")


def test_installed_entry_points_run():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    run = subprocess.run([sys.executable, "-m", "facepoints_lib", "synth", "--help"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=REPO_ROOT.parent)
    assert run.returncode == 0, run.stderr
    assert "usage: facepoints synth" in run.stdout
    script = Path(sys.executable).parent / "facepoints"
    if script.exists():           # pip's console script in the environment's bin/
        run = subprocess.run([str(script), "freeze", "--help"], capture_output=True, text=True,
                             timeout=120, env=env)
        assert run.returncode == 0 and "--check" in run.stdout


def test_synth_writes_a_folder(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "faces"), "--count", "3", "--seed", "1"]) == 0
    assert "wrote 3 synthetic faces" in capsys.readouterr().out
    gt = read_gt(tmp_path / "faces" / "gt.csv")
    assert sorted(gt) == ["00000.jpg", "00001.jpg", "00002.jpg"]
    assert sorted(p.name for p in (tmp_path / "faces" / "images").iterdir()) == sorted(gt)
    assert (tmp_path / "faces" / "img_shapes.csv").is_file()


def test_detect_writes_gt_csv_format(tmp_path, small_faces, tiny_model_path, capsys):
    out = tmp_path / "output.csv"
    assert main(["detect", str(small_faces / "images"), "--model", str(tiny_model_path),
                 "--out", str(out), "--threads", "1"]) == 0
    assert "wrote 12 detections" in capsys.readouterr().out
    lines = out.read_text().splitlines()
    assert lines[0] == ",".join(GT_HEADER) and len(lines) == 13
    table = read_gt(out)
    expected = detect(tiny_model_path, small_faces / "images")
    assert sorted(table) == sorted(expected)
    for name, coords in expected.items():
        np.testing.assert_allclose(table[name], coords, atol=0.005 + 1e-9)


def test_detect_accepts_one_image_file(tmp_path, small_faces, tiny_model_path, capsys):
    """``facepoints detect some/file.jpg`` detects that picture (it said "folder not found")."""
    out = tmp_path / "one.csv"
    picture = sorted((small_faces / "images").iterdir())[3]
    assert main(["detect", str(picture), "--model", str(tiny_model_path), "--out", str(out)]) == 0
    assert "wrote 1 detection to" in capsys.readouterr().out
    table = read_gt(out)
    assert list(table) == [picture.name]
    np.testing.assert_allclose(table[picture.name], detect(tiny_model_path, small_faces / "images")[picture.name],
                               atol=0.005 + 1e-9)


def test_detect_errors_exit_2(tmp_path, small_faces, capsys):
    assert main(["detect", str(small_faces / "images"), "--model", str(tmp_path / "none.pt"),
                 "--out", str(tmp_path / "o.csv")]) == 2
    assert "facepoints detect: error:" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_train_with_overrides_saves_a_model(tmp_path, synth_train, capsys):
    out = tmp_path / "model.pt"
    assert main(["train", str(synth_train), "--out", str(out), "--seed", "2", *_sets(TINY_SETS)]) == 0
    model = load_model(out)
    assert model.config.image_size == 32 and model.config.widths == (8, 12, 16, 16)
    assert model.metadata["train_config"]["seed"] == 2
    assert model.metadata["train_images"] == 32 and model.metadata["val_images"] == 8
    assert f"saved {out}" in capsys.readouterr().out


def test_train_fast_writes_nothing(tmp_path, synth_train, monkeypatch, capsys):
    monkeypatch.setattr(facepoints_lib.core.config, "fast_config", tiny_train_config)
    monkeypatch.setattr(facepoints_lib.core.config, "fast_run", tiny_run)
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(synth_train), "--fast", "--out", str(tmp_path / "m.pt")]) == 0
    assert list(tmp_path.iterdir()) == []
    assert "val err" in capsys.readouterr().out


def test_train_bad_override_exits_2(tmp_path, synth_train, capsys):
    assert main(["train", str(synth_train), "--out", str(tmp_path / "m.pt"),
                 "--set", "no_such_key=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_grade_subcommand(small_faces, tiny_model_path, capsys):
    assert main(["grade", str(small_faces), "--model", str(tiny_model_path), "--no-fast-train",
                 "--holdout", "4"]) == 0
    out = capsys.readouterr().out
    assert "holdout of 4" in out and "mark" in out


def test_freeze_subcommand(tmp_path, capsys):
    target = tmp_path / "solution.py"
    target.write_text("# stale\n")
    assert main(["freeze", "--check", "--out", str(target)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["freeze", "--out", str(target)]) == 0
    assert main(["freeze", "--check", "--out", str(target)]) == 0
    assert "def train_detector(" in target.read_text()


def test_help_texts_explain_every_option_without_markup(capsys):
    from facepoints_lib.tools.cli import build_parser

    parser = build_parser()
    assert "``" not in parser.format_help()
    subcommands = parser._subparsers._group_actions[0].choices
    for name, sub in subcommands.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"facepoints {name} {action.option_strings[0]} has no help"
    train_help = subcommands["train"].format_help()
    assert "overwrites" in train_help and "--minutes" in train_help and "min" in train_help


def test_detect_bench_records_both_looks(tmp_path, small_faces, tiny_model_path):
    """``facepoints bench-detect`` times detect in a fresh one-thread process, with the
    second look or (``--single-look``) without it, and records which."""
    import json

    for flag, second in (([], True), (["--single-look"], False)):
        assert main(["bench-detect", "--model", str(tiny_model_path), "--img-dir", str(small_faces / "images"),
                     "--name", f"d{int(second)}", "--results-dir", str(tmp_path), *flag]) == 0
        result = json.loads((tmp_path / f"d{int(second)}.json").read_text())
        assert result["images"] == 12 and result["second_look"] is second and result["images_per_second"] > 0
        assert result["machine"]["cpu_flags"].keys() >= {"avx2", "avx512_bf16"}
