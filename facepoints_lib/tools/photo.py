"""Faces in any photo: find each face, cut it as the course cuts its crops, find its 14 points.

The keypoint model answers for a picture framed like the course's crops. A holiday photo,
a group picture or a phone shot is not framed so: ``find_faces`` finds the faces first
(dlib's HOG frontal-face detector, from the ``photos`` extra: ``pip install -e
'.[photos]'``), looking again at the photo turned by quarter turns where it finds
nothing upright; ``course_crop`` cuts each found face the way the course's crops frame
a face, measured on the course's training faces (``Framing``, stored in
``bench/results/course-framing.json`` by ``facepoints measure-framing``), padding with
black where the photo ends; the model finds the points in the crop, a second pass cuts
the crop again around that answer (the course's framing of the 14 points), and the
points are mapped back into the photo's pixels exactly.

Photos are read in the orientation a viewer sees them (EXIF orientation applied); the
course crops that ``detect`` reads keep their stored pixels. Nothing here is frozen into
``solution.py``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..core.checkpoint import load_model
from ..core.confidence import confidence, expected_err
from ..core.detect import model_calibration
from ..core.images import ImageReadError, _regular_file, to_rgb
from ..core.inference import predict_details, restores_torch_threads
from .machine import RESULTS_DIR

FRAMING_FILE = RESULTS_DIR / "course-framing.json"
FINDER_SIDE = 1280          # px: the longer side of the photo the finder sees (faces from about 80 px there)
QUARTER_TURNS = (1, 3, 2)   # looked at, in this order, when nothing is found upright
INSTALL_HINT = "the face finder needs dlib: pip install -e '.[photos]'"


@dataclass(frozen=True)
class Framing:
    """How the course's crops frame a face, as medians over training faces.

    From the finder's box (a square of side ``b`` centred at ``c``): the crop is
    ``box_width * b`` wide and ``box_height * b`` high, centred at ``c + (box_dx, box_dy) * b``.
    From the 14 points (their centre ``p``, their scale ``s``: the hypotenuse of the
    distance between the eye centres and that from the eyes' midpoint to the mouth's
    centre, turned with the eye line): the crop is ``points_width * s`` by
    ``points_height * s``, centred at ``p + R (points_dx, points_dy) * s``.
    """

    box_width: float
    box_height: float
    box_dx: float
    box_dy: float
    points_width: float
    points_height: float
    points_dx: float
    points_dy: float

    @classmethod
    def load(cls, path: str | os.PathLike = FRAMING_FILE) -> "Framing":
        """The framing stored by ``facepoints measure-framing``."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(**data["framing"])

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PhotoFace:
    """One face found in a photo: the finder's box (x0, y0, x1, y1, photo pixels), the
    quarter turns the photo was looked at with, the finder's score, the 14 points
    (14, 2, photo pixels), the answer's confidence in [0, 1] (None without a calibration)
    and the crop the model saw (x0, y0, x1, y1; may reach beyond the photo)."""

    box: tuple[float, float, float, float]
    turns: int
    score: float
    points: np.ndarray
    confidence: float | None
    crop: tuple[float, float, float, float]


def read_photo(path: str | os.PathLike) -> Image.Image:
    """Decode a photo as RGB, turned as its EXIF orientation says (as a viewer shows it)."""
    try:
        with Image.open(_regular_file(path)) as img:
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


def _detector():
    try:
        import dlib
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return dlib.get_frontal_face_detector()


def _unturn_box(box, turns: int, width: int, height: int) -> tuple[float, float, float, float]:
    """A box (x0, y0, x1, y1) found in a view turned by ``turns`` counter-clockwise quarter
    turns (``np.rot90``) of ``width`` x ``height``, in the upright picture's pixels."""
    x0, y0, x1, y1 = box
    corners = np.array([[x0, y0], [x1, y1]], dtype=np.float64)
    for _ in range(turns % 4):        # undo one quarter turn: (x, y) came from (height - y, x)
        corners = np.stack([height - corners[:, 1], corners[:, 0]], axis=1)
        width, height = height, width
    (a, b), (c, d) = corners
    return min(a, c), min(b, d), max(a, c), max(b, d)


def find_faces(photo: Image.Image, detector=None) -> list[tuple[tuple[float, float, float, float], int, float]]:
    """The faces in ``photo``: ``[(box in photo pixels, quarter turns, score), ...]``,
    best score first. The finder sees the photo with its longer side at most
    ``FINDER_SIDE``; where it finds nothing upright it looks at the quarter turns."""
    detector = detector or _detector()
    scale = min(1.0, FINDER_SIDE / max(photo.size))
    small = photo if scale == 1.0 else photo.resize((max(1, round(photo.width * scale)),
                                                     max(1, round(photo.height * scale))), Image.Resampling.BILINEAR)
    pixels = np.asarray(small)
    for turns in (0, *QUARTER_TURNS):
        view = np.ascontiguousarray(np.rot90(pixels, turns))
        rects, scores, _ = detector.run(view, 0, 0.0)
        if len(rects):
            found = []
            for rect, score in zip(rects, scores):
                box = _unturn_box((rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1),
                                  turns, view.shape[1], view.shape[0])
                found.append((tuple(float(v) / scale for v in box), turns, float(score)))
            return sorted(found, key=lambda f: -f[2])
    return []


