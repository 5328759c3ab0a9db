"""Notebook 05 (your own photos): faces found in any photo, drawn, and an upload button.

The keypoint model answers for course-framed crops; ``tools.photo.faces_in_photo`` finds
the faces of any photo first (dlib's HOG finder, the ``photos`` extra), cuts each as the
course frames its crops and maps the points back. This module is what notebook 05 calls:

* ``load_finder`` loads the model and the framing once (``PhotoFinder``); without the
  extra, or without a model file, it says why in one line and finds nothing, so every
  cell of the notebook still runs without a traceback;
* ``example_photos`` makes the offline examples from scikit-image's astronaut (a NASA
  portrait, public domain): upright, turned by 60 degrees and by a quarter, and a small
  group picture; ``framing_summary`` says what ``bench/results/course-framing.json`` holds;
* ``photos_figure`` (boxes, points, skeleton on each photo), ``crops_figure`` (the crops
  the model saw in the second pass, with their numbered points) and ``faces_table``;
* ``PhotoExplorer``: an ipywidgets 8 ``FileUpload``; an uploaded picture is drawn with
  the same figures and table, and the examples are shown until then.

dlib and scikit-image are reached only through ``tools.photo`` (the finder) and the
astronaut's file (found with ``importlib.util.find_spec``, nothing imported). Not frozen
into ``solution.py``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from PIL import Image

from ..core.checkpoint import load_model
from ..core.images import ImageReadError
from ..tools import photo as photo_tool
from .data import project_root, shown_path
from .figure_layout import FIGURE_WIDTH, MIN_FONT, wrapped
from .plotting import draw_points, face_grid, save_figure

BACKGROUND = (205, 200, 190)        # the plain background of the turned and group pictures
BOX_COLOUR = "#00c8ff"              # the finder's box
CROP_COLOUR = "#ffd000"             # the crop of the second pass
MAX_CROPS = 16                      # crops drawn at most (a crowd's photo lists every face in the table)
MAX_PHOTO_HEIGHT = 6.0              # inches: one photo's panel at most (a phone's tall picture)
MISSING_EXTRA = ("The photos extra is missing ({why}): install it with  pip install -e '.[photos]'  "
                 "and restart the kernel. Until then this notebook finds no faces.")


@dataclass
class Found:
    """One picture and what was found in it: ``faces`` (``tools.photo.PhotoFace``, points
    in the picture's pixels) and ``crops``, each face's second-pass crop as the model got
    it ((S, S, 3) uint8, S the model's input side)."""

    name: str
    photo: Image.Image
    faces: list = field(default_factory=list)
    crops: list = field(default_factory=list)

    @classmethod
    def of(cls, name: str, photo: Image.Image, faces: list, size: int) -> "Found":
        """The record of ``faces`` found in ``photo``, with their crops cut at ``size`` px."""
        return cls(name, photo, list(faces), [photo_tool.cut(photo, face.crop, size).transpose(1, 2, 0)
                                              for face in faces])


@dataclass
class PhotoFinder:
    """The model, the course's framing and the face finder, loaded once; ``problem``
    says why no face can be found (the extra missing, no model file), else None."""

    model: object | None = None
    framing: object | None = None
    detector: object | None = None
    problem: str | None = None
    note: str = ""

    @property
    def ready(self) -> bool:
        return self.problem is None

    def describe(self) -> str:
        """One line for the reader: what finds the faces and their points, or what is missing."""
        return self.note if self.ready else self.problem

    def find(self, name: str, photo: Image.Image) -> Found:
        """Every face in ``photo`` with its points (two passes), as a ``Found`` record."""
        if not self.ready:
            return Found(name, photo)
        faces = photo_tool.faces_in_photo(photo, self.model, framing=self.framing, detector=self.detector,
                                          passes=2)
        return Found.of(name, photo, faces, self.model.config.image_size)

    def find_all(self, pictures: dict) -> list[Found]:
        """``find`` for each picture of ``{name: photo}``."""
        return [self.find(name, picture) for name, picture in pictures.items()]


def extra_missing() -> str | None:
    """Why the photos extra cannot be used here (one line), or None when it can."""
    try:
        photo_tool._detector()
    except ImportError:
        return MISSING_EXTRA.format(why="dlib, the face finder, cannot be imported")
    if importlib.util.find_spec("skimage") is None:
        return MISSING_EXTRA.format(why="scikit-image, which ships the example photo, is not installed")
    return None


def framing_path() -> Path:
    """``bench/results/course-framing.json`` of this project, wherever the kernel runs."""
    path = Path(photo_tool.FRAMING_FILE)
    return path if path.is_absolute() else project_root() / path


def load_finder(path) -> PhotoFinder:
    """The finder of notebook 05, with the model file ``path`` (the notebook passes
    ``data.model_path(MODEL)``, as notebook 04 chooses its model; None: none chosen)."""
    missing = extra_missing()
    if missing:
        return PhotoFinder(problem=missing)
    path = None if path is None else Path(path)
    if path is None or not path.is_file():
        shown = "MODEL = \"train\" names none" if path is None else f"{shown_path(path)} is missing"
        return PhotoFinder(problem=f"No model file ({shown}): this notebook needs a trained model; train one with "
                                   "`facepoints train`, or set MODEL to a model file, and run the cell again.")
    model = load_model(path)
    framing = photo_tool.Framing.load(framing_path())
    note = (f"model {shown_path(path)} ({model.config.image_size} px input); faces found by dlib's HOG finder, "
            f"framed as measured in {shown_path(framing_path())}")
    return PhotoFinder(model, framing, photo_tool._detector(), None, note)


def framing_summary(path=None) -> str:
    """What the measured framing says, in words and numbers (from ``course-framing.json``)."""
    record = json.loads(Path(path or framing_path()).read_text(encoding="utf-8"))
    f, q = record["framing"], record.get("quartiles", {})

    def spread(key):
        return f" (middle half {q[key][0]:.2f}-{q[key][2]:.2f})" if key in q else ""

    found = record.get("finder_recall")
    lines = [f"measured on {record.get('faces', '?')} course training faces"
             + (f"; the finder found a face in {found:.1%} of them" if found is not None else ""),
             f"from the finder's box (side b): the crop is {f['box_width']:.2f} b wide{spread('box_width')} and "
             f"{f['box_height']:.2f} b high, its centre {f['box_dx'] * 100:+.1f} % of b to the right and "
             f"{f['box_dy'] * 100:+.1f} % of b lower than the box's",
             f"from the 14 points (scale s: the hypotenuse of the eye distance and the eyes-to-mouth distance): "
             f"the crop is {f['points_width']:.2f} s wide{spread('points_width')} and {f['points_height']:.2f} s high, "
             f"its centre {f['points_dy']:.2f} s below the points' mean, towards the chin, along the face "
             f"({f['points_dx']:+.3f} s sideways)"]
    return "\n".join(lines)


def astronaut_path() -> Path:
    """scikit-image's ``data/astronaut.png`` (found without importing scikit-image)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(MISSING_EXTRA.format(why="scikit-image is not installed"))
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "astronaut.png"


def group_picture(portrait: Image.Image, sizes=(420, 280), canvas=(800, 480)) -> Image.Image:
    """A plain background with the portrait's head and shoulders pasted at two sizes (the
    whole photo pasted small would leave the face below the finder's ~80 px)."""
    w, h = portrait.size
    head = portrait.crop((round(0.172 * w), 0, round(0.719 * w), round(0.547 * h)))   # the astronaut's
    picture = Image.new("RGB", canvas, BACKGROUND)
    big, small = sizes
    picture.paste(head.resize((small, small), Image.Resampling.LANCZOS), (30, canvas[1] - small - 30))
    picture.paste(head.resize((big, big), Image.Resampling.LANCZOS), (canvas[0] - big - 30, 30))
    return picture


def example_photos() -> dict:
    """The offline examples ``{name: RGB picture}``: the astronaut, turned by 60 degrees
    (anticlockwise, on a plain background), by a quarter turn, and a group of two.
    Empty when scikit-image is missing."""
    try:
        astronaut = photo_tool.read_photo(astronaut_path())
    except (FileNotFoundError, ImageReadError):
        return {}
    return {"astronaut": astronaut,
            "turned 60°": astronaut.rotate(60, Image.Resampling.BILINEAR, expand=True, fillcolor=BACKGROUND),
            "a quarter turn": astronaut.rotate(90, expand=True),
            "group of two": group_picture(astronaut)}


def describe_photos(pictures: dict) -> str:
    """One line per picture: its name and size (or why there are none)."""
    if not pictures:
        return "no example pictures: " + MISSING_EXTRA.format(why="scikit-image, which ships them, is missing")
    return "\n".join(f"{name}: {p.width} x {p.height} px" for name, p in pictures.items())


def roll_degrees(points) -> float:
    """The eye line's angle in the picture (degrees, clockwise on screen; 180: upside down)."""
    points = np.asarray(points, dtype=np.float64).reshape(14, 2)
    dx, dy = points[8] - points[5]
    return math.degrees(math.atan2(dy, dx))


def _confidence(face) -> str:
    return "-" if face.confidence is None else f"{face.confidence:.2f}"


def faces_table(found: list[Found]) -> str:
    """A text table of every face found: picture, face number, box, the finder's score,
    the roll of the face and the answer's confidence (0-1; one half at an expected err of 5)."""
    if not found:
        return "no pictures"
    header = f"{'picture':24s} {'face':>4s}  {'box (x0, y0) - (x1, y1) px':28s} {'score':>5s} {'roll':>6s} {'confidence':>10s}"
    lines = [header, "-" * len(header)]
    for item in found:
        if not item.faces:
            lines.append(f"{item.name[:24]:24s}    -  no face found")
        for k, face in enumerate(item.faces):
            x0, y0, x1, y1 = face.box
            box = f"({x0:.0f}, {y0:.0f}) - ({x1:.0f}, {y1:.0f})"
            lines.append(f"{item.name[:24]:24s} {k:4d}  {box:28s} {face.score:5.2f} {roll_degrees(face.points):+5.0f}° "
                         f"{_confidence(face):>10s}")
    return "\n".join(lines)


def _show_photo(ax, item: Found, title: str) -> None:
    """One picture with each face's box, second-pass crop, skeleton and points."""
    ax.imshow(np.asarray(item.photo), interpolation="antialiased")
    width = max(item.photo.size) / 400
    for k, face in enumerate(item.faces):
        x0, y0, x1, y1 = face.box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=BOX_COLOUR, lw=1.5))
        c0, d0, c1, d1 = face.crop
        ax.add_patch(Rectangle((c0, d0), c1 - c0, d1 - d0, fill=False, ec=CROP_COLOUR, lw=1.0, ls="--"))
        draw_points(ax, face.points, numbers=False, size=max(6.0, min(14.0, (x1 - x0) / (8 * width))))
        ax.annotate(str(k), (min(x0, c0), min(y0, d0)), xytext=(2, -2), textcoords="offset points", ha="left",
                    va="top", fontsize=MIN_FONT, color="black", annotation_clip=True,
                    bbox={"boxstyle": "round,pad=0.15", "fc": CROP_COLOUR, "ec": "none"})
    ax.set_xlim(-0.5, item.photo.width - 0.5)
    ax.set_ylim(item.photo.height - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=MIN_FONT)


