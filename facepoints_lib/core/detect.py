"""Detection: ``detect(model_filename, test_img_dir)``, the course's second entry point,
and ``detect_details``, the same with a confidence for every face and every point.

Images are decoded and resized a chunk at a time, so memory stays bounded however many
images the folder holds; predictions are mapped back to each image's original pixels
(points may lie outside the picture, where a crop cut the face). Unreadable images are
reported (one warning naming them) and left out of the result; every readable image gets
28 numbers ``x1, y1, ..., x14, y14``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .checkpoint import CheckpointError, load_model
from .confidence import Calibration, confidence, expected_err, looks_like_no_face
from .dataset import iter_image_chunks, normalized_to_pixels
from .model import fold_batch_norm
from .images import list_images
from .inference import LOOK_NAMES, MAX_THREADS, Prediction, predict_details, restores_torch_threads, use_bf16

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
