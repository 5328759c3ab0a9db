"""Faces in any photo: find each face, cut it as the course cuts its crops, find its 14 points.

The keypoint model answers for a picture framed like the course's crops. A holiday photo,
a group picture or a phone shot is not framed so: ``find_faces`` finds the faces first
(dlib's HOG frontal-face detector, from the ``photos`` extra: ``pip install -e
'.[photos]'``), looking at the photo upright and turned by each eighth of a turn
(the finder sees faces within about 30 degrees of upright), so that a face turned by
any angle is found too; ``course_crop`` cuts each found face the way the course's crops frame
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

from ..core.confidence import confidence, expected_err
from ..core.detect import model_calibration
from ..core.images import ImageReadError, _regular_file, to_rgb
from ..core.inference import predict_details, restores_torch_threads
from .machine import RESULTS_DIR

FRAMING_FILE = RESULTS_DIR / "course-framing.json"
FINDER_SIDE = 1280          # px: the longer side of the photo the finder sees (faces from about 80 px there)
DIAGONAL_SIDE = 960         # px: the same for the views turned by an odd eighth (faces from about 107 px)
VIEWS = (0, 90, 270, 180, 45, 315, 135, 225)   # degrees (anticlockwise) the finder sees the photo turned by
# The points' scale against the finder's side on the course crops is about 0.65 (the
# crop is 1.21 sides, 1.85 scales); an answer outside this range is no face-sized answer
# (a collapsed one, on a face the finder saw wrongly): the second pass keeps the first crop.
SCALE_RANGE = (0.35, 1.3)
RETRY_CONFIDENCE = 0.2      # an answer less sure than this is tried again from a wider crop
RETRY_ZOOM = 1.4
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
    angle the photo was turned by when the finder saw the face upright (degrees,
    anticlockwise), the finder's score, the 14 points
    (14, 2, photo pixels), the answer's confidence in [0, 1] (None without a calibration)
    and the crop the model saw (x0, y0, x1, y1; may reach beyond the photo)."""

    box: tuple[float, float, float, float]
    angle: float
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


@dataclass
class FoundFace:
    """A face the finder found: its centre (x, y) and side in the photo's pixels, the
    angle (degrees, counter-clockwise) the photo was turned by when the face stood upright
    in the finder's view, and the finder's score."""

    centre: tuple[float, float]
    side: float
    angle: float
    score: float

    def rotation(self) -> np.ndarray:
        """The matrix taking a direction in the finder's view to the photo."""
        t = math.radians(self.angle)
        return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])

    def box(self) -> tuple[float, float, float, float]:
        """The finder's square in the photo, as its axis-aligned bounds (x0, y0, x1, y1)."""
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * self.side / 2 @ self.rotation().T + self.centre
        return (*(float(v) for v in corners.min(axis=0)), *(float(v) for v in corners.max(axis=0)))


def find_faces(photo: Image.Image, detector=None, views=VIEWS, every_view: bool = True) -> list[FoundFace]:
    """The faces in ``photo``, best score first. The finder sees the photo turned by each
    angle of ``views`` (anticlockwise degrees), with its longer side at most
    ``FINDER_SIDE`` (``DIAGONAL_SIDE`` for the views between quarter turns, which a
    turned picture makes twice as large); ``every_view=False`` stops at the first view
    where it finds a face. A face found in two views (its centre within half a side of a
    better find's) counts once."""
    detector = detector or _detector()
    found: list[FoundFace] = []
    shrunk: dict[int, tuple[Image.Image, float]] = {}
    for angle in views:
        longest = FINDER_SIDE if angle % 90 == 0 else DIAGONAL_SIDE
        if longest not in shrunk:
            scale = min(1.0, longest / max(photo.size))
            shrunk[longest] = (photo if scale == 1.0 else photo.resize(
                (max(1, round(photo.width * scale)), max(1, round(photo.height * scale))), Image.Resampling.BILINEAR), scale)
        small, scale = shrunk[longest]
        photo_centre = np.array(small.size, dtype=np.float64) / 2
        view = small.rotate(angle, expand=True, resample=Image.Resampling.BILINEAR) if angle % 360 else small
        rects, scores, _ = detector.run(np.asarray(view), 0, 0.0)
        t = math.radians(angle)
        to_photo_dir = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])   # PIL turns anticlockwise
        view_centre = np.array(view.size, dtype=np.float64) / 2
        for rect, score in zip(rects, scores):
            centre = np.array([(rect.left() + rect.right() + 1) / 2, (rect.top() + rect.bottom() + 1) / 2])
            centre = photo_centre + to_photo_dir @ (centre - view_centre)
            side = math.sqrt((rect.width()) * (rect.height()))
            found.append(FoundFace((float(centre[0] / scale), float(centre[1] / scale)), side / scale,
                                   float(angle % 360), float(score)))
        if found and not every_view:
            break
    kept: list[FoundFace] = []
    for face in sorted(found, key=lambda f: -f.score):
        if all(math.dist(face.centre, k.centre) > k.side / 2 for k in kept):
            kept.append(face)
    return kept


