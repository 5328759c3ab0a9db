"""Section 8 of notebook 04: the confidence, and faces cut by the border.

The notebook's analysed faces are viewed three ways, as ``core.confidence.calibrate``
and ``facepoints bench-framing`` view them (``framing_views``): upright, turned by
quarter turns (exact) and cut by one border (``confidence.cut_copies``, seeded; points
kept wherever they fall, outside the picture included). ``score_views`` detects each
view with ``inference.predict_details`` (with or without the second try) and turns its
spreads and blurs into an expected err with a ``Calibration``: the model file's own, or
one fitted here (``model_calibration``). The figures: measured against expected err
(``plot_expected_vs_measured``), the cut faces' err before and after the second try
(``plot_second_try``), and cut faces drawn on a canvas larger than the picture, so that
points outside it show (``cut_faces_figure``). ``framing_report`` writes the figures
``bench-framing`` measures on the real data, for these faces.

Not frozen into ``solution.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

from ..core.confidence import (BINS, LEAST_CONFIDENT, Calibration, calibrate, calibration_bins, cut_copies,
                               expected_err, least_confident_share, quarter_turned)
from ..core.dataset import FaceSet
from ..core.inference import LOOK_NAMES, PADDED, predict_details
from ..core.metrics import per_image_err
from .figure_layout import FIGURE_WIDTH, MIN_FONT
from .plotting import as_image, plain_log_y, show_face

SET_COLOURS = {"upright": "C0", "turned": "C2", "cut": "C3"}
ERR_FLOOR = 1e-2                # err drawn at least this on log axes (a perfect answer is 0)
FONT = MIN_FONT                 # the smallest text in these figures (points)


def framing_views(faces: FaceSet, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"upright", "turned", "cut"}`` -> (uint8 images (N, 3, S, S), normalised keypoints (N, 14, 2)).

    turned: face ``i`` by ``1 + i % 3`` quarter turns (``confidence.quarter_turned``);
    cut: ``confidence.cut_copies`` with a generator seeded by ``seed``.
    """
    images, points = faces.images.clone(), faces.keypoints.clone()
    for turns in (1, 2, 3):
        index = torch.arange(turns - 1, len(faces), 3)
        if len(index):
            images[index], points[index] = quarter_turned(faces.subset(index), turns)
    return {"upright": (faces.images, faces.keypoints), "turned": (images, points),
            "cut": cut_copies(faces, torch.Generator().manual_seed(seed))}


def points_outside(keypoints: torch.Tensor | np.ndarray) -> tuple[int, int]:
    """(faces with a point outside the picture, such points in all) for normalised keypoints."""
    outside = np.asarray(keypoints, dtype=np.float64)
    outside = ((outside < 0) | (outside > 1)).any(-1)
    return int(outside.any(1).sum()), int(outside.sum())


def model_calibration(model, faces: FaceSet, seed: int = 0) -> tuple[Calibration, str]:
    """The model file's calibration, or one fitted here on ``faces`` (``confidence.calibrate``),
    and a line saying which."""
    stored = model.metadata.get("calibration") if isinstance(getattr(model, "metadata", None), dict) else None
    if stored:
        cal = Calibration.from_dict(stored)
        return cal, f"calibration stored in the model file (fitted on {cal.faces} views of its validation faces)"
    cal = calibrate(model, faces, seed)
    return cal, (f"the model file has no calibration, so one was fitted here on the {len(faces)} analysed faces "
                 f"({cal.faces} views), so the figures below test it on the faces it was fitted on, not on new "
                 "ones (`facepoints calibrate MODEL DATA` stores one fitted on the model's validation faces)")


@dataclass
class Scored:
    """One view detected: ``points`` (N, 14, 2), measured ``err`` (N,), ``expected`` err
    (N,), ``look`` (N,) (``inference.LOOK_NAMES``)."""

    points: np.ndarray
    err: np.ndarray
    expected: np.ndarray
    look: np.ndarray


def score_views(model, views: dict[str, tuple[torch.Tensor, torch.Tensor]], cal: Calibration,
                second_try: bool = True) -> dict[str, Scored]:
    """Detect every view as ``detect`` does (flip TTA, second look; ``second_try`` as given)
    and score it: measured err against the view's keypoints, expected err from ``cal``."""
    scores = {}
    for name, (images, truth) in views.items():
        found = predict_details(model, images, second_try=second_try)
        scores[name] = Scored(found.points, per_image_err(found.points, np.asarray(truth, dtype=np.float64)),
                              expected_err(found.spread, found.blur, cal)[0], found.look)
    return scores


