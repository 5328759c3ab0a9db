"""Framing test sets: faces cut by a picture border (:func:`make_cut_set`), and pictures
that hold no face (:func:`make_not_face_set`), each a seeded folder.

A cut face's points keep their exact place on the face, so its gt.csv may hold points off
the picture (*outside*: with the pixel-centre convention, column i has x = i, a picture
w pixels wide spans -0.5 <= x <= w - 0.5), which the course format allows.
"""

from __future__ import annotations

import csv
import json
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..core.dataset import split_names
from ..core.gt_csv import read_gt, write_gt, write_img_shapes
from ..core.images import read_image
from .synth import _synth_background

SIDES = ("left", "right", "top", "bottom")
CUT_FRACTION = (0.15, 0.35)       # share of the cut side's dimension taken off
CUT_MARKER = "cut.json"           # marks a folder written by make_cut_set
KINDS_MARKER = "kinds.csv"        # marks a folder written by make_not_face_set
NOT_FACE_KINDS = ("blank", "noise", "texture", "scene")
PAINT_GROW = 0.4                  # painted_out: the points' box grown by 40 % (20 % a side)
NOT_FACE_SIZE = (48, 400)         # smallest and largest side in pixels


def cut_picture(image: Image.Image, points: np.ndarray, rng: np.random.Generator
                ) -> tuple[Image.Image, np.ndarray, dict]:
    """A copy of a face crop with one border moved into the face, for a framing test.

    A uniform side loses a fraction uniform in ``CUT_FRACTION`` of its dimension, in whole
    pixels (at least 1, at most all but one). ``points`` (14, 2) move with the crop,
    ``(x - left, y - top)``, exactly, wherever they fall. Returns ``(picture, points,
    {"side", "fraction", "box": [left, top, right, bottom]})``, right/bottom exclusive.
    """
    width, height = image.size
    side = SIDES[int(rng.integers(len(SIDES)))]
    fraction = float(rng.uniform(*CUT_FRACTION))
    dim = width if side in ("left", "right") else height
    if dim < 2:
        raise ValueError(f"a {width}x{height} picture has no {side} border to cut")
    cut = min(max(1, int(round(fraction * dim))), dim - 1)
    box = [cut if side == "left" else 0, cut if side == "top" else 0,
           width - cut if side == "right" else width, height - cut if side == "bottom" else height]
    moved = np.asarray(points, dtype=np.float64).reshape(-1, 2) - (box[0], box[1])
    return image.crop(tuple(box)), moved, {"side": side, "fraction": fraction, "box": box}


