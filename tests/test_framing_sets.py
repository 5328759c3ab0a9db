"""Tests of the framing test sets (``facepoints_lib.tools.framing_sets``) and their commands.

Everything runs on 12 synthetic faces written to a temporary folder, never on the course data.
"""

import json

import numpy as np
import pytest
from PIL import Image

from facepoints_lib.core.dataset import split_names
from facepoints_lib.core.gt_csv import read_gt, read_img_shapes, write_gt
from facepoints_lib.core.images import read_image
from facepoints_lib.tools.cli import main
from facepoints_lib.tools.framing_sets import (CUT_FRACTION, NOT_FACE_KINDS, cut_picture, make_cut_set,
                                               make_not_face_set, paint_out_face, points_outside)
from facepoints_lib.tools.synth import make_synthetic_faces


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """12 synthetic faces in the course format (seed 0)."""
    return make_synthetic_faces(tmp_path_factory.mktemp("framing") / "faces", 12, seed=0)


@pytest.fixture(scope="module")
def cut(faces, tmp_path_factory):
    """The cut copy of every face (seed 0) and its cut.json."""
    out = tmp_path_factory.mktemp("framing") / "cut"
    summary = make_cut_set(faces, out, holdout=0, seed=0)
    return out, summary, json.loads((out / "cut.json").read_text())