def box_crop(face: FoundFace, framing: Framing) -> tuple[float, float, float, float]:
    """The course-like crop around a found face, its framing turned as the face was
    found (a face lying on its side gets the crop's width and height swapped)."""
    cx, cy = np.array(face.centre) + face.rotation() @ np.array([framing.box_dx, framing.box_dy]) * face.side
    w, h = framing.box_width * face.side, framing.box_height * face.side
    if abs(math.sin(math.radians(face.angle))) > abs(math.cos(math.radians(face.angle))):
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


def _answers(photo: Image.Image, model, found: list[FoundFace], crops: list, framing: Framing,
             passes: int) -> tuple[list[np.ndarray], list[float | None], list]:
    """Points (photo pixels), confidence (None without a calibration) and the last crop of
    each face, from ``passes`` passes starting at ``crops``."""
    size = model.decode_side()
    for step in range(passes):
        images = torch.from_numpy(np.stack([cut(photo, c, size) for c in crops]))
        prediction = predict_details(model, images)
        points = [to_photo(p, c) for p, c in zip(prediction.points, crops)]
        if step < passes - 1:     # cut again around the answer, unless it is far from a face's size
            crops = [points_crop(p, framing) if _face_sized(p, f) else c for p, f, c in zip(points, found, crops)]
    if model.metadata.get("calibration") is None:
        return points, [None] * len(found), crops
    face_err, _ = expected_err(prediction.spread, prediction.blur, model_calibration(model, "the model"))
    return points, [float(v) for v in confidence(face_err)], crops


def _face_sized(points: np.ndarray, face: FoundFace) -> bool:
    return SCALE_RANGE[0] < points_frame(points)[1] / face.side < SCALE_RANGE[1]


@restores_torch_threads
def faces_in_photo(photo: Image.Image, model, *, framing: Framing | None = None, detector=None,
                   passes: int = 2, threads: int | None = 1) -> list[PhotoFace]:
    """Every face ``find_faces`` finds in ``photo`` with its 14 points in the photo's
    pixels: the crop is cut from the finder's box, then ``passes - 1`` times again around
    the last answer. An answer the model doubts (confidence under ``RETRY_CONFIDENCE``)
    or of no face's size is tried again from a crop ``RETRY_ZOOM`` times wider (a face the
    finder saw turned wrongly sits off-centre in its box), and the surer answer kept.
    ``model`` is a loaded keypoint model (``load_model``)."""
    if threads:
        torch.set_num_threads(threads)
    framing = framing or Framing.load()
    found = find_faces(photo, detector)
    if not found:
        return []
    points, trust, crops = _answers(photo, model, found, [box_crop(f, framing) for f in found], framing, passes)
    doubted = [i for i, (p, t, f) in enumerate(zip(points, trust, found))
               if not _face_sized(p, f) or (t is not None and t < RETRY_CONFIDENCE)]
    if doubted:
        wide = [_zoomed(box_crop(found[i], framing), RETRY_ZOOM) for i in doubted]
        again = _answers(photo, model, [found[i] for i in doubted], wide, framing, passes)
        for i, p, t, c in zip(doubted, *again):
            if (t or 0.0) > (trust[i] or 0.0) or (trust[i] is None and _face_sized(p, found[i])):
                points[i], trust[i], crops[i] = p, t, c
    return [PhotoFace(face.box(), face.angle, face.score, p, t, tuple(float(v) for v in c))
            for face, p, t, c in zip(found, points, trust, crops)]


def _zoomed(crop, factor: float) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = crop
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * factor / 2, (y1 - y0) * factor / 2
    return cx - hw, cy - hh, cx + hw, cy + hh
