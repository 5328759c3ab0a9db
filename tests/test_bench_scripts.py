"""Tests of the helper scripts under bench/ (run as files, not part of the package)."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facepoints_lib.core.gt_csv import read_gt, read_img_shapes

from conftest import REPO_ROOT

SHRINK = REPO_ROOT / "bench" / "shrink_data.py"


def _load_shrink():
    spec = importlib.util.spec_from_file_location("shrink_data", SHRINK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shrink_data_keeps_points_on_the_same_spot(synth_train, tmp_path):
    count = _load_shrink().shrink_folder(synth_train, tmp_path / "small", side=48)
    original, small = read_gt(synth_train / "gt.csv"), read_gt(tmp_path / "small" / "gt.csv")
    shapes = read_img_shapes(tmp_path / "small" / "img_shapes.csv")
    assert count == len(original) == len(small) == len(shapes)
    shrunk = larger = 0
    for name, points in original.items():
        with Image.open(synth_train / "images" / name) as before, \
                Image.open(tmp_path / "small" / "images" / name) as after:
            (w0, h0), (w1, h1) = before.size, after.size
        assert max(w1, h1) == min(48, max(w0, h0)) and shapes[name] == (h1, w1)
        shrunk += (w1, h1) != (w0, h0)
        larger += max(w0, h0) > 48
        size0, size1 = np.tile([w0, h0], 14), np.tile([w1, h1], 14)
        # the same fraction of the picture, to the 3 decimals the csv keeps
        np.testing.assert_allclose((small[name] + 0.5) / size1, (points + 0.5) / size0, atol=1e-3 / 48)
    assert shrunk == larger > count // 2          # only the larger pictures change


def test_shrink_data_refuses_a_table_not_in_the_course_format(tmp_path):
    (tmp_path / "gt.csv").write_text("name,x,y\n")
    with pytest.raises(ValueError, match="expected 29 values"):
        _load_shrink().shrink_folder(tmp_path, tmp_path / "out")


def test_shrink_data_command_line(synth_train, tmp_path):
    out = subprocess.run([sys.executable, str(SHRINK), str(synth_train), str(tmp_path / "s"), "--side", "64"],
                         capture_output=True, text=True, check=True).stdout
    assert f"wrote {len(read_gt(synth_train / 'gt.csv'))} faces at most 64 px" in out