def points_outside(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boolean mask of the points (n, 2) that lie off a ``width`` x ``height`` picture."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (p[:, 0] < -0.5) | (p[:, 0] > width - 0.5) | (p[:, 1] < -0.5) | (p[:, 1] > height - 0.5)


def _prepare_out_dir(out_dir, marker: str, listed) -> Path:
    """Ready ``out_dir`` for a new set: refuse a folder holding files without ``marker`` (an
    earlier set of this kind); remove the pictures ``listed(marker path)`` names, if any."""
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / marker).is_file():
            raise FileExistsError(f"output folder {out_dir} already holds files and is not an "
                                  f"earlier set (no {marker}): give a new or empty folder")
        for name in listed(out_dir / marker):
            if name and name == Path(name).name and name not in (".", ".."):   # plain names only
                (out_dir / "images" / name).unlink(missing_ok=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    return out_dir


def _save_like(image: Image.Image, path: Path) -> None:
    """Save in the format the file name says: JPEG at quality 95, anything else (PNG) as such."""
    jpeg = path.suffix.lower() in (".jpg", ".jpeg", ".jpe", ".jfif")
    image.save(path, format="JPEG", quality=95) if jpeg else image.save(path)


def make_cut_set(data_dir, out_dir, *, names=None, holdout=500, split_seed=0, seed=0, progress=None) -> dict:
    """Write the seeded "cut" copy of a course folder: every face with one border cut.

    Faces: ``names`` when given; else the benchmark holdout, ``split_names(sorted(gt),
    holdout, split_seed)[1]``; ``holdout=0``: every face. Each face's cut depends only
    on ``seed`` and its file name. Writes ``out_dir/images/<same name>`` (same format),
    ``gt.csv``, ``img_shapes.csv`` and ``cut.json`` (seed, split, per file its side, fraction,
    box and points outside). ``progress``: an optional bar factory (``TextProgress``, ``tqdm``).
    Returns the summary stored in cut.json, with ``out_dir``.
    """
    data_dir = Path(data_dir)
    gt = read_gt(data_dir / "gt.csv")
    if names is not None:
        names, split, unknown = sorted(set(names)), {"names": "given"}, sorted(set(names) - set(gt))
        if unknown:
            raise ValueError(f"{len(unknown)} faces are not in {data_dir / 'gt.csv'}, e.g. {unknown[0]}")
    elif holdout > 0:
        names, split = split_names(sorted(gt), holdout, split_seed)[1], {"holdout": holdout, "split_seed": split_seed}
    else:
        names, split = sorted(gt), {"all": True}
    if not names:
        raise ValueError("no faces to cut")
    if Path(out_dir).resolve() == data_dir.resolve():
        raise ValueError(f"the output folder {out_dir} is the data folder")
    out_dir = _prepare_out_dir(out_dir, CUT_MARKER, lambda p: list(json.loads(p.read_text()).get("files", [])))
    marker = out_dir / CUT_MARKER    # written first too, so that an interrupted run can be overwritten
    marker.write_text(json.dumps({"complete": False, "files": names}, indent=1) + "\n", encoding="utf-8")
    table, shapes, files = {}, {}, {}
    bar = progress(total=len(names), desc="make-cut", unit="img") if progress else None
    for name in names:
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8", "surrogateescape"))])
        picture, points, info = cut_picture(read_image(data_dir / "images" / name), gt[name], rng)
        _save_like(picture, out_dir / "images" / name)
        info["outside"] = int(points_outside(points, *picture.size).sum())
        table[name], shapes[name], files[name] = points.ravel(), (picture.height, picture.width), info
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    write_gt(table, out_dir / "gt.csv")
    write_img_shapes(shapes, out_dir / "img_shapes.csv")
    summary = {"source": str(data_dir), "seed": seed, "split": split, "faces": len(names),
               "faces_with_points_outside": sum(info["outside"] > 0 for info in files.values()),
               "points_outside": sum(info["outside"] for info in files.values())}
    marker.write_text(json.dumps({**summary, "complete": True, "files": files}, indent=1) + "\n", encoding="utf-8")
    return {**summary, "out_dir": str(out_dir)}


def _to_image(arr: np.ndarray) -> Image.Image:
    """An (h, w, 3) array as an RGB picture, an (h, w, 1) one as gray (mode L); clipped to 0..255."""
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(arr[..., 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")


def _not_face_size(rng: np.random.Generator) -> tuple[int, int]:
    """Random (width, height) in NOT_FACE_SIZE, log-uniform; about 20 % not square."""
    lo, hi = NOT_FACE_SIZE
    square = rng.random() >= 0.2
    short = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi if square else 0.8 * hi)))))
    long = short if square else min(hi, int(round(short / rng.uniform(0.6, 0.9))))  # > short <= 0.8 hi
    return (long, short) if rng.random() < 0.5 else (short, long)


