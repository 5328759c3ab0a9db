"""Tests of gt.csv / img_shapes.csv reading and writing."""

import numpy as np
import pytest

from facepoints_lib.core.gt_csv import (GT_HEADER, GtFormatError, read_gt, read_img_shapes, write_gt,
                                   write_img_shapes)


def _row(name: str, start: float = 0.0) -> str:
    return name + "," + ",".join(f"{start + i:g}" for i in range(28))


def _table(n: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    # Two decimals: exactly what write_gt keeps.
    return {f"{i:05d}.jpg": np.round(rng.uniform(-5, 300, 28), 2) for i in range(n)}


def test_header():
    assert GT_HEADER[:3] == ["filename", "x1", "y1"] and GT_HEADER[-2:] == ["x14", "y14"]
    assert len(GT_HEADER) == 29


def test_round_trip(tmp_path):
    table = _table(5)
    path = write_gt(table, tmp_path / "gt.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(GT_HEADER)
    assert [line.split(",")[0] for line in lines[1:]] == sorted(table)
    back = read_gt(path)
    assert list(back) == sorted(table)
    for name, coords in table.items():
        assert back[name].dtype == np.float64 and back[name].shape == (28,)
        np.testing.assert_allclose(back[name], coords, atol=1e-9)


def test_write_accepts_14x2_and_refuses_wrong_size(tmp_path):
    points = np.arange(28, dtype=float).reshape(14, 2)
    back = read_gt(write_gt({"a.jpg": points}, tmp_path / "gt.csv"))
    np.testing.assert_array_equal(back["a.jpg"], points.ravel())
    with pytest.raises(ValueError, match="b.jpg"):
        write_gt({"b.jpg": np.zeros(27)}, tmp_path / "bad.csv")


def test_bom_crlf_blank_lines(tmp_path):
    text = ",".join(GT_HEADER) + "\r\n" + _row("a.jpg") + "\r\n\r\n" + _row("b.jpg", 1) + "\r\n"
    path = tmp_path / "gt.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    table = read_gt(path)
    assert list(table) == ["a.jpg", "b.jpg"]
    np.testing.assert_array_equal(table["a.jpg"], np.arange(28.0))
    np.testing.assert_array_equal(table["b.jpg"], np.arange(28.0) + 1)


def test_no_header_and_integer_values(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_text(_row("x.jpg", 10) + "\n" + _row("y.jpg", 20) + "\n")
    table = read_gt(path)
    assert sorted(table) == ["x.jpg", "y.jpg"]
    assert table["y.jpg"][0] == 20.0 and table["y.jpg"][-1] == 47.0


@pytest.mark.parametrize("bad_row, message", [
    (_row("b.jpg") + ",5", "expected 29 values"),                      # one value too many
    (_row("b.jpg").rsplit(",", 1)[0], "expected 29 values"),           # one value too few
    (_row("b.jpg").replace(",3,", ",abc,", 1), "not a finite number"),
    (_row("b.jpg").replace(",3,", ",nan,", 1), "not a finite number"),
    (_row("b.jpg").replace(",3,", ",inf,", 1), "not a finite number"),
    ("," + _row("b.jpg").split(",", 1)[1], "empty file name"),
    (_row("a.jpg"), "already listed on line 2"),                        # duplicate name
])
def test_errors_name_file_and_line(tmp_path, bad_row, message):
    path = tmp_path / "broken_gt.csv"
    path.write_text(",".join(GT_HEADER) + "\n" + _row("a.jpg") + "\n" + bad_row + "\n")
    with pytest.raises(GtFormatError, match=message) as info:
        read_gt(path)
    assert str(path) in str(info.value) and "line 3" in str(info.value)


def test_error_line_counts_physical_lines_without_header(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_text(_row("a.jpg") + "\n\n" + _row("b.jpg") + ",1\n")
    with pytest.raises(GtFormatError, match=r"gt\.csv, line 3: expected 29 values.*got 30"):
        read_gt(path)


def test_empty_and_missing(tmp_path):
    (tmp_path / "empty.csv").write_text(",".join(GT_HEADER) + "\n")
    with pytest.raises(GtFormatError, match="no keypoint rows"):
        read_gt(tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        read_gt(tmp_path / "nothere.csv")


def test_img_shapes_round_trip_and_errors(tmp_path):
    shapes = {"b.jpg": (120, 80), "a.jpg": (50, 60)}
    path = write_img_shapes(shapes, tmp_path / "img_shapes.csv")
    assert path.read_text().splitlines() == ["img_filename,n_rows,n_cols", "a.jpg,50,60", "b.jpg,120,80"]
    assert read_img_shapes(path) == shapes
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfimg_filename,n_rows,n_cols\r\na.jpg,50,60\r\n")
    assert read_img_shapes(bom) == {"a.jpg": (50, 60)}
    bad = tmp_path / "bad_shapes.csv"
    bad.write_text("img_filename,n_rows,n_cols\na.jpg,50\n")
    with pytest.raises(GtFormatError, match=r"bad_shapes\.csv, line 2"):
        read_img_shapes(bad)
    bad.write_text("img_filename,n_rows,n_cols\na.jpg,50,sixty\n")
    with pytest.raises(GtFormatError, match=r"bad_shapes\.csv, line 2"):
        read_img_shapes(bad)


def test_reads_synthetic_folder(small_faces):
    table = read_gt(small_faces / "gt.csv")
    shapes = read_img_shapes(small_faces / "img_shapes.csv")
    assert sorted(table) == sorted(shapes) == [f"{i:05d}.jpg" for i in range(12)]
