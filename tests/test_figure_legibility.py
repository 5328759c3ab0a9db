"""Every figure of ``facepoints_lib.notebook`` can be read where JupyterLab shows it.

JupyterLab shows an inline figure as a PNG (``INLINE_DPI`` pixels per inch, cut to the
figure's tight box plus ``PNG_PAD`` inches a side) at its natural size when it fits the
output area (``OUTPUT_WIDTH_PX``, measured in the browser: see ``figure_layout``), else
scaled down to the area's width. Text of ``S`` pt in a PNG ``P`` px wide therefore shows
``S * INLINE_DPI / 72 * min(1, OUTPUT_WIDTH_PX / P)`` CSS px tall; it must be at least
12 CSS px (9 CSS pt). Each figure-drawing function is drawn on small synthetic data,
arranged as the notebooks arrange it, and every text it draws (titles, tick labels,
point numbers, legends, annotations) is checked: shown at 9 pt or more, inside the
figure, and clear of the text of other panels. The labels of the benchmark scatter
(notebook 03) must cover no dot and stay inside their axes.
"""

from __future__ import annotations

from contextlib import contextmanager

import matplotlib

matplotlib.use("Agg")   # noqa: E402 - before pyplot is imported by the modules below

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.text import Annotation, Text

from facepoints_lib.core.dataset import load_faces
from facepoints_lib.core.inference import PADDED
from facepoints_lib.notebook import analysis, benchmarks, confidence_plots as cp, plotting
from facepoints_lib.notebook.figure_layout import INLINE_DPI, OUTPUT_WIDTH_PX, PNG_PAD, panels

MIN_SHOWN_PX = 12.0          # 9 CSS pt: the smallest text a person should have to read
CSS_PX_PER_PT = 96 / 72


@contextmanager
def recorded_texts():
    """The ``Text`` artists that a draw inside the block really draws (visible, not
    empty, an annotation whose point is in view; tick labels of ticks out of view are
    never drawn), in drawing order."""
    drawn, original = [], Text.draw

    def draw(self, renderer):
        original(self, renderer)
        if self.get_visible() and self.get_text().strip() and self.get_alpha() != 0:
            drawn.append(self)

    Text.draw = draw
    try:
        yield drawn
    finally:
        Text.draw = original


def text_box(text, renderer):
    """The box of the text alone (an annotation's line to its point left out), in pixels."""
    if isinstance(text, Annotation):
        text.update_positions(renderer)
    return Text.get_window_extent(text, renderer)


def shown_scale(fig, renderer) -> float:
    """How much JupyterLab scales the figure's inline PNG down (1: natural size)."""
    png_width = (fig.get_tightbbox(renderer).width + 2 * PNG_PAD) * INLINE_DPI
    return min(1.0, OUTPUT_WIDTH_PX / png_width)


def owners(fig) -> tuple[dict, dict]:
    """{id(text): its axes} for every text of every axes (tick labels, legend and titles
    included; the figure's own texts, suptitles, are absent) and {id(tick label): its axis}."""
    axes_of, axis_of = {}, {}
    for ax in fig.axes:
        axes_of.update((id(t), ax) for t in ax.findobj(Text))
        for axis in (ax.xaxis, ax.yaxis):
            axis_of.update((id(t.label1), axis) for t in axis.get_major_ticks() + axis.get_minor_ticks())
    return axes_of, axis_of


def overlap(a, b) -> float:
    """Area (px^2) two boxes share."""
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))


