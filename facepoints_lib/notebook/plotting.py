"""Matplotlib functions for the notebooks: faces with numbered points, grids, error plots.

Faces are drawn with ``imshow``'s default extent, so the centre of pixel column ``i``
sits at ``x = i``: the pixel-centre convention of ``schema``. Points are coloured by
facial part (``schema.POINT_GROUPS``), numbered 0-13 in ``gt.csv`` order and joined by
``schema.SKELETON``. Images may be PIL images, ``(H, W, 3)`` arrays or ``(3, H, W)``
tensors (uint8, or float in [0, 1]).

Every figure fits the width JupyterLab shows at natural size and its smallest text is
``figure_layout.MIN_FONT`` pt (see ``figure_layout``); the notebooks make their own
figures with ``panels``.

``save_figure`` writes a PNG when ``FACEPOINTS_FIGURES`` names a folder (relative to the
project root), and does nothing otherwise; it is how ``docs/figures/`` is made (see ``notebooks/README.md``).
Not frozen into ``solution.py``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Ellipse
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter

from .benchmarks import budget_baselines, budget_label, experiment_group, rows_by_budget
from . import figure_layout
from .figure_layout import FIGURE_WIDTH, FONT, MIN_FONT, place_labels, wrapped
from ..core.metrics import ced_auc, ced_curve
from .data import project_root
from ..core.schema import NUM_POINTS, POINT_GROUPS, POINT_NAMES, SKELETON

FIGURES_ENV = "FACEPOINTS_FIGURES"
panels = figure_layout.panels        # the notebooks make their figures with plotting.panels(...)

GROUP_COLOURS = {
    "left_eyebrow": "#1f77b4", "right_eyebrow": "#17becf",
    "left_eye": "#2ca02c", "right_eye": "#bcbd22",
    "nose": "#ff7f0e", "mouth": "#d62728",
}


def point_colours() -> list[str]:
    """Colour of each of the 14 points, by facial part."""
    colours = ["k"] * NUM_POINTS
    for group, index in POINT_GROUPS.items():
        for i in index:
            colours[i] = GROUP_COLOURS[group]
    return colours


def as_image(image) -> np.ndarray:
    """A displayable ``(H, W, 3)`` array from a PIL image, an array or a (3, H, W) tensor."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.dtype != np.uint8:
        array = np.clip(array.astype(np.float64), 0.0, 1.0)
    return array


def draw_points(ax, points, *, numbers: bool = True, skeleton: bool = True, colour=None,
                marker: str = "o", size: float = 18, fontsize: float = MIN_FONT, label: str | None = None,
                zorder: int = 3) -> None:
    """Draw 14 points (pixel coordinates of the shown image) with the skeleton and numbers."""
    points = np.asarray(points, dtype=np.float64).reshape(NUM_POINTS, 2)
    colours = point_colours() if colour is None else [colour] * NUM_POINTS
    if skeleton:
        for a, b in SKELETON:
            ax.plot(points[[a, b], 0], points[[a, b], 1], "-", color=colour or "white",
                    lw=1.0, alpha=0.8, zorder=zorder - 1)
    ax.scatter(points[:, 0], points[:, 1], s=size, c=colours, marker=marker, label=label,
               edgecolors="black" if marker == "o" else None, linewidths=0.5, zorder=zorder)
    if numbers:                    # each number pushed away from the face's centre: the eye
        centre = points.mean(axis=0)   # corners and eyebrows no longer cover each other's labels
        for i, (x, y) in enumerate(points):
            away = points[i] - centre
            away = away / max(float(np.hypot(*away)), 1e-9)
            ax.annotate(str(i), (x, y), xytext=(8 * away[0], -8 * away[1]), textcoords="offset points",
                        ha="center", va="center", fontsize=fontsize, color="white", zorder=zorder + 1,
                        bbox={"boxstyle": "round,pad=0.1", "fc": colours[i], "ec": "none", "alpha": 0.75})


