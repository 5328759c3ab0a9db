"""Bad inputs, keypoint tables (``gt.csv``): missing or extra columns, non-numbers, NaN,
inf and huge values, duplicated, empty and path-like names, binary and missing files,
and the variants that must still be read (no header, CRLF, BOM, blank lines); writes of a
table are all or nothing (docs/bad-inputs.md, "Keypoint tables").

Each bad table raises ``GtFormatError`` naming the file and line, through ``read_gt`` and
(for path-like names) ``train_detector``.
"""

from __future__ import annotations

import numpy as np
import pytest

from bad_inputs import HEADER, row, tiny_recipe, tiny_recipe_run, write_csv
from conftest import quiet_progress
from facepoints_lib.core.gt_csv import GtFormatError, read_gt, write_gt
from facepoints_lib.core.train import train_detector

BAD_TABLES = {
    "missing column": (HEADER + "\n" + row("a.jpg", range(27)) + "\n", "expected 29 values"),
    "extra column": (HEADER + "\n" + row("a.jpg", range(29)) + "\n", "expected 29 values"),
    "non-numeric": (HEADER + "\n" + row("a.jpg", ["12", "abc"] + list(range(26))) + "\n",
                    "column y1 is 'abc', not a finite number"),
    "NaN": (row("a.jpg", ["nan"] + list(range(27))) + "\n", "column x1 is 'nan'"),
    "inf": (row("a.jpg", list(range(27)) + ["-inf"]) + "\n", "column y14 is '-inf'"),
    "empty cell": (row("a.jpg", [""] + list(range(27))) + "\n", "column x1 is ''"),
    "1e300": (row("a.jpg", ["1e300"] + list(range(27))) + "\n", "column x1 is '1e300', beyond"),
    "1e7": (row("a.jpg", list(range(27)) + ["-1e7"]) + "\n", "column y14 is '-1e7', beyond"),
    "duplicated name": (row("a.jpg") + "\n" + row("b.jpg") + "\n" + row("a.jpg") + "\n",
                        "line 3: file name 'a.jpg' is already listed on line 1"),
    "empty name": (row("") + "\n", "empty file name"),
    "header only": (HEADER + "\n", "no keypoint rows"),
    "empty file": ("", "no keypoint rows"),
    "other header": ("image," + HEADER.split(",", 1)[1] + "\n" + row("a.jpg") + "\n",
                     "line 1: column x1 is 'x1'"),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_gt_csv_raises_gt_format_error(tmp_path, case):
    text, message = BAD_TABLES[case]
    path = write_csv(tmp_path / "gt.csv", text)
    with pytest.raises(GtFormatError, match=message.replace("(", r"\(").replace("?", r"\?")) as info:
        read_gt(path)
    assert str(path) in str(info.value)


def test_binary_gt_csv_raises_gt_format_error(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
    with pytest.raises(GtFormatError, match="not a UTF-8 CSV text file"):
        read_gt(path)


def test_missing_gt_csv_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="keypoint table not found"):
        read_gt(tmp_path / "nope.csv")


@pytest.mark.parametrize("variant", ["plain", "no header", "CRLF", "BOM", "BOM+CRLF+blank lines"])
def test_accepted_gt_csv_variants(tmp_path, variant):
    rows = [row("a.jpg", [-3.5, 200] + list(range(26))), row("b c é.jpg")]   # a point outside the frame
    lines = ([] if variant == "no header" else [HEADER]) + rows
    newline = "\r\n" if "CRLF" in variant else "\n"
    if "blank" in variant:
        lines = lines[:1] + ["", ""] + lines[1:] + [""]
    text = ("\ufeff" if "BOM" in variant else "") + newline.join(lines) + newline
    table = read_gt(write_csv(tmp_path / "gt.csv", text))
    assert sorted(table) == ["a.jpg", "b c é.jpg"]
    assert table["a.jpg"][:3].tolist() == [-3.5, 200.0, 0.0]
    assert table["b c é.jpg"].tolist() == [float(v) for v in range(28)]


@pytest.mark.parametrize("name", ["../x.jpg", "/abs/x.jpg", "./a.jpg", "sub\\\\x.jpg", ".."])
def test_gt_names_with_folders_are_refused(tmp_path, name):
    path = write_csv(tmp_path / "gt.csv", HEADER + "\n" + row(name) + "\n")
    with pytest.raises(GtFormatError, match="is not a plain file name"):
        read_gt(path)
    with pytest.raises(GtFormatError, match="is not a plain file name"):
        train_detector({name: np.zeros(28), "b.jpg": np.zeros(28)}, tmp_path, config=tiny_recipe(), run=tiny_recipe_run(),
                       progress=quiet_progress, log=lambda line: None)


def test_a_number_with_underscores_is_not_a_coordinate(tmp_path):
    path = write_csv(tmp_path / "gt.csv", row("a.jpg", ["1_000"] + list(range(27))) + "\n")
    with pytest.raises(GtFormatError, match="column x1 is '1_000', not a finite number"):
        read_gt(path)


def test_a_header_after_blank_lines_is_still_the_header(tmp_path):
    path = write_csv(tmp_path / "gt.csv", "\n\n" + HEADER + "\n" + row("a.jpg") + "\n")
    assert list(read_gt(path)) == ["a.jpg"]


def test_write_gt_is_all_or_nothing(tmp_path, monkeypatch):
    from facepoints_lib.core import gt_csv

    path = tmp_path / "out.csv"
    path.write_text("old content\n")
    with pytest.raises(ValueError, match="expected 28 coordinates"):
        write_gt({"a.jpg": np.zeros(28), "b.jpg": np.zeros(3)}, path)

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gt_csv.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        write_gt({"a.jpg": np.zeros(28)}, path)
    assert path.read_text() == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