def photos_figure(found: list[Found], ncols: int = 2):
    """The pictures with every face found: the finder's box (blue), the crop the model saw
    in the second pass (dashed yellow, numbered as in the table), the points and skeleton.
    None when there is no picture."""
    if not found:
        return None
    ncols = max(1, min(ncols, len(found)))
    nrows = math.ceil(len(found) / ncols)
    cell = FIGURE_WIDTH / ncols
    heights = []
    for row in range(nrows):
        members = found[row * ncols:(row + 1) * ncols]
        aspect = max(item.photo.height / item.photo.width for item in members)
        heights.append(min(cell * aspect, MAX_PHOTO_HEIGHT) + 0.45)
    fig, axes = plt.subplots(nrows, ncols, figsize=(FIGURE_WIDTH, sum(heights)), squeeze=False,
                             layout="constrained", gridspec_kw={"height_ratios": heights})
    for k, ax in enumerate(axes.flat):
        if k >= len(found):
            ax.axis("off")
            continue
        item = found[k]
        count = f"{len(item.faces)} face{'s' if len(item.faces) != 1 else ''}" if item.faces else "no face found"
        _show_photo(ax, item, wrapped(f"{item.name}: {count}, {item.photo.width} x {item.photo.height} px",
                                      cell - 0.2))
    return fig