def show_face(ax, image, points=None, *, pred=None, normalized: bool = False, title: str | None = None,
              numbers: bool = True, skeleton: bool = True, fontsize: float = MIN_FONT,
              title_size: float = FONT) -> None:
    """Show a face with its points (and predictions as red crosses joined to them).

    ``normalized=True`` means the points are in ``schema``'s [0, 1] coordinates; they
    are mapped to the shown image's pixels.
    """
    array = as_image(image)
    height, width = array.shape[:2]

    def to_pixels(p):
        p = np.asarray(p, dtype=np.float64).reshape(NUM_POINTS, 2)
        return p * (width, height) - 0.5 if normalized else p

    ax.imshow(array, interpolation="bilinear" if max(width, height) < 128 else "antialiased")
    if points is not None:
        draw_points(ax, to_pixels(points), numbers=numbers and pred is None, skeleton=skeleton,
                    fontsize=fontsize)
    if pred is not None:
        p = to_pixels(pred)
        if points is not None:
            t = to_pixels(points)
            for i in range(NUM_POINTS):
                ax.plot([t[i, 0], p[i, 0]], [t[i, 1], p[i, 1]], "-", color="red", lw=0.8, zorder=4)
        ax.scatter(p[:, 0], p[:, 1], s=22, c="red", marker="x", linewidths=1.2, zorder=5)
        if numbers:
            for i, (x, y) in enumerate(p):
                ax.annotate(str(i), (x, y), xytext=(2, -7), textcoords="offset points",
                            fontsize=fontsize, color="red", zorder=6)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=title_size)


def face_grid(images, points=None, *, pred=None, titles=None, normalized: bool = False,
              ncols: int = 4, size: float = 2.2, numbers: bool = True, skeleton: bool = True,
              suptitle: str | None = None):
    """A grid of faces; ``points`` / ``pred`` / ``titles`` are per-face lists (or None).

    Faces are ``size`` inches wide, less when ``ncols`` of them would be wider than
    ``FIGURE_WIDTH``; titles are broken to the width of their face."""
    n = len(images)
    nrows = max(1, math.ceil(n / ncols))
    size = min(size, FIGURE_WIDTH / ncols)
    # constrained layout makes room for every title and the suptitle (tight_layout let long
    # titles of one row run over the pictures of the row above)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)),
                             squeeze=False, layout="constrained")
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        show_face(ax, images[k], None if points is None else points[k],
                  pred=None if pred is None else pred[k], normalized=normalized,
                  title=None if titles is None else wrapped(titles[k], size - 0.1), numbers=numbers,
                  skeleton=skeleton, title_size=MIN_FONT)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def face_rows(rows: list[list[tuple]], *, size: float = 2.2, numbers: bool = False,
              row_titles: list[str] | None = None):
    """Faces in rows that belong together (duplicates of one picture, before and after):
    ``rows`` holds, per row, ``(image, points, title)`` triples in pixel coordinates. Each
    row starts on a new line of the grid, with its own title, so groups never run into
    each other."""
    ncols = max((len(r) for r in rows), default=1)
    size = min(size, FIGURE_WIDTH / ncols)
    fig = plt.figure(figsize=(size * ncols, (size + 0.45) * max(len(rows), 1)), layout="constrained")
    subfigs = fig.subfigures(max(len(rows), 1), 1, squeeze=False)[:, 0]
    for k, (sub, row) in enumerate(zip(subfigs, rows)):
        axes = sub.subplots(1, ncols, squeeze=False)[0]
        for ax, item in zip(axes, row + [None] * (ncols - len(row))):
            if item is None:
                ax.axis("off")
                continue
            image, points, title = item
            show_face(ax, image, points, title=wrapped(title, size - 0.1), numbers=numbers, title_size=MIN_FONT)
        if row_titles:
            sub.suptitle(wrapped(row_titles[k], size * ncols - 0.2, FONT), fontsize=FONT, x=0.01, ha="left")
    return fig