def _files(folder):
    """{relative path: bytes} of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cut_points_are_the_original_points_minus_the_crop_offset(faces, cut):
    out, summary, marker = cut
    original, moved, shapes = read_gt(faces / "gt.csv"), read_gt(out / "gt.csv"), read_img_shapes(out / "img_shapes.csv")
    assert sorted(moved) == sorted(original) == sorted(marker["files"]) and summary["faces"] == 12
    for name, info in marker["files"].items():
        left, top, right, bottom = info["box"]
        assert np.array_equal(moved[name], original[name] - np.tile([left, top], 14))
        with Image.open(out / "images" / name) as picture:
            assert picture.format == "JPEG" and picture.size == (right - left, bottom - top)
        assert shapes[name] == (bottom - top, right - left)
    # In memory (before JPEG) the picture is exactly that window of the original.
    image = read_image(faces / "images" / "00000.jpg")
    picture, points, info = cut_picture(image, original["00000.jpg"].reshape(14, 2), np.random.default_rng(3))
    left, top, right, bottom = info["box"]
    assert np.array_equal(np.asarray(picture), np.asarray(image)[top:bottom, left:right])
    assert np.array_equal(points, original["00000.jpg"].reshape(14, 2) - (left, top))


def test_the_cut_takes_a_whole_pixel_share_of_one_side_and_loses_the_points_there(faces, cut):
    """Synthetic faces keep every point a pixel inside and fill 60-95 % of the frame, so the
    14 points span about the middle half of the picture and a 15-35 % cut reaches them in
    fewer than half of the faces (5 of these 12): the test checks what the cut guarantees,
    that a point falls outside exactly when it lay in the strip taken off."""
    out, summary, marker = cut
    original, moved = read_gt(faces / "gt.csv"), read_gt(out / "gt.csv")
    for name, info in marker["files"].items():
        width, height = Image.open(faces / "images" / name).size
        left, top, right, bottom = info["box"]
        lo, hi = CUT_FRACTION
        assert lo <= info["fraction"] <= hi
        taken = {"left": left, "top": top, "right": width - right, "bottom": height - bottom}
        dim = width if info["side"] in ("left", "right") else height
        assert taken.pop(info["side"]) == max(1, round(info["fraction"] * dim)) and set(taken.values()) == {0}
        x, y = original[name].reshape(14, 2).T
        in_strip = {"left": x < left - 0.5, "right": x > right - 0.5,
                    "top": y < top - 0.5, "bottom": y > bottom - 0.5}[info["side"]]
        outside = points_outside(moved[name], right - left, bottom - top)
        assert np.array_equal(outside, in_strip) and info["outside"] == outside.sum()
    assert summary["faces_with_points_outside"] == sum(v["outside"] > 0 for v in marker["files"].values()) >= 3
    assert summary["points_outside"] == marker["points_outside"] > 0


def test_gt_csv_keeps_coordinates_outside_the_picture(cut, tmp_path):
    out, summary, _ = cut
    moved, shapes = read_gt(out / "gt.csv"), read_img_shapes(out / "img_shapes.csv")
    lost = [name for name in moved if points_outside(moved[name], shapes[name][1], shapes[name][0]).any()]
    assert len(lost) == summary["faces_with_points_outside"] > 0
    assert min(v.min() for v in moved.values()) < 0                  # a left or top cut: below 0
    table = {"a.jpg": np.linspace(-40.25, 350.5, 28)}                   # written with 2 decimals
    write_gt(table, tmp_path / "gt.csv")
    assert np.array_equal(read_gt(tmp_path / "gt.csv")["a.jpg"], table["a.jpg"].round(2))


def test_the_holdout_and_given_names_choose_the_faces(faces, tmp_path):
    summary = make_cut_set(faces, tmp_path / "holdout", holdout=4, split_seed=1)
    expected = split_names(sorted(read_gt(faces / "gt.csv")), 4, 1)[1]
    assert sorted(read_gt(tmp_path / "holdout" / "gt.csv")) == expected
    assert summary["split"] == {"holdout": 4, "split_seed": 1} and summary["faces"] == 4
    make_cut_set(faces, tmp_path / "named", names=["00003.jpg", "00007.jpg"])
    assert sorted(p.name for p in (tmp_path / "named" / "images").iterdir()) == ["00003.jpg", "00007.jpg"]
    with pytest.raises(ValueError, match="not in"):
        make_cut_set(faces, tmp_path / "unknown", names=["nobody.jpg"])


def test_the_same_seed_writes_the_same_files_and_another_seed_others(faces, cut, tmp_path):
    out = cut[0]
    make_cut_set(faces, tmp_path / "again", holdout=0, seed=0)
    assert _files(tmp_path / "again") == _files(out)
    make_cut_set(faces, tmp_path / "other", holdout=0, seed=1)
    other = _files(tmp_path / "other")
    assert other["gt.csv"] != _files(out)["gt.csv"] and other["cut.json"] != _files(out)["cut.json"]
    for folder, seed in (("a", 0), ("b", 0), ("c", 1)):
        make_not_face_set(tmp_path / folder, count=5, seed=seed, data_dir=faces)
    assert _files(tmp_path / "a") == _files(tmp_path / "b") != _files(tmp_path / "c")


def test_the_not_face_set_has_every_kind_and_lists_it(faces, tmp_path):
    summary = make_not_face_set(tmp_path / "nf", count=10, seed=0, data_dir=faces)
    kinds = NOT_FACE_KINDS + ("painted_out",)
    lines = (tmp_path / "nf" / "kinds.csv").read_text().splitlines()
    listed = dict(line.split(",") for line in lines[1:])
    assert lines[0] == "filename,kind" and sorted(listed) == sorted(p.name for p in (tmp_path / "nf" / "images").iterdir())
    assert len(listed) == 10 and summary["kinds"] == {kind: 2 for kind in kinds}
    for name, kind in listed.items():
        with Image.open(tmp_path / "nf" / "images" / name) as picture:
            assert picture.format == ("JPEG" if kind == "painted_out" else "PNG")
            assert kind == "painted_out" or 48 <= min(picture.size) <= max(picture.size) <= 400
    assert set(make_not_face_set(tmp_path / "plain", count=4)["kinds"]) == set(NOT_FACE_KINDS)
    with pytest.raises(ValueError, match="at least 1"):
        make_not_face_set(tmp_path / "none", count=0)


def test_painting_out_covers_the_grown_box_in_one_colour(faces):
    image = read_image(faces / "images" / "00001.jpg")
    points = read_gt(faces / "gt.csv")["00001.jpg"].reshape(14, 2)
    painted = np.asarray(paint_out_face(image, points)).astype(int)
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    inner = painted[int(y0):int(y1) + 1, int(x0):int(x1) + 1]
    assert (inner == inner[0, 0]).all()                                 # every point under the paint
    assert painted[0, 0].tolist() == np.asarray(image)[0, 0].tolist()   # the corner left as it was


def test_an_out_dir_holding_other_files_is_refused_and_an_earlier_set_overwritten(faces, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine\n")
    with pytest.raises(FileExistsError, match="already holds files"):
        make_cut_set(faces, foreign)
    with pytest.raises(FileExistsError, match="already holds files"):
        make_not_face_set(foreign, count=2)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    make_cut_set(faces, tmp_path / "set", holdout=0)
    make_cut_set(faces, tmp_path / "set", holdout=3)                   # overwritten, nothing stale left
    assert len(list((tmp_path / "set" / "images").iterdir())) == len(read_gt(tmp_path / "set" / "gt.csv")) == 3
    make_not_face_set(tmp_path / "nf", count=6)
    make_not_face_set(tmp_path / "nf", count=2)
    assert len(list((tmp_path / "nf" / "images").iterdir())) == 2
    with pytest.raises(FileExistsError):                               # a not-face set is not a cut set
        make_cut_set(faces, tmp_path / "nf")
    with pytest.raises(ValueError):
        cut_picture(Image.new("RGB", (1, 1)), np.zeros((14, 2)), np.random.default_rng(0))


def test_the_commands_write_the_sets_and_report_errors(faces, tmp_path, capsys):
    assert main(["make-cut", str(faces), str(tmp_path / "cut"), "--holdout", "4", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote 4 cut faces to {tmp_path / 'cut'}: ") and "outside the picture" in out
    assert main(["make-cut", str(faces), str(tmp_path / "all"), "--all"]) == 0
    assert len(read_gt(tmp_path / "all" / "gt.csv")) == 12
    capsys.readouterr()
    assert main(["make-not-faces", str(tmp_path / "nf"), "--count", "5", "--data", str(faces)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote 5 pictures that are not faces to {tmp_path / 'nf'} (blank 1")
    assert main(["make-cut", str(faces), str(tmp_path / "nf")]) == 2           # not an earlier cut set
    assert capsys.readouterr().err.startswith("facepoints make-cut: error: output folder")
    assert main(["make-not-faces", str(tmp_path / "x"), "--count", "0"]) == 2
    assert "facepoints make-not-faces: error: count must be at least 1" in capsys.readouterr().err