def legibility(fig) -> tuple[list[str], float]:
    """(problems, smallest text as shown in CSS px) of a figure drawn as the inline backend
    draws it. Problems: text shown smaller than ``MIN_SHOWN_PX``; text past the figure's
    edge; text of one panel over text of another (or over a suptitle); tick labels of one
    axis over each other (unrotated ones: a rotated label's box is not its outline)."""
    fig.set_dpi(INLINE_DPI)
    with recorded_texts() as drawn:
        fig.draw_without_rendering()             # the layout and every draw call, no pixels
    renderer = fig.canvas.get_renderer()
    scale = shown_scale(fig, renderer)
    axes_of, axis_of = owners(fig)
    boxes = [(t, text_box(t, renderer), axes_of.get(id(t)), axis_of.get(id(t))) for t in drawn]
    problems, smallest = [], float("inf")
    for text, box, _, _ in boxes:
        shown = text.get_fontsize() * INLINE_DPI / 72 * scale
        smallest = min(smallest, shown)
        if shown < MIN_SHOWN_PX - 1e-6:
            problems.append(f"{text.get_text()!r} shows at {shown / CSS_PX_PER_PT:.1f} pt ({text.get_fontsize():g} pt "
                            f"at scale {scale:.2f})")
        if box.x0 < -1 or box.y0 < -1 or box.x1 > fig.bbox.x1 + 1 or box.y1 > fig.bbox.y1 + 1:
            problems.append(f"{text.get_text()!r} is cut at the figure's edge")
    for i, (a, box_a, axes_a, axis_a) in enumerate(boxes):
        for b, box_b, axes_b, axis_b in boxes[i + 1:]:
            different = axes_a is None or axes_b is None or axes_a is not axes_b
            ticks = axis_a is not None and axis_a is axis_b and a.get_rotation() == b.get_rotation() == 0
            if (different or ticks) and overlap(box_a, box_b) > 4:
                problems.append(f"{a.get_text()!r} and {b.get_text()!r} overlap")
    return problems, smallest


# ---------------------------------------------------------------- data

@pytest.fixture(scope="module")
def faces(small_faces):
    return load_faces(small_faces / "images", 64, small_faces / "gt.csv")


def _result(name, epochs, threads, minutes, err, changes=(), parameters=1_500_000, history=3):
    return {"name": name, "parameters": parameters, "overrides": [f"epochs={epochs}", *changes],
            "config": {"epochs": epochs},
            "holdout": {"err": err, "mark": 9, "nme": 0.05, "auc08": 0.4},
            "train": {"wall_seconds": 60 * minutes, "threads": threads, "images_per_second": 50.0,
                      "history": [{"epoch": e, "val_err": err * (1 + 3 / e)} for e in range(1, history + 1)]}}


# The long-budget runs of bench/results when the issue was filed: seven budgets, dots that
# crowd (two runs 0.2 minutes and 0.01 err apart), the best run at the right edge.
LONG_RUNS = [("avx2-prog-e40", 40, 2, 20.2, 4.19), ("epochs-30", 30, 2, 8.8, 3.50),
             ("recipe-seed0", 60, 2, 25.4, 3.43), ("recipe-sgd-seed0", 60, 2, 23.1, 3.30, ["lr=0.1"]),
             ("budget-90-epochs", 90, 2, 23.5, 3.22), ("recipe-90-seed1", 90, 2, 24.5, 3.24, ["lr=0.1"]),
             ("cand-sgd-js10", 60, 1, 26.8, 3.33, ["lr=0.1"]), ("cand-sgd-js30", 60, 1, 28.3, 3.30, ["lr=0.2"]),
             ("cand-deep-light", 60, 1, 28.4, 3.27, ["lr=0.3"]), ("cand-90-js30", 60, 1, 36.0, 3.31, ["lr=0.4"]),
             ("cand-res64-big", 80, 1, 35.7, 3.39), ("recipe-x", 90, 2, 40.8, 3.41, ["lr=0.5"]),
             ("recipe-seed1", 90, 1, 41.7, 3.42), ("cand-60-b", 60, 1, 41.6, 3.39),
             ("cand-90-js30-seed1", 90, 1, 42.6, 3.19, ["lr=0.1"]), ("cand-90-c", 90, 1, 42.4, 3.18, ["lr=0.2"])]


def long_rows():
    return benchmarks.bench_rows([_result(name, epochs, threads, minutes, err, *changes)
                                  for name, epochs, threads, minutes, err, *changes in LONG_RUNS])


