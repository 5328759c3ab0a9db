"""Error measures: the course's err and marks, NME, and cumulative error curves.

All functions take keypoints as arrays (N, 14, 2) in the same coordinates. The course's
err needs normalised coordinates (``schema``), or pixel ones plus the images' sizes.
"""

from __future__ import annotations

import numpy as np

from .schema import OUTER_EYE_CORNERS

# (upper bound of err, mark): err <= 5 earns 10, ..., err > 20 earns 0.
MARK_TABLE = ((5, 10), (6, 9), (8, 8), (10, 7), (12, 6), (14, 5), (16, 4), (18, 3), (20, 2))


def per_point_err(pred: np.ndarray, true: np.ndarray, sizes: np.ndarray | None = None) -> np.ndarray:
    """(N, 14): each point's share of the course err, the mean of its two squared
    coordinate errors in percent of the side; their mean over the points is ``per_image_err``.

    With ``sizes`` (N, 2) of (width, height) the points are pixels; without, normalised.
    """
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    if sizes is not None:
        diff = diff / np.asarray(sizes, dtype=np.float64)[:, None, :]
    return ((100.0 * diff) ** 2).reshape(len(diff), -1, 2).mean(axis=-1)


def per_image_err(pred: np.ndarray, true: np.ndarray, sizes: np.ndarray | None = None) -> np.ndarray:
    """The course's per-image error: mean over the 28 coordinates of (100 * error / side)^2.

    With ``sizes`` (N, 2) of (width, height) the points are pixels; without, normalised.
    """
    return per_point_err(pred, true, sizes).mean(axis=1)


def course_err(pred: np.ndarray, true: np.ndarray, sizes: np.ndarray | None = None) -> float:
    """The course's err: ``per_image_err`` averaged over the images."""
    return float(per_image_err(pred, true, sizes).mean())


def course_mark(err: float) -> int:
    """The course's mark (0-10) for an err."""
    for bound, mark in MARK_TABLE:
        if err <= bound:
            return mark
    return 0


def per_image_nme(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Mean point-to-point distance over the inter-ocular distance (outer eye corners).

    Use pixel coordinates (or normalised ones of square images): distances must be
    measured in one unit on both axes.
    """
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    left, right = OUTER_EYE_CORNERS
    iod = np.linalg.norm(true[:, left] - true[:, right], axis=-1)
    return np.linalg.norm(pred - true, axis=-1).mean(axis=1) / np.maximum(iod, 1e-9)


def ced_curve(errors: np.ndarray, threshold: float, steps: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution: (thresholds in [0, threshold], fraction of images below)."""
    errors = np.sort(np.asarray(errors, dtype=np.float64))
    xs = np.linspace(0.0, threshold, steps)
    return xs, np.searchsorted(errors, xs, side="right") / max(len(errors), 1)


def ced_auc(errors: np.ndarray, threshold: float = 0.08, steps: int = 1000) -> float:
    """Area under the CED curve up to ``threshold``, divided by ``threshold`` (1 is perfect)."""
    xs, ys = ced_curve(errors, threshold, steps)
    return float(np.trapezoid(ys, xs) / threshold)
