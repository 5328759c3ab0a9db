"""Tests of ``facepoints_lib.notebook.confidence_plots`` (notebook 04, section 8)."""

import matplotlib

matplotlib.use("Agg")   # noqa: E402 - before pyplot is imported by the module below

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from facepoints_lib.core.checkpoint import load_model
from facepoints_lib.core.confidence import Calibration, confidence, cut_copies, quarter_turned
from facepoints_lib.core.dataset import load_faces
from facepoints_lib.core.inference import PADDED
from facepoints_lib.notebook import confidence_plots as cp

from conftest import save_tiny_model


@pytest.fixture(scope="module")
def faces(small_faces):
    return load_faces(small_faces / "images", 32, small_faces / "gt.csv")


@pytest.fixture(scope="module")
def model(tmp_path_factory, faces):
    path = save_tiny_model(tmp_path_factory.mktemp("cp") / "m.pt", mean_shape=faces.keypoints.mean(0))
    return load_model(path)


def test_framing_views_are_the_faces_turned_and_cut(faces):
    views = cp.framing_views(faces, seed=3)
    assert list(views) == ["upright", "turned", "cut"]
    assert torch.equal(views["upright"][0], faces.images)
    for i in range(len(faces)):                       # face i turned by 1 + i % 3 quarter turns
        images, points = quarter_turned(faces.subset([i]), 1 + i % 3)
        assert torch.equal(views["turned"][0][i], images[0])
        torch.testing.assert_close(views["turned"][1][i], points[0])
    images, points = cut_copies(faces, torch.Generator().manual_seed(3))
    assert torch.equal(views["cut"][0], images) and torch.equal(views["cut"][1], points)
    assert torch.equal(cp.framing_views(faces, seed=3)["cut"][1], points)       # seeded


def test_points_outside_counts_faces_and_points():
    points = np.full((3, 14, 2), 0.5)
    points[1, 2] = [-0.1, 0.5]
    points[1, 3] = [0.5, 1.2]
    points[2, 0] = [1.0, 0.0]                          # on the border is inside
    assert cp.points_outside(points) == (1, 2)


def test_least_confident_share_and_equal_count_bins():
    expected = np.arange(1.0, 101.0)
    err = expected.copy()
    count, share = cp.least_confident_share(expected, err)
    assert count == 2 and share == pytest.approx((99 + 100) / err.sum())
    assert cp.least_confident_share(expected[:10], err[:10])[0] == 1              # at least one face
    rows = cp.calibration_bins(expected, 2 * err, bins=5)
    assert [r["faces"] for r in rows] == [20] * 5
    assert [r["expected_err"] for r in rows] == pytest.approx([10.5, 30.5, 50.5, 70.5, 90.5])
    assert all(r["ratio"] == pytest.approx(2.0) for r in rows)
    lo, hi = rows[0]["confidence"]
    assert lo == pytest.approx(confidence(20.0)) and hi == pytest.approx(confidence(1.0))


def test_on_canvas_puts_the_picture_inside_a_margin():
    image = torch.full((3, 20, 20), 255, dtype=torch.uint8)
    canvas, pad = cp.on_canvas(image, 0.25)
    assert pad == 5 and canvas.shape == (30, 30, 3)
    assert canvas[5:25, 5:25].min() == 1.0 and canvas[:5].max() < 1.0


def test_model_calibration_uses_the_stored_one_or_fits_one(model, faces):
    stored = Calibration(face=(0.1, 0.9, 0.2), point=(0.0, 1.0, 0.0), no_face_blur=5.0, faces=30)
    model.metadata = {"calibration": stored.to_dict()}
    cal, note = cp.model_calibration(model, faces)
    assert cal == stored and "stored in the model file" in note
    model.metadata = {}
    cal, note = cp.model_calibration(model, faces)
    assert cal.faces == 3 * len(faces) and "fitted here" in note


def test_scores_figures_and_report(model, faces):
    cal = Calibration(face=(0.5, 0.8, 0.3), point=(0.5, 0.8, 0.3), no_face_blur=50.0, faces=36)
    views = cp.framing_views(faces, seed=0)
    scores = cp.score_views(model, views, cal)
    before = cp.score_views(model, {k: views[k] for k in ("upright", "cut")}, cal, second_try=False)
    assert before["cut"].look.max() < PADDED
    for s in scores.values():
        assert s.points.shape == (len(faces), 14, 2) and s.err.shape == s.expected.shape == (len(faces),)
        assert np.all(s.expected > 0) and np.all(np.isfinite(s.err))
    fig, axes = plt.subplots(1, 3)
    cp.plot_expected_vs_measured(axes[0], scores)
    assert len(axes[0].get_legend().get_texts()) == 5            # three views, the bins, the diagonal
    cp.plot_second_try(axes[1:], scores["upright"], before["cut"], scores["cut"])
    assert len(axes[1].patches) == 6                              # mean and median of three
    show = cp.shown_cut_faces(before["cut"], scores["cut"], count=2)
    assert len(show) == 2
    grid = cp.cut_faces_figure(views["cut"][0], views["cut"][1], before["cut"], scores["cut"], show,
                               names=faces.filenames)
    assert len(grid.axes) == 4 and all(ax.get_title() for ax in grid.axes)
    plt.close("all")
    report = cp.framing_report(scores, before)
    assert "least confident faces (1 of 36)" in report and "cut / uncut err" in report
    assert len(report.splitlines()) == 4 + 5 + 1
