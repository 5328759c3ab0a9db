"""Faces in any photo (tools/photo.py, tools/photo_cli.py): geometry, EXIF, the CSV, and the
whole command on a real photo that scikit-image ships (the photos extra)."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facepoints_lib.core.gt_csv import GT_HEADER, read_gt
from facepoints_lib.core.images import read_image
from facepoints_lib.tools import cli
from facepoints_lib.tools.photo import (FRAMING_FILE, FoundFace, Framing, PhotoFace, box_crop, cut, find_faces,
                                        points_crop, points_frame, read_photo, to_photo)
from facepoints_lib.tools.photo_bench import _Box, _apply, _invert, _match, _paste_matrix
from facepoints_lib.tools.photo_cli import PHOTO_HEADER, photo_rows

REPO_ROOT = Path(__file__).resolve().parents[1]
FRAMING = Framing(box_width=1.6, box_height=1.7, box_dx=0.02, box_dy=-0.1,
                  points_width=1.9, points_height=2.1, points_dx=0.01, points_dy=-0.05)


def _face_points(centre=(200.0, 150.0), scale=40.0, degrees=0.0) -> np.ndarray:
    """14 plausible points (upright template) turned by ``degrees`` about ``centre``."""
    template = np.array([[-0.9, -0.6], [-0.3, -0.65], [0.3, -0.65], [0.9, -0.6], [-0.75, -0.3], [-0.5, -0.3],
                         [-0.25, -0.3], [0.25, -0.3], [0.5, -0.3], [0.75, -0.3], [0.0, 0.2], [-0.4, 0.6],
                         [0.0, 0.62], [0.4, 0.6]])
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return np.asarray(centre) + (template * scale) @ rot.T


class _DotFinder:
    """Stands in for dlib's finder: 'finds' the brightest pixel of a view as a face of side 9."""

    def run(self, pixels, upsample, threshold):
        gray = np.asarray(pixels, dtype=np.float64).sum(axis=-1)
        y, x = np.unravel_index(np.argmax(gray), gray.shape)
        return [_Box(x - 4, y - 4, x + 4, y + 4)], [1.0], [0]


def test_a_face_found_in_a_turned_view_maps_back_to_the_photo():
    """Each view (upright, each quarter turn) finds the same dot; mapped back, every find
    lies on the dot, so they count as one face."""
    pixels = np.zeros((70, 110, 3), dtype=np.uint8)
    pixels[20, 80] = 255                                      # the dot's centre: (80.5, 20.5)
    finder = _DotFinder()
    for angle in (0, 90, 180, 270):
        face, = find_faces(Image.fromarray(pixels), finder, views=(angle,))
        assert face.centre == pytest.approx((80.5, 20.5), abs=1e-9) and face.angle == angle
        assert face.box() == pytest.approx((76.0, 16.0, 85.0, 25.0), abs=1e-9)
    assert len(find_faces(Image.fromarray(pixels), finder)) == 1


def test_a_crop_maps_its_points_back_to_the_photo_exactly():
    """An integer crop at the crop's own size is the photo's pixels (black outside), and
    each crop pixel's centre maps back onto that pixel of the photo."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    photo = Image.fromarray(pixels)
    crop = (50.0, -10.0, 90.0, 30.0)                          # reaches past the right and the top
    seen = cut(photo, crop, 40).transpose(1, 2, 0)
    assert np.array_equal(seen[10:, :30], pixels[:30, 50:80])
    assert not seen[:10].any() and not seen[:, 30:].any()    # black beyond the photo
    i, j = np.meshgrid(np.arange(40), np.arange(40), indexing="xy")
    normalised = np.stack([(i + 0.5) / 40, (j + 0.5) / 40], axis=-1)
    back = to_photo(normalised, crop)
    assert np.abs(back[..., 0] - (50 + i)).max() < 1e-9 and np.abs(back[..., 1] - (-10 + j)).max() < 1e-9


def test_a_scaled_crop_samples_the_photo_where_the_mapping_says():
    """A horizontal ramp (value = x) cut at a fractional place and scaled: every crop pixel
    holds the x that ``to_photo`` gives for it (to the ramp's rounding to whole values)."""
    ramp = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (64, 1, 3))
    crop = (20.25, 3.5, 140.75, 60.0)
    seen = cut(Image.fromarray(ramp), crop, 48)[0].astype(np.float64)
    centres = (np.arange(48) + 0.5) / 48
    expected = to_photo(np.stack([centres, np.full(48, 0.5)], axis=-1), crop)[:, 0]
    assert np.abs(seen - expected[None, :]).max() <= 0.51


