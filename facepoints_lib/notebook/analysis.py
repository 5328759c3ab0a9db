"""Numbers the notebooks compute: data checks, error breakdowns, benchmark results.

* Data: grayscale faces, points outside the frame, head roll from the eye centres,
  duplicate images and whether their labels agree.
* Errors: statistics in bins, flip consistency of a model, faces turned by any angle
  (``turned_faces``) to measure error by roll with enough faces in every bin.
* Aligned faces: ``align_folder`` turns every face of a folder upright onto the model's
  mean shape, as the second look does (a common first step before recognising a face).

Benchmark results are read and tabulated by ``benchmarks``.

Keypoints are ``(N, 14, 2)`` arrays; "normalised" means the ``schema`` convention (the
image spans [0, 1] on both axes). Not frozen into ``solution.py``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from PIL import Image

from ..core.align import align_faces
from ..core.augment import flip_images, flip_keypoints
from ..core.checkpoint import load_model
from ..core.dataset import FaceSet, iter_image_chunks, normalized_to_pixels, pixels_to_normalized
from ..core.detect import DETECT_CHUNK
from ..core.images import list_images, read_image
from ..core.inference import predict, restores_torch_threads, use_bf16
from ..core.model import fold_batch_norm
from ..core.schema import FLIP_PERMUTATION

ALIGN_MEMORY_BYTES = 256 * 2 ** 20   # align_folder's float crops and sampling grids at a time

LEFT_EYE_CENTRE, RIGHT_EYE_CENTRE = 5, 8


# ---- data -------------------------------------------------------------------------------

def turned_faces(img_dir: str | Path, gt: dict[str, np.ndarray], names: list[str], image_size: int,
                 seed: int = 0) -> tuple[FaceSet, np.ndarray]:
    """Copies of ``names`` each turned by a random angle in [-180, 180) on a canvas large
    enough to hold all of it (``rotation_bench.turn_any``, points moved exactly), decoded
    at ``image_size`` as ``detect`` decodes a PNG. Returns the faces and their angles.

    The course data holds about 1 % of faces rolled past 45 degrees, too few to measure
    error by roll; turned copies of unseen faces fill every bin.
    """
    from ..tools.rotation_bench import turn_any

    angles = np.random.default_rng(seed).uniform(-180.0, 180.0, len(names))
    images, points, sizes = [], [], []
    for name, angle in zip(names, angles):
        turned, moved = turn_any(read_image(Path(img_dir) / name), gt[name].reshape(-1, 2).astype(np.float64),
                                 float(angle))
        images.append(torch.from_numpy(np.array(turned.resize((image_size, image_size), Image.Resampling.BILINEAR),
                                                 dtype=np.uint8)).permute(2, 0, 1))
        points.append(moved)
        sizes.append(turned.size)
    sizes_t = torch.tensor(sizes, dtype=torch.float64).reshape(-1, 2)
    keypoints = pixels_to_normalized(torch.from_numpy(np.stack(points)), sizes_t).float() if names else None
    faces = FaceSet(images=torch.stack(images) if names else torch.zeros((0, 3, image_size, image_size),
                                                                         dtype=torch.uint8),
                    keypoints=keypoints, sizes=sizes_t, filenames=list(names))
    return faces, angles


def grayscale_mask(images: torch.Tensor, tolerance: float = 2.0) -> np.ndarray:
    """True for uint8 images (N, 3, S, S) whose channels agree (mean difference < tolerance)."""
    x = images.float()
    diff = ((x[:, 0] - x[:, 1]).abs() + (x[:, 1] - x[:, 2]).abs()).mean(dim=(1, 2)) / 2
    return (diff < tolerance).numpy()


def points_outside(points: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(N, 14) True where a pixel point lies outside its image ([-0.5, side - 0.5])."""
    sizes = np.asarray(sizes, dtype=np.float64)[:, None, :]
    return ((points < -0.5) | (points > sizes - 0.5)).any(axis=-1)


