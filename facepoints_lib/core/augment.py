"""Augmentation of whole batches with tensor ops: flip, rotation, scale, shift, photometric.

Geometry works in the ``[-1, 1]`` grid coordinates of ``torch.nn.functional.grid_sample``
with ``align_corners=False``: grid ``g = 2 u - 1`` for normalised ``u`` (see ``schema``).
A forward transform maps a point of the input image to the output image,
``p_out = A @ p_in + t`` with ``A = scale * R(angle) @ F`` (``F`` mirrors x when
flipping); the image is resampled through its inverse. Points that are mirrored are
also re-labelled through ``FLIP_PERMUTATION``, so "left eye" stays on the image's left.

Every function takes an explicit ``torch.Generator``, so a seed fixes the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .schema import FLIP_PERMUTATION


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