def _unturn_vector(vector, turns: int) -> np.ndarray:
    """A direction in a view turned by ``turns`` quarter turns, in the upright picture."""
    vx, vy = vector
    for _ in range(turns % 4):
        vx, vy = -vy, vx
    return np.array([vx, vy])


def box_crop(box, framing: Framing, turns: int = 0) -> tuple[float, float, float, float]:
    """The course-like crop around a finder's box (x0, y0, x1, y1), for a face found in
    the photo turned by ``turns`` quarter turns (its framing turned alike)."""
    x0, y0, x1, y1 = box
    side = math.sqrt((x1 - x0) * (y1 - y0))
    cx, cy = np.array([(x0 + x1) / 2, (y0 + y1) / 2]) + _unturn_vector((framing.box_dx, framing.box_dy), turns) * side
    w, h = framing.box_width * side, framing.box_height * side
    if turns % 2:
        w, h = h, w
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def points_frame(points: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """(centre, scale, rotation matrix) of 14 points (pixels): the scale is the
    hypotenuse of the eye distance and the eyes-to-mouth distance; the rotation turns the
    face's frame (eye line along x) into the picture's."""
    points = np.asarray(points, dtype=np.float64).reshape(14, 2)
    left, right, mouth = points[5], points[8], points[12]
    eye_line = right - left
    eyes = (left + right) / 2
    scale = math.hypot(np.linalg.norm(eye_line), np.linalg.norm(mouth - eyes))
    angle = math.atan2(eye_line[1], eye_line[0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return points.mean(axis=0), scale, rotation


def points_crop(points: np.ndarray, framing: Framing) -> tuple[float, float, float, float]:
    """The course-like crop around a face's 14 points (pixels), axis-aligned in the photo
    (a face turned by a quarter or more is cut square: its width and height swap roles)."""
    centre, scale, rotation = points_frame(points)
    cx, cy = centre + 0.5 + rotation @ np.array([framing.points_dx, framing.points_dy]) * scale   # +0.5: pixel edges
    w, h = framing.points_width * scale, framing.points_height * scale
    if abs(rotation[1, 0]) > abs(rotation[0, 0]):      # turned past 45 degrees: the face's height lies along x
        w, h = h, w
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def cut(photo: Image.Image, crop, size: int) -> np.ndarray:
    """The crop (x0, y0, x1, y1; may reach beyond the photo: black there) resized to
    ``size`` x ``size`` (3, size, size) uint8, as ``read_image_resized`` maps a picture."""
    x0, y0, x1, y1 = crop
    left, top = math.floor(x0), math.floor(y0)
    region = photo.crop((left, top, math.ceil(x1) + 1, math.ceil(y1) + 1))   # PIL pads outside with black
    box = (x0 - left, y0 - top, x1 - left, y1 - top)
    resized = region.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.array(resized, dtype=np.uint8).transpose(2, 0, 1)


def to_photo(normalised: np.ndarray, crop) -> np.ndarray:
    """Points normalised to a crop (``(x + 0.5) / w`` convention) in the photo's pixels."""
    x0, y0, x1, y1 = crop
    out = np.empty_like(normalised, dtype=np.float64)
    out[..., 0] = x0 + normalised[..., 0] * (x1 - x0) - 0.5
    out[..., 1] = y0 + normalised[..., 1] * (y1 - y0) - 0.5
    return out


@restores_torch_threads
def faces_in_photo(photo: Image.Image, model, *, framing: Framing | None = None, detector=None,
                   passes: int = 2, threads: int | None = 1) -> list[PhotoFace]:
    """Every face ``find_faces`` finds in ``photo`` with its 14 points in the photo's
    pixels: the crop is cut from the finder's box, then ``passes - 1`` times again around
    the last answer. ``model`` is a loaded keypoint model (``load_model``)."""
    if threads:
        torch.set_num_threads(threads)
    framing = framing or Framing.load()
    found = find_faces(photo, detector)
    if not found:
        return []
    crops = [box_crop(box, framing, turns) for box, turns, _ in found]
    size = model.config.image_size
    calibration = model.metadata.get("calibration")
    for step in range(passes):
        images = torch.from_numpy(np.stack([cut(photo, c, size) for c in crops]))
        prediction = predict_details(model, images)
        points = [to_photo(p, c) for p, c in zip(prediction.points, crops)]
        if step < passes - 1:
            crops = [points_crop(p, framing) for p in points]
    trust = [None] * len(found)
    if calibration is not None:
        face_err, _ = expected_err(prediction.spread, prediction.blur, model_calibration(model, "the model"))
        trust = [float(v) for v in confidence(face_err)]
    return [PhotoFace(tuple(float(v) for v in box), turns, score, p, t, tuple(float(v) for v in c))
            for (box, turns, score), p, t, c in zip(found, points, trust, crops)]


def load_photo_model(path: str | os.PathLike):
    """The keypoint model for photos (``load_model``, CPU, eval mode)."""
    return load_model(path).eval()
