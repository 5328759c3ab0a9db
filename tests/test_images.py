"""Tests of image discovery and decoding: every PIL mode to RGB uint8, resizing, errors."""

import warnings

import numpy as np
import pytest
from PIL import Image

from facepoints_lib.core.images import (ImageReadError, list_images, read_image, read_image_resized,
                                   read_image_size, to_rgb)

W, H = 10, 6    # small non-square test images


def _i16(value: int) -> Image.Image:
    img = Image.new("I;16", (W, H))
    img.frombytes(np.full((H, W), value, dtype="<u2").tobytes())
    return img


def _palette() -> Image.Image:
    img = Image.new("P", (W, H), 0)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    img.paste(1, (0, 0, W, H))
    return img


# mode, file extension, image, expected RGB of every pixel
MODE_CASES = [
    ("L", "png", Image.new("L", (W, H), 100), (100, 100, 100)),
    ("LA", "png", Image.new("LA", (W, H), (100, 7)), (100, 100, 100)),
    ("P", "png", _palette(), (10, 200, 30)),
    ("P", "gif", _palette(), (10, 200, 30)),
    ("RGBA", "png", Image.new("RGBA", (W, H), (200, 100, 50, 3)), (200, 100, 50)),
    ("CMYK", "tif", Image.new("CMYK", (W, H), (0, 255, 255, 0)), (255, 0, 0)),
    ("CMYK", "jpg", Image.new("CMYK", (W, H), (0, 0, 0, 0)), (255, 255, 255)),
    ("I;16", "png", _i16(25700), (100, 100, 100)),
    ("I;16", "tif", _i16(65535), (255, 255, 255)),
    ("1", "png", Image.new("1", (W, H), 1), (255, 255, 255)),
    ("1", "bmp", Image.new("1", (W, H), 0), (0, 0, 0)),
    ("RGB", "webp", Image.new("RGB", (W, H), (20, 40, 60)), (20, 40, 60)),
]


@pytest.mark.parametrize("mode, ext, img, rgb", MODE_CASES,
                         ids=[f"{m}-{e}" for m, e, _, _ in MODE_CASES])
def test_every_mode_becomes_rgb_uint8(tmp_path, mode, ext, img, rgb):
    path = tmp_path / f"face.{ext}"
    img.save(path)
    with Image.open(path) as stored:
        assert stored.mode == mode          # the file really holds that mode
    decoded = read_image(path)
    assert decoded.mode == "RGB" and decoded.size == (W, H)
    array = np.asarray(decoded)
    assert array.dtype == np.uint8 and array.shape == (H, W, 3)
    tolerance = 3 if ext in ("jpg", "webp") else 0     # lossy formats
    assert np.abs(array.astype(int) - np.array(rgb)).max() <= tolerance
    resized, size = read_image_resized(path, 16)
    assert size == (W, H)
    assert resized.dtype == np.uint8 and resized.shape == (16, 16, 3)
    assert np.abs(resized.astype(int) - np.array(rgb)).max() <= tolerance


def test_to_rgb_32_bit_and_float():
    ints = Image.fromarray(np.array([[0, 257 * 10, 65535, 10 ** 6]], dtype=np.int32))
    assert ints.mode == "I"
    np.testing.assert_array_equal(np.asarray(to_rgb(ints))[0, :, 0], [0, 10, 255, 255])
    floats = Image.fromarray(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32))
    assert floats.mode == "F"
    out = np.asarray(to_rgb(floats))
    assert out.dtype == np.uint8 and out.shape == (1, 3, 3)
    np.testing.assert_array_equal(out[0, :, 1], [0, 128, 255])
    flat = Image.fromarray(np.full((2, 2), 5.0, dtype=np.float32))
    assert np.asarray(to_rgb(flat)).max() == 0
    rgb = Image.new("RGB", (2, 2), (1, 2, 3))
    assert to_rgb(rgb) is rgb