def short_results():
    rng = np.random.default_rng(0)
    changes = ["model.head=regression", "loss=mse", "augment.flip_prob=0", "lr=0.01", "model.widths=(8,8,8,8)",
               "model.image_size=128", "model.depths=(2,3,3,2)", "ema_decay=0"]
    return [_result("exp-base", 8, 1, 4.0, 8.4, history=8)] + [
        _result(f"exp-{change.split('=')[0].split('.')[-1]}-{k}", 8, 1, float(rng.uniform(2.5, 10.3)),
                float(rng.uniform(6.5, 9.2)), [change], int(rng.uniform(1e6, 4e6)), history=8)
        for k, change in enumerate(changes)]


def scored(n, seed, look=0):
    rng = np.random.default_rng(seed)
    err = rng.lognormal(0.0, 1.2, n)
    looks = np.full(n, look) if look else np.where(rng.random(n) < 0.3, PADDED, 0)
    return cp.Scored(points=rng.uniform(-0.2, 1.2, (n, 14, 2)), err=err,
                     expected=err * rng.lognormal(0, 0.5, n), look=looks)


# ---------------------------------------------------------------- the figures, as the notebooks draw them

def face_pictures(faces, n=8):
    images = [faces.images[i % len(faces)] for i in range(n)]
    points = [faces.keypoints[i % len(faces)] for i in range(n)]
    return images, points


def fig_show_face(faces):                              # 01: one face with its numbers
    fig, ax = plt.subplots(figsize=(5, 5), layout="constrained")
    plotting.show_face(ax, faces.images[0], faces.keypoints[0], normalized=True,
                       title="00000.jpg: the 14 points, numbered")
    return fig


def fig_face_grid(faces):                              # 01, 02, 04: grids with numbers and long titles
    images, points = face_pictures(faces)
    titles = [f"turned 150 deg (full-turn share) {i}" if i % 2 else f"{i:05d}.jpg: 12.3, point 13" for i in range(8)]
    return plotting.face_grid(images, points, normalized=True, titles=titles, suptitle="the most rotated faces")


def fig_face_grid_answers(faces):                      # 04: labels and answers, two-line titles
    images, points = face_pictures(faces, 4)
    return plotting.face_grid(images, points, pred=[p + 0.02 for p in points], normalized=True, numbers=False,
                              titles=[f"{i:05d}.jpg +123°\nsecond look: err 12.3" for i in range(4)], size=2.6)


def fig_face_grid_three(faces):                        # 02: the flip check
    images, points = face_pictures(faces, 3)
    return plotting.face_grid(images, points, normalized=True, ncols=3, size=3.6,
                              titles=["original", "mirrored + FLIP_PERMUTATION (right)", "mirrored, labels kept (wrong)"])


def fig_face_rows(faces):                              # 01: duplicate groups
    rows = [[(faces.images[i], faces.keypoints[i].numpy() * 64 - 0.5, f"{i:05d}.jpg") for i in group]
            for group in ([0, 1], [2, 3, 4])]
    return plotting.face_rows(rows, numbers=True, row_titles=[
        f"duplicate group {k}: labels differ by up to 3.4 % of the side" for k in (1, 2)])


def fig_mean_shape(faces):                             # 01: mean shape and spread per point
    fig, axes = panels(1, 2, height=4.2, gridspec_kw={"width_ratios": [1, 1.4]})
    plotting.plot_mean_shape(axes[0], faces.keypoints.numpy())
    axes[0].set_title("mean shape and 2-sigma spread")
    plotting.plot_per_point(axes[1], np.linspace(1, 5, 14), ylabel="std of position (% of side)",
                            title="spread per point")
    return fig


def fig_per_point(_):                                  # 04: err per point
    fig, ax = panels(height=3.8)
    plotting.plot_per_point(ax, np.linspace(1, 5, 14), errors=np.full(14, 0.3), ylabel="share of err",
                            title="err per point (bars: standard error)")
    return fig


def fig_ced(_):                                        # 04: CED and the err histogram
    fig, axes = panels(1, 2, height=3.8)
    rng = np.random.default_rng(0)
    plotting.plot_ced(axes[0], {"flip TTA": rng.uniform(0, 0.1, 50), "no TTA": rng.uniform(0, 0.12, 50)})
    axes[0].set_title("cumulative error distribution")
    plotting.plot_binned(axes[1], analysis.binned(rng.uniform(0, 10, 50), rng.uniform(0, 5, 50), [0, 3, 6, 10]),
                         xlabel="per-face err", ylabel="faces")
    return fig


