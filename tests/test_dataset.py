"""Tests of the coordinate conversions and of the in-memory face set."""

import numpy as np
import pytest
import torch
from PIL import Image

from facepoints_lib.core.dataset import (FaceSet, decode_images, iter_image_chunks, load_faces,
                                    normalized_to_pixels, pixels_to_normalized)
from facepoints_lib.core.gt_csv import read_gt, read_img_shapes, write_gt

from conftest import as_points


def test_pixel_centre_convention():
    sizes = np.array([[200.0, 100.0]])
    corners = np.array([[[-0.5, -0.5], [199.5, 99.5], [0.0, 0.0], [99.5, 49.5]] + [[0, 0]] * 10])
    norm = pixels_to_normalized(corners, sizes)
    np.testing.assert_allclose(norm[0, :4], [[0, 0], [1, 1], [0.0025, 0.005], [0.5, 0.5]])


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_round_trip_below_1e4_pixels(backend):
    rng = np.random.default_rng(0)
    sizes = rng.integers(20, 3000, (64, 2)).astype(np.float64)
    points = rng.uniform(-0.5, 1, (64, 14, 2)) * sizes[:, None, :]
    if backend == "torch":
        points, sizes = torch.from_numpy(points), torch.from_numpy(sizes)
    back = normalized_to_pixels(pixels_to_normalized(points, sizes), sizes)
    assert float(np.abs(np.asarray(back) - np.asarray(points)).max()) < 1e-4
    # float32 normalised coordinates (as FaceSet keeps them) still round-trip within 1e-3 px
    norm32 = torch.as_tensor(np.asarray(pixels_to_normalized(points, sizes))).float()
    back32 = normalized_to_pixels(norm32.double(), torch.as_tensor(np.asarray(sizes)))
    assert float((back32 - torch.as_tensor(np.asarray(points))).abs().max()) < 1e-3


def test_broadcast_over_leading_dims():
    sizes = np.array([[100.0, 50.0], [10.0, 20.0]])
    points = np.zeros((2, 14, 2))
    norm = pixels_to_normalized(points, sizes)
    assert norm.shape == (2, 14, 2)
    np.testing.assert_allclose(norm[1, 0], [0.05, 0.025])


def test_load_faces_shapes_and_dtypes(synth_train):
    gt = read_gt(synth_train / "gt.csv")
    shapes = read_img_shapes(synth_train / "img_shapes.csv")
    names = sorted(gt)[:24]
    calls = []
    faces = load_faces(synth_train / "images", 64, gt, names, progress=calls.append)
    assert isinstance(faces, FaceSet) and len(faces) == 24 and faces.image_size == 64
    assert faces.images.shape == (24, 3, 64, 64) and faces.images.dtype == torch.uint8
    assert faces.keypoints.shape == (24, 14, 2) and faces.keypoints.dtype == torch.float32
    assert faces.sizes.shape == (24, 2) and faces.sizes.dtype == torch.float64
    assert faces.filenames == names and calls == [1] * 24
    assert 0 < float(faces.keypoints.min()) and float(faces.keypoints.max()) < 1
    for name, (width, height) in zip(names, faces.sizes.tolist()):
        assert (height, width) == shapes[name]
    np.testing.assert_allclose(normalized_to_pixels(faces.keypoints.double(), faces.sizes).numpy(),
                               as_points(gt, names), atol=1e-3)


def test_load_faces_from_csv_path_and_subset(synth_train):
    faces = load_faces(synth_train / "images", 32, synth_train / "gt.csv")
    assert len(faces) == 300 and faces.filenames == sorted(faces.filenames)
    part = faces.subset([5, 2])
    assert part.filenames == [faces.filenames[5], faces.filenames[2]]
    assert torch.equal(part.images[1], faces.images[2])
    assert torch.equal(part.keypoints[0], faces.keypoints[5])
    assert torch.equal(part.sizes[0], faces.sizes[5])


def test_load_faces_unlabelled(small_faces):
    faces = load_faces(small_faces / "images", 32)
    assert faces.keypoints is None and len(faces) == 12


def test_load_faces_missing_image_is_an_error(tmp_path, small_faces):
    gt = read_gt(small_faces / "gt.csv")
    gt["missing_face.jpg"] = gt["00000.jpg"]
    with pytest.raises(FileNotFoundError, match="missing_face.jpg"):
        load_faces(small_faces / "images", 32, gt)


def test_load_faces_non_square_mapping(tmp_path):
    """A dot at a known pixel of a non-square image lands on its normalised position."""
    width, height, x, y = 120, 60, 30, 45
    array = np.zeros((height, width, 3), np.uint8)
    array[y - 1:y + 2, x - 1:x + 2] = 255
    (tmp_path / "images").mkdir()
    Image.fromarray(array).save(tmp_path / "images" / "a.png")
    write_gt({"a.png": np.tile([x, y], 14).astype(float)}, tmp_path / "gt.csv")
    faces = load_faces(tmp_path / "images", 64, tmp_path / "gt.csv")
    np.testing.assert_allclose(faces.keypoints[0, 0].numpy(), [(x + 0.5) / width, (y + 0.5) / height])
    gray = faces.images[0, 0].double()
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    centre = torch.stack([(gray * xs).sum(), (gray * ys).sum()]) / gray.sum()
    expected = faces.keypoints[0, 0].double() * 64 - 0.5
    assert float((centre - expected).abs().max()) < 0.1


def test_decode_images(small_faces):
    paths = sorted((small_faces / "images").iterdir())[:3]
    images, sizes = decode_images(paths, 32)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert sizes.dtype == torch.float64 and sizes.shape == (3, 2)


def test_iter_image_chunks_bounded_and_reports_errors(tmp_path, small_faces):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for path in sorted((small_faces / "images").iterdir())[:7]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "00003.jpg").write_bytes(b"garbage")
    errors = []
    chunks = list(iter_image_chunks(folder, 32, 3, on_error=lambda name, exc: errors.append(name)))
    assert [len(names) for names, _, _ in chunks] == [3, 2, 1]      # 00003 left out of chunk 2
    assert [n for names, _, _ in chunks for n in names] == [f"{i:05d}.jpg" for i in (0, 1, 2, 4, 5, 6)]
    assert errors == ["00003.jpg"]
    for names, images, sizes in chunks:
        assert images.shape == (len(names), 3, 32, 32) and images.dtype == torch.uint8
        assert sizes.shape == (len(names), 2) and sizes.dtype == torch.float64
    with pytest.raises(Exception, match="00003.jpg"):
        list(iter_image_chunks(folder, 32, 3))


def test_detection_shrinks_larger_pictures_as_training_does(synth_train):
    """A cascade's first stage sees the 2x decodes shrunk: in detection (``shrink_for``, on
    the uint8 pictures) within one level of training's shrink (``shrunk``)."""
    from facepoints_lib.core.dataset import shrunk
    from facepoints_lib.core.inference import shrink_for

    faces = load_faces(synth_train / "images", 64, read_gt(synth_train / "gt.csv"))
    trained, detected = shrunk(faces, 32).images, shrink_for(faces.images, 32)
    assert detected.dtype == torch.uint8 and detected.shape == trained.shape
    assert (trained.int() - detected.int()).abs().max() <= 1


def test_no_faces_load_as_an_empty_set(synth_train):
    """A run without validation faces (``val_size=0``) loads an empty labelled set."""
    faces = load_faces(synth_train / "images", 32, read_gt(synth_train / "gt.csv"), filenames=[])
    assert len(faces) == 0 and faces.images.shape == (0, 3, 32, 32) and faces.keypoints.shape == (0, 14, 2)