def plot_mean_shape(ax, keypoints, *, max_faces: int = 1500, seed: int = 0) -> None:
    """All faces' normalised points (a sample, faint), the mean shape, 2-sigma ellipses."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    rng = np.random.default_rng(seed)
    sample = keypoints[rng.permutation(len(keypoints))[:max_faces]]
    colours = point_colours()
    for i in range(NUM_POINTS):
        ax.scatter(sample[:, i, 0], sample[:, i, 1], s=2, color=colours[i], alpha=0.15, lw=0)
        cov = np.cov(keypoints[:, i].T) if len(keypoints) > 1 else np.eye(2) * 1e-6
        values, vectors = np.linalg.eigh(cov)
        angle = np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1]))
        width, height = 4 * np.sqrt(np.maximum(values[::-1], 0))
        ax.add_patch(Ellipse(keypoints[:, i].mean(0), width, height, angle=angle, fill=False,
                             color=colours[i], lw=1.2))
    mean = keypoints.mean(0)
    for a, b in SKELETON:
        ax.plot(mean[[a, b], 0], mean[[a, b], 1], "-", color="0.3", lw=1)
    draw_points(ax, mean, skeleton=False, size=25)
    ax.set_xlim(0, 1)
    ax.set_ylim(1, 0)
    ax.set_aspect("equal")
    ax.set_xlabel("u (fraction of width)")
    ax.set_ylabel("v (fraction of height)")


def plot_per_point(ax, values, *, errors=None, ylabel: str = "", title: str | None = None) -> None:
    """Bars, one per point, coloured by facial part and labelled with the points' names."""
    values = np.asarray(values, dtype=np.float64)
    ax.bar(np.arange(NUM_POINTS), values, yerr=errors, color=point_colours(), capsize=2)
    ax.set_xticks(np.arange(NUM_POINTS))
    ax.set_xticklabels([f"{i} {name}" for i, name in enumerate(POINT_NAMES)], rotation=60,
                       ha="right", fontsize=MIN_FONT)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)


def plot_ced(ax, errors: dict, *, threshold: float = 0.08, xlabel: str = "NME (inter-ocular)") -> dict:
    """CED curves of ``{label: per-image errors}`` up to ``threshold``; returns {label: AUC}."""
    aucs = {}
    for label, values in errors.items():
        xs, ys = ced_curve(values, threshold)
        aucs[label] = ced_auc(values, threshold)
        ax.plot(xs, ys, label=f"{label} (AUC@{threshold:g} = {aucs[label]:.3f})")
    ax.set_xlim(0, threshold)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=MIN_FONT, loc="lower right")
    return aucs