@pytest.mark.parametrize("degrees", [0.0, 17.0, -30.0, 90.0, 180.0])
def test_the_second_pass_frames_the_points_as_the_course_does(degrees):
    """Measured back (as ``measure-framing`` measures a course crop), the crop cut around
    14 points has exactly the framing it was cut with."""
    points = _face_points(degrees=degrees)
    x0, y0, x1, y1 = points_crop(points, FRAMING)
    centre, scale, rotation = points_frame(points)
    w, h = x1 - x0, y1 - y0
    if abs(rotation[1, 0]) > abs(rotation[0, 0]):
        w, h = h, w
    crop_centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2]) - 0.5          # in the points' pixel-centre frame
    offset = rotation.T @ (crop_centre - centre) / scale
    assert w / scale == pytest.approx(FRAMING.points_width) and h / scale == pytest.approx(FRAMING.points_height)
    assert offset == pytest.approx([FRAMING.points_dx, FRAMING.points_dy], abs=1e-9)


def test_a_box_found_turned_gets_the_crop_turned_alike():
    upright = box_crop(FoundFace((150.0, 150.0), 100.0, 0.0, 1.0), FRAMING)
    assert upright == pytest.approx((150 - 80 + 2, 150 - 85 - 10, 150 + 80 + 2, 150 + 85 - 10))
    turned = box_crop(FoundFace((150.0, 150.0), 100.0, 90.0, 1.0), FRAMING)   # the face lies on its side
    assert turned[2] - turned[0] == pytest.approx(170) and turned[3] - turned[1] == pytest.approx(160)
    # upright in the photo turned anticlockwise by 90 degrees: its top points right in the photo,
    # so the crop's centre, 10 px up the face and 2 px to its right, is 10 px right and 2 px down
    assert (turned[0] + turned[2]) / 2 == pytest.approx(150 + 10) and (turned[1] + turned[3]) / 2 == pytest.approx(150 + 2)


def test_photos_are_read_as_a_viewer_sees_them_and_course_crops_as_stored(tmp_path):
    stored = np.zeros((30, 50, 3), dtype=np.uint8)
    stored[:, :10] = 255                                      # a white band on the stored left
    exif = Image.Exif()
    exif[0x0112] = 6                                          # "rotate 90 degrees clockwise to view"
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    viewed = np.asarray(read_photo(path))
    assert viewed.shape == (50, 30, 3) and viewed[:10].mean() > 200 and viewed[-10:].mean() < 50
    assert read_image(path).size == (50, 30)                  # the course reader keeps the stored pixels


def test_the_csv_has_one_row_per_face_under_the_course_column_names():
    faces = [PhotoFace((1, 2, 3, 4), 0.0, 0.5, np.arange(28, dtype=float).reshape(14, 2), 0.75, (0, 0, 5, 5)),
             PhotoFace((5, 6, 7, 8), 90.0, 0.1, np.zeros((14, 2)), None, (0, 0, 5, 5))]
    rows = photo_rows("a b.jpg", faces)
    text = io.StringIO()
    csv.writer(text).writerows([PHOTO_HEADER, *rows])
    table = list(csv.DictReader(io.StringIO(text.getvalue())))
    assert PHOTO_HEADER == ["filename", "face", "box_x0", "box_y0", "box_x1", "box_y1", "confidence", *GT_HEADER[1:]]
    assert [r["face"] for r in table] == ["0", "1"] and table[0]["filename"] == "a b.jpg"
    assert table[0]["confidence"] == "0.750" and table[1]["confidence"] == ""
    assert float(table[0]["x14"]) == 26 and float(table[0]["y14"]) == 27 and float(table[0]["box_x1"]) == 3


def test_the_stored_framing_is_the_measured_one():
    framing = Framing.load(FRAMING_FILE if FRAMING_FILE.is_absolute() else REPO_ROOT / FRAMING_FILE)
    assert 1.0 < framing.box_width < 3.0 and 1.0 < framing.box_height < 3.0
    assert 1.0 < framing.points_width < 4.0 and abs(framing.points_dx) < 0.3


def _astronaut(tmp_path) -> Path:
    spec = importlib.util.find_spec("skimage")
    source = Path(spec.submodule_search_locations[0]) / "data" / "astronaut.png"
    path = tmp_path / "astronaut.png"
    path.write_bytes(source.read_bytes())
    return path


