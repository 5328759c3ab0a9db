"""Tests for facepoints_lib.tools.synth: course format, determinism, variety, drawing matches points."""

import csv

import numpy as np
import pytest
from PIL import Image

from facepoints_lib.core.schema import FLIP_PERMUTATION, NUM_POINTS
from facepoints_lib.tools.synth import main, make_synthetic_faces, render_face, synthetic_faces_in_memory


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _luminance(img, point, radius=0):
    """Mean gray level of the (2 radius + 1)^2 block centred on an (x, y) pixel point."""
    arr = np.asarray(img.convert("L"), dtype=float)
    x, y = int(round(point[0])), int(round(point[1]))
    return arr[y - radius:y + radius + 1, x - radius:x + radius + 1].mean()


@pytest.fixture(scope="module")
def batch():
    return synthetic_faces_in_memory(200, seed=0)


def test_course_format(tmp_path):
    out = make_synthetic_faces(tmp_path / "faces", 12, seed=3)
    assert out == tmp_path / "faces"
    gt = _read_csv(out / "gt.csv")
    assert gt[0] == ["filename"] + [f"{a}{k}" for k in range(1, NUM_POINTS + 1) for a in "xy"]
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == [f"{i:05d}.jpg" for i in range(12)]
    assert [row[0] for row in gt[1:]] == names
    shapes = {row[0]: (int(row[1]), int(row[2])) for row in _read_csv(out / "img_shapes.csv")[1:]}
    assert _read_csv(out / "img_shapes.csv")[0] == ["img_filename", "n_rows", "n_cols"]
    assert sorted(shapes) == names
    for row in gt[1:]:
        assert len(row) == 1 + 2 * NUM_POINTS
        coords = np.array([int(v) for v in row[1:]]).reshape(NUM_POINTS, 2)  # integers, as in the course
        with Image.open(out / "images" / row[0]) as img:
            assert img.format == "JPEG"
            assert shapes[row[0]] == (img.height, img.width)
            assert (coords >= 0).all()
            assert (coords[:, 0] <= img.width - 1).all() and (coords[:, 1] <= img.height - 1).all()


def test_fixed_size(tmp_path):
    out = make_synthetic_faces(tmp_path, 3, seed=1, size=(90, 70))
    for row in _read_csv(out / "img_shapes.csv")[1:]:
        assert row[1:] == ["70", "90"]


def test_deterministic(tmp_path):
    a = make_synthetic_faces(tmp_path / "a", 5, seed=7)
    b = make_synthetic_faces(tmp_path / "b", 5, seed=7)
    c = make_synthetic_faces(tmp_path / "c", 5, seed=8)
    assert (a / "gt.csv").read_bytes() == (b / "gt.csv").read_bytes()
    assert (a / "img_shapes.csv").read_bytes() == (b / "img_shapes.csv").read_bytes()
    for i in range(5):
        name = f"images/{i:05d}.jpg"
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "gt.csv").read_bytes() != (c / "gt.csv").read_bytes()
    assert (a / "images/00000.jpg").read_bytes() != (c / "images/00000.jpg").read_bytes()


def test_in_memory_matches_disk(tmp_path):
    _, points = synthetic_faces_in_memory(4, seed=5)
    gt = _read_csv(make_synthetic_faces(tmp_path, 4, seed=5) / "gt.csv")
    disk = np.array([[int(v) for v in row[1:]] for row in gt[1:]]).reshape(4, NUM_POINTS, 2)
    np.testing.assert_array_equal(points, disk)


def test_batch_variety_and_bounds(batch):
    images, points = batch
    assert len(images) == 200 and points.shape == (200, NUM_POINTS, 2)
    assert np.array_equal(points, np.round(points))
    modes = [img.mode for img in images]
    assert set(modes) <= {"RGB", "L"}
    assert 5 <= modes.count("L") <= 60
    assert 5 <= sum(img.width != img.height for img in images) <= 50
    widths = [img.width for img in images]
    assert min(widths) < 70 and max(widths) > 150
    for img, pts in zip(images, points):
        assert (pts >= 0).all()
        assert (pts[:, 0] <= img.width - 1).all() and (pts[:, 1] <= img.height - 1).all()


def _check_layout(pts):
    """Left-to-right order of each row of features and top-to-bottom order of the rows."""
    x, y = pts[:, 0], pts[:, 1]
    assert x[0] <= x[1] < x[2] <= x[3]
    assert x[4] <= x[5] <= x[6] < x[7] <= x[8] <= x[9]
    assert x[11] < x[12] < x[13]
    assert y[[1, 2]].mean() < y[[5, 8]].mean() < y[10] < y[[11, 12, 13]].mean()


def test_layout_is_a_face_also_when_mirrored(batch):
    images, points = batch
    for img, pts in zip(images, points):
        _check_layout(pts)
        mirrored = pts[list(FLIP_PERMUTATION)].copy()
        mirrored[:, 0] = img.width - 1 - mirrored[:, 0]
        _check_layout(mirrored)


def test_keypoints_are_on_the_drawing():
    for k in range(40):
        img, p = render_face(np.random.default_rng([11, k]), size=(120, 120))
        cheek = (_luminance(img, (p[5] + p[11]) / 2, 1) + _luminance(img, (p[8] + p[13]) / 2, 1)) / 2
        for centre, outer, inner in ((5, 4, 6), (8, 9, 7)):
            pupil = _luminance(img, p[centre])
            assert pupil < cheek - 8, (k, centre)
            sclera = max(_luminance(img, (p[centre] + p[outer]) / 2), _luminance(img, (p[centre] + p[inner]) / 2))
            assert pupil < sclera - 20, (k, centre)
        assert abs(_luminance(img, p[12]) - cheek) > 6, k


def test_render_face_types():
    img, pts = render_face(np.random.default_rng(0))
    assert isinstance(img, Image.Image) and img.mode in ("RGB", "L")
    assert pts.shape == (NUM_POINTS, 2) and pts.dtype == float


@pytest.mark.parametrize("count", [0, -3])
def test_bad_count_raises(tmp_path, count):
    with pytest.raises(ValueError):
        make_synthetic_faces(tmp_path, count)


def test_main_writes_folder(tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--count", "2", "--seed", "4"])
    assert len(_read_csv(tmp_path / "cli" / "gt.csv")) == 3
    assert len(list((tmp_path / "cli" / "images").glob("*.jpg"))) == 2