def crop_points(face) -> np.ndarray:
    """A face's points (photo pixels) normalised to its second-pass crop (0-1, ``schema``'s
    convention), to draw on the crop at any size."""
    x0, y0, x1, y1 = face.crop
    points = np.asarray(face.points, dtype=np.float64)
    return np.stack([(points[:, 0] + 0.5 - x0) / (x1 - x0), (points[:, 1] + 0.5 - y0) / (y1 - y0)], axis=1)


def crops_figure(found: list[Found], ncols: int = 4):
    """Each face as the model saw it in the second pass (its crop at the model's input
    size) with the numbered points it found; at most ``MAX_CROPS``. None without faces."""
    items = [(item.name, k, face, crop) for item in found for k, (face, crop) in enumerate(zip(item.faces, item.crops))]
    if not items:
        return None
    items = items[:MAX_CROPS]
    titles = [f"{name}, face {k}" + ("" if face.confidence is None else f": confidence {face.confidence:.2f}")
              for name, k, face, _ in items]
    return face_grid([crop for *_, crop in items], [crop_points(face) for _, _, face, crop in items],
                     normalized=True, titles=titles, ncols=min(ncols, len(items)), size=FIGURE_WIDTH / ncols)


def found_outputs(found: list[Found], save_as: str | None = None) -> tuple[dict, ...]:
    """Both figures (PNG, drawn as the inline backend draws them) and the table, as the
    outputs of an ``Output`` widget; ``save_as`` names the figures for ``plotting.save_figure``.
    Set as the widget's ``outputs`` at once: output displayed in an upload's callback
    inside ``with output:`` could miss the widget and land in JupyterLab's log console."""
    from IPython.core.pylabtools import print_figure

    outputs = []
    for fig, what in ((photos_figure(found), "photos"), (crops_figure(found), "crops")):
        if fig is None:
            continue
        if save_as:
            save_figure(fig, f"{save_as}_{what}")
        outputs.append({"output_type": "display_data", "metadata": {},
                        "data": {"image/png": print_figure(fig, "png", base64=True), "text/plain": repr(fig)}})
        plt.close(fig)
    outputs.append({"output_type": "stream", "name": "stdout", "text": faces_table(found) + "\n"})
    return tuple(outputs)


