"""Confidence: the expected err of every answer, read from what the network already computes.

``inference.predict_details`` measures, for every point, how far the answers on the
picture and on its mirror lie apart (the *spread*, in the course err's units) and how
widely its heatmap spreads (the *blur*). Faces the network reads well give pairs that
agree and sharp maps; a picture that cuts the face, a face it misreads and a picture
with no face give pairs that disagree and broad maps. Fitted on held-out faces
(``calibrate``: a model's validation faces upright, turned by quarter turns and cut by a
border), a power law of the two turns them into the expected err of a face and of each
point, and the expected err into a confidence in [0, 1]:
``1 / (1 + (expected_err / CONFIDENCE_HALF_ERR)^2)``, one half at err 5, the course's
line for full marks. A picture whose maps are far broader than any held-out face's is
flagged as looking like no face crop.

The fitted numbers (``Calibration``) are stored in the model file's metadata by training.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .augment import apply_transform, warp_images
from .dataset import FaceSet
from .inference import predict_details
from .metrics import per_point_err

CONFIDENCE_HALF_ERR = 5.0      # expected err at which the confidence is one half
NO_FACE_FACTOR = 1.75          # "no face crop": blur above this many times the held-out faces'
NO_FACE_QUANTILE = 0.995       # ... this quantile (upright and turned faces)
CUT_FRACTION = (0.15, 0.35)    # calibration's cut copies: this share of one side taken off
MIN_SPREAD = 1e-4              # spreads are floored here before the logarithm
LEAST_CONFIDENT = 0.02         # evaluation: the share of faces whose share of the summed err is reported
BINS = 5                       # evaluation: equal-count bins of expected err


@dataclass
class Calibration:
    """Spread -> expected err, fitted on held-out faces (stored in the model file).

    ``face`` and ``point``: ``(a, b, c)`` of ``expected err = exp(a) * spread ** b *
    blur ** c`` for a face's mean spread and blur and for one point's; ``no_face_blur``:
    a picture whose mean blur lies above this looks like no face crop; ``faces``: how
    many faces it was fitted on.
    """

    face: tuple[float, float, float]
    point: tuple[float, float, float]
    no_face_blur: float
    faces: int

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        """Rebuild from ``to_dict`` output; a model file is untrusted, so every number is checked."""
        try:
            cal = cls(face=tuple(float(v) for v in data["face"]), point=tuple(float(v) for v in data["point"]),
                      no_face_blur=float(data["no_face_blur"]), faces=int(data["faces"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"calibration is malformed: {exc!r}") from None
        numbers = (*cal.face, *cal.point, cal.no_face_blur)
        if len(cal.face) != 3 or len(cal.point) != 3 or not all(math.isfinite(v) for v in numbers) \
                or cal.no_face_blur <= 0 or not all(abs(v) < 100 for v in numbers[:6]):
            raise ValueError(f"calibration holds numbers out of range: {cal.to_dict()}")
        return cal


def _logs(*values: np.ndarray) -> list[np.ndarray]:
    return [np.log(np.maximum(np.asarray(v, dtype=np.float64), MIN_SPREAD)).ravel() for v in values]


def fit_power_law(spread: np.ndarray, blur: np.ndarray, err: np.ndarray) -> tuple[float, float, float]:
    """``(a, b, c)`` with ``err ~ exp(a) * spread ** b * blur ** c``: least squares on the
    logarithms, then ``a`` raised by the log of the mean of the residuals' exponentials
    (Duan's smearing), so that the fit follows the mean err (the course's err is a mean),
    not the median, whatever the residuals' distribution."""
    x_spread, x_blur, y = _logs(spread, blur, err)
    centres = [x.mean() for x in (x_spread, x_blur)]
    # a signal that hardly varies on these faces carries nothing: its column is left empty,
    # so its exponent is 0 (the least-squares solution of least norm), not a wild number
    columns = [np.where(x.std() > 0.05, x - c, 0.0) for x, c in zip((x_spread, x_blur), centres)]
    design = np.stack([np.ones_like(y), *columns], 1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    a = coef[0] - coef[1] * centres[0] - coef[2] * centres[1] + np.log(np.mean(np.exp(residual)))
    return float(a), float(coef[1]), float(coef[2])


def _power_law(coef: tuple[float, float, float], spread: np.ndarray, blur: np.ndarray) -> np.ndarray:
    x_spread, x_blur = _logs(spread, blur)
    return np.exp(coef[0] + coef[1] * x_spread + coef[2] * x_blur).reshape(np.shape(spread))


def expected_err(spread: np.ndarray, blur: np.ndarray, cal: Calibration) -> tuple[np.ndarray, np.ndarray]:
    """Expected err of each face (N,) and of each point (N, 14) from the spreads and
    blurs (N, 14) of ``inference.predict_details``."""
    spread, blur = np.asarray(spread, dtype=np.float64), np.asarray(blur, dtype=np.float64)
    return _power_law(cal.face, spread.mean(1), blur.mean(1)), _power_law(cal.point, spread, blur)


def confidence(expected: np.ndarray) -> np.ndarray:
    """Expected err -> confidence in [0, 1] (1: trust it; one half at ``CONFIDENCE_HALF_ERR``)."""
    return 1.0 / (1.0 + (np.asarray(expected, dtype=np.float64) / CONFIDENCE_HALF_ERR) ** 2)


def looks_like_no_face(blur: np.ndarray, cal: Calibration) -> np.ndarray:
    """(N,) True where a picture's mean heatmap blur lies above ``cal.no_face_blur``."""
    return np.asarray(blur, dtype=np.float64).mean(1) > cal.no_face_blur


def quarter_turned(faces: FaceSet, turns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The faces' square images and keypoints turned by ``turns`` quarter turns (exact)."""
    images, points = faces.images, faces.keypoints
    for _ in range(turns % 4):          # a quarter turn counter-clockwise on screen: (u, v) -> (v, 1 - u)
        images = torch.rot90(images, 1, (2, 3))
        points = torch.stack([points[..., 1], 1 - points[..., 0]], -1)
    return images.contiguous(), points


def cut_copies(faces: FaceSet, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The faces' images with one border cut (a share ``CUT_FRACTION`` of one side taken off,
    the rest stretched back to the square as a smaller picture is) and their keypoints,
    which stay wherever they fall, outside the picture included."""
    n = len(faces)
    side = torch.randint(0, 4, (n,), generator=generator)
    low, high = CUT_FRACTION
    keep = 1 - (low + (high - low) * torch.rand(n, generator=generator))          # share kept
    shift = torch.where(side % 2 == 0, 1 - keep, keep - 1) / keep                  # grid units
    scale = torch.ones(n, 2)
    offset = torch.zeros(n, 2)
    axis = (side // 2).long()                       # 0: left / right cut x, 1: top / bottom cut y
    scale[torch.arange(n), axis] = 1 / keep
    offset[torch.arange(n), axis] = -shift
    matrices = torch.zeros(n, 2, 3)
    matrices[:, 0, 0], matrices[:, 1, 1] = scale[:, 0], scale[:, 1]
    matrices[:, :, 2] = offset
    images = warp_images(faces.images.float().div(255.0), matrices, faces.image_size)
    return (images * 255).round().to(torch.uint8), apply_transform(matrices, faces.keypoints.float())


def calibrate(model, faces: FaceSet, seed: int = 0) -> Calibration:
    """Fit a ``Calibration`` for ``model`` on held-out labelled ``faces`` (its validation
    faces): the faces upright, turned by one to three quarter turns and cut by a border,
    each detected as ``detect`` does (flip TTA, second look and second try)."""
    if faces.keypoints is None or len(faces) < 2:
        raise ValueError("calibration needs at least 2 labelled faces")
    generator = torch.Generator().manual_seed(seed)
    turns = torch.randint(1, 4, (1,), generator=generator).item()
    views = [(faces.images, faces.keypoints), quarter_turned(faces, turns), cut_copies(faces, generator)]
    spreads, blurs, point_errs = [], [], []
    for images, truth in views:
        found = predict_details(model, images)
        spreads.append(found.spread)
        blurs.append(found.blur)
        point_errs.append(per_point_err(found.points, truth.double().numpy()))
    spread, blur, point_err = np.concatenate(spreads), np.concatenate(blurs), np.concatenate(point_errs)
    whole = blur[: 2 * len(faces)].mean(1)               # upright and turned faces: real face crops
    return Calibration(face=fit_power_law(spread.mean(1), blur.mean(1), point_err.mean(1)),
                       point=fit_power_law(spread, blur, point_err),
                       no_face_blur=float(NO_FACE_FACTOR * np.quantile(whole, NO_FACE_QUANTILE)),
                       faces=len(point_err))


def least_confident_share(expected: np.ndarray, err: np.ndarray,
                          share: float = LEAST_CONFIDENT) -> tuple[int, float]:
    """(faces, their share of the summed err) for the ``share`` least confident faces
    (at least one): how much of the err the confidence singles out."""
    worst = np.argsort(confidence(expected), kind="stable")[:max(1, int(round(share * len(expected))))]
    err = np.asarray(err, dtype=np.float64)
    return len(worst), float(err[worst].sum() / err.sum()) if err.sum() > 0 else float("nan")


def calibration_bins(expected: np.ndarray, err: np.ndarray, bins: int = BINS) -> list[dict]:
    """``bins`` bins of expected err with equal counts: faces, the confidence range, mean
    expected and mean measured err, and their ratio (a calibration is good where it is 1)."""
    expected, err = np.asarray(expected, dtype=np.float64), np.asarray(err, dtype=np.float64)
    rows = []
    for part in np.array_split(np.argsort(expected, kind="stable"), bins):
        if len(part):
            e, m, c = expected[part].mean(), err[part].mean(), confidence(expected[part])
            rows.append({"faces": len(part), "confidence": (float(c.min()), float(c.max())),
                         "expected_err": float(e), "measured_err": float(m), "ratio": float(m / e)})
    return rows
