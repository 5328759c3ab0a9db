"""Tests of the error measures against hand computations and the course's own code."""

import numpy as np
import pytest

from facepoints_lib.core.metrics import (MARK_TABLE, ced_auc, ced_curve, course_err, course_mark,
                                    per_image_err, per_image_nme)
from facepoints_lib.core.schema import NUM_POINTS


def course_compute_metric(detected, gt, img_shapes):
    """The course's run.py metric, written as the course writes it (dicts, in place)."""
    res = 0.0
    for filename, coords in detected.items():
        n_rows, n_cols = img_shapes[filename]
        diff = np.array(coords, dtype=np.float64) - gt[filename]
        diff[::2] /= n_cols
        diff[1::2] /= n_rows
        diff *= 100
        res += (diff ** 2).mean()
    return res / len(detected)


def test_course_err_by_hand():
    # Image a: 200 wide, 100 high, every point off by (2, 1) px -> 1 % on both axes -> err 1.
    # Image b: 50 x 50, every point off by (1, 0) px -> 2 % and 0 % -> mean of 4 and 0 = 2.
    true = np.zeros((2, NUM_POINTS, 2))
    pred = true.copy()
    pred[0] += [2.0, 1.0]
    pred[1] += [1.0, 0.0]
    sizes = np.array([[200.0, 100.0], [50.0, 50.0]])
    np.testing.assert_allclose(per_image_err(pred, true, sizes), [1.0, 2.0])
    assert course_err(pred, true, sizes) == pytest.approx(1.5)
    # The same in normalised coordinates (no sizes).
    assert course_err(pred / sizes[:, None], true / sizes[:, None]) == pytest.approx(1.5)


def test_course_err_matches_course_code():
    rng = np.random.default_rng(0)
    sizes = rng.integers(40, 300, (20, 2)).astype(float)                 # (width, height)
    true = rng.uniform(0, 1, (20, NUM_POINTS, 2)) * sizes[:, None]
    pred = true + rng.normal(0, 3, true.shape)
    names = [f"{i}.jpg" for i in range(20)]
    detected = {n: p.ravel() for n, p in zip(names, pred)}
    gt = {n: t.ravel() for n, t in zip(names, true)}
    shapes = {n: (int(s[1]), int(s[0])) for n, s in zip(names, sizes)}     # (n_rows, n_cols)
    expected = course_compute_metric(detected, gt, shapes)
    assert course_err(pred, true, sizes) == pytest.approx(expected, rel=1e-12)


def test_per_image_err_zero_and_symmetry():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 1, (2, 5, NUM_POINTS, 2))
    assert course_err(a, a) == 0.0
    np.testing.assert_allclose(per_image_err(a, b), per_image_err(b, a))


@pytest.mark.parametrize("err, mark", [
    (0.0, 10), (5.0, 10), (5.01, 9), (6.0, 9), (6.01, 8), (8.0, 8), (10.0, 7), (12.0, 6),
    (14.0, 5), (16.0, 4), (18.0, 3), (18.5, 2), (20.0, 2), (20.1, 0), (1000.0, 0),
])
def test_mark_table(err, mark):
    assert course_mark(err) == mark


def test_mark_table_is_monotone():
    bounds = [b for b, _ in MARK_TABLE]
    marks = [m for _, m in MARK_TABLE]
    assert bounds == sorted(bounds) and marks == sorted(marks, reverse=True)
    grid = np.linspace(0, 25, 501)
    assert all(course_mark(x) >= course_mark(y) for x, y in zip(grid, grid[1:]))


def test_nme():
    rng = np.random.default_rng(2)
    true = rng.uniform(20, 80, (4, NUM_POINTS, 2))
    true[:, 4] = [30, 50]
    true[:, 9] = [70, 50]                                                # inter-ocular distance 40
    assert np.all(per_image_nme(true, true) == 0)
    np.testing.assert_allclose(per_image_nme(true + [4.0, 0.0], true), 0.1)
    np.testing.assert_allclose(per_image_nme(true + [3.0, 4.0], true), 5 / 40)


def test_ced_curve_and_auc():
    errors = np.array([0.01, 0.02, 0.05, 0.1])
    xs, ys = ced_curve(errors, 0.08, steps=9)
    np.testing.assert_allclose(xs, np.linspace(0, 0.08, 9))
    assert ys[0] == 0 and ys[-1] == 0.75
    assert np.all(np.diff(ys) >= 0)
    np.testing.assert_allclose(ys[[1, 2, 4, 5]], [0.25, 0.5, 0.5, 0.75])  # at 0.01, 0.02, 0.04, 0.05
    assert ced_auc(np.zeros(10)) == pytest.approx(1.0)
    assert ced_auc(np.full(10, 0.5)) == 0.0
    auc = ced_auc(errors, 0.08)
    # Exact area of the step function on [0, 0.08]: 0.25*0.01 + 0.5*0.03 + 0.75*0.03 = 0.04, / 0.08.
    assert auc == pytest.approx(0.5, abs=0.01)
    assert ced_auc(errors * 0.5) > auc