def plot_binned(ax, rows: list[dict], *, xlabel: str, ylabel: str, label: str | None = None,
                log_y: bool = False) -> None:
    """Means with standard-error bars from ``analysis.binned``; counts written above."""
    if not rows:
        ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
        return
    centres = [(r["lo"] + r["hi"]) / 2 for r in rows]
    widths = [r["hi"] - r["lo"] for r in rows]
    ax.bar(centres, [r["mean"] for r in rows], width=[0.9 * w for w in widths],
           yerr=[r["sem"] for r in rows], alpha=0.75, capsize=2, label=label)
    for c, r in zip(centres, rows):
        ax.annotate(f"n={r['count']}", (c, r["mean"]), xytext=(0, 3), textcoords="offset points",
                    ha="center", fontsize=MIN_FONT)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def plain_log_y(ax) -> None:
    """A log y axis with ticks at 1, 2, 5 x 10^k written as plain numbers, and no crowded
    minor labels (matplotlib's default writes 4 x 10^0)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_binned_series(ax, series: dict[str, list[dict]], *, xlabel: str, ylabel: str,
                       log_y: bool = False) -> None:
    """Several ``analysis.binned`` results over the same bins as grouped bars with
    standard-error bars; each tick names its bin and face count (no labels over the bars)."""
    bins = sorted({(r["lo"], r["hi"]) for rows in series.values() for r in rows})
    if not bins:
        ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
        return
    width = 0.8 / len(series)
    counts = {}
    for k, (label, rows) in enumerate(series.items()):
        by_bin = {(r["lo"], r["hi"]): r for r in rows}
        xs = [i + (k - (len(series) - 1) / 2) * width for i, b in enumerate(bins) if b in by_bin]
        shown = [by_bin[b] for b in bins if b in by_bin]
        ax.bar(xs, [r["mean"] for r in shown], width=width * 0.95, yerr=[r["sem"] for r in shown],
               capsize=2, alpha=0.8, label=label)
        for b in bins:
            if b in by_bin:
                counts.setdefault(b, by_bin[b]["count"])
    ax.set_xticks(range(len(bins)))
    ax.set_xticklabels([f"{lo:g}-{hi:g}\nn={counts.get((lo, hi), 0)}" for lo, hi in bins], fontsize=MIN_FONT)
    if log_y:
        plain_log_y(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=MIN_FONT)


def plot_bench_scatter(ax, rows: list[dict], x: str = "parameters", y: str = "err",
                       log_x: bool = True) -> None:
    """One dot per benchmark row (``analysis.bench_rows``), one colour per training budget.

    Runs of different budgets are not comparable, so the legend (right of the axes, off
    the dots) names the budgets; only each budget's best run and its baseline are
    labelled (the rest would pile up), each label beside its dot where it covers no dot
    (``figure_layout.place_labels``).
    """
    cmap = plt.get_cmap("tab10")
    size = 30
    dots, named, colours = [], [], []
    for k, (budget, members) in enumerate(rows_by_budget(rows).items()):
        sub = [r for r in members if r[x] is not None and r[y] is not None]
        ax.scatter([r[x] for r in sub], [r[y] for r in sub], color=cmap(k % 10), label=budget, s=size)
        dots += [(r[x], r[y]) for r in sub]
        for r in {id(r): r for r in sub[:1] + [r for r in sub if r["group"] == "baseline"][:1]}.values():
            named.append(r)
            colours.append(cmap(k % 10))
    place_labels(ax, [(r[x], r[y]) for r in named], [r["name"] for r in named], colours, dots, size)
    if log_x:
        ax.set_xscale("log")
    ax.margins(0.08)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=MIN_FONT, title="budget (compare\nwithin a colour)", title_fontsize=MIN_FONT,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def plot_histories(ax, results: list[dict], key: str = "val_err", x: str = "epoch",
                   log_y: bool = True, max_lines: int | None = None) -> None:
    """Training curves (``train.history``) of benchmark results, one line each.

    ``max_lines``: draw only that many, the lowest final holdout err first (the title
    should say so); a legend of dozens of entries helps nobody.
    """
    if max_lines is not None and len(results) > max_lines:
        results = sorted(results, key=lambda r: r["holdout"]["err"])[:max_lines]
    for r in results:
        history = r.get("train", {}).get("history", [])
        points = [(h[x], h[key]) for h in history if key in h and x in h]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, "o-" if len(points) < 15 else "-", ms=3, label=r["name"])
    if log_y:
        plain_log_y(ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(x)
    ax.set_ylabel(key.replace("_", " "))
    ax.grid(alpha=0.3, which="both")
    lines = len(ax.get_legend_handles_labels()[0])
    if lines > 3:                        # a long legend goes right of the axes, off the curves
        ax.legend(fontsize=MIN_FONT, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    elif lines:
        ax.legend(fontsize=MIN_FONT)


def plot_group(ax, results: list[dict], metric: str = "err", title: str | None = None) -> None:
    """Horizontal bars of one holdout metric for the results of one comparison.

    ``results`` as ``analysis.group_experiments`` gives them: the baseline(s) first, in grey.
    """
    names = [r["name"] for r in results]
    values = [r["holdout"].get(metric, float("nan")) for r in results]
    baselines = budget_baselines(results)
    colours = ["0.6" if experiment_group(r, baselines.get(budget_label(r))) == "baseline" else "C0"
               for r in results]
    ax.barh(np.arange(len(names)), values, color=colours)
    ax.set_yticks(np.arange(len(names)))
    ax.set_yticklabels(names, fontsize=MIN_FONT)
    ax.invert_yaxis()
    ax.margins(x=0.14)                   # room for the values right of the longest bar
    for i, v in enumerate(values):
        ax.annotate(f"{v:.3f}", (v, i), xytext=(3, 0), textcoords="offset points", va="center",
                    fontsize=MIN_FONT)
    ax.set_xlabel(f"holdout {metric}")
    if title:
        ax.set_title(title)


def save_figure(fig, name: str) -> Path | None:
    """Save ``fig`` as ``$FACEPOINTS_FIGURES/<name>.png`` when that variable is set.

    A relative folder is taken from the project root, wherever the kernel runs.
    """
    folder = os.environ.get(FIGURES_ENV, "").strip()
    if not folder:
        return None
    path = Path(folder).expanduser()
    if not path.is_absolute():                      # the kernel runs in notebooks/: use the root
        path = project_root() / path
    path = path / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path