def fig_binned_series(_):                              # 04: err by image size and by colour
    x, y = np.linspace(30, 250, 60), np.linspace(1, 3, 60)
    fig, axes = panels(1, 2, height=3.6)
    plotting.plot_binned_series(axes[0], {"err": analysis.binned(x, y, np.round(np.geomspace(30, 251, 6)))},
                                xlabel="image side (px)", ylabel="mean err")
    plotting.plot_binned_series(axes[1], {"err": analysis.binned(x % 1, y, [0, 0.5, 1])},
                                xlabel="0-0.5: colour, 0.5-1: grayscale", ylabel="mean err")
    return fig


def fig_roll(_):                                       # 04: err by roll, two looks
    x, y, edges = np.linspace(0, 180, 90), np.linspace(1, 30, 90), [0, 15, 30, 45, 90, 135, 180]
    fig, ax = panels(height=3.8)
    plotting.plot_binned_series(ax, {"first look only": analysis.binned(x, y, edges),
                                     "with the second look (detect)": analysis.binned(x, y / 2, edges)},
                                xlabel="|roll| of the turned face (degrees)", ylabel="mean err", log_y=True)
    return fig


def fig_short_scatter(_):                              # 03: the short budget, two panels
    rows = benchmarks.bench_rows(short_results())
    fig, axes = panels(2, 1, height=6.8)
    plotting.plot_bench_scatter(axes[0], rows, x="parameters", y="err")
    axes[0].set_title("short budget: holdout err vs parameters")
    plotting.plot_bench_scatter(axes[1], rows, x="train_minutes", y="err", log_x=False)
    axes[1].set_title("short budget: holdout err vs training time")
    return fig


def fig_long_scatter(_):                               # 03: the long budgets
    fig, ax = panels(height=3.8)
    plotting.plot_bench_scatter(ax, long_rows(), x="train_minutes", y="err", log_x=False)
    ax.set_title("long budgets: holdout err vs training time")
    return fig


def fig_histories(_):                                  # 03: training curves of one budget
    fig, ax = panels(height=3.4)
    plotting.plot_histories(ax, short_results(), "val_err", max_lines=8)
    ax.set_title("8 epochs, 1 thread: validation err, 8 of 9 runs (lowest holdout err)")
    return fig


def fig_group(_):                                      # 03: one comparison
    members = next(iter(benchmarks.group_experiments(short_results()).values()))
    members = members + short_results()[2:5]
    fig, axes = panels(2, 1, height=1.6 + 0.4 * len(members) + 3.2)
    plotting.plot_group(axes[0], members, "err", title="head · 8 epochs, 1 thread: holdout err")
    plotting.plot_histories(axes[1], members, "val_err", max_lines=8)
    return fig


def fig_live(_):                                       # 03: the live experiment
    fig, axes = panels(1, 2, height=3.6)
    plotting.plot_histories(axes[0], [{"name": "regression head", "train": {"history": short_results()[1]["train"]["history"]}},
                                      {"name": "heatmap head", "train": {"history": short_results()[0]["train"]["history"]}}])
    axes[0].set_title("validation err while training")
    plotting.plot_ced(axes[1], {"heatmap head": np.linspace(0, 0.1, 20), "regression head": np.linspace(0, 0.2, 20)})
    axes[1].set_title("validation faces: cumulative NME")
    return fig


def fig_confidence(_):                                 # 04: expected against measured err
    fig, ax = panels(height=5.6)
    cp.plot_expected_vs_measured(ax, {"upright": scored(40, 0), "turned": scored(40, 1), "cut": scored(40, 2)})
    return fig


def fig_second_try(_):                                 # 04: the second try on cut faces
    fig, axes = panels(1, 2, height=4.6)
    cp.plot_second_try(axes, scored(40, 0, look=1), scored(40, 1, look=1), scored(40, 2))
    return fig


def fig_cut_faces(faces):                              # 04: cut faces on a larger canvas
    n = len(faces)
    before, after = scored(n, 3, look=1), scored(n, 4)
    before.points = after.points = faces.keypoints.numpy()[:, ::-1].copy()
    return cp.cut_faces_figure(faces.images, faces.keypoints, before, after, [0, 1, 2],
                               names=[f"{i:05d}.jpg" for i in range(n)])


