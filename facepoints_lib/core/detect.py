"""Detection: ``detect(model_filename, test_img_dir)``, the course's second entry point.

Images are decoded and resized a chunk at a time, so memory stays bounded however many
images the folder holds; predictions are mapped back to each image's original pixels.
Unreadable images are reported (one warning naming them) and left out of the result;
every readable image gets 28 numbers ``x1, y1, ..., x14, y14``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .checkpoint import load_model
from .dataset import iter_image_chunks, normalized_to_pixels
from .model import fold_batch_norm
from .images import list_images
from .inference import MAX_THREADS, predict, use_bf16

DETECT_CHUNK = 256          # images decoded at a time: ~7 MB of uint8 at 96 px


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
    faces the first look finds turned (see ``inference.predict``); False skips that. ``progress`` is an
    optional progress-bar factory (``TextProgress`` or ``tqdm``).
    """
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
    names = list(filenames) if filenames is not None else list_images(img_dir)
    if not names:
        warnings.warn(f"{img_dir}: no images to detect keypoints in", stacklevel=2)
    if threads:
        torch.set_num_threads(threads)
    model = fold_batch_norm(load_model(model_filename, device))      # same function, less work
    low_precision = use_bf16(bf16, torch.device(device))
    size = model.config.image_size

    failed: list[str] = []
    results: dict[str, np.ndarray] = {}
    bar = progress(total=len(names), desc="detect", unit="img") if progress else None
    for batch_names, images, sizes in iter_image_chunks(
            img_dir, size, chunk, names, on_error=lambda name, exc: failed.append(f"{name} ({exc})")):
        norm = predict(model, images, flip_tta=flip_tta, bf16=low_precision, second_look=second_look)
        pixels = normalized_to_pixels(torch.from_numpy(norm), sizes).numpy()
        for name, points in zip(batch_names, pixels):
            results[name] = points.reshape(-1).astype(np.float64)
        if bar is not None:
            bar.update(len(batch_names))
    if bar is not None:
        bar.close()
    if failed:
        warnings.warn(f"{len(failed)} of {len(names)} images could not be read and have no "
                      f"prediction: {'; '.join(failed[:5])}", stacklevel=2)
    return results
