"""Alignment: the similarity fit, its inverse, and aligned crops."""

import math

import numpy as np

import pytest
import torch

from facepoints_lib.core.align import MAX_ZOOM, align_faces, invert_transform, rotation_degrees, similarity_to
from facepoints_lib.core.augment import apply_transform


def _random_shape(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand((n, 14, 2), generator=generator, dtype=torch.float64)


def _similarity(angle_deg: float, zoom: float, shift: tuple[float, float]) -> torch.Tensor:
    a = math.radians(angle_deg)
    return torch.tensor([[[zoom * math.cos(a), -zoom * math.sin(a), shift[0]],
                          [zoom * math.sin(a), zoom * math.cos(a), shift[1]]]], dtype=torch.float64)


@pytest.mark.parametrize("angle", [0.0, 37.0, 90.0, 180.0, -135.0])
def test_similarity_recovers_a_known_transform(angle):
    shape = _random_shape(1)
    known = _similarity(angle, 1.3, (0.1, -0.2))
    moved = apply_transform(known, shape)
    fitted = similarity_to(shape, moved[0])
    assert torch.allclose(fitted, known, atol=1e-9)
    turn = (rotation_degrees(fitted).item() - angle) % 360.0
    assert min(turn, 360.0 - turn) < 1e-6


def test_transform_and_inverse_round_trip():
    shape = _random_shape(8, seed=1)
    matrices = similarity_to(shape, _random_shape(1, seed=2)[0])
    back = apply_transform(invert_transform(matrices), apply_transform(matrices, shape))
    assert torch.allclose(back, shape, atol=1e-5)
    assert (back - shape).abs().max() < 1e-5
    single = apply_transform(invert_transform(matrices).float(), apply_transform(matrices.float(), shape.float()))
    assert (single - shape.float()).abs().max() < 1e-5


def test_fit_never_mirrors_and_bounds_the_zoom():
    shape = _random_shape(1)
    mirrored = shape.clone()
    mirrored[..., 0] = 1 - mirrored[..., 0]
    fitted = similarity_to(shape, mirrored[0])
    assert torch.linalg.det(fitted[:, :, :2]).item() > 0          # a rotation, not a reflection
    collapsed = torch.full((1, 14, 2), 0.5, dtype=torch.float64)
    collapsed[0, 0, 0] += 1e-9
    zoom = torch.linalg.det(similarity_to(collapsed, shape[0])[:, :, :2]).sqrt().item()
    assert zoom == pytest.approx(MAX_ZOOM)
    single_point = torch.full((1, 14, 2), 0.5, dtype=torch.float64)     # an untrained net's answer
    fitted = similarity_to(single_point, shape[0])
    assert torch.allclose(fitted[:, :, :2], torch.eye(2, dtype=torch.float64)[None] / MAX_ZOOM)


def test_aligned_crop_puts_a_turned_picture_back_upright():
    """A picture turned by a quarter and re-aligned onto its original points is the
    original picture again (exact for a quarter turn, away from the border)."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand((1, 3, 32, 32), generator=generator)
    shape = _random_shape(1).float()
    turned = torch.rot90(image, 1, dims=(2, 3))                   # counter-clockwise on screen
    # a pixel (u, v) of the original goes to (v, 1 - u) of the turned picture
    turned_shape = torch.stack([shape[..., 1], 1 - shape[..., 0]], -1)
    crops, matrices = align_faces(turned, turned_shape, shape[0])
    assert rotation_degrees(matrices).abs().item() == pytest.approx(90.0, abs=1e-3)
    assert torch.allclose(crops[..., 2:-2, 2:-2], image[..., 2:-2, 2:-2], atol=1e-4)
    assert torch.allclose(apply_transform(matrices, turned_shape), shape, atol=1e-5)


def test_uint8_images_become_float_crops_of_the_asked_size():
    images = torch.full((2, 3, 16, 16), 255, dtype=torch.uint8)
    crops, matrices = align_faces(images, _random_shape(2).float(), _random_shape(1)[0].float(), out_size=32)
    assert crops.shape == (2, 3, 32, 32) and crops.dtype == torch.float32
    assert torch.allclose(crops, torch.ones_like(crops))
    assert matrices.shape == (2, 2, 3)


def test_align_folder_returns_crops_that_map_back(small_faces, tiny_model_path):
    """The tool: crops, transforms and points of a folder; the transform takes the detected
    points onto the crop's frame and its inverse brings them back."""
    from facepoints_lib.core.dataset import pixels_to_normalized
    from facepoints_lib.core.detect import detect
    from facepoints_lib.notebook.analysis import align_folder
    from facepoints_lib.core.images import read_image_size

    names, crops, transforms, points = align_folder(tiny_model_path, small_faces / "images", size=48)
    assert len(names) == 12 and crops.shape == (12, 48, 48, 3) and crops.dtype == np.uint8
    assert transforms.shape == (12, 2, 3) and points.shape == (12, 14, 2)
    detected = detect(tiny_model_path, small_faces / "images")
    for name, found in zip(names, points):
        np.testing.assert_allclose(found.reshape(-1), detected[name], atol=1e-3)
    sizes = np.array([read_image_size(small_faces / "images" / n) for n in names], dtype=np.float64)
    norm = torch.from_numpy(pixels_to_normalized(points, sizes))
    there = apply_transform(torch.from_numpy(transforms), norm)
    assert torch.allclose(apply_transform(invert_transform(torch.from_numpy(transforms)), there), norm, atol=1e-6)
    with pytest.raises(NotADirectoryError):
        align_folder(tiny_model_path, small_faces / "missing")


def test_predict_looks_again_only_at_faces_found_turned(monkeypatch):
    """Faces whose first answer is upright keep it; one found turned is aligned and looked
    at EXTRA_LOOKS more times. An untrained regression head answers its mean shape plus its
    last layer's bias, which sets the first answer here."""
    import facepoints_lib.core.inference as inference
    from facepoints_lib.core.model import build_model
    from conftest import tiny_model_config

    shape = torch.tensor([[0.3, 0.3], [0.42, 0.3], [0.58, 0.3], [0.7, 0.3], [0.3, 0.4], [0.36, 0.4], [0.42, 0.4],
                          [0.58, 0.4], [0.64, 0.4], [0.7, 0.4], [0.5, 0.55], [0.38, 0.7], [0.5, 0.72], [0.62, 0.7]])
    model = build_model(tiny_model_config(head="regression")).eval()
    model.set_statistics(torch.full((3,), 0.5), torch.full((3,), 0.25), shape)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    calls = []
    original = model.forward
    monkeypatch.setattr(model, "forward", lambda x, **kw: calls.append(len(x)) or original(x, **kw))
    upright = inference.predict(model, images, flip_tta=False, second_look=True)
    assert calls == [3]                                    # one look: every answer is the upright mean face
    np.testing.assert_allclose(upright, shape[None].expand(3, -1, -1).numpy(), atol=1e-6)

    turned = torch.stack([1 - shape[:, 1], shape[:, 0]], -1)          # the mean face turned by a quarter
    with torch.no_grad():
        model.regressor[-1].bias.copy_((turned - shape).reshape(-1))
    calls.clear()
    first = inference.predict(model, images, flip_tta=False, second_look=False)
    again = inference.predict(model, images, flip_tta=False, second_look=True)
    assert calls == [3, 3] + [3] * inference.EXTRA_LOOKS
    assert np.abs(again - first).max() > 0.05