def fig_explorer(faces):                               # 02: the slider panel, a face turned half out
    from facepoints_lib.notebook.widgets import AugmentationExplorer

    explorer = AugmentationExplorer(faces)
    explorer.controls["rotation"].value, explorer.controls["shift x"].value = 150, 0.25
    return explorer.figure()


def fig_explorer_batch(faces):                         # 02: the explorer's random batch
    from facepoints_lib.notebook.widgets import AugmentationExplorer

    return AugmentationExplorer(faces, batch_size=8).batch_figure()


def found_pictures(faces, sizes=((800, 480), (700, 700), (512, 512), (600, 800))):
    """Pictures as notebook 05 finds them (synthetic faces pasted on a plain background,
    their labels as the answers): a group of two, one face, none, and a tall phone photo."""
    from PIL import Image

    from facepoints_lib.notebook import photos
    from facepoints_lib.tools.photo import PhotoFace

    names = ["group of two", "turned 60°", "a quarter turn", "IMG_20261207_124501 from a phone.jpg"]
    found = []
    for k, (name, (width, height)) in enumerate(zip(names, sizes)):
        picture = Image.new("RGB", (width, height), photos.BACKGROUND)
        placed = [] if k == 2 else [(width - 330, 30, 300), (40, height - 240, 200)][: 2 if k == 0 else 1]
        found_faces = []
        for j, (x0, y0, side) in enumerate(placed):
            face = faces.images[(k + j) % len(faces)].permute(1, 2, 0).numpy()
            picture.paste(Image.fromarray(face).resize((side, side)), (x0, y0))
            points = faces.keypoints[(k + j) % len(faces)].numpy() * side - 0.5 + np.array([x0, y0])
            box = (x0 + 0.15 * side, y0 + 0.15 * side, x0 + 0.85 * side, y0 + 0.85 * side)
            found_faces.append(PhotoFace(box, 0.0, 1.23, points, 0.81 if j else None, (x0, y0, x0 + side, y0 + side)))
        found.append(photos.Found.of(name, picture, found_faces, 96))
    return found


def fig_photos(faces):                                 # 05: the examples with their faces
    from facepoints_lib.notebook import photos

    return photos.photos_figure(found_pictures(faces))


def fig_photo_uploaded(faces):                         # 05: one tall uploaded photo
    from facepoints_lib.notebook import photos

    return photos.photos_figure(found_pictures(faces)[3:])


def fig_photo_crops(faces):                            # 05: the crops the model saw, numbered points
    from facepoints_lib.notebook import photos

    return photos.crops_figure(found_pictures(faces))


def fig_how_good(faces):                               # 04: how good it can get, per point
    from facepoints_lib.notebook import cascade_plots

    rng = np.random.default_rng(0)
    names = ("labels (duplicates)", "labels, upper bound (two networks)", "the first network alone", "cascade")
    series = {name: list(rng.uniform(0.5, 6.0, 14)) for name in names}
    fig, ax = panels(height=4.4)
    cascade_plots.plot_how_good(ax, {"series": series, "overall": {n: float(np.mean(v)) for n, v in series.items()}})
    return fig


def fig_equal_time(faces):                             # 03: single network against the cascade
    from facepoints_lib.notebook import cascade_plots

    def row(name, steps, err, median, minutes, work=None):
        return {"name": name, "steps": steps, "work": steps if work is None else work, "err": err,
                "median_err": median, "minutes": minutes}

    points = {"single": [row("curve-e6-seed0", 396, 9.57, 6.1, 5.0), row("curve-e12-seed0", 792, 5.26, 3.96, 8.6),
                         row("curve-e24-seed0", 1584, 4.15, 3.06, 19.7)],
              "cascade": [row("cascade-e12-e12-seed0", 1584, 5.02, 3.09, 21.0),
                          row("second-stage-e12-j2", 1584, 4.64, 2.81, 23.0), row("cascade-e12-e6", 1188, 3.9, 3.0, 15.0),
                          row("second-stage-cheap64-e12", 1584, 4.3, 2.7, 17.0, work=1144)],
              "shipped": [row("shipped e12", 1452, 4.4, 3.1, 3.0, work=1040),
                          row("shipped e24", 2904, 3.8, 2.7, 6.0, work=2080),
                          row("shipped e90", 10956, 3.2, 2.3, 20.0, work=7860)],
              "cpu": "AVX2 only"}
    fig, axes = panels(2, 1, height=7.0)
    for ax, figure in zip(axes, ("err", "median_err")):
        cascade_plots.plot_equal_time(ax, points, figure)
    return fig