def _blank(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """One flat colour; about a third gray."""
    channels = 1 if rng.random() < 0.35 else 3
    return _to_image(np.broadcast_to(rng.integers(0, 256, channels), (h, w, channels)))


def _noise(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Uniform or Gaussian noise, in colour or gray, about 40 % smoothed."""
    channels = 1 if rng.random() < 0.35 else 3
    arr = rng.uniform(0, 256, (h, w, channels)) if rng.random() < 0.5 else \
        rng.normal(rng.uniform(60, 200), rng.uniform(10, 70), (h, w, channels))
    image = _to_image(arr)
    if rng.random() < 0.4:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 1.0 + 0.03 * min(w, h))))
    return image


def _texture(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Two colours in a pattern: stripes at a random angle, a checkerboard, concentric
    rings or random blotches (hard-edged or, for stripes and rings, sometimes smooth)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    pattern, period = int(rng.integers(4)), rng.uniform(4, 0.25 * max(w, h))
    if pattern == 0:                                          # stripes
        angle = rng.uniform(0, np.pi)
        phase = (x * np.cos(angle) + y * np.sin(angle)) / period
    elif pattern == 1:                                        # concentric rings
        phase = np.hypot(x - rng.uniform(0, w), y - rng.uniform(0, h)) / period
    if pattern < 2:   # hard-edged, or a smooth wave
        weight = 0.5 + 0.5 * np.sin(2 * np.pi * phase) if rng.random() < 0.3 else (phase % 1.0 < 0.5) * 1.0
    elif pattern == 2:                                        # checkerboard
        weight = (np.floor(x / period + rng.random()) + np.floor(y / period + rng.random())) % 2
    else:                                                     # blotches
        draw = ImageDraw.Draw(mask := Image.new("L", (w, h), 0))
        for _ in range(int(rng.integers(5, 30))):
            cx, cy, rx, ry = rng.uniform(0, w), rng.uniform(0, h), *rng.uniform(0.03, 0.2, 2) * max(w, h)
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
        weight = np.asarray(mask, dtype=np.float64) / 255
    channels, weight = 1 if rng.random() < 0.2 else 3, weight[..., None]
    return _to_image(weight * rng.integers(0, 256, channels) + (1 - weight) * rng.integers(0, 256, channels))


def _scene(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A synthetic face's background (no face) with a few rectangles, ellipses and lines."""
    image = _synth_background(rng, w, h)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 6))):
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (x0, x1), (y0, y1) = np.sort(rng.uniform(0, w, 2)), np.sort(rng.uniform(0, h, 2))
        shape = ("rectangle", "ellipse", "line")[int(rng.integers(3))]
        width = {"width": int(rng.integers(1, max(2, min(w, h) // 10)))} if shape == "line" else {}
        getattr(draw, shape)((x0, y0, x1, y1), fill=fill, **width)
    return image


_GENERATORS = {"blank": _blank, "noise": _noise, "texture": _texture, "scene": _scene}


def paint_out_face(image: Image.Image, points: np.ndarray, grow: float = PAINT_GROW) -> Image.Image:
    """A copy of a face picture with its face painted over in the picture's mean colour:
    the points' bounding box grown by ``grow`` (half of it on each side), to whole
    pixels, clipped to the picture, so no eye, brow, nose or mouth survives."""
    arr = np.array(image.convert("RGB"))
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    pad = (p.max(axis=0) - p.min(axis=0)) * grow / 2
    (left, top), (right, bottom) = np.floor(p.min(axis=0) - pad), np.ceil(p.max(axis=0) + pad) + 1
    left, right = (int(np.clip(v, 0, image.width)) for v in (left, right))
    top, bottom = (int(np.clip(v, 0, image.height)) for v in (top, bottom))
    arr[top:bottom, left:right] = np.rint(arr.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def make_not_face_set(out_dir, *, count=200, seed=0, data_dir=None, progress=None) -> dict:
    """Write ``count`` seeded pictures that are not a face crop, kinds in turn (equal shares).

    Kinds: ``NOT_FACE_KINDS`` and, with ``data_dir`` (a course folder), ``painted_out``:
    one of its pictures with the face painted over (:func:`paint_out_face`). Picture
    ``i`` depends only on ``seed``, ``i`` and whether ``data_dir`` is given. Writes
    ``out_dir/images/NNNNN_<kind>.png`` (``.jpg`` for painted_out) and ``kinds.csv``
    (``filename,kind``). Returns ``{"out_dir", "count", "seed", "kinds": {kind: n}}``.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    gt = read_gt(Path(data_dir) / "gt.csv") if data_dir is not None else {}
    faces, kinds = sorted(gt), NOT_FACE_KINDS + (("painted_out",) if gt else ())
    out_dir = _prepare_out_dir(out_dir, KINDS_MARKER,   # its names: the first column after the header
                               lambda p: [row.split(",")[0] for row in p.read_text().splitlines()[1:]])
    plan = [(f"{i:05d}_{kind}.{'jpg' if kind == 'painted_out' else 'png'}", kind)
            for i, kind in ((i, kinds[i % len(kinds)]) for i in range(count))]
    with open(out_dir / KINDS_MARKER, "w", newline="", encoding="utf-8") as handle:   # first: marks the folder
        csv.writer(handle, lineterminator="\n").writerows([("filename", "kind"), *plan])
    bar = progress(total=count, desc="make-not-faces", unit="img") if progress else None
    for i, (name, kind) in enumerate(plan):
        rng = np.random.default_rng([seed, i])
        if kind == "painted_out":
            face = faces[int(rng.integers(len(faces)))]
            image = paint_out_face(read_image(Path(data_dir) / "images" / face), gt[face])
        else:
            image = _GENERATORS[kind](rng, *_not_face_size(rng))
        _save_like(image, out_dir / "images" / name)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return {"out_dir": str(out_dir), "count": count, "seed": seed, "kinds": dict(Counter(k for _, k in plan))}
