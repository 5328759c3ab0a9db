"""Face alignment: the similarity transform that puts a face on a canonical frame, and back.

Once a face's 14 points are roughly known, the rotation, scale and shift that best map
them (least squares, no mirroring) onto a canonical shape define an aligned crop: the
face upright, centred and at the canonical size. This is the usual first step before
face recognition, and the detector's second look: ``predict`` finds the points once on
the whole picture, aligns the face onto the model's mean shape and finds them again on
the aligned crop, where the face looks like the upright faces most of training saw;
the second answer is mapped back exactly by the inverse transform.

Transforms are ``(N, 2, 3)`` forward matrices in the ``[-1, 1]`` grid coordinates of
``augment`` (``p_out = A @ p_in + t``): a point of the source picture goes to the
aligned crop. Points given to and returned by these functions are normalised
(``schema``: the picture spans ``[0, 1]``).
"""

from __future__ import annotations

import torch

from .augment import warp_images

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