FIGURES = {f.__name__[4:]: f for f in (
    fig_show_face, fig_face_grid, fig_face_grid_answers, fig_face_grid_three, fig_face_rows, fig_mean_shape,
    fig_per_point, fig_ced, fig_binned_series, fig_roll, fig_short_scatter, fig_long_scatter, fig_histories,
    fig_group, fig_live, fig_confidence, fig_second_try, fig_cut_faces, fig_explorer, fig_explorer_batch,
    fig_photos, fig_photo_uploaded, fig_photo_crops, fig_how_good, fig_equal_time)}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------- the tests

@pytest.mark.parametrize("name", FIGURES)
def test_every_text_can_be_read_where_jupyterlab_shows_it(name, faces):
    fig = FIGURES[name](faces)
    problems, smallest = legibility(fig)
    print(f"{name}: smallest text shows at {smallest / CSS_PX_PER_PT:.1f} pt")
    assert problems == [], f"{name}: {len(problems)} problem(s):\n  " + "\n  ".join(problems[:12])


@pytest.mark.parametrize("name", ["long_scatter", "short_scatter", "equal_time"])
def test_scatter_labels_cover_no_dot_and_stay_inside(name, faces):
    fig = FIGURES[name](faces)
    fig.set_dpi(INLINE_DPI)
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        labels = [t for t in ax.texts if isinstance(t, Annotation)]
        assert labels, "the best run and the baseline of each budget are named"
        dots = []
        for collection in ax.collections:
            half = np.sqrt(collection.get_sizes()[0]) / 2 * INLINE_DPI / 72
            for x, y in ax.transData.transform(collection.get_offsets()):
                dots.append((x - half, y - half, x + half, y + half))
        for label in labels:
            box = text_box(label, renderer)
            assert ax.bbox.x0 <= box.x0 and box.x1 <= ax.bbox.x1 and ax.bbox.y0 <= box.y0 and box.y1 <= ax.bbox.y1, \
                f"{label.get_text()!r} is not inside its axes"
            for x0, y0, x1, y1 in dots:
                covered = max(0.0, min(box.x1, x1) - max(box.x0, x0)) * max(0.0, min(box.y1, y1) - max(box.y0, y0))
                assert covered == 0, f"{label.get_text()!r} covers a dot at ({(x0 + x1) / 2:.0f}, {(y0 + y1) / 2:.0f}) px"
        others = [text_box(label, renderer) for label in labels]
        for i, a in enumerate(others):
            assert all(overlap(a, b) == 0 for b in others[i + 1:]), "two labels overlap"


def test_the_check_fails_on_small_cut_and_overlapping_text():
    """What the old figures did: 14 inches wide with 7 pt labels (shown at 4 pt), a label
    past the figure's edge, two panels' titles running into each other."""
    fig, axes = plt.subplots(1, 2, figsize=(14, 3))
    axes[1].annotate("a run name at the right edge", (1, 0.5), xytext=(4, 4), textcoords="offset points",
                     fontsize=7)
    axes[0].set_title("the left panel's title")
    axes[1].set_title("a title long enough to run into its neighbour's " * 3, loc="right")
    problems, smallest = legibility(fig)
    print("\n".join(problems))
    assert smallest / CSS_PX_PER_PT < 6
    assert any("'a run name at the right edge' shows at" in p for p in problems)
    assert any("cut at the figure's edge" in p for p in problems)
    assert any("overlap" in p for p in problems)
    fig, ax = panels()
    ax.set_title("fits")
    assert legibility(fig)[0] == []
