"""Bad arguments: wrong types, missing folders and thread counts given to ``detect``,
recipe settings out of range (``--set``), ``--out`` paths that name an input, and the
command line's way with errors: one line and an exit status, never a traceback
(docs/bad-inputs.md, "Arguments" and "Command line").

The network and image folder are the session fixtures ``hard_model`` and ``messy_folder``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from facepoints_lib.core.config import full_config, full_run
from facepoints_lib.core.detect import detect
from facepoints_lib.tools.overrides import apply_overrides


def test_detect_wrong_types_and_missing_folder(hard_model, messy_folder, tmp_path):
    folder, _ = messy_folder
    with pytest.raises(TypeError, match="model_filename must be a path"):
        detect(None, folder)
    with pytest.raises(TypeError, match="model_filename must be a path"):
        detect(hard_model.read_bytes(), folder)
    with pytest.raises(TypeError, match="test_img_dir must be a path"):
        detect(hard_model, 42)
    with pytest.raises(TypeError, match="filenames must be a list"):
        detect(hard_model, folder, filenames="wide.jpg")
    with pytest.raises(ValueError, match="chunk must be a positive integer"):
        detect(hard_model, folder, chunk=0)
    with pytest.raises(NotADirectoryError, match="test image folder not found"):
        detect(hard_model, tmp_path / "nope")
    with pytest.raises(NotADirectoryError, match="test image folder not found"):
        detect(hard_model, hard_model)


@pytest.mark.parametrize("threads", [0, -1, 100_000, 2.0, True])
def test_detect_refuses_thread_counts_it_cannot_use(hard_model, messy_folder, threads):
    with pytest.raises(ValueError, match="threads must be None or an integer from 1 to 256"):
        detect(hard_model, messy_folder[0], threads=threads)


def test_cli_detect_reports_a_bad_thread_count(hard_model, messy_folder, tmp_path, capsys):
    from facepoints_lib.tools.cli import main

    assert main(["detect", str(messy_folder[0]), "--model", str(hard_model), "--threads", "-1",
                 "--out", str(tmp_path / "out.csv")]) == 2
    assert "threads must be None or an integer from 1 to 256, got -1" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing folder", "the model file"])
def test_cli_detect_checks_out_before_detecting(hard_model, messy_folder, tmp_path, monkeypatch, capsys, case):
    from facepoints_lib.tools.cli import main

    detect_module = sys.modules["facepoints_lib.core.detect"]    # the package exports a function of that name
    monkeypatch.setattr(detect_module, "detect", lambda *a, **k: pytest.fail("detected before checking --out"))
    model = tmp_path / "m.pt"
    model.write_bytes(Path(hard_model).read_bytes())
    out = tmp_path / "nope" / "out.csv" if case == "missing folder" else model
    assert main(["detect", str(messy_folder[0]), "--model", str(model), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert ("folder for the output file not found" if case == "missing folder"
            else "is the model file: it would be overwritten") in err
    assert model.read_bytes() == Path(hard_model).read_bytes()


# --------------------------------------------------------------------------- recipe settings

@pytest.mark.parametrize("setting, message", [
    ("batch_size=0", "batch_size must be an integer from 1, got 0"),
    ("lr=nan", "lr must be a number above 0, got 'nan'"),
    ("epochs=0", "epochs must be an integer from 1, got 0"),
    ("epochs=2.5", "epochs must be an integer from 1, got 2.5"),
    ("ema_decay=1", "ema_decay must be a number from 0 to 0.999999, got 1"),
    ("threads=-1", "threads must be an integer from 1 to 256, got -1"),
    ("optimizer='adam'", "optimizer must be one of 'sgd', 'adamw', got 'adam'"),
    ("loss='l1'", r"unknown config key in \"loss='l1'\""),
    ("flip_tta=1", "flip_tta must be True or False, got 1"),
    ("device='gpu'", "device must be 'auto', 'cpu' or 'cuda'"),
    ("model.image_size=96.0", r"image_size must be an integer from 1 to 256, got 96.0"),
    ("model.widths=[48,96,160,10000]", r"widths\[3\] must be an integer from 1 to 1024, got 10000"),
    ("model.depths=[200000,2,2,1]", r"depths\[0\] must be an integer from 1 to 16, got 200000"),
    ("model.hidden=2000000", "hidden must be an integer from 1 to 4096, got 2000000"),
    ("model.image_size=8192", "image_size must be an integer from 1 to 256, got 8192"),
    ("model.widths=[1024,1024,1024,1024]", r"the network would have about \d+ M parameters, more than 50 M"),
])
def test_recipe_settings_are_checked_before_any_work(setting, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(full_config(), [setting], full_run())


def test_a_non_finite_number_is_refused_as_well():
    with pytest.raises(ValueError, match="lr must be a number above 0, got nan"):
        full_config(lr=float("nan")).validate()


# --------------------------------------------------------------------------- the command line's errors

def _every_command_raises(monkeypatch, error: BaseException):
    """Make every ``facepoints`` sub-command raise ``error``; return the cli module."""
    from facepoints_lib.tools import cli

    def fails(args):
        raise error

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(func=fails)
    return cli


def test_ctrl_c_says_what_was_kept(monkeypatch, capsys):
    cli = _every_command_raises(monkeypatch, KeyboardInterrupt())
    assert cli.main(["train", "somewhere"]) == 130
    assert "interrupted" in capsys.readouterr().err


@pytest.mark.parametrize("error, status, text", [
    (FloatingPointError("training diverged at step 3"), 2, "FloatingPointError: training diverged"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127]"), 2, "RuntimeError: [enforce fail"),
    (MemoryError(), 2, "MemoryError"),
    (TypeError("something unforeseen"), 1, "unexpected error: TypeError: something unforeseen"),
])
def test_no_cli_path_ends_in_a_traceback(monkeypatch, capsys, error, status, text):
    """Whatever a command raises, the user reads one line and an exit status; the
    traceback only with FACEPOINTS_DEBUG=1."""
    cli = _every_command_raises(monkeypatch, error)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.main(["detect", "somewhere"]) == status
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    if status == 1:
        monkeypatch.setenv(cli.DEBUG_ENV, "1")
        with pytest.raises(type(error)):
            cli.main(["detect", "somewhere"])
