"""GENERATED FILE - DO NOT EDIT. Frozen from the package facepoints_lib/core by
`python -m facepoints_lib freeze`.

Entry points:

    train_detector(train_gt, train_img_dir, fast_train=True, ...)
        the course's training call: fast_train=True is the grader's short check (train.py)
    detect(model_filename, test_img_dir, ...)
        the course's detection call: {file name: 28 coordinates in the picture's pixels} (detect.py)
    detect_details(model_filename, test_img_dir, ...)
        detect, with each face's and each point's expected err and confidence (detect.py)
    grader_main(argv=None)
        python solution.py DATA: the local grader (err and mark, as the course's run.py) (grader.py)

Edit the package and rerun that command to regenerate this file; add `--check` to
test whether it is up to date.  Modules, in order:

    schema, files, images, gt_csv, dataset, augment, align, model, losses, inference,
    progress, metrics, confidence, checkpoint, config, fit, cascade, train, detect,
    grader
"""
from __future__ import annotations

import argparse
import copy
import csv
import functools
import io
import math
import os
import platform
import re
import stat
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image


# ---- facepoints_lib/core/schema.py ----
# The 14-point face schema: names, horizontal-flip permutation, drawing skeleton.
#
# This module is the single place where the keypoint layout is defined. "Left" means
# the image's left (the viewer's left), not the person's.
#
# Coordinate convention (used by every module of the package):
#
# * Pixel coordinates, as in ``gt.csv``: the centre of pixel column ``i`` is ``x = i``,
#   so an image of width ``w`` spans ``[-0.5, w - 0.5]`` and a horizontal flip maps
#   ``x -> w - 1 - x``.
# * Normalised coordinates, used inside the package: ``u = (x + 0.5) / w`` and
#   ``v = (y + 0.5) / h``, so the image spans ``[0, 1]`` on both axes whatever its size
#   and a flip maps ``u -> 1 - u``. The course metric scales x errors by ``100 / w`` and
#   y errors by ``100 / h``, so an error of ``d`` in normalised units costs ``(100 d)^2``.

NUM_POINTS = 14

POINT_NAMES = (
    "left_eyebrow_outer",
    "left_eyebrow_inner",
    "right_eyebrow_inner",
    "right_eyebrow_outer",
    "left_eye_outer",
    "left_eye_centre",
    "left_eye_inner",
    "right_eye_inner",
    "right_eye_centre",
    "right_eye_outer",
    "nose_tip",
    "mouth_left",
    "mouth_centre",
    "mouth_right",
)

# After mirroring an image, point FLIP_PERMUTATION[i] of the original is point i of the mirror.
FLIP_PERMUTATION = (3, 2, 1, 0, 9, 8, 7, 6, 5, 4, 10, 13, 12, 11)

# Facial parts, for drawing and for per-part error reports: name -> point indices.
POINT_GROUPS = {
    "left_eyebrow": (0, 1),
    "right_eyebrow": (2, 3),
    "left_eye": (4, 5, 6),
    "right_eye": (7, 8, 9),
    "nose": (10,),
    "mouth": (11, 12, 13),
}

# Line segments drawn between points to show the face's structure.
SKELETON = (
    (0, 1), (2, 3),            # eyebrows
    (4, 5), (5, 6),            # left eye
    (7, 8), (8, 9),            # right eye
    (11, 12), (12, 13),        # mouth
    (6, 10), (7, 10),          # inner eye corners to the nose tip
    (10, 12),                  # nose tip to the mouth centre
)

# Outer eye corners: their distance is the inter-ocular normaliser of NME.
OUTER_EYE_CORNERS = (4, 9)


# ---- facepoints_lib/core/files.py ----
# Writing output files safely: check the target before the work, write it whole or not at all.
#
# ``check_writable`` refuses a target that cannot be written (a folder, a missing or
# read-only folder) before training or detection is spent on it. ``write_atomically``
# writes a regular file through a temporary file of the writer's own beside the target,
# flushed to disk and renamed over the target at the end, so a reader never sees a
# half-written file, a failure (a full disk, a signal) leaves any earlier file as it was,
# and two writers of one path cannot collide. A target that exists and is not a regular
# file (a FIFO, ``/dev/null``, ``/dev/stdout``, a terminal) is written through instead:
# it is never replaced by a regular file.



TEMP_NAME_CHARS = 32        # of the target's name kept in its temporary file's name (a 255-byte
                            # name limit: a long target name must still leave room for the rest)


def is_stream_target(path: Path) -> bool:
    """True for an existing target that is not a regular file and so is written through:
    a FIFO, a character device (``/dev/null``, a terminal), a socket, or any path under
    ``/dev`` or ``/proc`` (``/dev/stdout`` names whatever standard output is)."""
    for candidate in (path, Path(os.path.abspath(path))):
        if str(candidate).startswith(("/dev/", "/proc/")):
            return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _temp_prefix(path: Path) -> str:
    return f".{path.name[:TEMP_NAME_CHARS]}."


def check_writable(path: Path, what: str = "output file") -> None:
    """Refuse a file path that cannot be written, naming it as ``what``."""
    if is_stream_target(path):
        if not os.access(path, os.W_OK):
            raise PermissionError(f"cannot write the {what} {path}: permission denied")
        return
    if path.is_dir():
        raise IsADirectoryError(f"{what} {str(path)!r} is a folder: give a file name")
    folder = _real_target(path).parent
    if not folder.is_dir():
        raise FileNotFoundError(f"folder for the {what} not found: {folder}")
    try:
        handle, probe = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".probe", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(f"cannot write the {what} {path}: {exc}") from exc


def _real_target(path: Path) -> Path:
    """The file a rename must replace: a symlink's target (the link itself is kept)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _naming(exc: OSError, path: Path, note: str) -> OSError:
    """The same error, its message naming the file it was writing."""
    text = f"could not write {path}: {exc.strerror or exc}{note}"
    return type(exc)(exc.errno, text) if exc.errno is not None else type(exc)(text)


def write_atomically(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write(file_path)`` so that ``path`` ends up written whole or not at all.

    For a regular file (or a new one), ``write`` gets a temporary path beside the target,
    with the permissions an ordinary new file would have (``mkstemp`` makes it private);
    the result is flushed to disk and renamed over the target. On any failure, a signal
    turned into an exception included, the temporary file is removed and the error
    raised; an ``OSError`` names ``path``. A stream target (see ``is_stream_target``) is
    passed to ``write`` itself.
    """
    path = Path(path)
    if is_stream_target(path):
        try:
            write(str(path))
        except OSError as exc:
            raise _naming(exc, path, "") from exc
        return path
    target = _real_target(path)
    handle, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        write(tmp)
        with open(tmp, "rb+") as written:       # on disk before the rename, or a crash could
            os.fsync(written.fileno())          # leave an empty file under the old name
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and str(path) not in str(exc):
            raise _naming(exc, path, "; any earlier file there is unchanged") from exc
        raise
    return path


# ---- facepoints_lib/core/images.py ----
# Finding and decoding face images: any PIL mode in, RGB out, resized once.
#
# Decisions this module makes for the whole package:
#
# * **Which files are images.** Files with an image extension (see ``IMAGE_EXTENSIONS``)
#   are images; hidden files, sub-folders and other files (``.DS_Store``, ``Thumbs.db``,
#   ``gt.csv``) are skipped, with one warning naming what was skipped.
# * **Colour.** Every mode (``1``, ``L``, ``LA``, ``P``, ``RGBA``, ``CMYK``, ``I;16``,
#   ``I``, ``F``, ...) becomes 3-channel 8-bit RGB. Alpha is dropped; 16-bit and 32-bit
#   integer images are scaled by 1/257 (65535 -> 255); float images are min-max scaled.
# * **EXIF orientation is ignored.** Keypoints in ``gt.csv`` refer to the stored pixel
#   array, as the course's own reader sees it (it does not apply EXIF rotation, and the
#   course images carry no orientation tag). Rotating the pixels would silently move the
#   image away from its labels.
# * **Resizing.** Each image is resized once, to a square of the network's input size,
#   keeping the pixel-centre convention of ``schema`` exact (large JPEGs are first decoded
#   at a reduced scale by libjpeg, which is accounted for exactly).




# 16/32-bit and float images larger than this many times the network's input are shrunk
# in their own mode (antialiased) before the float64 conversion of ``to_rgb``: that copy
# took 8 bytes a pixel, 5.2 GB for a 13000 x 13000 16-bit PNG.
SHRINK_FIRST = 4

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# Pillow's own guards stay as they are (no global setting is changed here): images above
# ~179 Mpx raise DecompressionBombError, and truncated files raise an error rather than
# being padded with grey (ImageFile.LOAD_TRUNCATED_IMAGES is False by default).


class ImageReadError(ValueError):
    """An image file could not be decoded; the message names the file."""


def _regular_file(path: str | os.PathLike) -> str | os.PathLike:
    """``path`` if it is a regular file (after links); else ``OSError``. Opening a FIFO
    would wait for a writer for ever, and a symlink loop fails in ``stat`` itself."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise OSError(f"not a regular file ({kind})")
    return path


def list_images(img_dir: str | os.PathLike) -> list[str]:
    """Return the sorted file names of the images directly inside ``img_dir``.

    Non-image files and sub-folders are skipped with a single warning that names them.
    Raises ``NotADirectoryError`` when ``img_dir`` is not a folder.
    """
    img_dir = Path(img_dir)
    if not img_dir.is_dir():
        raise NotADirectoryError(f"image folder not found: {img_dir}")
    names, skipped = [], []
    for entry in sorted(os.scandir(img_dir), key=lambda e: e.name):
        is_image = entry.name.lower().endswith(IMAGE_EXTENSIONS) and not entry.name.startswith(".")
        try:
            is_file, is_dir = entry.is_file(), entry.is_dir()
        except OSError as exc:         # a symlink loop: one bad entry must not cost the others
            skipped.append(f"{entry.name} ({exc.strerror or exc})")
            continue
        if is_image and is_file:
            names.append(entry.name)
        else:
            skipped.append(entry.name + ("/" if is_dir else ""))
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.warn(f"{img_dir}: skipped {len(skipped)} entries that are not images: {shown}",
                      stacklevel=2)
    return names


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB (see the module docstring)."""
    if img.mode == "RGB":
        return img
    if img.mode == "F":
        # Scaled by the finite values: one inf pixel must not blank the rest. Non-finite
        # pixels become 0 before any arithmetic: a damaged file can hold signalling NaNs,
        # which raise the floating-point "invalid" flag even when merely cast to float64.
        raw = np.asarray(img)
        finite = np.isfinite(raw)
        arr = np.where(finite, raw, np.float32(0)).astype(np.float64)
        values = arr[finite]
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        arr[~finite] = 0.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if img.mode.startswith("I"):
        arr = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def read_image(path: str | os.PathLike) -> Image.Image:
    """Decode a whole image file as RGB at its stored size (EXIF orientation ignored)."""
    try:
        with Image.open(_regular_file(path)) as img:
            img.load()
            return to_rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