def pooled(scores: dict[str, Scored]) -> tuple[np.ndarray, np.ndarray]:
    """(expected err, measured err) of all the views together."""
    return (np.concatenate([s.expected for s in scores.values()]),
            np.concatenate([s.err for s in scores.values()]))


def plot_expected_vs_measured(ax, scores: dict[str, Scored], bins: int = BINS) -> None:
    """Measured err per face against expected err, log-log, one colour per view; the line
    y = x; the pooled faces' means in ``bins`` equal-count bins as large black diamonds.
    The legend goes right of the axes (give the figure room for it)."""
    for name, s in scores.items():
        ax.scatter(s.expected, np.maximum(s.err, ERR_FLOOR), s=14, alpha=0.55, lw=0,
                   color=SET_COLOURS.get(name), label=f"{name} ({len(s.err)})")
    expected, err = pooled(scores)
    rows = calibration_bins(expected, err, bins)
    ax.plot([r["expected_err"] for r in rows], [r["measured_err"] for r in rows], "D-", color="k", ms=8,
            lw=1.2, label=f"mean of {bins} equal-count bins")
    low = max(min(expected.min(), np.maximum(err, ERR_FLOOR).min()) / 1.5, ERR_FLOOR)
    high = max(expected.max(), err.max()) * 1.5
    ax.plot([low, high], [low, high], "--", color="0.4", lw=1, label="measured = expected")
    ax.set(xscale="log", yscale="log", xlim=(low, high), ylim=(low, high), aspect="equal")
    ax.set_xlabel("expected err (from flip spread and heatmap blur)", fontsize=FONT + 1)
    ax.set_ylabel("measured err per face", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.grid(alpha=0.3, which="major")
    ax.legend(fontsize=FONT, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)   # off the dots


def plot_second_try(axes, uncut: Scored, before: Scored, after: Scored) -> None:
    """Two panels on the cut faces: ``before`` and ``after`` scored without and with the
    second try, ``uncut`` the same faces uncut as ``detect`` answers them. Left: mean and
    median err of the three (log scale, values written on the bars). Right: each cut
    face's err without the second try against with it (log-log, y = x dashed), the faces
    whose answer came from the second try in red."""
    left, right = axes
    used = after.look == PADDED
    uncut, before, after = uncut.err, before.err, after.err
    bars = {"uncut (detect)": uncut, "cut, without second try": before, "cut, with second try": after}
    colours = ("C0", "0.6", "C3")
    width = 0.8 / len(bars)
    for k, ((label, values), colour) in enumerate(zip(bars.items(), colours)):
        heights = [np.mean(values), np.median(values)]
        xs = np.arange(2) + (k - (len(bars) - 1) / 2) * width
        ax_bars = left.bar(xs, heights, width=width * 0.95, color=colour, label=label)
        left.bar_label(ax_bars, [f"{h:.2f}" if h < 10 else f"{h:.0f}" for h in heights], fontsize=FONT, padding=2)
    left.set_xticks(range(2))
    left.set_xticklabels([f"mean err ({len(after)} faces)", "median err"], fontsize=FONT + 1)
    plain_log_y(left)
    left.set_ylim(top=left.get_ylim()[1] * 1.6)              # room for the values above the bars
    left.set_ylabel("err", fontsize=FONT + 1)
    left.tick_params(labelsize=FONT)
    left.legend(fontsize=FONT, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, frameon=False)
    b, a = np.maximum(before, ERR_FLOOR), np.maximum(after, ERR_FLOOR)
    for mask, label, colour in ((~used, "first answer kept", "0.5"), (used, "second try's answer", "C3")):
        right.scatter(b[mask], a[mask], s=16, alpha=0.7, lw=0, color=colour, label=f"{label} ({mask.sum()})")
    low, high = min(b.min(), a.min()) / 1.5, max(b.max(), a.max()) * 1.5
    right.plot([low, high], [low, high], "--", color="0.4", lw=1, label="no change")
    right.set(xscale="log", yscale="log", xlim=(low, high), ylim=(low, high), aspect="equal")
    right.set_xlabel("cut face's err without the second try", fontsize=FONT + 1)
    right.set_ylabel("with the second try", fontsize=FONT + 1)
    right.tick_params(labelsize=FONT)
    right.grid(alpha=0.3)
    right.legend(fontsize=FONT, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, frameon=False)


def on_canvas(image, margin: float, fill: float = 0.82) -> tuple[np.ndarray, int]:
    """The picture on a grey canvas ``margin`` (share of its side) larger on every side,
    and the margin in pixels; a normalised point ``p`` lies at ``p * side - 0.5 + pad``."""
    array = as_image(image)
    array = array / 255.0 if array.dtype == np.uint8 else array
    height, width = array.shape[:2]
    pad = int(round(margin * max(height, width)))
    canvas = np.full((height + 2 * pad, width + 2 * pad, 3), fill)
    canvas[pad:pad + height, pad:pad + width] = array
    return canvas, pad


def shown_cut_faces(before: Scored, after: Scored, count: int = 3) -> list[int]:
    """The cut faces the second try helped most (err without minus err with it), else the worst."""
    gain = before.err - after.err
    order = np.argsort(-gain, kind="stable") if (gain > 0).any() else np.argsort(-before.err, kind="stable")
    return [int(i) for i in order[:count]]


def cut_faces_figure(images: torch.Tensor, truth, before: Scored, after: Scored, index: list[int],
                     names: list[str] | None = None, size: float = 2.6):
    """Cut faces, one a column: without the second try (top) and with it (bottom), each on a
    canvas larger than the picture (dashed: the picture's border), so that points outside
    it show; dots the labels, red crosses the answer joined to them. Faces are ``size``
    inches wide, less where the row would be wider than ``FIGURE_WIDTH``."""
    size = min(size, FIGURE_WIDTH / max(len(index), 1))
    truth = np.asarray(truth, dtype=np.float64)
    shown = np.concatenate([truth[index], before.points[index], after.points[index]])
    margin = float(np.clip(max(-shown.min(), shown.max() - 1, 0) + 0.05, 0.1, 0.6))
    fig, axes = plt.subplots(2, len(index), figsize=(size * len(index), 2 * size + 0.9),
                             squeeze=False, layout="constrained")
    for k, i in enumerate(index):
        canvas, pad = on_canvas(images[i], margin)
        side = images[i].shape[-1]
        for ax, scored, what in ((axes[0, k], before, "without"), (axes[1, k], after, "with")):
            show_face(ax, canvas, truth[i] * side - 0.5 + pad, pred=scored.points[i] * side - 0.5 + pad,
                      numbers=False)
            ax.add_patch(Rectangle((pad - 0.5, pad - 0.5), side, side, fill=False, ec="k", lw=1, ls="--"))
            name = f"{names[i]}: " if names is not None else ""
            ax.set_title(f"{name}err {scored.err[i]:.1f}\n{what} second try ({LOOK_NAMES[scored.look[i]]} look)",
                         fontsize=FONT)
    return fig


def framing_report(scores: dict[str, Scored], before: dict[str, Scored], bins: int = BINS) -> str:
    """The printed figures: the least confident faces' share of the summed err, expected
    against measured err per bin (pooled views, with the second try), and cut / uncut err
    without and with the second try (``before``: "upright" and "cut" without it)."""
    expected, err = pooled(scores)
    count, share = least_confident_share(expected, err)
    lines = [f"pooled views: {len(err)} faces ({', '.join(f'{k} {len(s.err)}' for k, s in scores.items())}), "
             f"mean err {err.mean():.3f}, mean expected err {expected.mean():.3f}",
             f"the {100 * LEAST_CONFIDENT:.0f} % least confident faces ({count} of {len(err)}) hold "
             f"{100 * share:.1f} % of the summed err",
             f"expected against measured err in {bins} bins of equal counts:",
             f"  {'faces':>5}  {'confidence':>11}  {'expected':>8}  {'measured':>8}  {'measured / expected':>19}"]
    for r in calibration_bins(expected, err, bins):
        lo, hi = r["confidence"]
        lines.append(f"  {r['faces']:>5}  {lo:>5.2f}-{hi:<5.2f}  {r['expected_err']:>8.3f}  "
                     f"{r['measured_err']:>8.3f}  {r['ratio']:>19.2f}")
    up0, cut0, up1, cut1 = before["upright"].err, before["cut"].err, scores["upright"].err, scores["cut"].err
    padded = int((scores["cut"].look == PADDED).sum())
    lines.append(f"cut / uncut err: {cut0.mean() / up0.mean():.2f}x without the second try "
                 f"({cut0.mean():.3f} / {up0.mean():.3f}), {cut1.mean() / up1.mean():.2f}x with it "
                 f"({cut1.mean():.3f} / {up1.mean():.3f}); the second try answered {padded} of {len(cut1)} cut faces "
                 f"and {int((scores['upright'].look == PADDED).sum())} of {len(up1)} uncut")
    return "\n".join(lines)