def eye_roll_degrees(points: np.ndarray) -> np.ndarray:
    """Head roll from the eye centres, in degrees; 0 is level, positive turns clockwise.

    Use pixel coordinates. Beyond +-90 degrees the "left" eye is right of the "right"
    one: the face is upside down or its left/right labels are swapped.
    """
    d = points[:, RIGHT_EYE_CENTRE] - points[:, LEFT_EYE_CENTRE]
    return np.degrees(np.arctan2(d[:, 1], d[:, 0]))


def shape_outliers(points: np.ndarray, canonical: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """How far each labelled face's shape is from the mean face, once turned, scaled and
    moved onto it (``align.similarity_to``; never mirrored): a label audit.

    ``points`` (N, 14, 2) normalised. Returns the RMS distance of the 14 points to the
    canonical shape (in percent of the canonical face's frame) and the index of each face's
    farthest point. Rolled, upside-down, small or off-centre faces are aligned away; what
    remains large is a shape no face has: a point on the wrong feature, left and right
    swapped, a mouth corner at the image edge.
    """
    from ..core.align import similarity_to
    from ..core.augment import apply_transform

    pts = torch.as_tensor(np.asarray(points, dtype=np.float64))
    target = pts.mean(0) if canonical is None else torch.as_tensor(np.asarray(canonical, dtype=np.float64))
    aligned = apply_transform(similarity_to(pts, target), pts)
    dist = (aligned - target).norm(dim=-1) * 100                    # (N, 14), % of the side
    return dist.pow(2).mean(-1).sqrt().numpy(), dist.argmax(-1).numpy()


def left_of_right(points: np.ndarray) -> np.ndarray:
    """(N,) True where every "left" point lies left of its mirror partner (smaller x).

    Holds for upright faces with correct labels; a mirror without the relabelling of
    ``FLIP_PERMUTATION`` breaks it for every face.
    """
    pairs = [(i, j) for i, j in enumerate(FLIP_PERMUTATION) if i < j]
    left, right = zip(*pairs)
    points = np.asarray(points, dtype=np.float64)
    return (points[:, list(left), 0] < points[:, list(right), 0]).all(axis=1)


def _thumbnails(images: torch.Tensor, side: int = 16) -> np.ndarray:
    """Zero-mean, unit-norm gray thumbnails (N, side*side) for comparing pictures."""
    gray = images.float().mean(dim=1, keepdim=True)
    small = torch.nn.functional.adaptive_avg_pool2d(gray, side).flatten(1)
    small = small - small.mean(dim=1, keepdim=True)
    return (small / small.norm(dim=1, keepdim=True).clamp_min(1e-6)).numpy()


def find_duplicates(images: torch.Tensor, threshold: float = 0.995, chunk: int = 1024) -> list[list[int]]:
    """Groups of indices of images that look the same (thumbnail correlation >= threshold).

    Catches re-encoded and resized copies; mirrored copies are not duplicates here.
    """
    feats = _thumbnails(images)
    parent = list(range(len(feats)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(feats), chunk):
        sim = feats[start:start + chunk] @ feats.T
        for a, b in zip(*np.nonzero(sim >= threshold)):
            a += start
            if a < b:
                parent[root(b)] = root(a)
    groups: dict[int, list[int]] = {}
    for i in range(len(feats)):
        groups.setdefault(root(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def label_spread(keypoints: np.ndarray, group: list[int]) -> float:
    """Largest distance (percent of the image side) between labels of the same point in a group."""
    pts = np.asarray(keypoints, dtype=np.float64)[group]
    diff = pts[:, None] - pts[None, :]
    return float(100 * np.linalg.norm(diff, axis=-1).max())


# ---- errors -----------------------------------------------------------------------------

def binned(x: np.ndarray, y: np.ndarray, edges) -> list[dict]:
    """Mean, standard error and count of ``y`` in each bin of ``x`` (empty bins left out)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (x >= lo) & ((x < hi) | ((hi == edges[-1]) & (x <= hi)))
        if inside.any():
            values = y[inside]
            sem = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
            rows.append({"lo": float(lo), "hi": float(hi), "count": int(inside.sum()),
                         "mean": float(values.mean()), "sem": float(sem)})
    return rows


def flip_consistency(model, images: torch.Tensor) -> np.ndarray:
    """Per-image course err between the prediction and the mirrored image's prediction mirrored back.

    0 for a perfectly mirror-symmetric model; both predictions are made without flip TTA.
    """
    plain = predict(model, images, flip_tta=False)
    mirrored = predict(model, flip_images(images), flip_tta=False)
    back = flip_keypoints(torch.from_numpy(mirrored)).numpy()
    return ((100 * (plain - back)) ** 2).reshape(len(plain), -1).mean(axis=1)


# ---- aligned faces -----------------------------------------------------------------------

@restores_torch_threads
def align_folder(model_filename: str | os.PathLike, img_dir: str | os.PathLike, *,
                 filenames: Sequence[str] | None = None, size: int | None = None,
                 threads: int | None = None) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Aligned face crops of the images in ``img_dir``: each face turned upright, centred
    and scaled onto the model's mean shape (the usual first step before recognising a face).

    Returns ``(names, crops, transforms, points)``: ``crops`` (N, S, S, 3) uint8 with ``S``
    = ``size`` (default the model's input side), ``transforms`` (N, 2, 3) forward matrices
    in the grid coordinates of ``align`` (picture -> crop; the picture is first resized to
    a square, as the detector sees it; ``augment.apply_transform`` moves normalised points
    and ``align.invert_transform`` goes back) and ``points`` (N, 14, 2) the detected points
    in the original pixels. Unreadable images are left out with one warning.

    Memory: the crops returned (``N * S * S * 3`` bytes) plus what ``detect`` needs, plus
    at most ``ALIGN_MEMORY_BYTES`` of float crops and sampling grids at a time.
    """
    img_dir = Path(img_dir)
    if not img_dir.is_dir():
        raise NotADirectoryError(f"image folder not found: {img_dir}")
    if threads is not None:
        torch.set_num_threads(threads)
    model = fold_batch_norm(load_model(model_filename, "cpu"))
    side = size or model.config.image_size
    if not isinstance(side, int) or isinstance(side, bool) or not 8 <= side <= 1024:
        raise ValueError(f"size must be an integer from 8 to 1024, got {size!r}")
    wanted = list(filenames) if filenames is not None else list_images(img_dir)
    crops = np.empty((len(wanted), side, side, 3), np.uint8)      # the result, filled in place
    per_face = 4 * side * side * (3 + 2)                          # float crop and sampling grid
    step = max(1, ALIGN_MEMORY_BYTES // per_face)
    failed: list[str] = []
    names, transforms, points = [], [], []
    for batch_names, images, sizes in iter_image_chunks(
            img_dir, model.decode_side(), DETECT_CHUNK, wanted,
            on_error=lambda name, exc: failed.append(f"{name} ({exc})")):
        norm = torch.from_numpy(predict(model, images, bf16=use_bf16("auto", torch.device("cpu")))).float()
        for start in range(0, len(batch_names), step):             # bounded float intermediates
            part = slice(start, start + step)
            aligned, matrices = align_faces(images[part], norm[part], model.mean_shape, side)
            done = len(names) + start
            crops[done:done + len(aligned)] = (aligned * 255).round_().clamp_(0, 255).to(torch.uint8) \
                .permute(0, 2, 3, 1).numpy()
            transforms.append(matrices.double().numpy())
        names += batch_names
        points.append(normalized_to_pixels(norm.double(), sizes).numpy())
    if failed:
        warnings.warn(f"{len(failed)} images in {img_dir} could not be read: {'; '.join(failed[:5])}",
                      stacklevel=3)           # the caller's line (above restores_torch_threads' wrapper)
    if not names:
        return [], np.zeros((0, side, side, 3), np.uint8), np.zeros((0, 2, 3)), np.zeros((0, 14, 2))
    crops = crops[:len(names)] if len(names) < len(crops) else crops
    return names, crops, np.concatenate(transforms), np.concatenate(points)