@pytest.mark.parametrize("turns", [0, 1])
def test_the_photo_command_finds_the_face_and_its_points(photos_extra, tmp_path, capsys, monkeypatch, turns):
    """scikit-image's astronaut (a NASA portrait, public domain), upright and turned a
    quarter: one face, its points inside the box, eyes above the mouth in the face's frame."""
    monkeypatch.chdir(REPO_ROOT)
    path = _astronaut(tmp_path)
    if turns:
        Image.open(path).rotate(90, expand=True).save(path)
    out = tmp_path / "faces.csv"
    assert cli.main(["photo", str(path), "--out", str(out), "--draw", str(tmp_path / "drawn")]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1 and rows[0]["filename"] == "astronaut.png"
    box = [float(rows[0][k]) for k in ("box_x0", "box_y0", "box_x1", "box_y1")]
    points = np.array([float(rows[0][k]) for k in GT_HEADER[1:]]).reshape(14, 2)
    assert (points[:, 0] > box[0] - 20).all() and (points[:, 0] < box[2] + 20).all()
    assert (points[:, 1] > box[1] - 20).all() and (points[:, 1] < box[3] + 20).all()
    _, _, rotation = points_frame(points)
    upright = points @ rotation                               # the face's own frame
    assert upright[[5, 8], 1].mean() < upright[12, 1]         # eyes above the mouth
    assert 0.0 <= float(rows[0]["confidence"]) <= 1.0
    assert (tmp_path / "drawn" / "astronaut.jpg").is_file()
    assert "wrote 1 face from 1 picture" in capsys.readouterr().out


def test_a_picture_with_no_face_gets_no_row_and_one_warning(photos_extra, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    Image.new("RGB", (320, 240), (90, 140, 200)).save(tmp_path / "sky.png")
    Image.new("RGB", (200, 200), (20, 20, 20)).save(tmp_path / "night.jpg")
    out = tmp_path / "faces.csv"
    assert cli.main(["photo", str(tmp_path), "--out", str(out)]) == 0
    assert out.read_text().splitlines() == [",".join(PHOTO_HEADER)]
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "no face found in 2 of 2 pictures: night.jpg, sky.png" in err


@pytest.mark.parametrize("angle, scale", [(0.0, 1.0), (90.0, 2.0), (-37.0, 0.7)])
def test_a_pasted_face_lies_where_its_matrix_says(angle, scale):
    """``make-composites`` records each face's points through the paste's affine map: a
    dot of the crop, pasted, lies where the map puts it."""
    crop = np.zeros((40, 60, 3), dtype=np.uint8)
    crop[9:11, 44:46] = 255                                   # a 2x2 dot centred at (44.5, 9.5)
    matrix = _paste_matrix((60, 40), scale, angle, (150.0, 120.0))
    coeffs = tuple(_invert(matrix).reshape(-1))
    layer = np.asarray(Image.fromarray(crop).transform((300, 240), Image.Transform.AFFINE, coeffs,
                                                       Image.Resampling.BILINEAR), dtype=np.float64).sum(axis=-1)
    ys, xs = np.nonzero(layer)
    seen = np.array([(xs * layer[ys, xs]).sum(), (ys * layer[ys, xs]).sum()]) / layer[ys, xs].sum()
    assert seen == pytest.approx(_apply(matrix, np.array([[44.5, 9.5]]))[0], abs=0.05)
    assert _apply(_invert(matrix), _apply(matrix, np.array([[3.25, 7.5]]))) == pytest.approx(np.array([[3.25, 7.5]]), abs=1e-9)


def test_finds_are_matched_to_the_nearest_face_once():
    faces = [{"points": _face_points((100.0, 100.0), 40.0).tolist()}, {"points": _face_points((300.0, 100.0), 40.0).tolist()}]
    owner, false = _match([(102.0, 98.0), (299.0, 104.0), (101.0, 101.0), (600.0, 50.0)], [80.0, 80.0, 80.0, 80.0], faces)
    assert owner == [0, 1, None, None] and false == 2          # a second find of a face counts as false


def test_make_composites_writes_pictures_and_their_faces(tmp_path, capsys):
    from facepoints_lib.tools.synth import make_synthetic_faces

    data = tmp_path / "train"
    make_synthetic_faces(data, 40, seed=3)
    out = tmp_path / "composites"
    assert cli.main(["make-composites", str(data), str(out), "--count", "4", "--holdout", "20"]) == 0
    record = json.loads((out / "faces.json").read_text())
    gt = read_gt(data / "gt.csv")
    assert [p["turned"] for p in record["pictures"]] == [False, True, False, True]
    for picture in record["pictures"]:
        with Image.open(out / "images" / picture["file"]) as img:
            assert list(img.size) == picture["size"]
        assert 1 <= len(picture["faces"]) <= 3
        for face in picture["faces"]:
            source = np.asarray(gt[face["source"]], dtype=np.float64).reshape(14, 2)
            assert np.array(face["points"]) == pytest.approx(_apply(np.array(face["matrix"]), source), abs=1e-3)
            assert (face["angle"] == 0.0) != picture["turned"]
    assert "wrote 4 composites holding" in capsys.readouterr().out