def read_image_resized(path: str | os.PathLike, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image straight to a ``size`` x ``size`` RGB array.

    Returns ``(array of shape (size, size, 3) uint8, (width, height) of the stored image)``.
    The whole stored image is mapped onto the square (non-square images are stretched),
    so normalised coordinates ``((x + 0.5) / w, (y + 0.5) / h)`` are the same in both.
    JPEGs much larger than ``size`` are decoded by libjpeg at 1/2, 1/4 or 1/8 scale first.
    """
    try:
        with Image.open(_regular_file(path)) as img:
            width, height = img.size
            if img.format == "JPEG" and img.mode in ("RGB", "L", "YCbCr"):
                img.draft(img.mode, (size, size))
            img.load()
            draft_w, draft_h = img.size
            shrunk = (img.mode.startswith("I") or img.mode == "F") and max(img.size) > SHRINK_FIRST * size
            if shrunk:   # 16/32-bit and float pictures: shrink in their own mode before any copy
                img = img.resize((min(width, SHRINK_FIRST * size), min(height, SHRINK_FIRST * size)),
                                 Image.Resampling.BILINEAR)
            rgb = to_rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc
    # libjpeg's reduced decode gives ceil(w / k) pixels for a power-of-two k; the stored
    # image's extent is w / k of them, the rest is padding on the right/bottom edge.
    k = 1
    while k < 8 and -(-width // (2 * k)) >= draft_w and -(-height // (2 * k)) >= draft_h:
        k *= 2
    box = (0.0, 0.0, rgb.width, rgb.height) if shrunk else (0.0, 0.0, width / k, height / k)
    resized = rgb.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.array(resized, dtype=np.uint8), (width, height)   # writable, for torch.from_numpy


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of a stored image, read from its header without decoding it."""
    try:
        with Image.open(_regular_file(path)) as img:
            return img.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


# ---- facepoints_lib/core/gt_csv.py ----
# Reading and writing keypoint tables in the course's ``gt.csv`` format.
#
# Format: a header ``filename,x1,y1,x2,y2,...,x14,y14`` and one row per image with 28
# pixel coordinates. In memory a table is a ``dict`` mapping file name to a float64 array
# of 28 numbers ``[x1, y1, ..., x14, y14]``, exactly as the course's ``run.py`` keeps it.
#
# The reader accepts what the course's files contain and what spreadsheet programs make
# of them (a UTF-8 byte-order mark, CRLF line endings, a missing header, blank lines), and
# refuses everything ambiguous with a ``GtFormatError`` that names the file and line: a
# wrong number of values, a value that is not a finite number, a file name listed twice,
# a file that is not UTF-8 text. ``check_gt_table`` applies the same checks to a table
# passed in memory.





NUM_COORDS = 2 * NUM_POINTS
GT_HEADER = ["filename"] + [f"{axis}{i}" for i in range(1, NUM_POINTS + 1) for axis in "xy"]


class GtFormatError(ValueError):
    """A keypoint table is malformed; the message names the file and line."""


# The largest coordinate taken for a pixel position. The course's points lie within a few
# hundred pixels of images up to a few thousand wide; a value beyond this is a typo or a
# unit error, and would overflow or swamp the training loss (1e300 overflows float32).
MAX_COORDINATE = 1e6


def _check_plain_name(name: str, where: str) -> None:
    """A listed file must be directly inside the image folder: ``../x.jpg`` or an absolute
    path would train on files outside it, and ``./a.jpg`` would list ``a.jpg`` twice."""
    if "/" in name or "\\" in name or name in (".", ".."):
        raise GtFormatError(f"{where}: file name {name!r} is not a plain file name "
                            f"(no folders: the images sit directly in the image folder)")


def _parse_gt_row(row: list[str], where: str) -> tuple[str, np.ndarray]:
    if len(row) != NUM_COORDS + 1:
        raise GtFormatError(f"{where}: expected {NUM_COORDS + 1} values (file name and "
                            f"{NUM_COORDS} coordinates), got {len(row)}")
    name = row[0]                 # as written: a name may begin or end with spaces
    if not name.strip():
        raise GtFormatError(f"{where}: empty file name")
    _check_plain_name(name, where)
    values = np.empty(NUM_COORDS, dtype=np.float64)
    for i, text in enumerate(row[1:]):
        try:
            value = float(text) if "_" not in text else math.nan    # Python reads 1_000 as 1000
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise GtFormatError(f"{where}: column {GT_HEADER[i + 1]} is {text!r}, not a finite number")
        if abs(value) > MAX_COORDINATE:
            raise GtFormatError(f"{where}: column {GT_HEADER[i + 1]} is {text!r}, beyond "
                                f"+-{MAX_COORDINATE:g}: not a pixel position")
        values[i] = value
    return name, values


def read_gt(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``gt.csv`` file into ``{filename: float64 array of 28 coordinates}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"keypoint table not found: {path}")
    table: dict[str, np.ndarray] = {}
    first_line: dict[str, int] = {}
    line_no, first_row = 0, True
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            for line_no, row in enumerate(csv.reader(handle), start=1):
                if not row or all(not cell.strip() for cell in row):
                    continue
                is_header = first_row and row[0].strip().lower() == "filename"   # after blank lines too
                first_row = False
                if is_header:
                    continue
                name, values = _parse_gt_row(row, f"{path}, line {line_no}")
                if name in table:
                    raise GtFormatError(f"{path}, line {line_no}: file name {name!r} is already "
                                        f"listed on line {first_line[name]}")
                table[name] = values
                first_line[name] = line_no
    except (UnicodeDecodeError, csv.Error) as exc:   # binary junk, stray quotes, huge fields
        raise GtFormatError(f"{path}, after line {line_no}: not a UTF-8 CSV text file: {exc}") from None
    if not table:
        raise GtFormatError(f"{path}: no keypoint rows")
    return table


def check_gt_table(table, where: str = "keypoint table") -> dict[str, np.ndarray]:
    """Check an in-memory table (``{filename: 28 numbers}``) as ``read_gt`` checks a file.

    Returns a new dict of float64 arrays; raises ``GtFormatError`` naming the first bad
    entry (a name that is not a non-empty string, or not 28 finite numbers).
    """
    if not isinstance(table, dict):
        raise TypeError(f"{where} must be a dict {{filename: 28 coordinates}}, got {type(table).__name__}")
    checked: dict[str, np.ndarray] = {}
    for name, coords in table.items():
        if not isinstance(name, str) or not name.strip():
            raise GtFormatError(f"{where}: file name {name!r} is not a non-empty string")
        _check_plain_name(name, where)
        try:
            values = np.asarray(coords, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise GtFormatError(f"{where}: {name}: coordinates are not numbers ({exc})") from None
        if values.shape != (NUM_COORDS,):
            raise GtFormatError(f"{where}: {name}: expected {NUM_COORDS} coordinates, got {values.size}")
        if not np.isfinite(values).all():
            raise GtFormatError(f"{where}: {name}: coordinates must be finite numbers")
        if np.abs(values).max() > MAX_COORDINATE:
            raise GtFormatError(f"{where}: {name}: a coordinate is beyond +-{MAX_COORDINATE:g}: "
                                f"not a pixel position")
        checked[name] = values
    return checked


def write_gt(table: dict[str, np.ndarray], path: str | os.PathLike, decimals: int = 2) -> Path:
    """Write ``{filename: 28 coordinates}`` as a ``gt.csv`` file, rows sorted by name,
    each coordinate with ``decimals`` digits after the point (the project's one gt.csv writer).

    The file is written whole or not at all (a temporary file beside it, then renamed), so
    a failure leaves any earlier file as it was. File names that are not valid UTF-8 (the
    operating system gave raw bytes) are written as those bytes.
    """
    path = Path(path)
    rows = []
    for name in sorted(table):
        coords = np.asarray(table[name], dtype=np.float64).reshape(-1)
        if coords.shape != (NUM_COORDS,):
            raise ValueError(f"{name}: expected {NUM_COORDS} coordinates, got {coords.size}")
        if not np.isfinite(coords).all():       # the reader refuses them: never write one
            raise ValueError(f"{name}: a coordinate is not a finite number ({coords.tolist()})")
        rows.append([name] + [f"{v:.{decimals}f}" for v in coords])

    return write_csv(path, GT_HEADER, rows)


def csv_line(cells) -> str:
    """One CSV line (with its ``\\n``) that ``csv.reader`` reads back to exactly ``cells``.

    A cell is quoted when it holds a comma, a quote, ``\\n`` or ``\\r`` (``csv.writer``
    with ``\\n`` line endings leaves a lone ``\\r`` unquoted, and its own reader then
    splits the line there), or begins or ends with white space (which other readers drop).
    """
    out = []
    for cell in map(str, cells):
        if any(c in cell for c in ',"\r\n') or cell != cell.strip():
            cell = '"' + cell.replace('"', '""') + '"'
        out.append(cell)
    return ",".join(out) + "\n"


def write_csv(path: str | os.PathLike, header, rows) -> Path:
    """Write a header and rows as a UTF-8 CSV file (``csv_line`` each), whole or not at all.

    File names that are not valid UTF-8 (the operating system gave raw bytes) are
    written as those bytes.
    """
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as out:
            out.write(csv_line(header))
            for row in rows:
                out.write(csv_line(row))

    return write_atomically(Path(path), write)


def read_img_shapes(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Read the course's ``img_shapes.csv`` into ``{filename: (n_rows, n_cols)}``.

    Refuses with a ``GtFormatError`` naming the line: a wrong number of values, a size
    that is not a whole number of at least 1 pixel (a size of 0 made the err infinite),
    a file listed twice (a second row gave an err of millions).
    """
    shapes: dict[str, tuple[int, int]] = {}
    first_line: dict[str, int] = {}
    line_no = 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            for line_no, row in enumerate(csv.reader(handle), start=1):
                if not row or (line_no == 1 and row[0].strip().lower() in ("img_filename", "filename")):
                    continue
                where = f"{path}, line {line_no}"
                if len(row) != 3:
                    raise GtFormatError(f"{where}: expected 3 values, got {len(row)}")
                name = row[0]
                try:
                    rows, cols = int(row[1]), int(row[2])
                except ValueError as exc:
                    raise GtFormatError(f"{where}: {exc}") from None
                if rows < 1 or cols < 1:
                    raise GtFormatError(f"{where}: image size {rows} x {cols}: sizes are at least 1 pixel")
                if name in shapes:
                    raise GtFormatError(f"{where}: file name {name!r} is already listed on line "
                                        f"{first_line[name]}")
                shapes[name], first_line[name] = (rows, cols), line_no
    except (UnicodeDecodeError, csv.Error) as exc:
        raise GtFormatError(f"{path}, after line {line_no}: not a UTF-8 CSV text file: {exc}") from None
    return shapes


def write_img_shapes(shapes: dict[str, tuple[int, int]], path: str | os.PathLike) -> Path:
    """Write ``{filename: (n_rows, n_cols)}`` in the course's ``img_shapes.csv`` format, rows sorted by name."""
    return write_csv(path, ["img_filename", "n_rows", "n_cols"],
                     [[name, *shapes[name]] for name in sorted(shapes)])


# ---- facepoints_lib/core/dataset.py ----
# The in-memory dataset: every image decoded and resized once, kept as uint8 tensors.
#
# A ``FaceSet`` holds ``images`` (N, 3, S, S) uint8, ``keypoints`` (N, 14, 2) float32 in
# normalised coordinates (see ``schema``: the image spans [0, 1], ``u = (x + 0.5) / w``),
# ``sizes`` (N, 2) of the stored images' (width, height) in pixels, ``filenames`` and, for
# training, optional ``frames``: the crop of each picture the network is shown.
# ``pixels_to_normalized`` and ``normalized_to_pixels`` convert exactly between the two
# coordinate systems; predictions go back to the original pixels through the latter.






def pixels_to_normalized(points, sizes):
    """Map pixel coordinates (..., 14, 2) to normalised ones, given (..., 2) (w, h) sizes."""
    sizes = sizes[..., None, :]
    return (points + 0.5) / sizes


def normalized_to_pixels(points, sizes):
    """Inverse of ``pixels_to_normalized``: normalised (..., 14, 2) back to pixels."""
    sizes = sizes[..., None, :]
    return points * sizes - 0.5


@dataclass
class FaceSet:
    """Faces decoded once: uint8 images, normalised keypoints (or None), original sizes."""

    images: torch.Tensor                 # (N, 3, S, S) uint8
    keypoints: torch.Tensor | None       # (N, 14, 2) float32, normalised; None if unlabelled
    sizes: torch.Tensor                  # (N, 2) float64, (width, height) in pixels
    filenames: list[str]
    frames: torch.Tensor | None = None   # (N, 2, 3) forward matrices in grid units, picture -> the
                                         # crop training shows the network (the cascade's second
                                         # stage: the face aligned by its points); None: the picture

    def __len__(self) -> int:
        return len(self.filenames)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, index: Sequence[int] | torch.Tensor) -> "FaceSet":
        """The faces at ``index``, in that order (tensors are indexed, not shared)."""
        index = torch.as_tensor(index, dtype=torch.long)
        return FaceSet(
            images=self.images[index],
            keypoints=None if self.keypoints is None else self.keypoints[index],
            sizes=self.sizes[index],
            filenames=[self.filenames[i] for i in index.tolist()],
            frames=None if self.frames is None else self.frames[index],
        )



def decode_images(paths: Sequence[str | os.PathLike], image_size: int,
                  progress: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and resize ``paths`` into ``(images (N,3,S,S) uint8, sizes (N,2) float64)``."""
    images = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    sizes = torch.empty((len(paths), 2), dtype=torch.float64)
    for i, path in enumerate(paths):
        array, (width, height) = read_image_resized(path, image_size)
        images[i] = torch.from_numpy(array).permute(2, 0, 1)
        sizes[i, 0], sizes[i, 1] = width, height
        if progress is not None:
            progress(1)
    return images, sizes


def shrunk(faces: FaceSet, side: int) -> FaceSet:
    """``faces`` resampled to ``side`` px as ``inference.predict_details`` shrinks larger
    pictures for a network (bilinear with antialiasing); the same faces when they are
    that size already."""
    if faces.image_size == side:
        return faces
    images = torch.empty((len(faces), 3, side, side), dtype=torch.uint8)
    for start in range(0, len(faces), 256):
        part = faces.images[start:start + 256].float()
        small = F.interpolate(part, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        images[start:start + 256] = small.round_().clamp_(0, 255).to(torch.uint8)
    return FaceSet(images, faces.keypoints, faces.sizes, list(faces.filenames), faces.frames)


def load_faces(img_dir: str | os.PathLike, image_size: int,
               gt: dict[str, np.ndarray] | str | os.PathLike | None = None,
               filenames: Sequence[str] | None = None,
               progress: Callable[[int], None] | None = None) -> FaceSet:
    """Decode the faces of ``img_dir`` once, with their keypoints when ``gt`` is given.

    ``gt`` is a table from ``read_gt`` or the path of a ``gt.csv``. With a table, the
    faces are the table's files (sorted by name) and a listed file that is missing from
    the folder is an error; without one, they are all images of the folder. ``filenames``
    restricts loading to those files. ``progress`` is called with 1 after each image.
    """
    img_dir = Path(img_dir)
    if gt is not None and not isinstance(gt, dict):
        gt = read_gt(gt)
    if filenames is None:
        filenames = sorted(gt) if gt is not None else list_images(img_dir)
    filenames = list(filenames)
    if gt is not None:
        missing = [name for name in filenames if not (img_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} images listed in the keypoint table are not "
                                    f"in {img_dir}: {', '.join(missing[:5])}")
    images, sizes = decode_images([img_dir / name for name in filenames], image_size, progress)
    keypoints = None
    if gt is not None:
        rows = [np.asarray(gt[name], dtype=np.float64) for name in filenames]
        pixels = torch.as_tensor(np.stack(rows) if rows else np.zeros((0, 2 * NUM_POINTS)))  # none: no validation
        keypoints = pixels_to_normalized(pixels.view(-1, NUM_POINTS, 2), sizes).float()
    return FaceSet(images=images, keypoints=keypoints, sizes=sizes, filenames=filenames)


def iter_image_chunks(img_dir: str | os.PathLike, image_size: int, chunk: int,
                      filenames: Sequence[str] | None = None,
                      on_error: Callable[[str, Exception], None] | None = None,
                      ) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor]]:
    """Yield ``(filenames, images, sizes)`` for ``chunk`` images at a time (bounded memory).

    An unreadable image is passed to ``on_error(name, exc)`` and left out; without
    ``on_error`` the error is raised.
    """
    img_dir = Path(img_dir)
    names = list(filenames) if filenames is not None else list_images(img_dir)
    for start in range(0, len(names), chunk):
        batch_names, arrays, sizes = [], [], []
        for name in names[start:start + chunk]:
            try:
                array, size = read_image_resized(img_dir / name, image_size)
            except Exception as exc:  # noqa: BLE001 - reported to the caller, by name
                if on_error is None:
                    raise
                on_error(name, exc)
                continue
            batch_names.append(name)
            arrays.append(torch.from_numpy(array).permute(2, 0, 1))
            sizes.append(size)
        if batch_names:
            yield (batch_names, torch.stack(arrays),
                   torch.tensor(sizes, dtype=torch.float64))


def split_names(names: list[str], val_size: int, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of file names into (train, validation); at least one face trains."""
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(max(val_size, 0), len(names) - 1)
    return sorted(names[i] for i in order[n_val:]), sorted(names[i] for i in order[:n_val])


# ---- facepoints_lib/core/augment.py ----
# Augmentation of whole batches with tensor ops: flip, rotation, scale, shift, photometric.
#
# Geometry works in the ``[-1, 1]`` grid coordinates of ``torch.nn.functional.grid_sample``
# with ``align_corners=False``: grid ``g = 2 u - 1`` for normalised ``u`` (see ``schema``).
# A forward transform maps a point of the input image to the output image,
# ``p_out = A @ p_in + t`` with ``A = scale * R(angle) @ F`` (``F`` mirrors x when
# flipping); the image is resampled through its inverse. Points that are mirrored are
# also re-labelled through ``FLIP_PERMUTATION``, so "left eye" stays on the image's left.
#
# Every function takes an explicit ``torch.Generator``, so a seed fixes the batch.






@dataclass
class AugmentConfig:
    """Ranges of the random training-time transforms (0 disables one)."""

    flip_prob: float = 0.5        # chance of a horizontal mirror
    rotation_deg: float = 20.0    # rotation uniform in [-r, r] degrees
    full_turn_prob: float = 0.3   # chance of a rotation uniform in [-180, 180) degrees instead
    full_turn_shrink: float = 0.3  # such a sample also shrinks by a factor in [1 - s, 1]
    scale: float = 0.10           # zoom factor uniform in [1 - s, 1 + s] (> 1 zooms in)
    shift: float = 0.06           # translation uniform in [-t, t], fraction of the image side
    brightness: float = 0.15      # added value uniform in [-b, b] (image range is [0, 1])
    contrast: float = 0.30        # contrast factor uniform in [1 - c, 1 + c]
    grayscale_prob: float = 0.2   # chance of dropping colour
    lowres_prob: float = 0.15     # chance of a 2-3x down-and-up sampling (tiny source images)
    cut_prob: float = 0.15        # chance that the picture ends inside the face (a crop that cuts it)
    cut_depth: float = 0.5        # ... the cut line up to this share of the face's extent into it
    cut_shrink: float = 0.4       # ... and the sample shrinks by a factor in [1 - s, 1]
    margin: float = 0.0           # keep every point this far inside the frame (grid units)


@dataclass
class AffineParams:
    """Per-sample geometric parameters of a batch (all tensors of length N)."""

    flip: torch.Tensor    # bool
    angle: torch.Tensor   # radians
    scale: torch.Tensor
    shift: torch.Tensor   # (N, 2), grid units
    bounds: torch.Tensor | None = None   # (N, 4) where the source picture ends: x_lo, x_hi,
                                         # y_lo, y_hi in its grid units (None: [-1, 1] on both axes)

    @staticmethod
    def identity(n: int) -> "AffineParams":
        return AffineParams(torch.zeros(n, dtype=torch.bool), torch.zeros(n), torch.ones(n),
                            torch.zeros(n, 2))

    def copy(self) -> "AffineParams":
        return AffineParams(self.flip.clone(), self.angle.clone(), self.scale.clone(), self.shift.clone(),
                            None if self.bounds is None else self.bounds.clone())


def _uniform(n: int, low: float, high: float, generator: torch.Generator, *shape: int) -> torch.Tensor:
    return low + (high - low) * torch.rand((n, *shape), generator=generator)


def sample_affine(n: int, cfg: AugmentConfig, generator: torch.Generator) -> AffineParams:
    """Draw random flip / rotation / scale / shift parameters for ``n`` samples.

    With ``full_turn_prob`` a share of the samples is turned by any angle and shrunk a
    little (a picture turned inside a larger canvas shows a smaller face): the detector's
    first look must find a face however it is turned. The extra random numbers are drawn
    only when that share is above 0, so other recipes keep their batches.
    """
    flip = torch.rand(n, generator=generator) < cfg.flip_prob
    angle = _uniform(n, -cfg.rotation_deg, cfg.rotation_deg, generator) * (math.pi / 180)
    scale = _uniform(n, 1 - cfg.scale, 1 + cfg.scale, generator)
    shift = _uniform(n, -2 * cfg.shift, 2 * cfg.shift, generator, 2)
    if cfg.full_turn_prob > 0:
        turned = torch.rand(n, generator=generator) < cfg.full_turn_prob
        angle = torch.where(turned, _uniform(n, -math.pi, math.pi, generator), angle)
        scale = torch.where(turned, scale * _uniform(n, 1 - cfg.full_turn_shrink, 1.0, generator), scale)
    return AffineParams(flip, angle, scale, shift)


def sample_cuts(keypoints: torch.Tensor, params: AffineParams, cfg: AugmentConfig,
                generator: torch.Generator) -> AffineParams:
    """Let a share (``cut_prob``) of the pictures end inside the face, as a crop that cuts it.

    A cut sample's source picture stops at a line across one side of its face (left,
    right, top or bottom; from a tenth of the face's extent outside it to ``cut_depth``
    into it): beyond the line the picture's last pixels repeat, as they do where
    detection's padded and aligned looks reach past a real picture's border. The labels
    stay where they are, so points beyond the line are learned there. The sample also
    shrinks (``cut_shrink``), as detection's padded look shows a picture. The random
    numbers are drawn only when ``cut_prob`` is above 0, so other recipes keep their batches.
    """
    if cfg.cut_prob <= 0:
        return params
    n = keypoints.shape[0]
    cut = torch.rand(n, generator=generator) < cfg.cut_prob
    side = torch.randint(0, 4, (n,), generator=generator)                 # left, right, top, bottom
    depth = _uniform(n, -0.1, cfg.cut_depth, generator)
    shrink = _uniform(n, 1 - cfg.cut_shrink, 1.0, generator)
    grid = keypoints.float() * 2 - 1
    low, high = grid.amin(1), grid.amax(1)                                 # (N, 2) the face's extent
    reach = depth[:, None] * (high - low)
    bounds = torch.tensor([-1.0, 1.0, -1.0, 1.0]).repeat(n, 1) if params.bounds is None else params.bounds.clone()
    lines = torch.stack([low[:, 0] + reach[:, 0], high[:, 0] - reach[:, 0],
                         low[:, 1] + reach[:, 1], high[:, 1] - reach[:, 1]], 1).clamp(-1.0, 1.0)
    chosen = F.one_hot(side, 4).bool() & cut[:, None]
    bounds = torch.where(chosen, lines, bounds)
    out = params.copy()
    out.bounds = bounds
    out.scale = torch.where(cut, out.scale * shrink, out.scale)
    return out


def affine_matrices(params: AffineParams) -> torch.Tensor:
    """Forward matrices (N, 2, 3) in grid coordinates: input point -> output point."""
    cos, sin = torch.cos(params.angle), torch.sin(params.angle)
    mirror = 1.0 - 2.0 * params.flip.float()
    a = torch.stack([torch.stack([cos * mirror, -sin], -1),
                     torch.stack([sin * mirror, cos], -1)], -2)      # (N, 2, 2)
    a = a * params.scale[:, None, None]
    return torch.cat([a, params.shift[:, :, None]], dim=2)


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Forward matrices (N, 2, 3) of ``inner`` followed by ``outer``."""
    a = outer[:, :, :2] @ inner[:, :, :2]
    t = outer[:, :, :2] @ inner[:, :, 2:] + outer[:, :, 2:]
    return torch.cat([a, t], dim=2)


def apply_transform(matrices: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Move normalised points (N, K, 2) by forward matrices (N, 2, 3) in grid coordinates
    (the one formula: training's augmentation and the second look's alignment use it)."""
    m = matrices.to(points.dtype)
    moved = (points * 2 - 1) @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]
    return (moved + 1) / 2


def transform_keypoints(keypoints: torch.Tensor, matrices: torch.Tensor,
                        flip: torch.Tensor) -> torch.Tensor:
    """Move normalised keypoints (N, K, 2) by forward ``matrices``; relabel mirrored rows."""
    moved = apply_transform(matrices, keypoints)
    if bool(flip.any()):
        perm = torch.as_tensor(FLIP_PERMUTATION)
        moved = torch.where(flip[:, None, None], moved[:, perm], moved)
    return moved


def keep_points_inside(keypoints: torch.Tensor, params: AffineParams, margin: float = 0.0,
                       tries: int = 3) -> AffineParams:
    """Shrink transforms that push a point out of the frame towards the identity.

    A sample whose points leave ``[-1 + margin, 1 - margin]`` (grid units) has its
    rotation, zoom and shift halved, up to ``tries`` times; one still outside then gets
    no rotation, zoom or shift (its flip is kept: a mirror cannot push points out). A
    face whose labels lie outside its own picture (a crop that cut it) is then shown
    shrunk about the centre until they fit, the picture's border repeated around it, as
    detection's padded look shows such a picture.
    """
    params = params.copy()
    limit = 1.0 - margin
    for attempt in range(tries + 1):
        moved = transform_keypoints(keypoints, affine_matrices(params), params.flip) * 2 - 1
        bad = (moved.abs() > limit).flatten(1).any(1)
        if not bool(bad.any()):
            break
        factor = 0.5 if attempt < tries else 0.0
        params.angle[bad] *= factor
        params.scale[bad] = 1 + (params.scale[bad] - 1) * factor
        params.shift[bad] *= factor
    if bool(bad.any()):                      # labels outside the picture itself: shrink it into the frame
        reach = (keypoints[bad].float() * 2 - 1).abs().flatten(1).amax(1)
        params.scale[bad] = torch.clamp(limit / reach.clamp_min(1e-6), max=1.0)
    return params


def warp_images(images: torch.Tensor, matrices: torch.Tensor, out_size: int,
                bounds: torch.Tensor | None = None) -> torch.Tensor:
    """Resample float images (N, C, H, W) through forward ``matrices`` to out_size^2.

    Outside the source picture its border pixels repeat; ``bounds`` (N, 4: x_lo, x_hi,
    y_lo, y_hi in grid units) ends each picture earlier, as a crop would (see ``sample_cuts``).
    """
    a, t = matrices[:, :, :2], matrices[:, :, 2:]
    a_inv = torch.linalg.inv(a)
    theta = torch.cat([a_inv, -a_inv @ t], dim=2)       # output point -> input point
    grid = F.affine_grid(theta.to(images.dtype), [images.shape[0], images.shape[1], out_size, out_size],
                         align_corners=False)
    if bounds is not None:
        b = bounds.to(grid.dtype)[:, None, None, :]
        grid = torch.stack([torch.minimum(torch.maximum(grid[..., 0], b[..., 0]), b[..., 1]),
                            torch.minimum(torch.maximum(grid[..., 1], b[..., 2]), b[..., 3])], -1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


WARP_CHUNK = 64             # pictures converted to float at a time by ``cut_crops``


def cut_crops(images: torch.Tensor, matrices: torch.Tensor, out_size: int) -> torch.Tensor:
    """uint8 pictures (N, 3, S, S) resampled through forward ``matrices`` (N, 2, 3) to
    uint8 crops (N, 3, out_size, out_size), a chunk at a time (bounded float memory)."""
    crops = torch.empty((len(images), 3, out_size, out_size), dtype=torch.uint8)
    for start in range(0, len(images), WARP_CHUNK):
        part = slice(start, start + WARP_CHUNK)
        warped = warp_images(images[part].float().div_(255.0), matrices[part].float(), out_size)
        crops[part] = warped.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return crops


def adjust_colours(images: torch.Tensor, to_gray: torch.Tensor, contrast: torch.Tensor,
                   brightness: torch.Tensor) -> torch.Tensor:
    """The photometric formula, with chosen values per image (N,): drop colour where
    ``to_gray``, scale the contrast about the image's mean gray level, add ``brightness``.
    Float images in [0, 1]; the result is not clamped. Training draws the values at random
    (``photometric``); notebook 02's sliders set them."""
    n = images.shape[0]
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
    gray = (images * weights).sum(1, keepdim=True)
    images = torch.where(to_gray.view(n, 1, 1, 1), gray.expand_as(images), images)
    mean = gray.mean(dim=(2, 3), keepdim=True)
    return (images - mean) * contrast.view(n, 1, 1, 1) + mean + brightness.view(n, 1, 1, 1)


def photometric(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random grayscale, contrast, brightness and low resolution on float images in [0, 1]."""
    n = images.shape[0]
    to_gray = torch.rand(n, generator=generator) < cfg.grayscale_prob
    contrast = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, generator)
    brightness = _uniform(n, -cfg.brightness, cfg.brightness, generator)
    images = adjust_colours(images, to_gray, contrast, brightness)
    lowres = torch.rand(n, generator=generator) < cfg.lowres_prob
    if bool(lowres.any()):
        size = images.shape[-1]
        small = max(8, int(size / (2 + float(torch.rand(1, generator=generator)))))
        picked = images[lowres]
        picked = F.interpolate(picked, size=(small, small), mode="bilinear", antialias=True,
                               align_corners=False)
        images[lowres] = F.interpolate(picked, size=(size, size), mode="bilinear", align_corners=False)
    return images.clamp_(0.0, 1.0)


def augment_batch(images: torch.Tensor, keypoints: torch.Tensor, cfg: AugmentConfig,
                  out_size: int, generator: torch.Generator,
                  frames: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a uint8 batch (N, 3, S, S) with normalised keypoints (N, K, 2).

    ``frames`` (N, 2, 3; see ``dataset.FaceSet``): the random changes apply to these
    crops of the pictures, and each sample is resampled from its picture once, as
    detection resamples the crop it cuts. Returns float images (N, 3, out_size,
    out_size) in [0, 1] and their keypoints.
    """
    shown = keypoints if frames is None else apply_transform(frames, keypoints)
    params = sample_cuts(shown, sample_affine(images.shape[0], cfg, generator), cfg, generator)
    params = keep_points_inside(shown, params, cfg.margin)
    matrices = affine_matrices(params)
    if frames is not None:
        if params.bounds is not None:
            raise ValueError("cut faces (cut_prob > 0) are drawn on whole pictures, not on frames")
        matrices = compose(matrices, frames.to(matrices.dtype))
    warped = warp_images(images.float().div_(255.0), matrices, out_size, params.bounds)
    return photometric(warped, cfg, generator), transform_keypoints(keypoints, matrices, params.flip)


def flip_images(images: torch.Tensor) -> torch.Tensor:
    """Mirror a batch of images (…, W) horizontally."""
    return images.flip(-1)


def flip_keypoints(keypoints: torch.Tensor) -> torch.Tensor:
    """Mirror normalised keypoints (N, K, 2): ``u -> 1 - u`` and relabel left/right."""
    mirrored = keypoints[:, list(FLIP_PERMUTATION)].clone()
    mirrored[..., 0] = 1 - mirrored[..., 0]
    return mirrored


# ---- facepoints_lib/core/align.py ----
# Face alignment: the similarity transform that puts a face on a canonical frame, and back.
#
# Once a face's 14 points are roughly known, the rotation, scale and shift that best map
# them (least squares, no mirroring) onto a canonical shape define an aligned crop: the
# face upright, centred and at the canonical size. This is the usual first step before
# face recognition, and the detector's second look: ``predict`` finds the points once on
# the whole picture, aligns the face onto the model's mean shape and finds them again on
# the aligned crop, where the face looks like the upright faces most of training saw;
# the second answer is mapped back exactly by the inverse transform.
#
# Transforms are ``(N, 2, 3)`` forward matrices in the ``[-1, 1]`` grid coordinates of
# ``augment`` (``p_out = A @ p_in + t``): a point of the source picture goes to the
# aligned crop. Points given to and returned by these functions are normalised
# (``schema``: the picture spans ``[0, 1]``).




MAX_ZOOM = 4.0      # an aligned crop never magnifies or shrinks the face more than this


def to_grid(points: torch.Tensor) -> torch.Tensor:
    """Normalised points -> grid coordinates (``2 u - 1``)."""
    return points * 2 - 1


def similarity_to(points: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Forward matrices (N, 2, 3) of the similarity that best maps ``points`` onto ``target``.

    ``points`` (N, K, 2) and ``target`` (K, 2) or (N, K, 2) are normalised. The transform
    (rotation, uniform scale, shift; never a mirror) minimises the summed squared distance
    in grid coordinates, in closed form (two-dimensional Procrustes). Its zoom is kept
    within ``[1 / MAX_ZOOM, MAX_ZOOM]``, so a collapsed guess cannot blow up a crop.
    """
    src = to_grid(points.double())
    dst = to_grid(target.double()).expand_as(src)
    src_mean, dst_mean = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    p, q = src - src_mean, dst - dst_mean
    norm = (p ** 2).sum((1, 2)).clamp_min(1e-12)
    a = (p * q).sum((1, 2)) / norm                                        # s cos(angle)
    b = (p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0]).sum(1) / norm     # s sin(angle)
    zoom = torch.sqrt(a ** 2 + b ** 2)
    flat = zoom < 1e-9                       # points all in one place: no angle to read, keep upright
    a, b = torch.where(flat, 1.0, a / zoom.clamp_min(1e-9)), torch.where(flat, 0.0, b / zoom.clamp_min(1e-9))
    zoom = zoom.clamp(1 / MAX_ZOOM, MAX_ZOOM)
    a, b = a * zoom, b * zoom
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)   # (N, 2, 2)
    shift = dst_mean.squeeze(1) - (rot @ src_mean.transpose(1, 2)).squeeze(2)
    return torch.cat([rot, shift[:, :, None]], dim=2).to(points.dtype)


def invert_transform(matrices: torch.Tensor) -> torch.Tensor:
    """Inverse forward matrices (N, 2, 3)."""
    a_inv = torch.linalg.inv(matrices[:, :, :2].double())
    t_inv = -(a_inv @ matrices[:, :, 2:].double())
    return torch.cat([a_inv, t_inv], dim=2).to(matrices.dtype)


def rotation_degrees(matrices: torch.Tensor) -> torch.Tensor:
    """How far each transform turns the picture, in degrees (counter-clockwise on screen
    is negative: image y points down)."""
    return torch.rad2deg(torch.atan2(matrices[:, 1, 0], matrices[:, 0, 0]))


def align_faces(images: torch.Tensor, keypoints: torch.Tensor, canonical: torch.Tensor,
                out_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned face crops and their transforms.

    ``images`` (N, C, H, W), uint8 or float in [0, 1]; ``keypoints`` (N, 14, 2) normalised
    points of each face (a detector's answer, or the truth); ``canonical`` (14, 2) the
    shape to align onto (a model's ``mean_shape``). Returns float crops (N, C, S, S) in
    [0, 1] (``S = out_size``, default the images' side) and the forward matrices: map
    a crop's points back with ``augment.apply_transform(invert_transform(matrices), points)``. Corners the source
    does not cover repeat its border pixels, as in training.
    """
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    matrices = similarity_to(keypoints.float(), canonical.float().to(keypoints.device))
    crops = warp_images(images, matrices.to(images.device), out_size or images.shape[-1])
    return crops, matrices


# ---- facepoints_lib/core/model.py ----
# The keypoint networks, written from scratch: a small residual backbone and two heads.
#
# * ``head="heatmap"`` (the recipe): a light feature pyramid brings the backbone back to
#   stride 4 and predicts one heatmap per point; a spatial softmax turns each map into a
#   distribution whose mean is the point (integral regression / soft-argmax), so the
#   output is still coordinates and the whole net trains end to end on a coordinate loss.
# * ``head="regression"``: the last feature map is flattened into a small MLP that predicts
#   offsets from the mean face shape (notebook 03's baseline).
#
# Every network takes float images in [0, 1], (N, 3, S, S), normalises them with its own
# buffers, and returns normalised keypoints (N, 14, 2) (see ``schema``). ``ModelConfig``
# is plain data: it is stored in checkpoints and is all that is needed to rebuild the net.
# Variants that lost to these in notebook 03 (a heatmap + offsets head, stacked hourglass
# refinement) are described in bench/README.md, with the commit that can still run them.






HEADS = ("heatmap", "regression")
# Upper bounds of a config's sizes (ModelConfig.validate): far above any network this
# project trains (96 px, widths <= 256, depths <= 3), far below what exhausts a machine.
MAX_IMAGE_SIZE, MAX_WIDTH, MAX_DEPTH, MAX_HIDDEN = 256, 1024, 16, 4096
MAX_PARAMETERS = 50_000_000        # 200 MB of float32 weights; the recipe has 2.3 M
MAX_ACTIVATIONS = 16_000_000       # feature-map values of one image's forward pass (64 MB of
                                   # float32); the recipe has about 0.8 M


@dataclass
class ModelConfig:
    """Hyper-parameters of a keypoint network (stored in checkpoints as a dict)."""

    image_size: int = 96                         # network input side, pixels
    head: str = "heatmap"                        # "heatmap" (soft-argmax) or "regression"
    stem_width: int = 24                         # channels after the stride-2 stem
    widths: tuple = (48, 96, 160, 256)           # stage widths at strides 4, 8, 16, 32
    depths: tuple = (2, 2, 2, 1)                 # residual blocks per stage
    decoder_width: int = 64                      # feature-pyramid channels (heatmap head)
    hidden: int = 256                            # MLP width (regression head)
    dropout: float = 0.1                         # before the regression MLP
    second_look: bool = True                     # predict again on the face aligned upright (align.py)

    def to_dict(self) -> dict:
        """Plain-data form for checkpoints (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """Rebuild from ``to_dict`` output; unknown keys are refused.

        Model files written before the refining stacks were retired carry ``stacks: 1``,
        which is what every network now is: that key is accepted at 1 and dropped.
        """
        data = dict(data)
        if "stacks" in data:
            if data["stacks"] != 1:
                raise ValueError(f"refining stacks (stacks={data['stacks']!r}) are no longer supported; "
                                 "see bench/README.md for the commit that can still load such a model")
            del data["stacks"]
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Refuse configurations the networks cannot be built from, and sizes beyond any
        sensible keypoint network (a config read from a model file is untrusted input: a
        10000-wide stage or a 200000-block stage would take gigabytes before failing)."""
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(map(repr, HEADS))}, got {self.head!r}")
        if not isinstance(self.widths, (tuple, list)) or not isinstance(self.depths, (tuple, list)) \
                or len(self.widths) != 4 or len(self.depths) != 4:
            raise ValueError("widths and depths need one entry per stage (4)")
        for name, value, top in (("image_size", self.image_size, MAX_IMAGE_SIZE),
                                 ("stem_width", self.stem_width, MAX_WIDTH),
                                 ("decoder_width", self.decoder_width, MAX_WIDTH),
                                 ("hidden", self.hidden, MAX_HIDDEN),
                                 *((f"widths[{i}]", w, MAX_WIDTH) for i, w in enumerate(self.widths)),
                                 *((f"depths[{i}]", d, MAX_DEPTH) for i, d in enumerate(self.depths))):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise ValueError(f"{name} must be an integer from 1 to {top}, got {value!r}")
        if not isinstance(self.second_look, bool):
            raise ValueError(f"second_look must be True or False, got {self.second_look!r}")
        if self.image_size % 32 or self.image_size < 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.estimated_parameters() > MAX_PARAMETERS:
            raise ValueError(f"the network would have about {self.estimated_parameters() / 1e6:.0f} M "
                             f"parameters, more than {MAX_PARAMETERS / 1e6:.0f} M")
        if self.estimated_activations() > MAX_ACTIVATIONS:
            raise ValueError(f"one image's forward pass would hold about {self.estimated_activations() / 1e6:.0f} M "
                             f"feature values, more than {MAX_ACTIVATIONS / 1e6:.0f} M")

    def estimated_activations(self) -> int:
        """Feature-map values one image's forward pass writes (each convolution's output and
        its batch norm's), counted from the config alone: an upper bound on what inference
        holds at once, and about what training keeps per image for the backward pass."""
        s = self.image_size
        count = 2 * (s // 2) ** 2 * self.stem_width
        sides = [max(s // (4 * 2 ** i), 1) for i in range(4)]
        for side, width, depth in zip(sides, self.widths, self.depths):
            count += (6 + 4 * (depth - 1)) * side * side * width
        if self.head == "regression":
            return count + self.hidden + 2 * NUM_POINTS
        d, fine = self.decoder_width, sides[0] ** 2
        return count + 2 * d * sum(side * side for side in sides) + 2 * d * fine + 3 * NUM_POINTS * fine

    def estimated_parameters(self) -> int:
        """Convolution and linear weights of the network, counted from the config alone
        (within a few per cent: batch norms and biases are left out)."""
        count, c_in = 27 * self.stem_width, self.stem_width
        for width, depth in zip(self.widths, self.depths):
            count += 9 * c_in * width + c_in * width + 9 * width * width    # first block + shortcut
            count += (depth - 1) * 18 * width * width
            c_in = width
        d = self.decoder_width
        if self.head == "regression":
            side = self.image_size // 32
            return count + self.widths[-1] * side * side * self.hidden + self.hidden * 2 * NUM_POINTS
        return count + sum(self.widths) * d + 9 * d * d + d * NUM_POINTS


def conv_bn(c_in: int, c_out: int, stride: int = 1, kernel: int = 3, relu: bool = True) -> nn.Sequential:
    """Convolution + batch norm (+ ReLU), padding keeping the size at stride 1."""
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (projected when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c_in, c_out, stride), conv_bn(c_out, c_out, relu=False))
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out
                         else conv_bn(c_in, c_out, stride, kernel=1, relu=False))
        nn.init.zeros_(self.body[1][1].weight)      # each block starts as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x), inplace=True)


class Backbone(nn.Module):
    """Stride-2 stem then four residual stages; returns the four stage outputs."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.stem = conv_bn(3, cfg.stem_width, stride=2)
        stages, c_in = [], cfg.stem_width
        for width, depth in zip(cfg.widths, cfg.depths):
            blocks = [ResidualBlock(c_in, width, stride=2)]
            blocks += [ResidualBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def spatial_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Each (N, K, H, W) logit map as a probability distribution over its cells (fp32)."""
    n, k, h, w = logits.shape
    return torch.softmax(logits.flatten(2).float(), dim=-1).view(n, k, h, w)


def expected_coordinates(probs: torch.Tensor) -> torch.Tensor:
    """Mean (u, v) of each heatmap distribution: (N, K, H, W) -> (N, K, 2).

    Cell centres sit at ``(j + 0.5) / W``, matching the normalised coordinates.
    """
    h, w = probs.shape[-2:]
    xs = (torch.arange(w, dtype=probs.dtype, device=probs.device) + 0.5) / w
    ys = (torch.arange(h, dtype=probs.dtype, device=probs.device) + 0.5) / h
    u = (probs.sum(2) * xs).sum(-1)
    v = (probs.sum(3) * ys).sum(-1)
    return torch.stack([u, v], dim=-1)


class KeypointNet(nn.Module):
    """Backbone + heatmap or regression head; images in [0, 1] -> normalised keypoints."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.register_buffer("pixel_mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("pixel_std", torch.full((1, 3, 1, 1), 0.25))
        self.register_buffer("mean_shape", torch.full((NUM_POINTS, 2), 0.5))
        self.refiner: Refiner | None = None          # the cascade's second stage (``attach_refiner``)
        self.backbone = Backbone(cfg)
        if cfg.head == "heatmap":
            d = cfg.decoder_width
            self.lateral = nn.ModuleList(conv_bn(w, d, kernel=1, relu=False) for w in cfg.widths)
            self.smooth = conv_bn(d, d)
            self.heatmaps = nn.Conv2d(d, NUM_POINTS, 1)
        else:
            side = cfg.image_size // 32
            self.regressor = nn.Sequential(
                nn.Flatten(), nn.Dropout(cfg.dropout),
                nn.Linear(cfg.widths[-1] * side * side, cfg.hidden), nn.ReLU(inplace=True),
                nn.Linear(cfg.hidden, 2 * NUM_POINTS))
            nn.init.zeros_(self.regressor[-1].weight)
            nn.init.zeros_(self.regressor[-1].bias)

    def set_statistics(self, pixel_mean: torch.Tensor, pixel_std: torch.Tensor,
                       mean_shape: torch.Tensor) -> None:
        """Store the training set's channel mean/std (of [0, 1] pixels) and mean shape."""
        self.pixel_mean.copy_(pixel_mean.view(1, 3, 1, 1))
        self.pixel_std.copy_(pixel_std.view(1, 3, 1, 1))
        self.mean_shape.copy_(mean_shape.view(NUM_POINTS, 2))

    def attach_refiner(self, refiner: "Refiner | None") -> None:
        """Make ``refiner`` this network's second stage (None: remove it). The refiner's
        weights become part of this network's ``state_dict`` (``refiner.*``)."""
        if refiner is None:
            self._modules.pop("refiner", None)
            self.refiner = None
        else:
            self.refiner = refiner

    def decode_side(self) -> int:
        """The side pictures are decoded at for this network: its input side, or, with a
        refiner, the larger side the refiner cuts its aligned crops from."""
        if self.refiner is None:
            return self.config.image_size
        return max(self.config.image_size, self.refiner.source_side)

    def heatmap_logits(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Top-down pyramid from stride 32 to stride 4: one (N, 14, H, W) fp32 logit map per point."""
        x = self.lateral[-1](features[-1])
        for lateral, feature in zip(self.lateral[-2::-1], features[-2::-1]):
            x = F.interpolate(x, size=feature.shape[-2:], mode="nearest") + lateral(feature)
        x = self.smooth(x)
        with torch.autocast(x.device.type, enabled=False):   # bf16 logits would blur the softmax
            return self.heatmaps(x.float())

    def forward(self, images: torch.Tensor, with_heatmaps: bool = False):
        """(N, 3, S, S) images in [0, 1] -> (N, 14, 2) normalised keypoints (fp32 for the heatmap head).

        With ``with_heatmaps``: ``(keypoints, heatmaps)``, the heatmaps being the (N, 14, H, W)
        distributions whose means are the points (None for the regression head), for the
        training loss's heatmap-shape term (``losses.heatmap_js_loss``).
        """
        features = self.backbone((images - self.pixel_mean) / self.pixel_std)
        if self.config.head == "heatmap":
            probs = spatial_softmax(self.heatmap_logits(features))
            points = expected_coordinates(probs)
        else:
            probs = None
            points = self.mean_shape + self.regressor(features[-1]).view(-1, NUM_POINTS, 2)
        return (points, probs) if with_heatmaps else points


class Refiner(nn.Module):
    """The cascade's second stage: a network that sees only aligned faces.

    ``net`` was trained on faces warped onto ``canonical`` (14, 2), a tight frame around
    the first stage's mean face, from pictures decoded at ``source_scale`` times its input
    side; ``inference.predict_details`` aligns each face by the first stage's answer,
    asks ``net`` and maps its answer back exactly (see ``cascade``).
    """

    MAX_SOURCE_SCALE = 4

    def __init__(self, net: "KeypointNet", source_scale: int = 2, flip_tta: bool = True):
        super().__init__()
        if not isinstance(source_scale, int) or isinstance(source_scale, bool) \
                or not 1 <= source_scale <= self.MAX_SOURCE_SCALE:
            raise ValueError(f"source_scale must be an integer from 1 to {self.MAX_SOURCE_SCALE}, "
                             f"got {source_scale!r}")
        if not isinstance(flip_tta, bool):
            raise ValueError(f"flip_tta must be True or False, got {flip_tta!r}")
        self.net = net
        self.source_scale = source_scale
        self.flip_tta = flip_tta          # average with the mirrored crop's answer (when the caller flips)
        self.register_buffer("canonical", torch.full((NUM_POINTS, 2), 0.5))

    @property
    def source_side(self) -> int:
        """The side of the pictures the aligned crops are cut from."""
        return self.net.config.image_size * self.source_scale

    def to_dict(self) -> dict:
        """Plain-data form for model files: what rebuilds it (the weights come separately)."""
        return {"model_config": self.net.config.to_dict(), "source_scale": self.source_scale,
                "flip_tta": self.flip_tta}

    @classmethod
    def from_dict(cls, data: dict) -> "Refiner":
        """An untrained refiner of the shape ``to_dict`` describes (unknown keys refused)."""
        if not isinstance(data, dict) or not {"model_config", "source_scale"} <= set(data) \
                or not set(data) <= {"model_config", "source_scale", "flip_tta"}:
            raise ValueError("a refiner is described by model_config, source_scale and flip_tta (default True)")
        return cls(build_model(data["model_config"]), data["source_scale"], data.get("flip_tta", True))


def memory_format_for(model: nn.Module) -> torch.memory_format:
    """The memory layout ``model`` trains and predicts in: channels-last, unless it has a
    convolution that oneDNN gets wrong in that layout.

    Channels-last is the faster layout for oneDNN's convolutions. But the AVX2 kernel for
    the weight gradient of a strided 1x1 convolution (oneDNN 3.12 in torch 2.13,
    ``jit_1x1:avx2`` backward_weights) writes past its workspace when a channels-last
    input has 2 to 7 channels: the process aborts with a glibc heap error on one thread,
    and on two threads the gradient comes out wrong without a word (docs/cpu-notes.md).
    The recipe's networks never have such a layer (their narrowest strided 1x1
    convolution reads 24 channels); networks with a stage narrower than 8 channels do.
    Those use the contiguous layout on every CPU, so that the choice, and hence the
    weights a seed gives, do not depend on which CPU runs them.
    """
    for module in model.modules():
        if (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
                and max(module.stride) > 1 and 1 < module.in_channels // module.groups < 8):
            return torch.contiguous_format
    return torch.channels_last


@torch.no_grad()
def fold_batch_norm(model: KeypointNet) -> KeypointNet:
    """A copy of ``model`` for inference with every batch norm folded into the convolution
    before it (its scale into the weights, its shift into a bias).

    In eval mode a batch norm is a fixed per-channel affine map, so the copy computes the
    same function (to float rounding) with one pass less over each feature map: detection
    spends about a tenth of its time in batch norm otherwise. Not for training.
    """
    folded = copy.deepcopy(model).eval()
    for block in folded.modules():
        if not isinstance(block, nn.Sequential):
            continue
        for i in range(len(block) - 1):
            conv, norm = block[i], block[i + 1]
            if not (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)):
                continue
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                              conv.padding, conv.dilation, conv.groups, bias=True)
            fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            shift = norm.bias - norm.running_mean * scale
            fused.bias.copy_(shift if conv.bias is None else shift + conv.bias * scale)
            block[i], block[i + 1] = fused.to(conv.weight.device), nn.Identity()
    return folded


def build_model(cfg: ModelConfig | dict) -> KeypointNet:
    """Build a network from a config (or its plain-data dict)."""
    if isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    return KeypointNet(cfg)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---- facepoints_lib/core/losses.py ----
# The training loss: L1 distance between predicted and true keypoints, in percent of the
# side, plus (optionally) a term that shapes the heatmaps behind them.
#
# Both point sets are normalised coordinates (see ``schema``), so ``100 * |pred - true|`` is
# the error in per cent of the picture's width or height, the unit of the course's err
# (which squares it). L1 beat the squared error, smooth L1 and the Wing loss in notebook
# 03's ablations (bench/results/exp-loss-*.json); those are retired (bench/README.md).
#
# ``heatmap_js_loss`` is DSNT's regulariser (Nibali et al. 2018): the coordinate loss alone
# only fixes each heatmap's mean; this term also asks for one compact peak there. The
# recipe leaves it off (``TrainConfig.heatmap_js = 0``); at 90 epochs a weight of 30 gave
# holdout err 3.20 / 3.19 on two seeds against 3.22 / 3.24 without it (cand-90-js30*.json,
# before turned faces joined the recipe).




def keypoint_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between (N, 14, 2) normalised keypoints, in percent of the side."""
    return ((pred.float() - target) * 100.0).abs().mean()


def cell_distance_squared(keypoints: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Squared distance, in heatmap cells, from every cell centre to each normalised keypoint.

    ``keypoints`` (N, K, 2) -> (N, K, H, W).
    """
    xs = (torch.arange(width, dtype=keypoints.dtype, device=keypoints.device) + 0.5) / width
    ys = (torch.arange(height, dtype=keypoints.dtype, device=keypoints.device) + 0.5) / height
    dx = (xs.view(1, 1, 1, width) - keypoints[..., 0, None, None]) * width
    dy = (ys.view(1, 1, height, 1) - keypoints[..., 1, None, None]) * height
    return dx ** 2 + dy ** 2


def gaussian_log_targets(keypoints: torch.Tensor, height: int, width: int,
                         sigma: float) -> torch.Tensor:
    """Log of a normalised Gaussian on the heatmap grid around each keypoint.

    ``keypoints`` are normalised (N, K, 2); the result is (N, K, H, W) log-probabilities
    (computed in log space, so points far outside the image still give a valid map).
    """
    logits = -cell_distance_squared(keypoints, height, width) / (2 * sigma ** 2)
    n, k = keypoints.shape[:2]
    return torch.log_softmax(logits.reshape(n, k, -1), dim=-1).view(n, k, height, width)


def heatmap_js_loss(probs: torch.Tensor, keypoints: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mean Jensen-Shannon divergence (nats) between heatmaps and Gaussians at the keypoints."""
    target = gaussian_log_targets(keypoints, probs.shape[-2], probs.shape[-1], sigma).exp()
    mixture = 0.5 * (probs + target)
    kl_p = torch.special.xlogy(probs, probs) - torch.special.xlogy(probs, mixture)
    kl_q = torch.special.xlogy(target, target) - torch.special.xlogy(target, mixture)
    return 0.5 * (kl_p + kl_q).flatten(2).sum(-1).mean()


def training_loss(pred: torch.Tensor, probs: torch.Tensor | None, targets: torch.Tensor,
                  heatmap_js: float = 0.0, sigma: float = 1.0) -> torch.Tensor:
    """The loss ``train_step`` minimises: the keypoint loss, plus ``heatmap_js`` times the
    heatmap-shape term when that weight is above 0 (``probs``: the heatmap head's maps)."""
    loss = keypoint_loss(pred, targets)
    if heatmap_js:
        loss = loss + heatmap_js * heatmap_js_loss(probs, targets, sigma)
    return loss


# ---- facepoints_lib/core/inference.py ----
# Inference: device and precision choice, and ``predict``, shared by training and detection.
#
# ``predict`` runs a network on uint8 faces as ``detect`` does (flip test-time augmentation,
# the second look on the aligned face, bfloat16 where the CPU computes it natively) and
# is what training's validation measures, so the two cannot drift apart. The CPU checks
# read ``/proc/cpuinfo`` (see docs/cpu-notes.md).





MAX_THREADS = 256                    # torch CPU threads; OpenMP crashed (SIGSEGV) at 100000
TURNED_DEGREES = 10.0                # the second look: for faces the first finds turned more than this
EXTRA_LOOKS = 2                      # ... looks on the aligned face (a third look helped turned faces)
DOUBT_SPREAD = 1.0                   # the second try: for faces whose flip pair disagrees more than
                                     # this (mean spread, err units) ...
DOUBT_BLUR = 6.0                     # ... or whose heatmaps are broader than this (mean blur, % of the
                                     # side; the recipe's network: 5.7 at the 99th percentile of upright
                                     # validation faces, 10.3 at the 90th of cut ones), for a network
DOUBT_BLUR_SIDE = 96                 # of this input side; scaled by DOUBT_BLUR_SIDE / side for others:
                                     # a 64 px network's maps are 1.5x as broad (median 6.6 % against
                                     # 4.4 %), and at 6 % it doubted 84 % of upright faces (doubt_blur) ...
NEAR_BORDER = 0.05                   # ... or with a point this close to the border (share of the side;
                                     # 1 % of upright validation faces come closer than 0.08)
PAD_MARGIN = 0.25                    # the padded look's margin around the picture (share of its side)
PREDICT_MEMORY_BYTES = 256 * 2 ** 20   # feature maps of one predict batch, at most, as estimated (the
                                       # recipe: 3.0 MB a face, 6.0 MB with its mirror, so 42 a batch)


def restores_torch_threads(function):
    """Decorator: the caller's torch thread count is back when ``function`` returns or
    raises, whatever the function set (``torch.set_num_threads`` is process-wide)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        before = torch.get_num_threads()
        try:
            return function(*args, **kwargs)
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)
    return wrapper


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")   # the flags that decide the kernels

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below native bfloat16: with one of these set, oneDNN
# runs as on a CPU without it, and so does the bf16 choice (see docs/cpu-notes.md).
_ISA_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                          "AVX512_CORE_VNNI")


def cpu_flags() -> dict[str, bool]:
    """Which of ``CPU_FLAGS`` this CPU reports in /proc/cpuinfo (Linux; all False elsewhere)."""
    present: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            for line in handle:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {flag: flag in present for flag in CPU_FLAGS}


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX), Linux only.

    False as well when ``ONEDNN_MAX_CPU_ISA`` caps oneDNN below bfloat16 (for example
    ``AVX2``), so that such a cap reproduces a CPU without it.
    """
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ISA_CAPS_WITHOUT_BF16:
        return False
    flags = cpu_flags()
    return flags["avx512_bf16"] or flags["amx_bf16"]


def use_bf16(setting: str, device: torch.device) -> bool:
    """Decide whether training runs under bfloat16 autocast."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"bf16 must be 'auto', 'on' or 'off', got {setting!r}")
    if setting != "auto":
        return setting == "on"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


@dataclass
class Prediction:
    """What ``predict_details`` found for each face.

    ``points`` (N, 14, 2) normalised; ``spread`` (N, 14) each point's disagreement between
    the flip pair's two answers, in the course err's units (the mean over x and y of
    ``(100 * half the difference / side)^2``; zeros without flip TTA), measured in the
    picture's frame whatever look gave the answer; ``blur`` (N, 14) each point's
    ``heatmap_blur`` in that look; ``look`` (N,) which look gave it:
    ``FIRST``, ``ALIGNED`` (a face found turned, looked at upright) or ``PADDED`` (the
    second try on a doubted face: the picture inside a margin, then aligned).
    """

    points: np.ndarray
    spread: np.ndarray
    blur: np.ndarray
    look: np.ndarray


FIRST, ALIGNED, PADDED = 0, 1, 2
LOOK_NAMES = ("first", "aligned", "padded")


def near_border(points: torch.Tensor, margin: float = NEAR_BORDER) -> torch.Tensor:
    """(N,) True where a point lies within ``margin`` of the picture's border or beyond it:
    a face the picture may cut, whose first answer cannot reach past the border."""
    return ((points < margin) | (points > 1 - margin)).flatten(1).any(1)


def padded_view(n: int, margin: float = PAD_MARGIN) -> torch.Tensor:
    """Forward matrices (n, 2, 3) that shrink the picture about its centre into a frame with
    ``margin`` (a share of the picture's side) on every side, its border repeated there."""
    zoom = 1.0 / (1.0 + 2.0 * margin)
    return torch.tensor([[zoom, 0.0, 0.0], [0.0, zoom, 0.0]]).repeat(n, 1, 1)


def heatmap_blur(probs: torch.Tensor | None, n: int) -> torch.Tensor:
    """(n, 14) how widely each point's heatmap spreads: the standard deviation of its
    distribution, in percent of the view's side (zeros for the regression head). A face
    the network reads gives sharp maps; a picture with no face gives broad ones."""
    if probs is None:
        return torch.zeros(n, NUM_POINTS)
    probs = probs.float()
    side = probs.shape[-1]
    centres = (torch.arange(side, dtype=probs.dtype, device=probs.device) + 0.5) / side
    variance = 0
    for marginal in (probs.sum(-2), probs.sum(-1)):                  # over x, over y
        mean = (marginal * centres).sum(-1, keepdim=True)
        variance = variance + (marginal * (centres - mean) ** 2).sum(-1)
    blur = 100 * variance.sqrt()                                      # (2n or n, 14)
    return 0.5 * (blur[:n] + blur[n:]) if len(blur) > n else blur


@torch.no_grad()
def look_at(model: KeypointNet, x: torch.Tensor, matrices: torch.Tensor | None = None,
            flip_tta: bool = True, bf16: bool = False, layout: torch.memory_format = torch.contiguous_format,
            out_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One look at float pictures ``x`` (N, 3, S, S), through forward ``matrices`` (picture
    -> view of side ``out_size``, default S; None: the picture itself): the answer (N, 14,
    2) and each point's spread (N, 14), both in the picture's frame (the view's answer
    mapped back exactly, so it may lie outside the picture), and each point's
    ``heatmap_blur`` (N, 14) in the view."""
    view = x if matrices is None else warp_images(x, matrices, out_size or x.shape[-1])
    if flip_tta:
        view = torch.cat([view, flip_images(view)])
    view = view.contiguous(memory_format=layout)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        pred, probs = model(view, with_heatmaps=True)
    pred, blur = pred.float(), heatmap_blur(probs, len(x))
    if flip_tta:
        half = len(pred) // 2
        pair = torch.stack([pred[:half], flip_keypoints(pred[half:])])     # (2, N, 14, 2)
    else:
        pair = pred[None]
    if matrices is not None:
        back = invert_transform(matrices)
        pair = torch.stack([apply_transform(back, p) for p in pair])
    spread = (100.0 * (pair[0] - pair[-1]) / 2).pow(2).mean(-1)            # (N, 14)
    return pair.mean(0), spread, blur


def predict_bytes_per_image(model: KeypointNet, side: int, flip_tta: bool = True) -> int:
    """What ``predict_details`` holds for one picture of ``side`` px, as estimated: the
    feature maps of the larger of its networks (twice with the mirror) and the picture
    as float."""
    activations = model.config.estimated_activations()
    if model.refiner is not None:
        activations = max(activations, model.refiner.net.config.estimated_activations())
    return 4 * activations * (2 if flip_tta else 1) + 12 * side ** 2


def doubt_blur(side: int) -> float:
    """The heatmap blur (% of the side) above which a network of input ``side`` doubts its
    answer: ``DOUBT_BLUR`` at ``DOUBT_BLUR_SIDE``, as broad in heatmap cells at any other side."""
    return DOUBT_BLUR * DOUBT_BLUR_SIDE / side


@torch.no_grad()
def shrink_for(images: torch.Tensor, side: int) -> torch.Tensor:
    """``images`` (N, 3, S, S) resampled to ``side`` px for a network, bilinear with
    antialiasing, as training shrinks them (``dataset.shrunk``). Resampling the uint8
    pictures took about a third of the time of resampling their float copies on one
    thread, and its pixels differ from training's rounded float ones by at most one level."""
    return F.interpolate(images, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


def predict_details(model: KeypointNet, images: torch.Tensor, batch_size: int = 64,
                    flip_tta: bool = True, bf16: bool = False, second_look: bool | None = None,
                    second_try: bool = True) -> Prediction:
    """Keypoints of uint8 images (N, 3, S, S), with each point's flip spread and the look used.

    ``flip_tta`` averages with the (re-labelled) prediction on the mirrored image;
    ``bf16`` runs the backbone under bfloat16 autocast (the heatmap logits and the
    soft-argmax stay fp32). ``second_look`` (default: the model config's): a face whose
    first answer lies turned by more than ``TURNED_DEGREES`` from the mean face is
    aligned upright onto the model's mean shape (``align.align_faces``) and predicted
    again, ``EXTRA_LOOKS`` times, each look aligning by the last answer; the answer is
    mapped back exactly. Faces found upright keep their first answer: on the recipe's
    holdout, looking again at every face made the upright ones slightly worse (err 3.50
    against 3.43), while turned faces gain most from the second look and a third.

    ``second_try`` (with the second look and flip TTA): a face the answer doubts (its
    mean spread above ``DOUBT_SPREAD``, its heatmaps broader than ``doubt_blur``, or a
    point near the picture's border, where a picture that cuts the face leaves it) is
    looked at again inside a margin (``padded_view``), which lets points fall outside
    the picture, then aligned by that answer ``EXTRA_LOOKS`` times, and that answer is
    kept. On the cut copies of the recipe's validation faces, keeping it always beat
    keeping the answer whose flip pair or heatmaps agreed better (err 19.7 against 25.5
    and 20.3; all first answers: 54.4); on upright faces it changes 1 % of them.

    A model with a refiner (the cascade's second stage, ``model.refiner``) then aligns
    every face by that answer onto the refiner's frame, cut from the pictures as given
    (``images`` of side ``model.decode_side()``; the first stage sees them shrunk to its
    input side), and keeps the refiner's answer, mapped back exactly. The second try's
    faces are refined too: keeping the first stage's answer for them changed the shipped
    network's cascade by 0.005 upright and 0.1 on cut copies, while a first stage trained
    12 epochs doubted every face and its cascade refined none (bench/README.md). The
    spread and blur stay the first stage's: they describe how surely the face was found,
    which is what the confidence and the no-face check read.
    """
    model.eval()
    device = next(model.parameters()).device
    layout = memory_format_for(model)
    again = model.config.second_look if second_look is None else second_look
    retry = again and flip_tta and second_try
    refiner = model.refiner
    side = model.config.image_size
    per_image = predict_bytes_per_image(model, images.shape[-1], flip_tta)
    batch_size = max(1, min(batch_size, PREDICT_MEMORY_BYTES // per_image))   # bounded by any model file

    def look(x: torch.Tensor, matrices: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        return look_at(model, x, matrices, flip_tta, bf16, layout)

    def aligned(x: torch.Tensor, answer: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for _ in range(EXTRA_LOOKS):
            answer, spread, blur = look(x, similarity_to(answer, model.mean_shape))
        return answer, spread, blur

    points, spreads, blurs, looks = [], [], [], []
    for start in range(0, len(images), batch_size):
        part = images[start:start + batch_size]
        full = part.to(device).float().div_(255.0)
        x = full if part.shape[-1] == side else shrink_for(part, side).to(device).float().div_(255.0)
        pred, spread, blur = look(x)
        used = torch.full((len(x),), FIRST, dtype=torch.long)
        if again:
            turned = rotation_degrees(similarity_to(pred, model.mean_shape)).abs() > TURNED_DEGREES
            if bool(turned.any()):
                pred[turned], spread[turned], blur[turned] = aligned(x[turned], pred[turned])
                used[turned] = ALIGNED
        if retry:
            doubted = (spread.mean(1) > DOUBT_SPREAD) | (blur.mean(1) > doubt_blur(side)) | near_border(pred)
            if bool(doubted.any()):
                first = look(x[doubted], padded_view(int(doubted.sum())).to(device))[0]
                pred[doubted], spread[doubted], blur[doubted] = aligned(x[doubted], first)
                used[doubted] = PADDED
        if refiner is not None:
            pred = look_at(refiner.net, full, similarity_to(pred, refiner.canonical), flip_tta and refiner.flip_tta,
                           bf16, layout, refiner.net.config.image_size)[0]
        points.append(pred.double().cpu())
        spreads.append(spread.double().cpu())
        blurs.append(blur.double().cpu())
        looks.append(used)
    if not points:
        empty = np.zeros((0, NUM_POINTS))
        return Prediction(np.zeros((0, NUM_POINTS, 2)), empty, empty, np.zeros(0, dtype=np.int64))
    return Prediction(torch.cat(points).numpy(), torch.cat(spreads).numpy(), torch.cat(blurs).numpy(),
                      torch.cat(looks).numpy())


def predict(model: KeypointNet, images: torch.Tensor, batch_size: int = 64, flip_tta: bool = True,
            bf16: bool = False, second_look: bool | None = None, second_try: bool = True) -> np.ndarray:
    """Normalised keypoints (N, 14, 2) of uint8 images (N, 3, S, S): ``predict_details``'s
    points (what detection returns and training's validation measures)."""
    return predict_details(model, images, batch_size, flip_tta, bf16, second_look, second_try).points


# ---- facepoints_lib/core/progress.py ----
# A dependency-free progress bar for long loops (training, decoding, detection).
#
# In a terminal it redraws one line (``\r``); anywhere else (CI logs, captured output,
# notebooks) it prints a plain line now and then, so logs stay readable. It has the
# small part of ``tqdm``'s interface the package uses (``update``, ``set_postfix_str``,
# ``close``, use as a context manager), so callers may pass ``tqdm.auto.tqdm`` instead
# wherever a ``progress`` factory is accepted, e.g. to get a widget in JupyterLab.




def format_seconds(seconds: float) -> str:
    """``75.3`` -> ``'1:15'``; ``3725`` -> ``'1:02:05'``."""
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TextProgress:
    """Progress over ``total`` steps with elapsed time, time left and a free-text postfix."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it",
                 disable: bool | None = False, stream=None, min_interval: float = 0.5,
                 log_interval: float = 30.0, interactive: bool | None = None, **_ignored):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.disable = bool(disable)
        # redraw one line with "\r": in a terminal, or where asked (a notebook's stdout does it too)
        self.interactive = (hasattr(self.stream, "isatty") and self.stream.isatty()) if interactive is None \
            else interactive
        self.min_interval = min_interval if self.interactive else log_interval
        self.n, self.postfix = 0, ""
        self.start = self.last_print = time.monotonic()
        self._printed_fraction = 0.0
        self._printed: tuple[int, str] | None = None

    def __enter__(self) -> "TextProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def _line(self) -> str:
        elapsed = time.monotonic() - self.start
        parts = [f"{self.desc}:" if self.desc else ""]
        if self.total:
            fraction = min(self.n / self.total, 1.0)
            bar = "#" * int(20 * fraction)
            rate = self.n / elapsed if elapsed > 0 else 0.0
            left = (self.total - self.n) / rate if rate > 0 else 0.0
            parts.append(f"{100 * fraction:3.0f}% |{bar:<20}| {self.n}/{self.total} "
                         f"[{format_seconds(elapsed)}<{format_seconds(left)}, {rate:.1f} {self.unit}/s]")
        else:
            parts.append(f"{self.n} {self.unit} [{format_seconds(elapsed)}]")
        if self.postfix:
            parts.append(self.postfix)
        return " ".join(p for p in parts if p)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = time.monotonic()
        fraction = self.n / self.total if self.total else 0.0
        due = now - self.last_print >= self.min_interval
        if not self.interactive:   # plain lines: every 10% or every log_interval seconds
            due = due or fraction >= self._printed_fraction + 0.1
        if due:
            self._emit()
            self.last_print, self._printed_fraction = now, fraction

    def _emit(self, final: bool = False) -> None:
        self._printed = (self.n, self.postfix)
        if self.interactive:
            self.stream.write("\r" + self._line() + ("\n" if final else ""))
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Print the final state, unless a plain line already showed it (a redrawn line
        is finished with a newline)."""
        if not self.disable and self.n and (self.interactive or self._printed != (self.n, self.postfix)):
            self._emit(final=True)
        self.disable = True


# ---- facepoints_lib/core/metrics.py ----
# Error measures: the course's err and marks, NME, and cumulative error curves.
#
# All functions take keypoints as arrays (N, 14, 2) in the same coordinates. The course's
# err needs normalised coordinates (``schema``), or pixel ones plus the images' sizes.




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


# ---- facepoints_lib/core/confidence.py ----
# Confidence: the expected err of every answer, read from what the network already computes.
#
# ``inference.predict_details`` measures, for every point, how far the answers on the
# picture and on its mirror lie apart (the *spread*, in the course err's units) and how
# widely its heatmap spreads (the *blur*). Faces the network reads well give pairs that
# agree and sharp maps; a picture that cuts the face, a face it misreads and a picture
# with no face give pairs that disagree and broad maps. Fitted on held-out faces
# (``calibrate``: a model's validation faces upright, turned by quarter turns and cut by a
# border), a power law of the two turns them into the expected err of a face and of each
# point, and the expected err into a confidence in [0, 1]:
# ``1 / (1 + (expected_err / CONFIDENCE_HALF_ERR)^2)``, one half at err 5, the course's
# line for full marks. A picture whose maps are far broader than any held-out face's is
# flagged as looking like no face crop.
#
# The fitted numbers (``Calibration``) are stored in the model file's metadata by training.





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


# ---- facepoints_lib/core/checkpoint.py ----
# Saving and loading trained networks as plain data (``torch.load(weights_only=True)``).
#
# A checkpoint is a dict of tensors and plain Python values only:
# ``format``, ``model_config`` (``ModelConfig.to_dict()``), ``state_dict``, and
# ``metadata`` (training recipe, seed, validation figures, library versions). Nothing in it
# is a pickled object, so loading never runs code from the file.





CHECKPOINT_FORMAT = "facepoints-checkpoint-1"
_FORMAT_VERSION = re.compile(r"facepoints-checkpoint-(\d+)")
MODEL_FILENAME = "facepoints_model.pt"


class CheckpointError(ValueError):
    """A model file is missing, damaged or not a facepoints checkpoint."""


def default_model_path() -> Path:
    """``facepoints_model.pt`` in the repository root (two folders above this module), or
    beside solution.py when this code runs frozen into it."""
    here = Path(__file__).resolve().parent
    return (here.parents[1] if (here / "__init__.py").exists() else here) / MODEL_FILENAME


def library_versions() -> dict:
    """Versions that decide whether a training run can be reproduced bit for bit."""
    # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses.
    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "numpy": str(np.__version__), "machine": platform.machine()}


def save_checkpoint(model: KeypointNet, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``model`` (weights + config) and plain-data ``metadata`` to ``path``."""
    path = Path(path)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_config": model.config.to_dict(),
        "state_dict": state,
        "metadata": {**(metadata or {}), "versions": library_versions()},
    }
    if model.refiner is not None:                   # the cascade's second stage
        payload["refiner"] = model.refiner.to_dict()
    return write_payload(payload, path)


def write_payload(payload: dict, path: str | os.PathLike) -> Path:
    """Write a checkpoint's plain data to ``path``, whole or not at all.

    The archive is built in memory first and then written as plain bytes, so a full disk
    raises an ``OSError`` naming the file (``torch.save`` writing to the file itself fails
    with a ``RuntimeError: ... unexpected pos``), and the write goes through
    ``write_atomically``: never a half-written model file, no collision between two saves.
    """
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getbuffer()

    def write(target: str) -> None:
        with open(target, "wb") as out:
            out.write(data)

    return write_atomically(Path(path), write)


def save_or_rescue(model: KeypointNet, path: Path, metadata: dict, log: Callable[[str], None]) -> None:
    """Save the trained model; if that fails (a full disk), save it in the temporary folder
    instead and say where, so that the training is not lost."""
    try:
        save_checkpoint(model, path, metadata)
    except OSError as exc:
        rescue = Path(tempfile.gettempdir()) / f"facepoints_model-{time.strftime('%Y%m%d-%H%M%S')}.pt"
        try:
            save_checkpoint(model, rescue, metadata)
        except OSError:
            raise OSError(f"could not save the trained model to {path} ({exc}), nor to {rescue}") from exc
        raise OSError(f"could not save the trained model to {path} ({exc}); it was saved to {rescue} "
                      f"instead") from exc
    log(f"saved {path}")


# Largest unpacked checkpoint loaded: the weights of the largest network a config may ask
# for (model.MAX_PARAMETERS float32 values) plus 64 MB of metadata. The recipe's is 9 MB.
MAX_CHECKPOINT_BYTES = 4 * MAX_PARAMETERS + 64 * 2**20


def unpacked_bytes(path: Path) -> int | None:
    """What a checkpoint's zip archive holds once unpacked (None: not a zip archive)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def _damaged_member(path: Path) -> str | None:
    """The first member of the archive whose stored checksum (CRC-32) does not match its
    bytes, or None when all match."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        return f"? ({exc})"


def _check_archive(path: Path) -> None:
    """Refuse an archive that would unpack to more than any model needs, or whose stored
    checksums do not match its bytes: one flipped bit in a weight loads without a word
    otherwise and moves points by hundreds of pixels. A file that is not a zip archive is
    left to ``torch.load``, which refuses it."""
    unpacked = unpacked_bytes(path)
    if unpacked is None and path.stat().st_size > MAX_CHECKPOINT_BYTES:
        unpacked = path.stat().st_size       # not an archive (torch.load refuses most such files)
    if unpacked is None:
        return
    if unpacked > MAX_CHECKPOINT_BYTES:      # a compressed archive can unpack to gigabytes
        raise CheckpointError(f"{path} unpacks to {unpacked / 2**20:.0f} MB, more than any model of "
                              f"this project needs ({MAX_CHECKPOINT_BYTES / 2**20:.0f} MB)")
    damaged = _damaged_member(path)
    if damaged is not None:
        raise CheckpointError(f"{path} is damaged: the checksum of its part {damaged!r} does not "
                              f"match its contents (a changed byte, a bad disk or an incomplete copy)")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint's plain data safely (``weights_only=True``) and check its shape."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"model file is empty: {path}")
    _check_archive(path)
    try:
        # TorchVersion (a str subclass) is allowed: files written before versions were str()'d hold one.
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
        raise CheckpointError(f"cannot load model file {path} (damaged, truncated, or it holds "
                              f"objects other than weights): {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else None
        newer = _FORMAT_VERSION.fullmatch(found) if isinstance(found, str) else None
        if newer and int(newer.group(1)) > int(_FORMAT_VERSION.fullmatch(CHECKPOINT_FORMAT).group(1)):
            raise CheckpointError(f"{path} was written by a newer facepoints ({found}); this code reads "
                                  f"{CHECKPOINT_FORMAT}: update facepoints to load it")
        raise CheckpointError(f"{path} is not a facepoints checkpoint ({CHECKPOINT_FORMAT})")
    return payload


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> KeypointNet:
    """Rebuild the network stored in ``path``, in eval mode on ``device``."""
    payload = load_checkpoint(path)
    try:
        model = build_model(payload["model_config"])
        if payload.get("refiner") is not None:
            model.attach_refiner(Refiner.from_dict(payload["refiner"]))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored network config: {exc}") from exc
    _check_numbers(model, path)
    model.metadata = payload.get("metadata", {})
    return model.to(device).eval()


# Ranges a trained network's statistics lie in: pixels are scaled to [0, 1] (so are their
# mean and standard deviation; training keeps the deviation at least MIN_PIXEL_STD, see
# fit._new_model), and the mean shape lies within a few picture sides of the picture.
MIN_PIXEL_STD = 1 / 255
MAX_SHAPE_COORDINATE = 10.0


def _check_numbers(model: KeypointNet, path: Path) -> None:
    """Refuse weights that would give non-finite points: NaN or infinite values, a negative
    batch-norm variance, pixel statistics outside what [0, 1] pixels can have; then run one
    test picture through the network, which catches finite weights large enough to
    overflow."""
    state = model.state_dict()
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:   # NaN/inf weights would give NaN keypoints for every image
        raise CheckpointError(f"{path}: non-finite weights in {', '.join(bad[:3])}")
    negative = [name for name, t in state.items() if name.endswith("running_var") and bool((t < 0).any())]
    if negative:   # batch norm divides by its square root
        raise CheckpointError(f"{path}: negative batch-norm variance in {', '.join(negative[:3])}")
    nets = [("", model)] + ([("refiner's ", model.refiner.net)] if model.refiner is not None else [])
    for who, net in nets:
        std, mean = net.pixel_std.flatten(), net.pixel_mean.flatten()
        if not bool(((std >= MIN_PIXEL_STD) & (std <= 1)).all()):   # images are divided by it
            raise CheckpointError(f"{path}: {who}pixel_std must lie in [{MIN_PIXEL_STD:.4f}, 1] (pixels are "
                                  f"scaled to [0, 1]), got {std.tolist()}")
        if not bool(((mean >= 0) & (mean <= 1)).all()):
            raise CheckpointError(f"{path}: {who}pixel_mean must lie in [0, 1] (pixels are scaled to [0, 1]), "
                                  f"got {mean.tolist()}")
        if not bool((net.mean_shape.abs() <= MAX_SHAPE_COORDINATE).all()):
            raise CheckpointError(f"{path}: {who}mean_shape lies more than {MAX_SHAPE_COORDINATE:g} picture "
                                  f"sides from the picture")
        side = net.config.image_size
        probe = torch.rand((2, 3, side, side), generator=torch.Generator().manual_seed(0))
        probe[1] = 0.5                        # noise, and plain grey: pixels in [0, 1] either way
        with torch.no_grad():
            points = net.eval()(probe)
        if not bool(torch.isfinite(points).all()):
            raise CheckpointError(f"{path}: the {who}network gives non-finite points for a test picture "
                                  f"(weights large enough to overflow): the file is damaged or was altered")
    if model.refiner is not None and not bool((model.refiner.canonical.abs() <= MAX_SHAPE_COORDINATE).all()):
        raise CheckpointError(f"{path}: the refiner's frame lies more than {MAX_SHAPE_COORDINATE:g} picture "
                              f"sides from the picture")


# ---- facepoints_lib/core/config.py ----
# The training recipe and how a run executes it, as plain data.
#
# ``TrainConfig`` is the recipe: the network, the augmentation, the optimiser and its
# schedule, the seed, and the cascade's second stage (``CascadeConfig``); what decides the
# model a run gives. ``RunConfig`` is how one run
# executes it: threads, device, bfloat16, how many faces it takes and validates on, how
# often it validates, a cap on its steps. ``full_config()`` / ``full_run()`` are the
# shipped model's (README's model card); ``fast_config()`` / ``fast_run()`` the grader's
# ``fast_train`` (the same loop, smaller). Both are stored in every model file as
# ``to_dict()``.






def _check_number(owner: object, name: str, low: float, high: float = math.inf, integer: bool = False,
                  optional: bool = False, low_open: bool = False) -> None:
    """Refuse ``owner.name`` unless it is a finite number (an integer where asked) in range."""
    value = getattr(owner, name)
    if optional and value is None:
        return
    kinds = (int,) if integer else (int, float)
    if not isinstance(value, kinds) or isinstance(value, bool) or not math.isfinite(value) \
            or value < low or value > high or (low_open and value == low):
        kind = "an integer" if integer else "a number"
        bound = f"above {low:g}" if low_open else f"from {low:g}"
        raise ValueError(f"{name} must be {kind} {bound}" + (f" to {high:g}" if high < math.inf else "")
                         + f", got {value!r}")


def _check_choice(owner: object, name: str, allowed: tuple) -> None:
    if getattr(owner, name) not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {getattr(owner, name)!r}")


def _second_stage_model() -> ModelConfig:
    return ModelConfig(second_look=False)


@dataclass
class CascadeConfig:
    """The recipe of the cascade's second stage (``cascade``): a network trained only on
    faces aligned onto a tight frame, with the first stage's optimiser settings."""

    epochs: int = 76                 # passes over the aligned training faces
    zoom: float = 1.3                # the frame is the first stage's mean face magnified this much ...
    centre_y: float = 0.46           # ... about (0.5, centre_y) of the picture
    source_scale: int = 2            # crops are cut from pictures decoded at this many times the input side
    jitter: float = 3.0              # the alignment jitter: the first stage's residuals, measured on
                                     # the validation faces (robust: the typical face's), times this;
                                     # 3 beat 1, 2 and 4 (bench/README.md, "A second network")
    flip_tta: bool = False           # detection averages the second stage's answer with its mirrored
                                     # crop's: the mirror's extra pass bought little err for its work
                                     # (bench/README.md, "The shipped cascade")
    model: ModelConfig = field(default_factory=_second_stage_model)

    def to_dict(self) -> dict:
        """Plain-data form for checkpoints and result files."""
        data = asdict(self)
        data["model"] = self.model.to_dict()
        return data

    def validate(self) -> None:
        """Refuse settings of the wrong type or out of range, naming the setting."""
        self.model.validate()
        _check_number(self, "epochs", 1, integer=True)
        _check_number(self, "zoom", 0.5, 3.0)
        _check_number(self, "centre_y", 0.2, 0.8)
        _check_number(self, "source_scale", 1, 4, integer=True)
        _check_number(self, "jitter", 0, 5)
        if not isinstance(self.flip_tta, bool):
            raise ValueError(f"flip_tta must be True or False, got {self.flip_tta!r}")
        if self.model.second_look:
            raise ValueError("the second stage sees aligned faces only: its model.second_look must be False")


@dataclass
class TrainConfig:
    """The recipe: everything that decides the model a run gives; stored in the checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    epochs: int = 90                 # passes over the training faces
    batch_size: int = 64
    optimizer: str = "sgd"           # "sgd" (Nesterov momentum 0.9) or "adamw"
    lr: float = 0.05                 # peak learning rate (AdamW: 2e-3 worked best)
    weight_decay: float = 1e-4       # on convolution and linear weights only
    warmup_epochs: float = 2.0       # linear warm-up, then cosine decay to zero
    heatmap_js: float = 0.0          # weight of the heatmap-shape loss (DSNT's Jensen-Shannon term)
    heatmap_sigma: float = 1.0       # its Gaussian target's spread, in heatmap cells
    ema_decay: float = 0.998         # exponential moving average of the weights (0: off)
    flip_tta: bool = True            # validate averaged with the mirrored image's prediction (as detect does)
    seed: int = 0                    # the faces' split and subset, the weights' start, the augmentation
    cascade: CascadeConfig | None = None   # a second stage on the aligned faces (None: one network)

    def to_dict(self) -> dict:
        """Plain-data form for checkpoints and result files."""
        data = asdict(self)
        data["model"] = self.model.to_dict()
        data["cascade"] = self.cascade.to_dict() if self.cascade is not None else None
        return data

    def decode_side(self) -> int:
        """The side faces are decoded at: the network's input, or the larger pictures the
        second stage cuts its crops from."""
        if self.cascade is None:
            return self.model.image_size
        return max(self.model.image_size, self.cascade.model.image_size * self.cascade.source_scale)

    def validate(self) -> None:
        """Refuse settings of the wrong type or out of range, naming the setting (a
        ``--set batch_size=0`` ended in ZeroDivisionError, ``lr=nan`` in a TypeError)."""
        self.model.validate()
        _check_number(self, "epochs", 1, integer=True)
        _check_number(self, "batch_size", 1, integer=True)
        _check_number(self, "lr", 0, low_open=True)
        _check_number(self, "weight_decay", 0)
        _check_number(self, "warmup_epochs", 0)
        _check_number(self, "heatmap_js", 0)
        _check_number(self, "heatmap_sigma", 0, low_open=True)
        _check_number(self, "ema_decay", 0, 0.999999)
        _check_number(self, "seed", 0, integer=True)
        _check_choice(self, "optimizer", ("sgd", "adamw"))
        if self.heatmap_js and self.model.head != "heatmap":
            raise ValueError("heatmap_js needs the heatmap head")
        if not isinstance(self.flip_tta, bool):
            raise ValueError(f"flip_tta must be True or False, got {self.flip_tta!r}")
        if self.cascade is not None:
            if not isinstance(self.cascade, CascadeConfig):
                raise ValueError(f"cascade must be a CascadeConfig or None, got {self.cascade!r}")
            self.cascade.validate()


@dataclass
class RunConfig:
    """How one run executes a recipe: where and how fast it runs, which faces it takes and
    validates on. Stored in the checkpoint beside the recipe."""

    threads: int | None = None       # torch threads (None: leave torch's default)
    device: str = "auto"             # "auto" (GPU when present), "cpu", "cuda"
    bf16: str = "auto"               # bfloat16 autocast: "auto" (where the CPU computes it natively), "on", "off"
    max_images: int | None = None    # use at most this many faces (a seeded subset)
    val_size: int = 250              # faces held out for validation (a fifth of them when fewer than 5x)
    eval_every: int = 10             # epochs between validations (the last one is always run)
    max_steps: int | None = None     # stop after this many optimiser steps (the schedule is fitted to them)

    def to_dict(self) -> dict:
        """Plain-data form for checkpoints and result files."""
        return asdict(self)

    def validate(self) -> None:
        """Refuse settings of the wrong type or out of range, naming the setting."""
        _check_number(self, "threads", 1, MAX_THREADS, integer=True, optional=True)
        _check_number(self, "max_images", 2, integer=True, optional=True)
        _check_number(self, "val_size", 0, integer=True)
        _check_number(self, "eval_every", 1, integer=True)
        _check_number(self, "max_steps", 1, integer=True, optional=True)
        _check_choice(self, "bf16", ("auto", "on", "off"))
        try:
            if not isinstance(self.device, str):
                raise TypeError
            if self.device != "auto":
                torch.device(self.device)
        except (TypeError, RuntimeError):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda' (or 'cuda:N'), got {self.device!r}") from None


def first_stage_model() -> ModelConfig:
    """The shipped recipe's first network: narrower than ``ModelConfig``'s default (0.15
    against 0.30 GFLOP a forward pass), as it only has to find the face well enough for the
    second stage to align it (bench/README.md, "The full budget, both designs")."""
    return ModelConfig(stem_width=16, widths=(32, 64, 112, 192), decoder_width=48)


def full_config(**overrides) -> TrainConfig:
    """The recipe of the shipped model (see README's model card): a cascade. Its first
    network (``first_stage_model``) trains on faces of which half are turned by any angle,
    its second (``CascadeConfig``) on the faces aligned by their points; ``overrides``
    replace whole settings (``cascade=None``: the first network alone)."""
    values = dict(model=first_stage_model(), augment=AugmentConfig(full_turn_prob=0.5), cascade=CascadeConfig())
    values.update(overrides)
    return TrainConfig(**values)


def with_epochs(cfg: TrainConfig, epochs: int) -> TrainConfig:
    """``cfg`` trained for ``epochs`` of its first network, a second network keeping its
    share of them (76 of every 90 in the shipped recipe): the points of the err-vs-epochs
    curve and the demo's short run."""
    second = None if cfg.cascade is None else replace(
        cfg.cascade, epochs=max(1, round(epochs * cfg.cascade.epochs / cfg.epochs)))
    return replace(cfg, epochs=epochs, cascade=second)


def full_run(**overrides) -> RunConfig:
    """How the shipped model was trained: every face, 250 of them validating."""
    return RunConfig(**overrides)


def fast_config(**overrides) -> TrainConfig:
    """The grader's ``fast_train`` recipe: the full one, each stage 2 epochs of batches of 32."""
    values = dict(epochs=2, batch_size=32, warmup_epochs=0.5, cascade=CascadeConfig(epochs=2))
    values.update(overrides)
    return full_config(**values)


def fast_run(**overrides) -> RunConfig:
    """The grader's ``fast_train`` run: 600 faces (100 validating, after each epoch), one
    CPU thread."""
    values = dict(max_images=600, val_size=100, eval_every=1, threads=1, device="cpu")
    values.update(overrides)
    return RunConfig(**values)


# ---- facepoints_lib/core/fit.py ----
# The training loop: ``fit`` trains a network on decoded faces, validating as it goes.
#
# ``fit`` takes faces already decoded (``dataset.FaceSet``), a recipe (``TrainConfig``)
# and how to run it (``RunConfig``), and returns the weight-averaged network and one
# record per validation; ``train`` chooses the faces and saves the result. A step
# (``train_step``) augments a whole batch with tensor ops, runs the network under bfloat16
# autocast where the CPU computes it natively, and takes one optimiser step. When training
# ends and how the learning rate moves is a ``StepSchedule`` (the recipe's epochs); a
# caller may pass another schedule with the same methods (the command line's time budget
# does). A training stopped by Ctrl-C (or a SIGTERM the command line turns into
# one) raises ``TrainingInterrupted`` with the best weights so far.






class StepSchedule:
    """Training ends after ``total_steps``; the learning-rate factor (it multiplies the
    peak ``lr``) rises linearly over ``warmup_steps``, then decays to zero along a cosine.

    The loop asks a schedule ``finished(step)``, ``lr_factor(step)``, ``expected_steps(step)``
    (the progress bar's total), ``describe()`` (for the log) and ``to_dict()`` (for the
    model's metadata); the command line's time budget (``tools/budget.py``) answers from
    the clock instead.
    """

    def __init__(self, total_steps: int, warmup_steps: int):
        self.total_steps, self.warmup_steps = total_steps, max(warmup_steps, 1)

    @classmethod
    def for_recipe(cls, cfg: TrainConfig, run: RunConfig, steps_per_epoch: int) -> "StepSchedule":
        """The recipe's schedule: ``cfg.epochs`` epochs (at most ``run.max_steps`` steps)."""
        total = cfg.epochs * steps_per_epoch
        return cls(min(total, run.max_steps) if run.max_steps else total,
                   int(cfg.warmup_epochs * steps_per_epoch))

    def finished(self, step: int) -> bool:
        return step >= self.total_steps

    def describe(self) -> str:
        return f"{self.total_steps} steps"

    def expected_steps(self, step: int) -> int:
        return self.total_steps

    def to_dict(self) -> dict:
        return {"schedule": "steps", "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}

    def lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay = max(self.total_steps - self.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * (step - self.warmup_steps) / decay))


def evaluate(model: KeypointNet, faces: FaceSet, flip_tta: bool = True) -> dict:
    """Course err, NME (inter-ocular, in original pixels) and CED AUC@0.08 on ``faces``."""
    pred = predict(model, faces.images, flip_tta=flip_tta)
    true = faces.keypoints.double().numpy()
    sizes = faces.sizes.numpy()[:, None, :]
    nme = per_image_nme(pred * sizes, true * sizes)
    return {"err": course_err(pred, true), "nme": float(nme.mean()), "auc08": ced_auc(nme, 0.08)}


def validate(model: KeypointNet, val: FaceSet, flip_tta: bool = True) -> dict:
    """One validation's figures, as a history records them: ``val_err``, ``val_nme``,
    ``val_auc08`` (see ``evaluate``)."""
    return {f"val_{key}": value for key, value in evaluate(model, val, flip_tta).items()}


def _ema_update(ema: KeypointNet, model: KeypointNet, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - decay)
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)


def _param_groups(model: KeypointNet, weight_decay: float) -> list[dict]:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: KeypointNet, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimiser; weight decay on convolution and linear weights only."""
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {cfg.optimizer!r}")


def _import_dynamo_without_tmp() -> None:
    """Import ``torch._dynamo`` even where no temporary folder is writable.

    Every ``torch.optim`` optimiser imports ``torch._dynamo`` on first use (its
    ``add_param_group``, ``zero_grad`` and ``step`` are wrapped by ``torch._disable_dynamo``),
    whatever its ``foreach``/``fused`` flags. That import builds ``torch._dynamo.package.DynamoCache``
    from inductor's cache folder, by default ``tempfile.gettempdir()/torchinductor_<user>``
    (created on the spot), so with /tmp, /var/tmp and the working directory all read-only
    it raises ``FileNotFoundError: No usable temporary directory``. Eager training never
    uses that cache: in that case only, point it at the root folder (which exists, so
    nothing is created) for the import and restore the environment afterwards. Where a
    temporary folder is usable, torch's own behaviour is left alone.
    """
    if "torch._dynamo" in sys.modules or os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return
    try:
        tempfile.gettempdir()
        return
    except FileNotFoundError:
        pass
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.abspath(os.sep)
    try:
        import torch._dynamo  # noqa: F401  (the import is the point)
    finally:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)


def train_step(model: KeypointNet, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               keypoints: torch.Tensor, cfg: TrainConfig, generator: torch.Generator,
               device: torch.device, layout: torch.memory_format, bf16: bool,
               frames: torch.Tensor | None = None) -> torch.Tensor:
    """One optimiser step on a uint8 batch, augmented to the model's input side (from the
    crops ``frames`` of its pictures, when given); returns the loss."""
    images, targets = augment_batch(images, keypoints, cfg.augment, cfg.model.image_size, generator, frames)
    images = images.to(device).contiguous(memory_format=layout)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        pred, probs = model(images, with_heatmaps=True)                # (N, 14, 2), (N, 14, H, W)
    loss = training_loss(pred, probs, targets.to(device), cfg.heatmap_js, cfg.heatmap_sigma)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def measure_step_seconds(model: KeypointNet, train: FaceSet, cfg: TrainConfig, batch_size: int,
                         device: torch.device, layout: torch.memory_format, bf16: bool,
                         warmup: int = 2, timed: int = 4) -> float:
    """Seconds per training step, timed on a throwaway copy of the model.

    The copy trains on its own random numbers (the run's generator and torch's global one
    are left alone), so measuring does not change the weights a seed gives.
    """
    probe = copy.deepcopy(model)
    optimizer = make_optimizer(probe, cfg)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    index = torch.arange(min(batch_size, len(train)))
    with torch.random.fork_rng(devices=[]):
        for i in range(warmup + timed):
            if i == warmup:
                started = time.perf_counter()
            train_step(probe, optimizer, train.images[index], train.keypoints[index],
                       cfg, generator, device, layout, bf16, _frames(train, index))
    return (time.perf_counter() - started) / timed


def _frames(faces: FaceSet, index: torch.Tensor) -> torch.Tensor | None:
    return None if faces.frames is None else faces.frames[index]


def _shown_images(faces: FaceSet, side: int) -> torch.Tensor:
    """The pictures as the network is shown them unaugmented: the pictures themselves, or
    their ``frames`` cut at ``side`` px (uint8)."""
    return faces.images if faces.frames is None else cut_crops(faces.images, faces.frames, side)


STATISTICS_CHUNK = 64       # faces converted to float at a time for the pixel statistics


def pixel_statistics(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of uint8 faces (N, 3, S, S) as [0, 1] pixels.

    Summed in float64 a chunk of faces at a time, so the memory it takes does not grow
    with the faces (a float copy of every face was four times the decoded faces' size).
    """
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(images), STATISTICS_CHUNK):
        chunk = images[start:start + STATISTICS_CHUNK].double().div_(255.0)
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square_().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    variance = (squares - count * mean ** 2).clamp_min(0) / max(count - 1, 1)
    return mean.float(), variance.sqrt().float()


@dataclass
class _Trainer:
    """What one run trains with: the network and its weight average, the optimiser and
    where and how the steps run."""

    model: KeypointNet
    ema: KeypointNet                       # the weight average (the network itself when ema_decay is 0)
    optimizer: torch.optim.Optimizer
    generator: torch.Generator             # the augmentation's and the batches' random numbers
    device: torch.device
    layout: torch.memory_format
    bf16: bool
    batch_size: int
    steps_per_epoch: int


def _new_trainer(train: FaceSet, cfg: TrainConfig, run: RunConfig) -> _Trainer:
    """A fresh network holding the training faces' pixel statistics and mean shape, on
    the run's device in the memory layout it trains in (channels-last where safe), with
    its optimiser."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(run.device)
    model = build_model(cfg.model)
    mean, std = pixel_statistics(_shown_images(train, cfg.model.image_size))
    shown = train.keypoints if train.frames is None else apply_transform(train.frames, train.keypoints)
    model.set_statistics(mean, std.clamp_min(MIN_PIXEL_STD), shown.mean(0))
    layout = memory_format_for(model)
    model = model.to(device, memory_format=layout)
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema_decay > 0 else model
    _import_dynamo_without_tmp()                                  # before any torch.optim use
    batch_size = min(cfg.batch_size, len(train))
    return _Trainer(model, ema, make_optimizer(model, cfg), torch.Generator().manual_seed(cfg.seed),
                    device, layout, use_bf16(run.bf16, device), batch_size,
                    max(len(train) // batch_size, 1))             # whole batches only


def _check_fit_inputs(train: FaceSet, val: FaceSet | None, cfg: TrainConfig, run: RunConfig) -> None:
    cfg.validate()
    run.validate()
    if train.keypoints is None or len(train) == 0:
        raise ValueError("training needs at least one labelled face")
    for faces in (train, val) if val is not None else (train,):    # larger faces are resampled
        if faces.image_size < cfg.model.image_size:                  # (augmentation, predict)
            raise ValueError(f"faces are {faces.image_size} px, the model expects at least {cfg.model.image_size}")


def _train_epoch(t: _Trainer, train: FaceSet, cfg: TrainConfig, scheduler, done: Callable[[int], bool],
                 step: int, bar, postfix: str) -> tuple[int, float]:
    """One pass over the training faces in a new random order, until ``done(step)``;
    returns the step count and the mean training loss of the pass."""
    t.model.train()
    order = torch.randperm(len(train), generator=t.generator)
    total, seen = 0.0, 0
    for b in range(t.steps_per_epoch):
        if done(step):
            break
        index = order[b * t.batch_size:(b + 1) * t.batch_size]
        loss = train_step(t.model, t.optimizer, train.images[index], train.keypoints[index],
                          cfg, t.generator, t.device, t.layout, t.bf16, _frames(train, index))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {step} (loss {loss.item()})")
        scheduler.step()
        step += 1
        if t.ema is not t.model:
            _ema_update(t.ema, t.model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        total, seen = total + loss.item(), seen + 1
        bar.update(1)
        bar.set_postfix_str(f"loss {total / seen:.3f}{postfix}")
    return step, total / max(seen, 1)


@restores_torch_threads
def fit(train: FaceSet, val: FaceSet | None, cfg: TrainConfig, run: RunConfig | None = None, *,
        schedule=None, progress: Callable[..., object] = TextProgress, log: Callable[[str], None] = print,
        on_validation: Callable[[KeypointNet, dict], None] | None = None) -> tuple[KeypointNet, list[dict]]:
    """Train a network on ``train`` by the recipe ``cfg``, validating on ``val``; return
    (model, history).

    The returned model is the weight average (EMA) when ``ema_decay > 0``, in eval mode;
    its ``metadata`` records the recipe, the run and the steps taken. ``history`` has one
    dict per validation: epoch, step, train loss, ``val_err``, ``val_nme``, ``val_auc08``,
    time (``seconds``, and ``train_seconds`` without the validations). ``run`` (default
    ``RunConfig()``) sets threads, device, bfloat16, validation and a step cap;
    ``schedule(cfg, run, steps_per_epoch)`` (default ``StepSchedule.for_recipe``) gives the
    schedule: when training ends and how the learning rate moves. ``on_validation(model,
    record)`` runs at each validation and may add figures to the record (benchmarks score
    a holdout there); it never steers training.
    """
    run = run if run is not None else RunConfig()
    _check_fit_inputs(train, val, cfg, run)
    val = val if val is not None and len(val) else None
    if run.threads:
        torch.set_num_threads(run.threads)
    t = _new_trainer(train, cfg, run)
    schedule = (schedule or StepSchedule.for_recipe)(cfg, run, t.steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(t.optimizer, schedule.lr_factor)
    threads = torch.get_num_threads()
    log(f"training {count_parameters(t.model) / 1e6:.2f}M parameters on {len(train)} faces "
        f"({len(val) if val is not None else 0} for validation), batches of {t.batch_size}, "
        f"{schedule.describe()}, {t.device.type}{' bf16' if t.bf16 else ''}, {threads} thread{'s' if threads != 1 else ''}")

    def done(step: int) -> bool:
        return schedule.finished(step) or (run.max_steps is not None and step >= run.max_steps)

    history: list[dict] = []
    best: tuple[dict, dict] | None = None            # (record, EMA weights) of the best validation
    step, epoch, started, validating = 0, 0, time.monotonic(), 0.0
    bar = progress(total=schedule.expected_steps(0), desc="train", unit="step")
    try:
        while not done(step):
            epoch += 1
            last = f" (val err {history[-1]['val_err']:.2f} at epoch {history[-1]['epoch']})" if history else ""
            step, loss = _train_epoch(t, train, cfg, scheduler, done, step, bar, f", epoch {epoch}{last}")
            bar.total = schedule.expected_steps(step)
            if val is None or not (done(step) or epoch % run.eval_every == 0):
                continue
            began = time.monotonic()
            record = {"epoch": epoch, "step": step, "train_loss": loss, **validate(t.ema, val, cfg.flip_tta)}
            if on_validation is not None:
                on_validation(t.ema, record)
            validating += time.monotonic() - began
            record["seconds"] = elapsed = time.monotonic() - started
            record["train_seconds"] = elapsed - validating
            history.append(record)
            if best is None or record["val_err"] < best[0]["val_err"]:
                best = (record, copy.deepcopy(t.ema.state_dict()))
            log(f"epoch {epoch}: train loss {loss:.3f}, val err {record['val_err']:.3f}, "
                f"NME {record['val_nme']:.4f}, {format_seconds(elapsed)} elapsed, "
                f"{format_seconds(elapsed / step * (schedule.expected_steps(step) - step))} left")
    except KeyboardInterrupt as stop:                # Ctrl-C, or SIGTERM turned into one by the CLI
        bar.close()
        if best is not None:
            t.ema.load_state_dict(best[1])
        t.ema.metadata = _what_ran(cfg, run, schedule, step, t.steps_per_epoch)
        raise TrainingInterrupted(t.ema.eval(), history, step, schedule.expected_steps(step),
                                  best[0] if best is not None else None) from stop
    bar.close()
    t.ema.metadata = _what_ran(cfg, run, schedule, step, t.steps_per_epoch)
    return t.ema.eval(), history


def _what_ran(cfg: TrainConfig, run: RunConfig, schedule, steps: int, steps_per_epoch: int) -> dict:
    """The model's ``metadata``: the recipe, the run, and the steps the schedule gave."""
    return {"train_config": cfg.to_dict(), "run_config": run.to_dict(),
            "trained": {"steps": steps, "epochs": round(steps / steps_per_epoch, 3), **schedule.to_dict()}}


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped (Ctrl-C, or a SIGTERM the command line turns into this) before
    it finished. ``model`` holds the weights (EMA) of the best validation so far, or the
    latest ones where none had run yet; ``record`` that validation (None: none yet);
    ``saved_to`` the file ``train_model`` kept them in (None: nothing kept)."""

    def __init__(self, model: KeypointNet, history: list[dict], step: int, total_steps: int,
                 record: dict | None):
        super().__init__(f"training stopped at step {step} of {total_steps}")
        self.model, self.history, self.step, self.total_steps = model, history, step, total_steps
        self.record = record
        self.saved_to: Path | None = None


# ---- facepoints_lib/core/cascade.py ----
# The cascade's second stage: a network trained only on faces aligned by their points.
#
# The first network finds a face however it is turned or framed; its answer gives the
# similarity that puts the face onto a fixed frame (``canonical_frame``: the first
# network's mean face, magnified about a point, so the points get more pixels than in the
# loose course crops). A second network trained only on such aligned crops refines the
# points, and its answer maps back exactly (``inference.predict_details``), as in the
# cascades of Sun et al. (2013) and the Deep Alignment Network (Kowalski et al., 2017).
#
# Training (``train_refiner``) aligns each training face by its true points and jitters
# the alignment by a multiple (``CascadeConfig.jitter``) of how much the first network's
# answers miss it: the residual similarity between the alignment by the first network's
# answer and by the truth, measured on the validation faces (``alignment_residuals``),
# never seen in training. The robust spread measured there is the typical face's; the
# tails are wider, and a jitter three times that spread trained the best second network.
# Each training crop is resampled once from the decoded picture, jitter and alignment
# together, as detection cuts its crop (``FaceSet.frames``). The validation faces are
# aligned as detection aligns them, by the first network's answer.





MIN_RESIDUAL_FACES = 20          # fewer validation faces than this: the default jitter below
DEFAULT_RESIDUALS = {"rotation_deg": 3.0, "scale": 0.03, "shift": 0.012, "faces": 0}
MAX_RESIDUALS = {"rotation_deg": 15.0, "scale": 0.15, "shift": 0.08}   # an untrained first stage's are
                                                                       # kept to these (tiny test runs)


def canonical_frame(mean_shape: torch.Tensor, zoom: float, centre_y: float) -> torch.Tensor:
    """The second stage's frame (14, 2): ``mean_shape`` (normalised) magnified ``zoom``
    times about ``(0.5, centre_y)``."""
    centre = torch.tensor([0.5, centre_y], dtype=mean_shape.dtype)
    return (mean_shape - centre) * zoom + centre


def _robust_std(values: torch.Tensor) -> float:
    """The standard deviation a normal distribution with this median absolute deviation
    has: the spread of the typical faces, not inflated by a few missed ones."""
    values = values.double()
    return float(1.4826 * (values - values.median()).abs().median())


def alignment_residuals(points: torch.Tensor, truth: torch.Tensor, canonical: torch.Tensor) -> dict:
    """How far aligning by ``points`` (N, 14, 2, a first stage's answers) lands from
    aligning by ``truth``, as the spread of the similarity between the two crops:
    ``rotation_deg`` (degrees), ``scale`` (relative), ``shift`` (share of the crop's side),
    each a robust standard deviation over the faces, and ``faces``."""
    by_truth = similarity_to(truth.float(), canonical)
    by_answer = similarity_to(points.float(), canonical)
    residual = compose(by_answer, invert_transform(by_truth))       # truth's crop -> answer's crop
    zoom = torch.linalg.det(residual[:, :, :2].double()).sqrt()
    shift = residual[:, :, 2].double() / 2                           # grid units -> share of the side
    found = {"rotation_deg": _robust_std(rotation_degrees(residual)), "scale": _robust_std(zoom.log()),
             "shift": _robust_std(shift.flatten())}
    return {**{key: min(value, MAX_RESIDUALS[key]) for key, value in found.items()}, "faces": len(points)}


def jitter_augment(base: AugmentConfig, residuals: dict, factor: float) -> AugmentConfig:
    """The second stage's augmentation: ``base``'s mirror and photometric changes, no
    turned or cut faces, and a similarity jitter whose uniform ranges have the standard
    deviations of ``residuals`` times ``factor`` (a uniform draw on ``[-r, r]`` has
    deviation ``r / sqrt(3)``)."""
    root3 = math.sqrt(3.0) * factor
    return replace(base, rotation_deg=root3 * residuals["rotation_deg"], scale=root3 * residuals["scale"],
                   shift=root3 * residuals["shift"], full_turn_prob=0.0, cut_prob=0.0, margin=0.0)


def second_stage_recipe(cfg: TrainConfig, residuals: dict) -> TrainConfig:
    """The recipe the second stage trains by: ``cfg``'s optimiser and schedule settings,
    ``cfg.cascade``'s network and epochs, and the jitter of ``jitter_augment``."""
    cc = cfg.cascade
    return replace(cfg, model=cc.model, epochs=cc.epochs, cascade=None,
                   augment=jitter_augment(cfg.augment, residuals, cc.jitter))


def aligned_faces(faces: FaceSet, points: torch.Tensor, canonical: torch.Tensor, out_size: int) -> FaceSet:
    """``faces`` warped onto ``canonical`` by the similarity that best maps ``points``
    (N, 14, 2) onto it, at ``out_size`` px, with their true keypoints in the crop's frame:
    the second stage's validation faces, cut as detection cuts them."""
    matrices = similarity_to(points.float(), canonical)
    sizes = torch.full((len(faces), 2), float(out_size), dtype=torch.float64)
    return FaceSet(cut_crops(faces.images, matrices, out_size), apply_transform(matrices, faces.keypoints.float()),
                   sizes, list(faces.filenames))


def train_refiner(first: KeypointNet, train: FaceSet, val: FaceSet, cfg: TrainConfig,
                  run: RunConfig | None = None, *, schedule=None, progress: Callable[..., object] = TextProgress,
                  log: Callable[[str], None] = print) -> tuple[Refiner, list[dict], dict]:
    """Train the second stage behind the trained first stage ``first``.

    ``train`` and ``val`` are labelled faces decoded at ``cfg.decode_side()``. Returns the
    refiner (not yet attached: ``first.attach_refiner``), its ``fit`` history (errs in the
    aligned crop's frame) and the residuals its jitter was drawn from. ``schedule``: as
    in ``fit`` (default: the stage's epochs).
    """
    run = run if run is not None else RunConfig()
    cc = cfg.cascade
    if cc is None:
        raise ValueError("the recipe has no second stage (cfg.cascade is None)")
    canonical = canonical_frame(first.mean_shape.detach().float().cpu(), cc.zoom, cc.centre_y)
    side = cc.model.image_size
    found = None
    if val is not None and len(val) >= 1:
        found = torch.from_numpy(predict(first, val.images)).float()
    if found is not None and len(val) >= MIN_RESIDUAL_FACES:
        residuals = alignment_residuals(found, val.keypoints, canonical)
        log(f"first stage's alignment residuals on {len(val)} validation faces: rotation "
            f"{residuals['rotation_deg']:.2f} deg, scale {100 * residuals['scale']:.2f} %, "
            f"shift {100 * residuals['shift']:.2f} % of the side (robust standard deviations)")
    else:
        residuals = dict(DEFAULT_RESIDUALS)
        log(f"fewer than {MIN_RESIDUAL_FACES} validation faces: the second stage's jitter is the default one")
    recipe = second_stage_recipe(cfg, residuals)
    train_aligned = replace(train, frames=similarity_to(train.keypoints.float(), canonical))   # cut per batch
    val_aligned = aligned_faces(val, found, canonical, side) if found is not None else None
    net, history = fit(train_aligned, val_aligned, recipe, run, schedule=schedule, progress=progress, log=log)
    refiner = Refiner(net, cc.source_scale, cc.flip_tta)
    refiner.canonical.copy_(canonical)
    return refiner.to(next(first.parameters()).device), history, residuals


# ---- facepoints_lib/core/train.py ----
# Training from a folder: ``choose_faces`` picks the training and validation faces of a
# gt table, ``train_model`` decodes and trains them (the loop itself is ``fit.fit``), and
# the course's ``train_detector`` calls both.
#
# ``train_detector(train_gt, train_img_dir, fast_train=...)`` is the course's entry point.
# Both modes run the same code: ``fast_train=True`` only swaps in a smaller recipe and run
# (``config.fast_config``, ``config.fast_run``: a subset of the faces, few steps, one
# thread, CPU) and writes nothing; ``fast_train=False`` trains ``config.full_config`` and
# saves ``facepoints_model.pt``. The recipe is in ``config``, the loss in ``losses`` and
# prediction in ``inference``.






def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning raised in this module at the first caller
    outside it (the user's line, whether it called ``train_detector`` or ``train_model``;
    the thread-restoring wrapper of ``inference`` in between is skipped too)."""
    ours = {__name__, restores_torch_threads.__module__}
    frame, level = sys._getframe(2), 2          # 1: the function that warns
    while frame.f_back is not None and frame.f_globals.get("__name__") in ours:
        frame, level = frame.f_back, level + 1  # (the outermost frame, at worst: a script's own line)
    return level


@dataclass
class FaceChoice:
    """The faces one run trains and validates on (``choose_faces``), those the exclusion
    list left out, and their keypoint table."""

    gt: dict
    img_dir: Path
    train_names: list[str]
    val_names: list[str]
    excluded: list[str] = field(default_factory=list)


@dataclass
class TrainingRun:
    """What ``train_model`` did: the model (EMA weights, eval mode), one record per
    validation (see ``fit``), the faces it trained and validated on, those left out, and
    the model file it wrote (None when it wrote none)."""

    model: KeypointNet
    history: list[dict]
    train_names: list[str]
    val_names: list[str]
    excluded: list[str] = field(default_factory=list)
    model_path: Path | None = None


def _check_inputs(train_gt, train_img_dir) -> tuple[dict, Path]:
    """The gt table as a dict and the image folder, with clear errors for the wrong kinds."""
    if not isinstance(train_gt, (dict, str, os.PathLike)):
        raise TypeError(f"train_gt must be a dict {{filename: 28 coordinates}} or the path of a "
                        f"gt.csv, got {type(train_gt).__name__}")
    if not isinstance(train_img_dir, (str, os.PathLike)):
        raise TypeError(f"train_img_dir must be a folder path, got {type(train_img_dir).__name__}")
    gt = check_gt_table(train_gt, "train_gt") if isinstance(train_gt, dict) else read_gt(train_gt)
    img_dir = Path(train_img_dir)
    if not img_dir.is_dir():
        raise NotADirectoryError(f"training image folder not found: {img_dir}")
    return gt, img_dir


def validation_size(faces: int, run: RunConfig) -> int:
    """How many of ``faces`` (after ``run.max_images``) validate: ``run.val_size``, or a
    fifth of them when there are fewer than five times as many (the rest train)."""
    faces = min(faces, run.max_images) if run.max_images else faces
    if faces < 5 * run.val_size:
        return min(run.val_size, max(faces // 5, 1))
    return run.val_size


def choose_faces(train_gt, train_img_dir, run: RunConfig, seed: int = 0, exclude: Sequence[str] = (),
                 log: Callable[[str], None] = print) -> FaceChoice:
    """The faces of a labelled folder one run trains and validates on.

    ``train_gt`` is ``{filename: 28 coordinates}`` or the path of a gt.csv. Rows for files
    missing from the folder are dropped with a warning; a malformed table raises
    ``GtFormatError``. ``exclude``: file names to leave out (faces whose labels look
    wrong, see notebook 01's label audit). Then at most ``run.max_images`` faces (a subset
    seeded by ``seed``), of which ``run.val_size`` validate (a fifth of them when there
    are fewer than five times as many), split by ``seed``.
    """
    gt, img_dir = _check_inputs(train_gt, train_img_dir)
    listed = set(gt)
    missing = sorted(name for name in gt if not (img_dir / name).is_file())
    if missing:
        warnings.warn(f"{len(missing)} files listed in the keypoint table are not in {img_dir} "
                      f"and are left out: {', '.join(missing[:5])}", stacklevel=_caller_stacklevel())
        left_out = set(missing)                                   # one set: linear in the rows
        gt = {name: coords for name, coords in gt.items() if name not in left_out}
    if isinstance(exclude, (str, os.PathLike)):
        raise TypeError("exclude must be a list of file names, not a single name")
    unmatched = sorted(set(exclude) - listed)
    if unmatched:         # a typo, another data set's list, or a name the table spells otherwise
        warnings.warn(f"{len(unmatched)} names in the exclusion list match no face in the keypoint "
                      f"table and leave nothing out: {', '.join(map(repr, unmatched[:5]))}",
                      stacklevel=_caller_stacklevel())
    excluded = sorted(set(exclude) & set(gt))
    if excluded:
        log(f"leaving out {len(excluded)} faces named in the exclusion list")
        gt = {name: coords for name, coords in gt.items() if name not in set(excluded)}
    if len(gt) < 2:
        raise ValueError(f"need at least 2 labelled images in {img_dir}, found {len(gt)}")
    names = sorted(gt)
    if run.max_images and len(names) > run.max_images:
        keep = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed))
        names = sorted(names[i] for i in keep[:run.max_images].tolist())
    val_size = validation_size(len(names), run)
    if val_size < run.val_size:
        log(f"only {len(names)} faces: validating on {val_size} of them (val_size={run.val_size} would leave "
            f"{max(len(names) - run.val_size, 1)} to train on)")
    train_names, val_names = split_names(names, val_size, seed)
    return FaceChoice(gt, img_dir, train_names, val_names, excluded)


@restores_torch_threads
def train_model(train_gt, train_img_dir, cfg: TrainConfig, run: RunConfig | None = None, *,
                model_path: str | Path | None = None, schedule=None,
                progress: Callable[..., object] = TextProgress, log: Callable[[str], None] = print,
                on_validation: Callable[[KeypointNet, dict], None] | None = None,
                exclude: Sequence[str] = ()) -> TrainingRun:
    """Train ``cfg`` on the labelled faces of a folder; save the model to ``model_path`` if given.

    The faces are ``choose_faces``'s (``train_gt``, ``exclude`` and ``run`` as there); an
    unreadable listed image raises ``ImageReadError``. With validation faces, the trained
    model's confidence is calibrated on them at the end (``confidence.calibrate``) and
    stored with it (``model.metadata["calibration"]``); the model file records the faces
    and the exclusions too. ``schedule`` and ``on_validation``: see ``fit``. A recipe with a
    second stage (``cfg.cascade``) decodes the faces at ``cfg.decode_side()``, trains the
    first network on them shrunk to its input, then the second behind it
    (``cascade.train_refiner``; ``schedule`` is asked once per stage).
    """
    run = run if run is not None else RunConfig()
    cfg.validate()                                                # before any image is decoded
    run.validate()
    path = Path(model_path) if model_path is not None else None
    if path is not None:
        check_writable(path, "model file")                      # before any training is spent on it
    faces = choose_faces(train_gt, train_img_dir, run, cfg.seed, exclude, log)
    if run.threads:
        torch.set_num_threads(run.threads)
    with progress(total=len(faces.train_names) + len(faces.val_names), desc="decode", unit="img") as bar:
        train_set = load_faces(faces.img_dir, cfg.decode_side(), faces.gt, faces.train_names, bar.update)
        val_set = load_faces(faces.img_dir, cfg.decode_side(), faces.gt, faces.val_names, bar.update)
    about = {"seed": cfg.seed, "train_images": len(train_set), "val_images": len(val_set),
             "val_names": list(val_set.filenames), "excluded": faces.excluded}
    try:
        model, history = fit(shrunk(train_set, cfg.model.image_size), shrunk(val_set, cfg.model.image_size),
                             cfg, run, schedule=schedule, progress=progress, log=log, on_validation=on_validation)
        if cfg.cascade is not None:
            model.metadata["cascade"] = _second_stage(model, history, train_set, val_set, cfg, run, schedule,
                                                      progress, log)
    except TrainingInterrupted as stop:
        if path is not None and stop.step > 0:       # keep what was trained, beside the model file
            _keep_interrupted(stop, path, about, log)
        raise
    if len(val_set) >= 2:                 # the confidence of detect_details, fitted on unseen faces
        calibration = calibrate(fold_batch_norm(model), val_set, cfg.seed).to_dict()   # as detect runs it
        model.metadata = {**model.metadata, "calibration": calibration}
        log(f"confidence calibrated on {calibration['faces']} views of the validation faces")
    if path is not None:
        save_or_rescue(model, path, {**model.metadata, "history": history, **about,
                                      "calibration": model.metadata.get("calibration")}, log)
    return TrainingRun(model, history, faces.train_names, faces.val_names, faces.excluded, path)


def _second_stage(first: KeypointNet, history: list[dict], train_set: FaceSet, val_set: FaceSet,
                  cfg: TrainConfig, run: RunConfig, schedule, progress, log: Callable[[str], None]) -> dict:
    """Train the cascade's second stage behind ``first`` and attach it; returns what the
    model file records of it. A second stage that makes the validation faces worse than
    the first stage alone (a budget too short for it: 1.5 minutes of ``--minutes`` gave
    it one step) is left off, and the record says so (``kept``). Stopped, it leaves the
    first stage alone to be kept."""
    log(f"second stage: {cfg.cascade.epochs} epochs on the faces aligned by their points")
    try:
        refiner, stage_history, residuals = train_refiner(first, train_set, val_set, cfg, run, schedule=schedule,
                                                          progress=progress, log=log)
    except TrainingInterrupted as stop:
        stop.model, stop.record = first, (history[-1] if history else None)
        raise
    first.attach_refiner(refiner)
    record = {"residuals": residuals, "history": stage_history, "kept": True}
    if len(val_set) and history:
        record["val_err_first_stage"] = history[-1]["val_err"]
        record["val_err"] = evaluate(first, val_set)["err"]
        log(f"cascade: val err {record['val_err']:.3f} (first stage alone {record['val_err_first_stage']:.3f})")
        if record["val_err"] > record["val_err_first_stage"]:      # too short a training for the second stage
            first.attach_refiner(None)
            record["kept"] = False
            log("warning: the second stage made the validation faces worse, so the model keeps the first "
                "stage alone (a longer training, or a larger --minutes budget, gives the second stage its share)")
    return record


def interrupted_path(model_path: Path) -> Path:
    """Where a stopped training keeps its model: ``NAME.interrupted.pt`` beside ``NAME.pt``
    (the model file itself, and whatever it held before, stay as they were)."""
    return model_path.with_name(f"{model_path.stem}.interrupted{model_path.suffix or '.pt'}")


def _keep_interrupted(stop: TrainingInterrupted, path: Path, about: dict, log: Callable[[str], None]) -> None:
    """Save a stopped training's best model so far (see ``TrainingInterrupted``) beside
    the model file, so that it can be used (it has no confidence calibration: see
    ``facepoints calibrate``). A failure to save it is reported, not raised over the stop."""
    keep = interrupted_path(path)
    where = (f"best validation so far: epoch {stop.record['epoch']}, val err {stop.record['val_err']:.3f}"
             if stop.record else f"no validation yet; the weights at step {stop.step}")
    try:
        save_checkpoint(stop.model, keep, {**stop.model.metadata, "history": stop.history, **about,
                                           "calibration": None,
                                           "interrupted": {"step": stop.step, "total_steps": stop.total_steps}})
    except OSError as exc:
        log(f"training stopped at step {stop.step} of {stop.total_steps}; its model could not be kept: {exc}")
        return
    stop.saved_to = keep
    log(f"training stopped at step {stop.step} of {stop.total_steps}: kept the model ({where}) in {keep}")


def train_detector(train_gt, train_img_dir, fast_train: bool = True, *,
                   config: TrainConfig | None = None, run: RunConfig | None = None,
                   model_path: str | Path | None = None, schedule=None,
                   progress: Callable[..., object] = TextProgress,
                   log: Callable[[str], None] = print, exclude: Sequence[str] = ()) -> KeypointNet:
    """Train a keypoint detector on the course's data and return it (in eval mode).

    The course's interface: ``train_gt`` is ``{filename: 28 coordinates}`` (as the course's
    run.py reads it) or the path of a gt.csv; ``train_img_dir`` the folder of the images.
    With ``fast_train=True`` a short run on one CPU thread checks that training works and
    writes nothing; with ``fast_train=False`` the full recipe runs and the model is saved
    to ``model_path`` (default: ``facepoints_model.pt`` beside the code). ``config`` and
    ``run`` replace the recipe and the run; the rest as in ``train_model``, which returns
    the history too (so does this model's ``metadata["history"]``).
    """
    if not isinstance(fast_train, bool):
        raise TypeError(f"fast_train must be True or False, got {fast_train!r}")
    cfg = config if config is not None else (fast_config() if fast_train else full_config())
    run = run if run is not None else (fast_run() if fast_train else full_run())
    path = None if fast_train else (model_path if model_path is not None else default_model_path())
    result = train_model(train_gt, train_img_dir, cfg, run, model_path=path, schedule=schedule,
                         progress=progress, log=log, exclude=exclude)
    result.model.metadata["history"] = result.history
    return result.model


# ---- facepoints_lib/core/detect.py ----
# Detection: ``detect(model_filename, test_img_dir)``, the course's second entry point,
# and ``detect_details``, the same with a confidence for every face and every point.
#
# Images are decoded and resized a chunk at a time, so memory stays bounded however many
# images the folder holds; predictions are mapped back to each image's original pixels
# (points may lie outside the picture, where a crop cut the face). Unreadable images are
# reported (one warning naming them) and left out of the result; every readable image gets
# 28 numbers ``x1, y1, ..., x14, y14``.





DETECT_CHUNK = 256          # images decoded at a time: ~7 MB of uint8 at 96 px
CALLER = 4                  # the stacklevel of the line that called detect or detect_details (above
                            # _detect_chunks, the function itself and restores_torch_threads' wrapper)


@dataclass
class FaceConfidence:
    """How far to trust one picture's answer (``detect_details``): the expected err of the
    face and its confidence in [0, 1] (1: trust it), each point's confidence (14,),
    whether the picture looks like no face crop, which look gave the answer, and the
    two signals behind it (the face's mean flip spread and heatmap blur)."""

    expected_err: float
    confidence: float
    point_confidence: np.ndarray
    no_face: bool
    look: str
    spread: float
    blur: float


def _check_arguments(model_filename, test_img_dir, filenames, threads, chunk) -> Path:
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                or not 1 <= threads <= MAX_THREADS):
        raise ValueError(f"threads must be None or an integer from 1 to {MAX_THREADS}, got {threads!r}")
    for value, what in ((model_filename, "model_filename"), (test_img_dir, "test_img_dir")):
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{what} must be a path (str or os.PathLike), got {type(value).__name__}")
    if isinstance(filenames, (str, os.PathLike)):
        raise TypeError("filenames must be a list of file names, not a single name")
    img_dir = Path(test_img_dir)
    if not img_dir.is_dir():
        raise NotADirectoryError(f"test image folder not found: {img_dir}")
    return img_dir


def _detect_chunks(model, img_dir: Path, names: list[str], chunk: int, flip_tta: bool, bf16: str,
                   device: str, second_look: bool | None, progress,
                   second_try: bool = True) -> Iterator[tuple[list[str], np.ndarray, Prediction]]:
    """Yield ``(names, points in pixels (n, 14, 2), Prediction)`` a chunk at a time; one
    warning at the end names the pictures that could not be read."""
    if not names:
        warnings.warn(f"{img_dir}: no images to detect keypoints in", stacklevel=CALLER)
    low_precision = use_bf16(bf16, torch.device(device))
    failed: list[str] = []
    bar = progress(total=len(names), desc="detect", unit="img") if progress else None
    for batch_names, images, sizes in iter_image_chunks(
            img_dir, model.decode_side(), chunk, names,
            on_error=lambda name, exc: failed.append(f"{name} ({exc})")):
        found = predict_details(model, images, flip_tta=flip_tta, bf16=low_precision, second_look=second_look,
                                second_try=second_try)
        pixels = normalized_to_pixels(torch.from_numpy(found.points), sizes).numpy()
        broken = [name for name, p in zip(batch_names, pixels) if not np.isfinite(p).all()]
        if broken:       # load_model's checks passed, yet the weights overflow on these pictures
            raise CheckpointError(f"the model gives non-finite points for {len(broken)} pictures "
                                  f"({', '.join(broken[:3])}): its weights are damaged; nothing was returned")
        yield batch_names, pixels, found
        if bar is not None:
            bar.update(len(batch_names))
    if bar is not None:
        bar.close()
    if failed:
        warnings.warn(f"{len(failed)} of {len(names)} images could not be read and have no "
                      f"prediction: {'; '.join(failed[:5])}", stacklevel=CALLER)


def _prepare(model_filename, test_img_dir, filenames, threads, chunk, device):
    img_dir = _check_arguments(model_filename, test_img_dir, filenames, threads, chunk)
    names = list(filenames) if filenames is not None else list_images(img_dir)
    if threads:
        torch.set_num_threads(threads)
    model = fold_batch_norm(load_model(model_filename, device))      # same function, less work
    return model, img_dir, names


@restores_torch_threads
def detect(model_filename: str | os.PathLike, test_img_dir: str | os.PathLike, *,
           filenames: Sequence[str] | None = None, flip_tta: bool = True,
           device: str = "cpu", threads: int | None = None, chunk: int = DETECT_CHUNK,
           bf16: str = "auto", second_look: bool | None = None,
           progress: Callable[..., object] | None = None) -> dict[str, np.ndarray]:
    """Find the 14 keypoints in every image of ``test_img_dir``.

    Returns ``{filename: np.ndarray of 28 float64}`` in the original image's pixels
    (``x1, y1, ..., x14, y14``). ``filenames`` restricts detection to those files of
    the folder. ``flip_tta`` averages with the prediction on the mirrored image.
    ``threads`` sets torch's CPU threads (None: leave as is). ``bf16`` ("auto", "on",
    "off") runs the backbone in bfloat16 where the CPU computes it natively (the
    logits and soft-argmax stay fp32; on the holdout it changed err by < 0.001).
    ``second_look`` (default: the model's setting) looks again, aligned upright, at the
    faces the first look finds turned, and a second time, inside a margin, at the faces
    it doubts (see ``inference.predict_details``); False skips both. ``progress`` is an
    optional progress-bar factory (``TextProgress`` or ``tqdm``).
    """
    model, img_dir, names = _prepare(model_filename, test_img_dir, filenames, threads, chunk, device)
    results: dict[str, np.ndarray] = {}
    for batch_names, pixels, _ in _detect_chunks(model, img_dir, names, chunk, flip_tta, bf16, device,
                                                 second_look, progress):
        for name, points in zip(batch_names, pixels):
            results[name] = points.reshape(-1).astype(np.float64)
    return results


def model_calibration(model, model_filename) -> Calibration:
    """The confidence calibration stored in a loaded model's file; ``CheckpointError`` when
    it has none (a file trained before calibration existed) or it is malformed."""
    stored = getattr(model, "metadata", {}).get("calibration")
    if stored is None:
        raise CheckpointError(f"{model_filename} holds no confidence calibration (trained before it "
                              f"existed): run `facepoints calibrate {model_filename} DATA` once")
    try:
        return Calibration.from_dict(stored)
    except ValueError as exc:
        raise CheckpointError(f"{model_filename}: {exc}") from None


@restores_torch_threads
def detect_details(model_filename: str | os.PathLike, test_img_dir: str | os.PathLike, *,
                   filenames: Sequence[str] | None = None, device: str = "cpu",
                   threads: int | None = None, chunk: int = DETECT_CHUNK, bf16: str = "auto",
                   progress: Callable[..., object] | None = None, second_try: bool = True,
                   ) -> tuple[dict[str, np.ndarray], dict[str, FaceConfidence]]:
    """``detect`` with a confidence: ``(points, confidences)``, both keyed by file name.

    The points are ``detect``'s (flip TTA and every look on); each ``FaceConfidence``
    holds the expected err of that face, read from how much the flip pair's answers
    disagree and how broad the heatmaps are, through the calibration stored in the model
    file (see ``confidence``). ``second_try=False`` leaves out the second try on the
    faces the first answer doubts (for measuring what it buys).
    """
    model, img_dir, names = _prepare(model_filename, test_img_dir, filenames, threads, chunk, device)
    cal = model_calibration(model, model_filename)
    results: dict[str, np.ndarray] = {}
    trust: dict[str, FaceConfidence] = {}
    for batch_names, pixels, found in _detect_chunks(model, img_dir, names, chunk, True, bf16, device,
                                                     None, progress, second_try):
        face_err, point_err = expected_err(found.spread, found.blur, cal)
        face_conf, point_conf = confidence(face_err), confidence(point_err)
        no_face = looks_like_no_face(found.blur, cal)
        for i, name in enumerate(batch_names):
            results[name] = pixels[i].reshape(-1).astype(np.float64)
            trust[name] = FaceConfidence(float(face_err[i]), float(face_conf[i]), point_conf[i],
                                         bool(no_face[i]), LOOK_NAMES[int(found.look[i])],
                                         float(found.spread[i].mean()), float(found.blur[i].mean()))
    return results, trust


# ---- facepoints_lib/core/grader.py ----
# A local grader that does what the course's ``run.py`` does, and a bit more.
#
# Two folder layouts are understood:
#
# * **The course's tests folder**: ``NN_name_input/{train,test}`` beside ``NN_name_gt/``
#   (``gt.csv`` and ``img_shapes.csv``), one pair per test. For each test: fast-train on
#   ``train/`` (to prove training works in the grader's limits), detect ``test/images``
#   with the model file, and compare with the hidden ``gt.csv``.
# * **A plain ``train/`` folder** (``gt.csv`` + ``images/``): a seeded holdout is split
#   off; fast training uses the rest, detection runs on the holdout.
#
# The err is the course's (``metrics.course_err`` on the stored image sizes) and the mark
# its table. Note that a model trained on the faces it is graded on scores too well: use
# a holdout the model never saw (``facepoints bench`` does) for an honest figure.






def compute_err(detected: dict[str, np.ndarray], gt: dict[str, np.ndarray],
                img_shapes: dict[str, tuple[int, int]]) -> float:
    """The course's err of ``detected`` against ``gt``; shapes are ``(n_rows, n_cols)``.

    Every file of ``gt`` must have a detection and a shape; a missing one is an error
    that names it (the course counts it as a failed test).
    """
    names = sorted(gt)
    if not names:
        raise ValueError("no ground-truth rows to grade against")
    for table, what in ((detected, "detection"), (img_shapes, "image shape")):
        missing = [name for name in names if name not in table]
        if missing:
            raise KeyError(f"{len(missing)} files have no {what}: {', '.join(missing[:5])}")
    pred = np.stack([np.asarray(detected[n], dtype=np.float64).reshape(-1, 2) for n in names])
    true = np.stack([np.asarray(gt[n], dtype=np.float64).reshape(-1, 2) for n in names])
    sizes = np.array([(img_shapes[n][1], img_shapes[n][0]) for n in names], dtype=np.float64)
    err = float(per_image_err(pred, true, sizes).mean())
    if not np.isfinite(err):          # a non-finite detection or answer: no mark can be given
        raise ValueError(f"the err is {err}: a detection or an answer is not a finite number")
    return err


def find_course_tests(tests_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Pairs ``(NN_*_input, NN_*_gt)`` of a course tests folder, sorted by name.

    An input folder without its ``_gt`` folder is an error (``FileNotFoundError`` naming
    it), not a test skipped without a word.
    """
    tests_dir = Path(tests_dir)
    pairs, orphans = [], []
    for input_dir in sorted(tests_dir.glob("*_input")):
        gt_dir = input_dir.with_name(input_dir.name[: -len("_input")] + "_gt")
        if input_dir.is_dir():
            (pairs if gt_dir.is_dir() else orphans).append((input_dir, gt_dir))
    if orphans:
        raise FileNotFoundError(f"{len(orphans)} test input folders have no answers folder beside them, "
                                f"so they cannot be scored: " +
                                ", ".join(f"{i.name} (no {g.name})" for i, g in orphans[:5]))
    return pairs


def _grader_fast_train(gt: dict, img_dir: Path, log: Callable[[str], None]) -> dict:
    """The course grader's check that training runs: ``train_detector(gt, img_dir,
    fast_train=True)``, called exactly as the course calls it; returns its time and the
    validation err of the small model it trains (not the one scored)."""
    started = time.monotonic()
    history = train_detector(gt, img_dir, fast_train=True).metadata["history"]
    seconds = time.monotonic() - started
    val_err = history[-1]["val_err"] if history else float("nan")
    log(f"fast_train (the grader's check that training runs; it trains a small model of its own, "
        f"not the one scored here): {format_seconds(seconds)} ({seconds:.1f} s), its validation err {val_err:.3f}")
    return {"fast_train_seconds": seconds, "fast_train_val_err": val_err}


def grade_course_tests(tests_dir: str | os.PathLike, model_path: str | os.PathLike | None = None, *,
                       fast_train: bool = True, output_dir: str | os.PathLike | None = None,
                       log: Callable[[str], None] = print) -> list[dict]:
    """Run every test of a course tests folder; return one result dict per test."""
    pairs = find_course_tests(tests_dir)
    if not pairs:
        raise FileNotFoundError(f"no NN_*_input / NN_*_gt test pairs in {tests_dir}")
    model_path = Path(model_path) if model_path is not None else default_model_path()
    results = []
    for input_dir, gt_dir in pairs:
        log(f"== {input_dir.name}")
        result: dict = {"test": input_dir.name}
        if fast_train:
            train_dir = input_dir / "train"
            result.update(_grader_fast_train(read_gt(train_dir / "gt.csv"), train_dir / "images", log))
        started = time.monotonic()
        detected = detect(model_path, input_dir / "test" / "images")
        result["detect_seconds"] = time.monotonic() - started
        if output_dir is not None:
            out = Path(output_dir) / input_dir.name
            out.mkdir(parents=True, exist_ok=True)
            write_gt(detected, out / "output.csv")
        err = compute_err(detected, read_gt(gt_dir / "gt.csv"), read_img_shapes(gt_dir / "img_shapes.csv"))
        result.update(err=err, mark=course_mark(err), images=len(detected))
        log(f"{input_dir.name}: err {err:.4f}, mark {result['mark']}")
        results.append(result)
    return results


def grade_train_folder(train_dir: str | os.PathLike, model_path: str | os.PathLike | None = None, *,
                       holdout: int = 500, seed: int = 0, fast_train: bool = True,
                       log: Callable[[str], None] = print) -> dict:
    """Grade on a plain ``train/`` folder: fast-train on all but a seeded holdout, detect the holdout."""
    train_dir = Path(train_dir)
    gt = read_gt(train_dir / "gt.csv")
    img_dir = train_dir / "images"
    rest, held = split_names(sorted(gt), holdout, seed)
    result: dict = {"test": train_dir.name, "holdout": len(held)}
    if fast_train:
        result.update(_grader_fast_train({n: gt[n] for n in rest}, img_dir, log))
    model_path = Path(model_path) if model_path is not None else default_model_path()
    started = time.monotonic()
    detected = detect(model_path, img_dir, filenames=held)
    result["detect_seconds"] = time.monotonic() - started
    shapes_file = train_dir / "img_shapes.csv"
    if shapes_file.is_file():
        shapes = read_img_shapes(shapes_file)
    else:
        shapes = {}
        for name in held:
            width, height = read_image_size(img_dir / name)
            shapes[name] = (height, width)
    err = compute_err(detected, {n: gt[n] for n in held}, shapes)
    result.update(err=err, mark=course_mark(err), images=len(detected))
    log(f"{train_dir.name} holdout of {len(held)}: err {err:.4f}, mark {result['mark']} "
        f"(detect {result['detect_seconds']:.1f} s)")
    seen, exact = _faces_seen(model_path, held, len(gt) - len(held))
    if seen:
        result["holdout_faces_seen"] = seen
        log(f"NOTE: the model trained on {'' if exact else 'at least '}{seen} of these {len(held)} faces, "
            f"so this err flatters it; "
            f"`facepoints bench` trains without the holdout and gives an honest figure")
    return result


def _faces_seen(model_path: Path, held: list[str], outside: int) -> tuple[int, bool]:
    """How many holdout faces the model trained on, as far as its file tells, and whether
    that count is exact: all but its recorded validation faces when it trained on more
    faces than lie outside the holdout (without that record, at least the excess)."""
    try:
        meta = load_checkpoint(model_path).get("metadata", {})
    except (OSError, ValueError, RuntimeError):
        return 0, True
    trained = int(meta.get("train_images", 0) or 0)
    if trained <= outside:
        return 0, True
    kept_out = set(meta.get("val_names", []))
    if kept_out:
        return sum(1 for name in held if name not in kept_out), True
    return min(trained - outside, len(held)), False


def grade(data_dir: str | os.PathLike, model_path: str | os.PathLike | None = None, *,
          holdout: int = 500, seed: int = 0, fast_train: bool = True,
          log: Callable[[str], None] = print) -> list[dict]:
    """Grade ``data_dir``, whichever of the two layouts it has (see the module docstring)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise NotADirectoryError(f"data folder not found: {data_dir}")
    if (data_dir / "gt.csv").is_file() and (data_dir / "images").is_dir():
        return [grade_train_folder(data_dir, model_path, holdout=holdout, seed=seed,
                                   fast_train=fast_train, log=log)]
    if find_course_tests(data_dir):
        return grade_course_tests(data_dir, model_path, fast_train=fast_train, log=log)
    raise FileNotFoundError(f"{data_dir} is neither a train folder (gt.csv + images/) nor a "
                            f"course tests folder (NN_*_input + NN_*_gt)")


def grader_main(argv: Sequence[str] | None = None) -> int:
    """``python solution.py DATA_DIR``: the local grader as a script."""
    parser = argparse.ArgumentParser(
        prog="solution.py",
        description="Grade the facial keypoint detector locally, as the course's run.py does: "
                    "fast-train on the training part, detect with the model file, print err and mark.")
    parser.add_argument("data_dir", help="a course tests folder (NN_*_input + NN_*_gt) "
                                         "or a train folder (gt.csv + images/)")
    parser.add_argument("--model", default=None,
                        help=f"model file (default: {MODEL_FILENAME} beside the code)")
    parser.add_argument("--holdout", type=int, default=500,
                        help="faces held out of a train folder for grading (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the holdout split")
    parser.add_argument("--no-fast-train", action="store_true",
                        help="skip the fast training run, only detect and score")
    parser.add_argument("--output-dir", default=None,
                        help="write each course test's detections as output.csv here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        data_dir = Path(args.data_dir)
        if (data_dir / "gt.csv").is_file() or not find_course_tests(data_dir):
            results = grade(data_dir, args.model, holdout=args.holdout, seed=args.seed,
                            fast_train=not args.no_fast_train)
        else:
            results = grade_course_tests(data_dir, args.model, fast_train=not args.no_fast_train,
                                         output_dir=args.output_dir)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mean_err = float(np.mean([r["err"] for r in results]))
    print(f"err {mean_err:.4f}, mark {course_mark(mean_err)}, "
          f"{len(results)} test(s), {time.monotonic() - started:.1f} s, torch {torch.__version__}")
    return 0


# ---- entry point ----
if __name__ == "__main__":
    raise SystemExit(grader_main())
