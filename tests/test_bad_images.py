"""Bad inputs, images and image folders: odd files beside the pictures, every image mode,
unreadable, huge, tiny, 16-bit and float pictures, EXIF tags, names that are not ASCII or
not UTF-8, symlink loops and FIFOs named like images (docs/bad-inputs.md, "Image folders").

Each gets a clear error or a documented, warned skip, through ``list_images``,
``read_image_resized``, ``detect`` and ``facepoints detect``. The folder and network are
the session fixtures ``messy_folder`` and ``hard_model`` (conftest.py, bad_inputs.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from bad_inputs import NOT_IMAGES, UNREADABLE, face, save
from facepoints_lib.core.dataset import load_faces
from facepoints_lib.core.detect import detect
from facepoints_lib.core.gt_csv import read_gt, write_gt
from facepoints_lib.core.images import ImageReadError, list_images, read_image_resized


def test_list_images_skips_non_images_with_one_warning(messy_folder):
    folder, sizes = messy_folder
    with pytest.warns(UserWarning, match="skipped 5 entries that are not images") as record:
        names = list_images(folder)
    assert len(record) == 1
    for entry in NOT_IMAGES:
        assert entry in str(record[0].message)
    assert names == sorted(list(sizes) + list(UNREADABLE))


def test_detect_returns_every_readable_image_and_names_the_unreadable(messy_folder, hard_model):
    folder, sizes = messy_folder
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = detect(hard_model, folder)
    messages = [str(w.message) for w in record]
    unreadable = [m for m in messages if "could not be read" in m]
    assert len(unreadable) == 1
    assert unreadable[0].startswith(f"{len(UNREADABLE)} of {len(sizes) + len(UNREADABLE)} images")
    for name in UNREADABLE:
        assert name in unreadable[0]
    assert any("not images" in m for m in messages)
    assert set(result) == set(sizes)                 # nested/ and non-images are not read
    for name, points in result.items():
        assert points.shape == (28,) and points.dtype == np.float64
        assert np.isfinite(points).all()
        w, h = sizes[name]
        xy = points.reshape(14, 2)
        # soft-argmax keeps points inside the input frame; in pixels that is [-0.5, side - 0.5]
        assert (xy[:, 0] >= -0.5 - 1e-6).all() and (xy[:, 0] <= w - 0.5 + 1e-6).all(), name
        assert (xy[:, 1] >= -0.5 - 1e-6).all() and (xy[:, 1] <= h - 0.5 + 1e-6).all(), name


@pytest.mark.parametrize("name", UNREADABLE)
def test_unreadable_image_raises_image_read_error_naming_it(messy_folder, name):
    folder, _ = messy_folder
    with pytest.raises(ImageReadError, match=f"cannot read image .*{name}"):
        read_image_resized(folder / name, 32)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I"])
def test_every_mode_becomes_the_same_rgb(tmp_path, mode):
    """A flat grey of 200 reads as (200, 200, 200) whatever the mode ("1" is 0/255)."""
    grey = Image.new("RGB", (20, 12), (200, 200, 200))
    if mode in ("I;16", "I"):
        img = Image.fromarray(np.full((12, 20), 200 * 257, dtype=np.uint16 if mode == "I;16" else np.int32))
    elif mode == "RGBA":
        img = grey.convert("RGBA")
        img.putalpha(0)                                # fully transparent: alpha is dropped
    elif mode in ("1", "P"):                           # no dithering: one exact level
        img = grey.convert(mode, dither=Image.Dither.NONE, palette=Image.Palette.ADAPTIVE)
    else:
        img = grey.convert(mode)
    path = save(img, tmp_path / f"grey.{'tif' if mode in ('I', 'CMYK') else 'png'}")
    array, size = read_image_resized(path, 16)
    assert size == (20, 12)
    assert array.shape == (16, 16, 3) and array.dtype == np.uint8
    expected = 255 if mode == "1" else 200
    assert np.abs(array.astype(int) - expected).max() <= 1


def test_exif_orientation_is_ignored(tmp_path):
    """Labels refer to the stored pixels: an EXIF rotation tag changes nothing."""
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    ImageDraw.Draw(img).rectangle((0, 0, 9, 19), fill=(255, 0, 0))      # red band on the left
    exif = Image.Exif()
    exif[0x0112] = 6                                                     # "rotate 90 CW to view"
    rotated = save(img, tmp_path / "rotated.jpg", quality=95, exif=exif.tobytes())
    plain = save(img, tmp_path / "plain.jpg", quality=95)
    with Image.open(rotated) as check:                 # the tag is really there and would rotate
        assert check.getexif().get(0x0112) == 6
        assert ImageOps.exif_transpose(check).size == (20, 40)
    a_rot, size_rot = read_image_resized(rotated, 32)
    a_plain, size_plain = read_image_resized(plain, 32)
    assert size_rot == size_plain == (40, 20)
    np.testing.assert_array_equal(a_rot, a_plain)
    assert a_rot[:, :4, 0].mean() > 200 and a_rot[:, -4:, 2].mean() > 200   # red stays on the left

    coords = np.tile([5.0, 10.0], 14)                  # inside the red band, stored frame
    faces = load_faces(tmp_path, 32, {"rotated.jpg": coords})
    np.testing.assert_allclose(faces.keypoints[0].numpy(), np.tile([5.5 / 40, 10.5 / 20], (14, 1)), rtol=1e-6)


def test_huge_and_tiny_images_keep_their_geometry(messy_folder):
    folder, _ = messy_folder
    array, size = read_image_resized(folder / "huge 6000.jpg", 32)
    assert size == (6000, 6000)
    assert array[:, :15].max() < 60 and array[:, 17:].min() > 190     # dark left half, light right
    array, size = read_image_resized(folder / "tiny 16.png", 64)
    assert size == (16, 16) and array.shape == (64, 64, 3)


def test_filenames_with_spaces_and_non_ascii_round_trip(tmp_path, hard_model):
    names = ["a face.jpg", "visage é.jpg", "顔 2.png", "comma, quote\".png"]
    folder = tmp_path / "images"
    folder.mkdir()
    table = {}
    for i, name in enumerate(names):
        img, points = face(i)
        save(img, folder / name)
        table[name] = points
    gt_path = write_gt(table, tmp_path / "gt.csv")
    assert sorted(read_gt(gt_path)) == sorted(names)
    assert sorted(detect(hard_model, folder, flip_tta=False)) == sorted(names)


def test_jfif_and_jpe_files_are_images(tmp_path):
    for name in ("a.jfif", "b.JPE"):
        save(face(1, (40, 40))[0], tmp_path / name, format="JPEG")
    assert list_images(tmp_path) == ["a.jfif", "b.JPE"]


# --------------------------------------------------------------------------- symlink loops, FIFOs, raw-byte names

@pytest.fixture()
def trap_folder(tmp_path):
    """Two good images beside a symlink loop and a FIFO, both named like images."""
    folder = tmp_path / "traps"
    folder.mkdir()
    for i in range(2):
        save(face(300 + i, (64, 64))[0], folder / f"good{i}.png")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    os.mkfifo(folder / "pipe.jpg")
    return folder


def test_a_symlink_loop_or_a_fifo_costs_only_itself(trap_folder, hard_model):
    with pytest.warns(UserWarning, match=r"skipped 2 entries that are not images: loop.jpg \(.*\), pipe.jpg"):
        assert list_images(trap_folder) == ["good0.png", "good1.png"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert sorted(detect(hard_model, trap_folder)) == ["good0.png", "good1.png"]


def test_a_fifo_named_in_filenames_is_reported_not_waited_on(trap_folder, hard_model):
    out: dict = {}

    def run():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out["points"] = detect(hard_model, trap_folder, filenames=["pipe.jpg", "loop.jpg", "good0.png"])
        out["warnings"] = [str(w.message) for w in caught]

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "detect waited on the FIFO"
    assert sorted(out["points"]) == ["good0.png"]
    message = next(m for m in out["warnings"] if "could not be read" in m)
    assert "pipe.jpg (cannot read image" in message and "not a regular file (a FIFO)" in message
    assert "loop.jpg (cannot read image" in message


def test_a_file_name_that_is_not_utf8_is_detected_and_written(hard_model, tmp_path):
    from facepoints_lib.tools.cli import main

    folder = tmp_path / "latin1"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")                 # how Python spells a raw-byte name
    save(face(7, (64, 64))[0], folder / name)
    out = tmp_path / "out.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["detect", str(folder), "--model", str(hard_model), "--out", str(out)]) == 0
    assert b"\ncaf\xe9.png," in out.read_bytes()


# --------------------------------------------------------------------------- 16-bit and float pictures

def test_a_large_16bit_image_is_shrunk_in_its_own_mode_and_keeps_its_geometry(tmp_path):
    """A white square at a known spot of a 2000 x 1500 16-bit PNG lands at the same
    normalised spot as in an 8-bit copy of the same picture."""
    from facepoints_lib.core.images import SHRINK_FIRST

    picture = np.zeros((1500, 2000), dtype=np.uint16)
    picture[300:600, 1200:1500] = 65535                       # x 1200-1500, y 300-600
    Image.fromarray(picture).save(tmp_path / "wide16.png")
    Image.fromarray((picture // 257).astype(np.uint8)).save(tmp_path / "wide8.png")
    assert max(picture.shape) > SHRINK_FIRST * 64                # takes the shrinking path
    deep, size16 = read_image_resized(tmp_path / "wide16.png", 64)
    plain, size8 = read_image_resized(tmp_path / "wide8.png", 64)
    assert size16 == size8 == (2000, 1500)
    assert np.abs(deep.astype(int) - plain.astype(int)).mean() < 2.0
    rows, cols = np.nonzero(deep[..., 0] > 128)
    assert (rows.min(), rows.max()) == (13, 25) and (cols.min(), cols.max()) == (38, 47)


def test_one_inf_pixel_does_not_blank_a_float_image(tmp_path):
    values = np.linspace(0, 1, 80 * 60, dtype=np.float32).reshape(60, 80)
    values[5, 5] = np.inf
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    array, _ = read_image_resized(tmp_path / "f.tif", 32)
    assert 100 < array.mean() < 155 and array.max() > 240      # a gradient, not black


_PEAK_RSS = """
import resource, sys
import numpy as np
from PIL import Image
Image.MAX_IMAGE_PIXELS = None
Image.fromarray(np.full((6000, 6000), 40000, dtype=np.uint16)).save(sys.argv[1])
from facepoints_lib.core.images import read_image_resized
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
read_image_resized(sys.argv[1], 96)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_decoding_a_large_16bit_image_takes_little_more_than_its_pixels(tmp_path):
    """6000 x 6000 16-bit: 72 MB of pixels. The float64 copy of the whole picture took
    1.3 GB; shrinking first keeps the peak near the decode itself."""
    proc = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(tmp_path / "big.png")],
                          capture_output=True, text=True, timeout=120, check=True)
    grew_mb = float(proc.stdout.strip().splitlines()[-1])
    assert grew_mb < 300, grew_mb
