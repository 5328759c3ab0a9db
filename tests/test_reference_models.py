"""The reference-models benchmark (tools/reference_models.py): the iBUG-68 to course index
map, the fitted linear map, the quarter turn, and dlib's predictor (the photos extra)."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from facepoints_lib.core.schema import FLIP_PERMUTATION, NUM_POINTS
from facepoints_lib.tools import cli
from facepoints_lib.tools.photo import Framing
from facepoints_lib.tools.reference_models import (IBUG_FLIP, IBUG_TO_COURSE, apply_linear_map, fallback_box,
                                                   fit_linear_map, index_map, quarter_turn)
from facepoints_lib.tools.rotation_bench import turn_quarter

FRAMING = Framing(box_width=1.2, box_height=1.25, box_dx=0.0, box_dy=0.02,
                  points_width=1.85, points_height=1.85, points_dx=0.0, points_dy=0.22)


def ibug_face(cx: float = 100.0, cy: float = 100.0, s: float = 40.0) -> np.ndarray:
    """An upright iBUG-68 layout (68, 2 pixels): jaw, brows, nose, eyes and lips where
    the 300-W annotation puts them, the face's own right on the image's left."""
    jaw = [(-1.0 + i / 8, 0.1 + 0.9 * np.sin(np.pi * i / 16)) for i in range(17)]
    brows = [(x, -0.55 - 0.1 * np.sin(np.pi * (x + 0.9) / 0.7)) for x in np.linspace(-0.9, -0.2, 5)]
    brows += [(x, -0.55 - 0.1 * np.sin(np.pi * (x - 0.2) / 0.7)) for x in np.linspace(0.2, 0.9, 5)]
    nose = [(0.0, -0.3 + 0.1 * i) for i in range(4)] + [(x, 0.1) for x in np.linspace(-0.2, 0.2, 5)]
    eye = [(-0.35, 0.0), (-0.25, -0.05), (-0.15, -0.05), (-0.05, 0.0), (-0.15, 0.04), (-0.25, 0.04)]
    left = [(x - 0.35, y - 0.3) for x, y in eye]                            # 36-41: outer corner first
    right = [(-x, y) for x, y in (left[i] for i in (3, 2, 1, 0, 5, 4))]   # 42-47: the mirror, inner corner first
    outer = [(-0.4, 0.45), (-0.25, 0.38), (-0.1, 0.35), (0.0, 0.37), (0.1, 0.35), (0.25, 0.38), (0.4, 0.45),
             (0.25, 0.55), (0.1, 0.6), (0.0, 0.61), (-0.1, 0.6), (-0.25, 0.55)]
    inner = [(-0.3, 0.45), (-0.1, 0.43), (0.0, 0.44), (0.1, 0.43), (0.3, 0.45), (0.1, 0.48), (0.0, 0.49),
             (-0.1, 0.48)]
    points = np.array(jaw + brows + nose + left + right + outer + inner, dtype=np.float64)
    assert points.shape == (68, 2)
    return points * s + (cx, cy)


def test_the_index_map_gives_the_course_points_in_order():
    face = ibug_face()
    course = index_map(face)
    assert course.shape == (NUM_POINTS, 2)
    x, y = course[:, 0], course[:, 1]
    assert list(np.argsort(x[:4])) == [0, 1, 2, 3]                         # brows, left to right
    assert list(np.argsort(x[4:10])) == [0, 1, 2, 3, 4, 5]                  # eye points, left to right
    assert list(np.argsort(x[11:14])) == [0, 1, 2]                          # mouth left, centre, right
    assert y[:4].max() < y[4:10].min() < y[4:10].max() < y[10] < y[11:14].min()   # brows, eyes, nose, mouth
    np.testing.assert_allclose(course[5], face[36:42].mean(axis=0))
    np.testing.assert_allclose(course[8], face[42:48].mean(axis=0))
    np.testing.assert_allclose(course[[0, 3, 4, 9, 10, 11, 13]], face[[17, 26, 36, 45, 30, 48, 54]])
    batch = index_map(np.stack([face, face + 5.0]))                         # works on a batch
    np.testing.assert_allclose(batch[1], course + 5.0)


def test_mirrored_faces_map_consistently_with_the_course_flip_order():
    assert sorted(IBUG_FLIP) == list(range(68)) and all(IBUG_FLIP[IBUG_FLIP[i]] == i for i in range(68))
    rng = np.random.default_rng(0)
    width = 200.0
    for face in (ibug_face(), rng.uniform(0, width, (68, 2))):            # holds for any 68 points
        mirrored = face[list(IBUG_FLIP)] * (-1, 1) + (width - 1, 0)
        expected = index_map(face)[list(FLIP_PERMUTATION)] * (-1, 1) + (width - 1, 0)
        np.testing.assert_allclose(index_map(mirrored), expected, atol=1e-9)
    assert len(IBUG_TO_COURSE) == NUM_POINTS


def test_the_linear_map_fit_recovers_a_known_linear_map_exactly():
    rng = np.random.default_rng(1)
    n = 300
    boxes = np.column_stack([rng.uniform(0, 50, n), rng.uniform(0, 50, n)])
    boxes = np.column_stack([boxes, boxes + rng.uniform(60, 200, (n, 1))])
    points68 = boxes[:, None, :2] + rng.uniform(0, 1, (n, 68, 2)) * (boxes[:, None, 2:] - boxes[:, None, :2])
    true_weights = rng.normal(0, 0.05, (137, 28))
    true_weights[-1] += 0.5                                                 # a bias
    normalised = (points68 - boxes[:, None, :2]) / (boxes[:, None, 2:] - boxes[:, None, :2])
    target = (np.column_stack([normalised.reshape(n, -1), np.ones(n)]) @ true_weights).reshape(n, 14, 2)
    truth = target * (boxes[:, None, 2:] - boxes[:, None, :2]) + boxes[:, None, :2]
    weights = fit_linear_map(points68, boxes, truth)
    np.testing.assert_allclose(weights, true_weights, atol=1e-8)
    np.testing.assert_allclose(apply_linear_map(weights, points68, boxes), truth, atol=1e-6)


def test_the_quarter_turn_moves_points_with_the_pixels_as_turn_quarter_does():
    rng = np.random.default_rng(2)
    picture = rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)
    points = np.array([[0.0, 0.0], [49.0, 29.0], [12.0, 7.0], [3.5, 20.25]])
    turned, moved = quarter_turn(picture, points)
    assert turned.shape == (50, 30, 3)
    for (x, y), (u, v) in zip(points[:3].astype(int), moved[:3].astype(int)):
        assert (picture[y, x] == turned[v, u]).all()
    pil, pil_points = turn_quarter(Image.fromarray(picture), points, 90)
    assert (np.asarray(pil) == turned).all()
    np.testing.assert_allclose(moved, pil_points)


def test_the_fallback_box_is_a_square_centred_on_the_crop():
    x0, y0, x1, y1 = fallback_box(240, 200, FRAMING)
    assert x1 - x0 == pytest.approx(y1 - y0) == pytest.approx(np.sqrt(240 * 200 / (1.2 * 1.25)))
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((120.0, 100.0))


def test_the_command_is_registered():
    args = cli.build_parser().parse_args(["bench-reference", "m.pt", "data", "--name", "x", "--model", "h.pt"])
    assert (args.model, args.data_dir, args.name, args.honest_model) == ("m.pt", "data", "x", "h.pt")


def test_dlib_gives_68_points_and_falls_back_to_the_crop_box(photos_extra):
    from facepoints_lib.tools.reference_models import DlibLandmarks, predictor_path
    assert predictor_path().stat().st_size > 50e6
    landmarks = DlibLandmarks(FRAMING)
    blank = np.full((120, 100, 3), 128, dtype=np.uint8)                     # no face: the fallback box
    points, box, found = landmarks(blank)
    assert not found and points.shape == (68, 2) and np.isfinite(points).all()
    assert box == pytest.approx(fallback_box(100, 120, FRAMING))
    assert index_map(points).shape == (NUM_POINTS, 2)
