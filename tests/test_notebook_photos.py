"""Notebook 05's support module (``facepoints_lib.notebook.photos``): the examples, the
figures' geometry, the upload, and one clear message when the photos extra or the model
is missing (the notebook itself runs under nbval in tests/test_notebooks.py)."""

from __future__ import annotations

import datetime
import io

import matplotlib

matplotlib.use("Agg")   # noqa: E402 - before pyplot is imported by the modules below

import numpy as np
import pytest
from PIL import Image

from facepoints_lib.core.images import ImageReadError
from facepoints_lib.notebook import photos
from facepoints_lib.notebook.data import project_root
from facepoints_lib.tools import photo as photo_tool
from facepoints_lib.tools.photo import PhotoFace, points_frame, to_photo

def _face(x0=40.0, y0=30.0, side=100.0, confidence=0.7) -> PhotoFace:
    rng = np.random.default_rng(0)
    points = np.array([x0, y0]) + rng.uniform(0.2, 0.8, (14, 2)) * side
    return PhotoFace((x0 + 10, y0 + 10, x0 + side - 10, y0 + side - 10), 0, 1.1, points, confidence,
                     (x0, y0, x0 + side, y0 + side * 1.2))


def _jpeg(pixels: np.ndarray, orientation: int | None = None) -> bytes:
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(out, format="JPEG", exif=exif.tobytes(), quality=95)
    return out.getvalue()


class StubFinder:
    """Finds one made-up face in any picture (no dlib, no model)."""

    ready = True

    def describe(self):
        return "a stub"

    def find(self, name, picture):
        return photos.Found.of(name, picture, [_face()], 32)


def test_without_the_extra_one_line_says_what_to_do_and_nothing_fails(monkeypatch, tmp_path):
    def no_dlib():
        raise ImportError(photo_tool.INSTALL_HINT)

    monkeypatch.setattr(photo_tool, "_detector", no_dlib)
    finder = photos.load_finder(project_root() / "facepoints_model.pt")
    assert not finder.ready
    message = finder.describe()
    assert "pip install -e '.[photos]'" in message and "restart the kernel" in message and "\n" not in message
    found = finder.find_all({"a": Image.new("RGB", (64, 48))})
    assert [(f.name, f.faces, f.crops) for f in found] == [("a", [], [])]
    explorer = photos.PhotoExplorer(finder, found)
    assert explorer.upload.disabled and explorer.status.value == message
    assert photos.photos_figure([]) is None and photos.crops_figure(found) is None
    assert "no face found" in photos.faces_table(found)
    assert "no example pictures" in photos.describe_photos({})


def test_without_a_model_file_one_line_says_so(photos_extra, tmp_path):
    finder = photos.load_finder(tmp_path / "none.pt")
    assert not finder.ready and "No model file" in finder.describe() and "facepoints train" in finder.describe()
    assert not photos.load_finder(None).ready                 # MODEL = "train": nothing to load here


def test_the_crop_points_are_the_photo_points_in_the_crop():
    face = _face()
    normalised = photos.crop_points(face)
    assert np.allclose(to_photo(normalised, face.crop), face.points)
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 240, 3), dtype=np.uint8))
    found = photos.Found.of("p", picture, [face], 48)
    assert found.crops[0].shape == (48, 48, 3) and found.crops[0].dtype == np.uint8
    table = photos.faces_table([found])
    assert "(50, 40) - (130, 120)" in table and "0.70" in table


def test_the_roll_of_a_face():
    upright = np.zeros((14, 2))
    upright[5], upright[8] = (0, 0), (10, 0)
    assert photos.roll_degrees(upright) == 0
    turned = upright[:, ::-1].copy()                          # eyes one above the other
    assert abs(photos.roll_degrees(turned)) == 90


def test_an_upload_is_read_as_a_viewer_shows_it_and_redrawn():
    stored = np.zeros((30, 50, 3), dtype=np.uint8)
    stored[:, :10] = 255                                      # a white band on the stored left
    content = _jpeg(stored, orientation=6)                    # "turn 90 degrees clockwise to view"
    value = ({"name": "phone.jpg", "type": "image/jpeg", "size": len(content), "content": memoryview(content),
              "last_modified": datetime.datetime(2026, 12, 7, tzinfo=datetime.timezone.utc)},)   # ipywidgets 8's value
    assert photos.uploaded_files(value) == [("phone.jpg", content)]
    viewed = np.asarray(photos.read_uploaded("phone.jpg", content))
    assert viewed.shape == (50, 30, 3) and viewed[:10].mean() > 200
    with pytest.raises(ImageReadError):
        photos.read_uploaded("notes.txt", b"not a picture")

    explorer = photos.PhotoExplorer(StubFinder(), [])
    explorer.upload.value = value                             # as the browser sets it
    assert explorer.status.value == "phone.jpg: 1 face found"
    assert explorer.upload.value == ()                        # the same file again is a new upload
    assert [f.name for f in explorer.shown] == ["phone.jpg"] and explorer.shown[0].photo.size == (30, 50)
    outputs = explorer.view.outputs                           # the photo, its crop, the table
    assert [o["output_type"] for o in outputs] == ["display_data", "display_data", "stream"]
    assert all(o["data"]["image/png"] for o in outputs[:2]) and "phone.jpg" in outputs[2]["text"]
    explorer.load("notes.txt", b"not a picture")
    assert "not a picture" in explorer.status.value and explorer.shown[0].name == "phone.jpg"
    explorer._on_back(None)
    assert explorer.shown == [] and "examples" in explorer.status.value


def test_the_framing_summary_reads_the_measured_file():
    text = photos.framing_summary()
    assert "course training faces" in text and "b wide" in text and "s wide" in text


def test_the_examples_and_their_faces(photos_extra):
    """The astronaut upright, turned 60 degrees, a quarter, and twice in a group: one face
    each (two in the group), the points inside the crop, the roll as turned."""
    pictures = photos.example_photos()
    assert {name: p.size for name, p in pictures.items()} == {
        "astronaut": (512, 512), "turned 60°": (700, 700), "a quarter turn": (512, 512), "group of two": (800, 480)}
    finder = photos.load_finder(project_root() / "facepoints_model.pt")
    assert finder.ready, finder.describe()
    found = {f.name: f for f in finder.find_all(pictures)}
    assert {name: len(f.faces) for name, f in found.items()} == {
        "astronaut": 1, "turned 60°": 1, "a quarter turn": 1, "group of two": 2}
    for expected, name in ((0, "astronaut"), (-60, "turned 60°"), (-90, "a quarter turn"), (0, "group of two")):
        for face, crop in zip(found[name].faces, found[name].crops):
            inside = photos.crop_points(face)
            assert (inside > 0).all() and (inside < 1).all(), name
            assert abs(photos.roll_degrees(face.points) - expected) < 15, (name, photos.roll_degrees(face.points))
            _, _, rotation = points_frame(face.points)
            upright = face.points @ rotation
            assert upright[[5, 8], 1].mean() < upright[12, 1], f"{name}: the eyes are not above the mouth"
            assert crop.shape == (96, 96, 3) or crop.shape[0] == finder.model.config.image_size
