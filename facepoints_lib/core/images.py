"""Finding and decoding face images: any PIL mode in, RGB out, resized once.

Decisions this module makes for the whole package:

* **Which files are images.** Files with an image extension (see ``IMAGE_EXTENSIONS``)
  are images; hidden files, sub-folders and other files (``.DS_Store``, ``Thumbs.db``,
  ``gt.csv``) are skipped, with one warning naming what was skipped.
* **Colour.** Every mode (``1``, ``L``, ``LA``, ``P``, ``RGBA``, ``CMYK``, ``I;16``,
  ``I``, ``F``, ...) becomes 3-channel 8-bit RGB. Alpha is dropped; 16-bit and 32-bit
  integer images are scaled by 1/257 (65535 -> 255); float images are min-max scaled.
* **EXIF orientation is ignored.** Keypoints in ``gt.csv`` refer to the stored pixel
  array, as the course's own reader sees it (it does not apply EXIF rotation, and the
  course images carry no orientation tag). Rotating the pixels would silently move the
  image away from its labels.
* **Resizing.** Each image is resized once, to a square of the network's input size,
  keeping the pixel-centre convention of ``schema`` exact (large JPEGs are first decoded
  at a reduced scale by libjpeg, which is accounted for exactly).
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

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
