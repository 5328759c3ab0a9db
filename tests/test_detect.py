"""Tests of detect(): every image, 28 numbers in original pixels, chunking, bad files."""

import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from facepoints_lib.core.checkpoint import CheckpointError
from facepoints_lib.core.detect import detect
from facepoints_lib.core.gt_csv import read_img_shapes


@pytest.fixture()
def folder(tmp_path, small_faces):
    """The 12 small synthetic faces plus two hand-made non-square images (PNG and grayscale)."""
    out = tmp_path / "images"
    shutil.copytree(small_faces / "images", out)
    Image.new("RGB", (90, 60), (120, 90, 60)).save(out / "wide.png")
    Image.new("L", (40, 130), 80).save(out / "tall_gray.jpg")
    return out


def _sizes(folder):
    sizes = {}
    for path in folder.iterdir():
        with Image.open(path) as img:
            sizes[path.name] = img.size
    return sizes


def test_every_image_gets_28_floats(folder, tiny_model_path):
    result = detect(tiny_model_path, folder)
    sizes = _sizes(folder)
    assert sorted(result) == sorted(sizes)
    for name, coords in result.items():
        assert isinstance(coords, np.ndarray) and coords.dtype == np.float64 and coords.shape == (28,)
        assert np.all(np.isfinite(coords))
        width, height = sizes[name]
        assert np.all((coords[0::2] >= -0.5) & (coords[0::2] <= width - 0.5)), name
        assert np.all((coords[1::2] >= -0.5) & (coords[1::2] <= height - 0.5)), name


def test_pixel_coordinates_are_exact(folder, constant_model_path):
    """The constant network predicts u = 0.25, v = 0.75: x = 0.25 w - 0.5, y = 0.75 h - 0.5."""
    result = detect(constant_model_path, folder, flip_tta=False, second_look=False)
    for name, (width, height) in _sizes(folder).items():
        np.testing.assert_allclose(result[name][0::2], 0.25 * width - 0.5, atol=1e-4)
        np.testing.assert_allclose(result[name][1::2], 0.75 * height - 0.5, atol=1e-4)
    # With flip TTA the mirrored prediction (u = 0.75) is averaged in: x at the centre.
    tta = detect(constant_model_path, folder, flip_tta=True, second_look=False)
    width, height = _sizes(folder)["wide.png"]
    np.testing.assert_allclose(tta["wide.png"][0::2], 0.5 * width - 0.5, atol=1e-4)


def test_synthetic_sizes_match_img_shapes(small_faces, constant_model_path):
    shapes = read_img_shapes(small_faces / "img_shapes.csv")
    result = detect(constant_model_path, small_faces / "images", flip_tta=False)
    for name, (rows, cols) in shapes.items():
        assert result[name][0] == pytest.approx(0.25 * cols - 0.5, abs=1e-4)
        assert result[name][1] == pytest.approx(0.75 * rows - 0.5, abs=1e-4)


@pytest.mark.parametrize("chunk", [3, 5])
def test_chunks_give_the_same_result(folder, tiny_model_path, chunk):
    whole = detect(tiny_model_path, folder)
    pieces = detect(tiny_model_path, folder, chunk=chunk)
    assert list(pieces) == list(whole)
    for name in whole:
        np.testing.assert_allclose(pieces[name], whole[name], atol=1e-4)
    spread = np.ptp(np.stack(list(whole.values())), axis=0)
    assert spread.max() > 0.1                  # predictions really depend on the image


def test_unreadable_image_is_warned_about_and_left_out(folder, tiny_model_path):
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning) as record:
        result = detect(tiny_model_path, folder, chunk=4)
    messages = [str(w.message) for w in record]
    assert any("broken.jpg" in m and "could not be read" in m for m in messages)
    assert any("notes.txt" in m and "not images" in m for m in messages)
    assert "broken.jpg" not in result and "notes.txt" not in result
    assert len(result) == 14


def test_filenames_progress_threads(folder, tiny_model_path):
    updates = []

    class Bar:
        def __init__(self, total, desc, unit):
            assert total == 3 and desc == "detect"

        def update(self, n):
            updates.append(n)

        def close(self):
            updates.append("closed")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = detect(tiny_model_path, folder, filenames=["wide.png", "00003.jpg", "00001.jpg"],
                        chunk=2, progress=Bar, threads=1)
    assert list(result) == ["wide.png", "00003.jpg", "00001.jpg"]
    assert updates == [2, 1, "closed"]


def test_errors(tmp_path, folder, tiny_model_path):
    with pytest.raises(NotADirectoryError, match="nothere"):
        detect(tiny_model_path, tmp_path / "nothere")
    with pytest.raises(ValueError, match="chunk"):
        detect(tiny_model_path, folder, chunk=0)
    with pytest.raises(CheckpointError):
        detect(tmp_path / "no_model.pt", folder)


def test_empty_folder(tmp_path, tiny_model_path):
    (tmp_path / "empty").mkdir()
    with pytest.warns(UserWarning, match="no images"):
        assert detect(tiny_model_path, tmp_path / "empty") == {}