def uploaded_files(value) -> list[tuple[str, bytes]]:
    """``[(name, content)]`` of a ``FileUpload`` value (ipywidgets 8: a tuple of dicts whose
    ``content`` is a memoryview)."""
    return [(item["name"], bytes(item["content"])) for item in value]


def read_uploaded(name: str, content: bytes) -> Image.Image:
    """An uploaded picture read as ``tools.photo.read_photo`` reads a file (EXIF orientation
    applied); ``ImageReadError`` when it is no picture."""
    suffix = Path(name).suffix if len(Path(name).suffix) <= 6 else ""
    handle, temporary = tempfile.mkstemp(prefix="facepoints-upload-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(content)
        return photo_tool.read_photo(temporary)
    finally:
        os.unlink(temporary)


class PhotoExplorer:
    """An upload button above the figures: the examples (``found``) until a picture is
    uploaded, then that picture; ``the examples`` goes back. ``widget`` is the box to
    display, ``shown`` the records drawn last (for tests)."""

    def __init__(self, finder: PhotoFinder, found: list[Found]):
        self.finder, self.examples, self.shown = finder, found, found
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="your photo",
                                         disabled=not finder.ready)
        self.back = widgets.Button(description="the examples", tooltip="show the example pictures again",
                                   disabled=not finder.ready)
        self.status = widgets.Label(value="" if finder.ready else finder.describe())
        self.view = widgets.Output()
        self.upload.observe(self._on_upload, names="value")
        self.back.on_click(self._on_back)
        self.widget = widgets.VBox([widgets.HBox([self.upload, self.back, self.status]), self.view])
        if finder.ready:
            self.draw(found, "the examples: upload a picture of your own to see it here instead", save_as="05")

    def draw(self, found: list[Found], status: str, save_as: str | None = None) -> None:
        """Show ``found`` below the buttons."""
        self.shown = found
        self.status.value = status
        self.view.outputs = found_outputs(found, save_as)

    def load(self, name: str, content: bytes) -> None:
        """Find the faces of an uploaded picture and show them (a file that is no picture
        is said so in the status line)."""
        try:
            picture = read_uploaded(name, content)
        except ImageReadError:
            self.status.value = f"{name} is not a picture this can read"
            return
        found = [self.finder.find(name, picture)]
        count = len(found[0].faces)
        self.draw(found, f"{name}: {count} face{'s' if count != 1 else ''} found")

    def _on_upload(self, change) -> None:
        if not change["new"]:
            return
        for name, content in uploaded_files(change["new"]):
            self.load(name, content)
        self.upload.value = ()          # emptied, so that the same file uploaded again is a change

    def _on_back(self, _button) -> None:
        self.draw(self.examples, "the examples: upload a picture of your own to see it here instead")