def test_list_images_skips_other_files_with_one_warning(tmp_path):
    for name in ("b.jpg", "a.PNG", "c.jpeg", ".hidden.jpg", "gt.csv", ".DS_Store", "Thumbs.db"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.jpg").mkdir()
    with pytest.warns(UserWarning) as record:
        names = list_images(tmp_path)
    assert names == ["a.PNG", "b.jpg", "c.jpeg"]
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 5" in message
    for skipped in (".hidden.jpg", "gt.csv", ".DS_Store", "Thumbs.db", "sub.jpg/"):
        assert skipped in message


def test_list_images_clean_folder_is_silent(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list_images(tmp_path) == ["a.jpg"]


def test_list_images_missing_folder(tmp_path):
    with pytest.raises(NotADirectoryError, match="nothere"):
        list_images(tmp_path / "nothere")


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\0" * 40],
                         ids=["empty", "text", "bad-jpeg-header"])
def test_unreadable_image_raises_naming_the_file(tmp_path, content):
    path = tmp_path / "broken_face.jpg"
    path.write_bytes(content)
    for reader in (read_image, lambda p: read_image_resized(p, 32), read_image_size):
        with pytest.raises(ImageReadError, match="broken_face.jpg"):
            reader(path)


def test_truncated_jpeg_raises(tmp_path):
    path = tmp_path / "cut.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image(path)
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image_resized(path, 32)


def test_missing_file_raises_image_read_error(tmp_path):
    with pytest.raises(ImageReadError, match="gone.jpg"):
        read_image(tmp_path / "gone.jpg")


def test_read_image_size_reads_header(tmp_path):
    Image.new("RGB", (37, 21)).save(tmp_path / "a.png")
    assert read_image_size(tmp_path / "a.png") == (37, 21)


# ---- resizing ----

BIG_W, BIG_H = 1203, 805                       # odd sizes: libjpeg's reduced decode pads them
BLOBS = [(150.0, 120.0), (900.0, 300.0), (600.0, 700.0), (1100.0, 60.0)]


def _big_picture(gray: bool = False) -> Image.Image:
    yy, xx = np.mgrid[0:BIG_H, 0:BIG_W].astype(float)
    value = 40 + 100 * xx / BIG_W + 60 * yy / BIG_H
    for x, y in BLOBS:
        value += 150 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 12.0 ** 2))
    if gray:
        return Image.fromarray(np.clip(value, 0, 255).astype(np.uint8))
    return Image.fromarray(np.clip(np.stack([value, 0.8 * value, 0.6 * value], -1), 0, 255).astype(np.uint8))


def _centroid(channel: np.ndarray, x: float, y: float, radius: int = 4) -> np.ndarray:
    i, j = int(round(y)), int(round(x))
    window = channel[i - radius:i + radius + 1, j - radius:j + radius + 1].astype(float)
    window = window - window.min()
    ys, xs = np.mgrid[i - radius:i + radius + 1, j - radius:j + radius + 1]
    return np.array([(window * xs).sum(), (window * ys).sum()]) / window.sum()


@pytest.mark.parametrize("size", [64, 96, 128])
@pytest.mark.parametrize("gray", [False, True], ids=["rgb", "gray"])
def test_large_jpeg_draft_matches_full_decode(tmp_path, size, gray):
    path = tmp_path / "big.jpg"
    _big_picture(gray).save(path, quality=95)
    with Image.open(path) as probe:             # libjpeg really decodes at a reduced scale
        probe.draft(probe.mode, (size, size))
        assert probe.size[0] < BIG_W // 2
    fast, stored = read_image_resized(path, size)
    assert stored == (BIG_W, BIG_H)
    assert fast.shape == (size, size, 3) and fast.dtype == np.uint8
    plain = np.asarray(read_image(path).resize((size, size), Image.Resampling.BILINEAR))
    diff = np.abs(fast.astype(int) - plain.astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 8
    for x, y in BLOBS:                          # features stay where the plain resize puts them
        ex, ey = (x + 0.5) * size / BIG_W - 0.5, (y + 0.5) * size / BIG_H - 0.5
        np.testing.assert_allclose(_centroid(fast[..., 0], ex, ey), _centroid(plain[..., 0], ex, ey),
                                   atol=0.15)


def test_png_resize_is_plain_resize(tmp_path):
    path = tmp_path / "big.png"
    _big_picture().resize((301, 201)).save(path)
    fast, stored = read_image_resized(path, 64)
    assert stored == (301, 201)
    plain = np.asarray(read_image(path).resize((64, 64), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(fast, plain)


def test_resized_array_is_writable(tmp_path):
    Image.new("RGB", (40, 30), (1, 2, 3)).save(tmp_path / "a.png")
    array, _ = read_image_resized(tmp_path / "a.png", 32)
    assert array.flags.writeable
