"""The in-memory dataset: every image decoded and resized once, kept as uint8 tensors.

A ``FaceSet`` holds ``images`` (N, 3, S, S) uint8, ``keypoints`` (N, 14, 2) float32 in
normalised coordinates (see ``schema``: the image spans [0, 1], ``u = (x + 0.5) / w``),
``sizes`` (N, 2) of the stored images' (width, height) in pixels, ``filenames`` and, for
training, optional ``frames``: the crop of each picture the network is shown.
``pixels_to_normalized`` and ``normalized_to_pixels`` convert exactly between the two
coordinate systems; predictions go back to the original pixels through the latter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .gt_csv import read_gt
from .images import list_images, read_image_resized
from .schema import NUM_POINTS


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
