"""Tests of batch augmentation: the image and its keypoints must move together.

The central check draws a small Gaussian dot at each keypoint (one channel per point),
warps the images, and compares each dot's weighted centroid with the keypoints moved by
``transform_keypoints``: they must agree to a fraction of a pixel.
"""

import math

import numpy as np
import pytest
import torch

from facepoints_lib.core.augment import (AffineParams, AugmentConfig, affine_matrices, augment_batch,
                                    flip_images, flip_keypoints, keep_points_inside, photometric,
                                    sample_affine, sample_cuts, transform_keypoints, warp_images)
from facepoints_lib.core.schema import FLIP_PERMUTATION, NUM_POINTS

from conftest import random_keypoints

SIZE = 112
SIGMA = 1.5      # dot radius in pixels
GEOMETRY = AugmentConfig(flip_prob=0.5, rotation_deg=30.0, scale=0.2, shift=0.08)


def dot_images(keypoints: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """(N, K, size, size) float images; channel k holds a dot at keypoint k (normalised)."""
    centres = keypoints * size - 0.5                                  # pixel coordinates
    coords = torch.arange(size, dtype=torch.float32)
    dx = coords.view(1, 1, 1, size) - centres[..., 0, None, None]
    dy = coords.view(1, 1, size, 1) - centres[..., 1, None, None]
    return torch.exp(-(dx ** 2 + dy ** 2) / (2 * SIGMA ** 2))


def dot_centres(images: torch.Tensor, radius: int = 6) -> torch.Tensor:
    """Normalised weighted centroid around the brightest pixel of each channel: (N, K, 2)."""
    n, k, h, w = images.shape
    flat = images.flatten(2).argmax(-1)
    out = torch.empty(n, k, 2, dtype=torch.float64)
    for i in range(n):
        for c in range(k):
            y, x = divmod(int(flat[i, c]), w)
            y0, y1, x0, x1 = max(y - radius, 0), min(y + radius + 1, h), max(x - radius, 0), min(x + radius + 1, w)
            window = images[i, c, y0:y1, x0:x1].double()
            ys, xs = torch.meshgrid(torch.arange(y0, y1, dtype=torch.float64),
                                    torch.arange(x0, x1, dtype=torch.float64), indexing="ij")
            total = window.sum()
            out[i, c, 0] = ((window * xs).sum() / total + 0.5) / w
            out[i, c, 1] = ((window * ys).sum() / total + 0.5) / h
    return out


def test_dot_drawing_and_centroid_agree_on_identity():
    keypoints = random_keypoints(2, seed=1, low=0.3, high=0.7)
    centres = dot_centres(dot_images(keypoints))
    assert float((centres - keypoints.double()).abs().max()) * SIZE < 0.05


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("out_size", [SIZE, 96])
def test_warped_dots_land_on_transformed_keypoints(seed, out_size):
    generator = torch.Generator().manual_seed(seed)
    keypoints = random_keypoints(6, seed=seed, low=0.3, high=0.7)
    params = sample_affine(6, GEOMETRY, generator)
    params.flip[:2] = torch.tensor([True, False])            # both cases in every batch
    matrices = affine_matrices(params)
    warped = warp_images(dot_images(keypoints), matrices, out_size)
    moved = transform_keypoints(keypoints, matrices, params.flip)
    centres = dot_centres(warped)
    for i in range(6):
        # Channel c holds original point c; after a mirror, output point j is original perm[j].
        order = list(FLIP_PERMUTATION) if bool(params.flip[i]) else list(range(NUM_POINTS))
        error_px = (centres[i, order] - moved[i].double()).abs().max() * out_size
        assert float(error_px) < 1.0, (i, float(error_px))
        assert float(error_px) < 0.35      # in practice well under a pixel
    assert bool((params.angle.abs() > math.radians(3)).any())   # the transforms were not trivial


def test_augment_batch_moves_image_and_points_together():
    """augment_batch on uint8 RGB: a dot at point j of each sample follows output point j."""
    n = NUM_POINTS
    keypoints = random_keypoints(n, seed=5, low=0.3, high=0.7)
    dots = dot_images(keypoints)                                     # (n, 14, S, S)
    which = torch.arange(n)                                          # sample i shows point i
    images = torch.zeros(n, 3, SIZE, SIZE, dtype=torch.uint8)
    images[:, 0] = (255 * dots[which, which]).round().to(torch.uint8)
    cfg = AugmentConfig(flip_prob=0.5, rotation_deg=30.0, scale=0.2, shift=0.08, brightness=0.0,
                        contrast=0.0, grayscale_prob=0.0, lowres_prob=0.0, cut_prob=0.0)
    out, moved = augment_batch(images, keypoints, cfg, SIZE, torch.Generator().manual_seed(3))
    assert out.shape == (n, 3, SIZE, SIZE) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert moved.shape == (n, NUM_POINTS, 2)
    centres = dot_centres(out[:, :1])[:, 0]
    # The same seed draws the same parameters: which samples were mirrored.
    flip = keep_points_inside(keypoints, sample_affine(n, cfg, torch.Generator().manual_seed(3))).flip
    assert 0 < int(flip.sum()) < n
    for i in range(n):
        # Original point i is labelled FLIP_PERMUTATION[i] in a mirrored sample.
        label = FLIP_PERMUTATION[i] if bool(flip[i]) else i
        assert float((centres[i] - moved[i, label].double()).abs().max()) * SIZE < 1.0, i


def test_augment_batch_is_seeded():
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    keypoints = random_keypoints(4)
    a = augment_batch(images, keypoints, AugmentConfig(), 64, torch.Generator().manual_seed(7))
    b = augment_batch(images, keypoints, AugmentConfig(), 64, torch.Generator().manual_seed(7))
    c = augment_batch(images, keypoints, AugmentConfig(), 64, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_identity_transform_changes_nothing():
    images = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    keypoints = random_keypoints(3)
    params = AffineParams.identity(3)
    matrices = affine_matrices(params)
    torch.testing.assert_close(warp_images(images, matrices, 40), images, atol=1e-5, rtol=0)
    torch.testing.assert_close(transform_keypoints(keypoints, matrices, params.flip), keypoints)


def test_flip_twice_is_identity():
    images = torch.randint(0, 256, (2, 3, 17, 23), dtype=torch.uint8)
    assert torch.equal(flip_images(flip_images(images)), images)
    assert not torch.equal(flip_images(images), images)
    keypoints = random_keypoints(5, low=0.0, high=1.0)
    torch.testing.assert_close(flip_keypoints(flip_keypoints(keypoints)), keypoints, atol=1e-6, rtol=0)
    mirrored = flip_keypoints(keypoints)
    torch.testing.assert_close(mirrored[:, 0, 0], 1 - keypoints[:, 3, 0])     # relabelled
    torch.testing.assert_close(mirrored[:, 10], torch.stack([1 - keypoints[:, 10, 0], keypoints[:, 10, 1]], -1))


def test_affine_flip_equals_flip_functions():
    """A pure mirror through the affine path is exactly flip_images / flip_keypoints."""
    images = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    keypoints = random_keypoints(2, low=0.0, high=1.0)
    params = AffineParams.identity(2)
    params.flip[:] = True
    matrices = affine_matrices(params)
    torch.testing.assert_close(warp_images(images, matrices, 24), flip_images(images), atol=1e-5, rtol=0)
    torch.testing.assert_close(transform_keypoints(keypoints, matrices, params.flip),
                               flip_keypoints(keypoints), atol=1e-6, rtol=0)
    twice = affine_matrices(params)
    torch.testing.assert_close(
        warp_images(warp_images(images, twice, 24), twice, 24), images, atol=1e-5, rtol=0)


def test_keep_points_inside():
    generator = torch.Generator().manual_seed(0)
    keypoints = random_keypoints(64, seed=2, low=0.02, high=0.98)     # some near the edges
    wild = AugmentConfig(rotation_deg=45.0, scale=0.4, shift=0.2)
    params = sample_affine(64, wild, generator)
    before = transform_keypoints(keypoints, affine_matrices(params), params.flip) * 2 - 1
    assert bool((before.abs() > 0.9).flatten(1).any(1).any())          # the test has work to do
    for margin in (0.0, 0.1):
        kept = keep_points_inside(keypoints, params, margin=margin)
        after = transform_keypoints(keypoints, affine_matrices(kept), kept.flip) * 2 - 1
        inside = (after.abs() <= 1 - margin).flatten(1).all(1)
        originally_inside = (keypoints * 2 - 1).abs().flatten(1).max(1).values <= 1 - margin
        assert bool(inside[originally_inside].all())
        assert torch.equal(kept.flip, params.flip)                          # mirrors are kept
        fine = (before.abs() <= 1 - margin).flatten(1).all(1)
        assert torch.equal(kept.angle[fine], params.angle[fine])           # good samples untouched
        assert torch.equal(kept.shift[fine], params.shift[fine])
    assert not torch.equal(kept.angle, params.angle)                         # and the input is not modified
    assert params.angle is not kept.angle


def test_sample_affine_ranges():
    cfg = AugmentConfig(flip_prob=0.5, rotation_deg=10.0, scale=0.1, shift=0.05, full_turn_prob=0.0)
    params = sample_affine(2000, cfg, torch.Generator().manual_seed(0))
    assert float(params.angle.abs().max()) <= math.radians(10.0) + 1e-6
    assert 0.9 - 1e-6 <= float(params.scale.min()) and float(params.scale.max()) <= 1.1 + 1e-6
    assert float(params.shift.abs().max()) <= 0.1 + 1e-6                     # 2 * shift in grid units
    assert 0.4 < float(params.flip.float().mean()) < 0.6
    off = sample_affine(50, AugmentConfig(flip_prob=0.0, rotation_deg=0.0, scale=0.0, shift=0.0,
                                          full_turn_prob=0.0), torch.Generator().manual_seed(0))
    matrices = affine_matrices(off)
    torch.testing.assert_close(matrices, affine_matrices(AffineParams.identity(50)))


def test_full_turns_cover_the_circle_and_shrink():
    cfg = AugmentConfig(rotation_deg=10.0, scale=0.0, full_turn_prob=0.3, full_turn_shrink=0.3)
    params = sample_affine(4000, cfg, torch.Generator().manual_seed(0))
    turned = params.angle.abs() > math.radians(10.0) + 1e-6
    assert 0.2 < float(turned.float().mean()) < 0.3            # 30 % turned, a sixth of those within 10 deg
    assert float(params.angle.min()) < math.radians(-170) and float(params.angle.max()) > math.radians(170)
    assert float(params.scale[turned].min()) >= 0.7 - 1e-6 and float(params.scale[turned].max()) <= 1 + 1e-6
    plain = sample_affine(100, AugmentConfig(full_turn_prob=0.0), torch.Generator().manual_seed(1))
    again = sample_affine(100, AugmentConfig(full_turn_prob=0.0), torch.Generator().manual_seed(1))
    assert torch.equal(plain.angle, again.angle)


def test_photometric_range_and_off_switch():
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = photometric(images.clone(), AugmentConfig(), torch.Generator().manual_seed(0))
    assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    off = AugmentConfig(brightness=0.0, contrast=0.0, grayscale_prob=0.0, lowres_prob=0.0)
    torch.testing.assert_close(photometric(images.clone(), off, torch.Generator().manual_seed(0)),
                               images, atol=1e-6, rtol=0)
    gray = AugmentConfig(brightness=0.0, contrast=0.0, grayscale_prob=1.0, lowres_prob=0.0)
    out = photometric(images.clone(), gray, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    expected = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    np.testing.assert_allclose(out[:, 0].numpy(), expected.numpy(), atol=1e-6)


def test_cut_ends_the_picture_at_a_line_across_the_face_and_keeps_the_labels():
    """A cut sample's picture stops inside its face: beyond the line the last column (or row)
    repeats, as past a real picture's border, while every label stays where the face has it."""
    n = 64
    keypoints = random_keypoints(n, seed=7, low=0.25, high=0.75)
    ramp = torch.linspace(0, 1, SIZE)
    images = torch.stack([ramp.expand(SIZE, SIZE), ramp[:, None].expand(SIZE, SIZE), torch.zeros(SIZE, SIZE)])
    images = (255 * images).round().to(torch.uint8).expand(n, 3, SIZE, SIZE)   # x in red, y in green
    cfg = AugmentConfig(flip_prob=0.0, rotation_deg=0.0, full_turn_prob=0.0, scale=0.0, shift=0.0,
                        cut_prob=1.0, cut_shrink=0.0)
    params = sample_cuts(keypoints, sample_affine(n, cfg, torch.Generator().manual_seed(0)), cfg,
                         torch.Generator().manual_seed(1))
    bounds = params.bounds
    assert bounds is not None and bounds.shape == (n, 4)
    default = torch.tensor([-1.0, 1.0, -1.0, 1.0])
    assert bool(((bounds != default).sum(1) == 1).all())                   # one side cut in each
    grid = keypoints * 2 - 1
    face_lo, face_hi = grid.amin(1), grid.amax(1)
    cut_into_face = ((bounds[:, 0] > face_lo[:, 0]) | (bounds[:, 1] < face_hi[:, 0])
                     | (bounds[:, 2] > face_lo[:, 1]) | (bounds[:, 3] < face_hi[:, 1]))
    assert int(cut_into_face.sum()) > n // 2                                # most lines cross the face
    out = warp_images(images.float() / 255, affine_matrices(params), SIZE, bounds)
    red, green = out[:, 0], out[:, 1]
    # The red channel is x: where the picture ends on the left, no value below the line's x.
    x_lo = (bounds[:, 0] + 1) / 2
    assert bool((red.amin((1, 2)) >= x_lo - 1.0 / SIZE).all())
    y_hi = (bounds[:, 3] + 1) / 2
    assert bool((green.amax((1, 2)) <= y_hi + 1.0 / SIZE).all())
    moved = transform_keypoints(keypoints, affine_matrices(params), params.flip)
    torch.testing.assert_close(moved, keypoints)                           # labels where they fall


def test_labels_outside_the_picture_are_shown_shrunk_inside_the_frame():
    """A face whose labels lie outside its own picture (a crop that cut it) is shrunk about
    the centre until they fit: the labels stay exact, the network's frame reaches them."""
    keypoints = random_keypoints(8, seed=3, low=0.2, high=0.8)
    keypoints[:4, :3, 0] = -0.15                                            # off the left edge
    keypoints[4:, -2:, 1] = 1.2                                             # off the bottom
    assert bool((keypoints < 0).any() and (keypoints > 1).any())
    params = keep_points_inside(keypoints, AffineParams.identity(8))
    moved = transform_keypoints(keypoints, affine_matrices(params), params.flip)
    assert bool(((moved >= 0) & (moved <= 1)).all())
    assert bool((params.scale < 1).all())
    # the transform is a plain zoom about the centre: mapping back gives the labels exactly
    back = (moved - 0.5) / params.scale[:, None, None] + 0.5
    torch.testing.assert_close(back, keypoints)
