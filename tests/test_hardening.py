"""Bad inputs: each gets a clear error or a documented, warned skip (see docs/bad-inputs.md).

Image folders full of odd files, malformed ``gt.csv`` files, damaged or hostile model
files and wrong argument types, run through the public entry points (``detect``,
``train_detector``, ``read_gt``, ``load_model``). Networks and training runs are tiny.
"""

from __future__ import annotations

import builtins
import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from facepoints_lib.core.checkpoint import (CheckpointError, load_checkpoint, load_model,
                                       save_checkpoint)
from facepoints_lib.core.dataset import load_faces
from facepoints_lib.core.detect import detect
from facepoints_lib.core.gt_csv import GT_HEADER, GtFormatError, read_gt, write_gt
from facepoints_lib.core.images import ImageReadError, list_images, read_image_resized
from facepoints_lib.core.model import ModelConfig, build_model
from facepoints_lib.core.progress import TextProgress
from facepoints_lib.tools.synth import render_face
from facepoints_lib.core.config import full_config
from facepoints_lib.core.train import train_detector, train_model

HARD_MODEL = ModelConfig(image_size=32, stem_width=4, widths=(4, 8, 8, 8), depths=(1, 1, 1, 1),
                         decoder_width=4, hidden=8, dropout=0.0)


def _quiet(**kwargs):
    return TextProgress(disable=True, **kwargs)


def _tiny_recipe(**overrides):
    values = dict(model=HARD_MODEL, epochs=1, max_steps=3, batch_size=4, val_size=4, threads=1,
                  device="cpu", bf16="off", warmup_epochs=0.5, ema_decay=0.0)
    values.update(overrides)
    return full_config(**values)


def _face(seed: int, size=None) -> tuple[Image.Image, np.ndarray]:
    img, points = render_face(np.random.default_rng([99, seed]), size)
    return img, points.reshape(-1)


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def _row(name: str, values=None) -> str:
    values = list(range(28)) if values is None else values
    return name + "," + ",".join(str(v) for v in values)


HEADER = ",".join(GT_HEADER)


@pytest.fixture(scope="module")
def hard_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(HARD_MODEL)
    torch.nn.init.normal_(model.heatmaps.weight, std=0.5)
    return save_checkpoint(model.eval(), tmp_path_factory.mktemp("hard_models") / "tiny.pt")


# --------------------------------------------------------------------------- image folders

READABLE = {
    # name -> how it is written (mode, format)
    "face L.png": ("L", "PNG"),
    "face LA.png": ("LA", "PNG"),
    "face P.gif": ("P", "GIF"),
    "face RGBA.webp": ("RGBA", "WEBP"),
    "face CMYK.jpg": ("CMYK", "JPEG"),
    "face CMYK.tif": ("CMYK", "TIFF"),
    "face 1.bmp": ("1", "BMP"),
    "face I16.png": ("I;16", "PNG"),
    "face RGB.tiff": ("RGB", "TIFF"),
    "visage é 顔.JPG": ("RGB", "JPEG"),
}
UNREADABLE = ("empty.jpg", "not really.jpg", "truncated.jpg")
NOT_IMAGES = (".DS_Store", "Thumbs.db", "dir.jpg/", "notes.csv", "sub/")


def _as_mode(img: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    return img.convert(mode)


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory) -> tuple[Path, dict[str, tuple[int, int]]]:
    """Readable images of many kinds, unreadable ones and non-images, side by side."""
    folder = tmp_path_factory.mktemp("messy")
    sizes = {}
    for i, (name, (mode, fmt)) in enumerate(sorted(READABLE.items())):
        img, _ = _face(i)
        _save(_as_mode(img, mode), folder / name, format=fmt)
        sizes[name] = img.size
    big = Image.new("RGB", (6000, 6000), (20, 20, 20))
    ImageDraw.Draw(big).rectangle((3000, 0, 5999, 5999), fill=(230, 230, 230))
    _save(big, folder / "huge 6000.jpg", quality=70)
    sizes["huge 6000.jpg"] = (6000, 6000)
    small, _ = _face(50, (16, 16))
    _save(small, folder / "tiny 16.png")
    sizes["tiny 16.png"] = (16, 16)
    wide, _ = _face(51, (120, 60))
    _save(wide, folder / "wide.jpg")
    sizes["wide.jpg"] = (120, 60)

    (folder / "empty.jpg").write_bytes(b"")
    (folder / "not really.jpg").write_text("this is a text file\n")
    whole = io.BytesIO()
    _face(52, (300, 300))[0].save(whole, "JPEG")
    (folder / "truncated.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (folder / "notes.csv").write_text("a,b\n1,2\n")
    (folder / "sub").mkdir()
    _save(_face(53)[0], folder / "sub" / "nested.jpg")
    (folder / "dir.jpg").mkdir()
    return folder, sizes


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
    path = _save(img, tmp_path / f"grey.{'tif' if mode in ('I', 'CMYK') else 'png'}")
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
    rotated = _save(img, tmp_path / "rotated.jpg", quality=95, exif=exif.tobytes())
    plain = _save(img, tmp_path / "plain.jpg", quality=95)
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
        img, points = _face(i)
        _save(img, folder / name)
        table[name] = points
    gt_path = write_gt(table, tmp_path / "gt.csv")
    assert sorted(read_gt(gt_path)) == sorted(names)
    assert sorted(detect(hard_model, folder, flip_tta=False)) == sorted(names)


# --------------------------------------------------------------------------- gt.csv

BAD_TABLES = {
    "missing column": (HEADER + "\n" + _row("a.jpg", range(27)) + "\n", "expected 29 values"),
    "extra column": (HEADER + "\n" + _row("a.jpg", range(29)) + "\n", "expected 29 values"),
    "non-numeric": (HEADER + "\n" + _row("a.jpg", ["12", "abc"] + list(range(26))) + "\n",
                    "column y1 is 'abc', not a finite number"),
    "NaN": (_row("a.jpg", ["nan"] + list(range(27))) + "\n", "column x1 is 'nan'"),
    "inf": (_row("a.jpg", list(range(27)) + ["-inf"]) + "\n", "column y14 is '-inf'"),
    "empty cell": (_row("a.jpg", [""] + list(range(27))) + "\n", "column x1 is ''"),
    "1e300": (_row("a.jpg", ["1e300"] + list(range(27))) + "\n", "column x1 is '1e300', beyond"),
    "1e7": (_row("a.jpg", list(range(27)) + ["-1e7"]) + "\n", "column y14 is '-1e7', beyond"),
    "duplicated name": (_row("a.jpg") + "\n" + _row("b.jpg") + "\n" + _row("a.jpg") + "\n",
                        "line 3: file name 'a.jpg' is already listed on line 1"),
    "empty name": (_row("") + "\n", "empty file name"),
    "header only": (HEADER + "\n", "no keypoint rows"),
    "empty file": ("", "no keypoint rows"),
    "other header": ("image," + HEADER.split(",", 1)[1] + "\n" + _row("a.jpg") + "\n",
                     "line 1: column x1 is 'x1'"),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_gt_csv_raises_gt_format_error(tmp_path, case):
    text, message = BAD_TABLES[case]
    path = _write_csv(tmp_path / "gt.csv", text)
    with pytest.raises(GtFormatError, match=message.replace("(", r"\(").replace("?", r"\?")) as info:
        read_gt(path)
    assert str(path) in str(info.value)


def test_binary_gt_csv_raises_gt_format_error(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
    with pytest.raises(GtFormatError, match="not a UTF-8 CSV text file"):
        read_gt(path)


def test_missing_gt_csv_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="keypoint table not found"):
        read_gt(tmp_path / "nope.csv")


@pytest.mark.parametrize("variant", ["plain", "no header", "CRLF", "BOM", "BOM+CRLF+blank lines"])
def test_accepted_gt_csv_variants(tmp_path, variant):
    rows = [_row("a.jpg", [-3.5, 200] + list(range(26))), _row("b c é.jpg")]   # a point outside the frame
    lines = ([] if variant == "no header" else [HEADER]) + rows
    newline = "\r\n" if "CRLF" in variant else "\n"
    if "blank" in variant:
        lines = lines[:1] + ["", ""] + lines[1:] + [""]
    text = ("\ufeff" if "BOM" in variant else "") + newline.join(lines) + newline
    table = read_gt(_write_csv(tmp_path / "gt.csv", text))
    assert sorted(table) == ["a.jpg", "b c é.jpg"]
    assert table["a.jpg"][:3].tolist() == [-3.5, 200.0, 0.0]
    assert table["b c é.jpg"].tolist() == [float(v) for v in range(28)]


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """Ten faces; face 3's row puts points outside the frame (the course data has such rows)."""
    folder = tmp_path_factory.mktemp("labelled")
    table = {}
    for i in range(10):
        img, points = _face(100 + i, (64, 64))
        _save(img, folder / f"{i:02d}.png")
        table[f"{i:02d}.png"] = points
    table["03.png"] = table["03.png"].copy()
    table["03.png"][:2] = (-7.0, 70.0)
    return folder, table


def test_train_detector_drops_rows_without_images_and_ignores_images_without_rows(labelled_folder):
    folder, table = labelled_folder
    gt = {name: v for name, v in table.items() if name not in ("08.png", "09.png")}   # images without rows
    gt["ghost 1.png"] = table["00.png"]
    gt["ghost 2.png"] = table["01.png"]
    logs: list[str] = []
    with pytest.warns(UserWarning, match=r"2 files listed in the keypoint table are not in .* "
                                         r"left out: ghost 1.png, ghost 2.png"):
        run = train_model(gt, folder, _tiny_recipe(), progress=_quiet, log=logs.append)
    assert any("on 7 faces (1 for validation)" in line for line in logs), logs   # 8 labelled faces: a fifth validates
    assert run.history and np.isfinite(run.history[-1]["val_err"])
    assert "ghost 1.png" not in run.train_names + run.val_names


def test_train_detector_reads_a_gt_csv_path(labelled_folder, tmp_path):
    folder, table = labelled_folder
    path = write_gt(table, tmp_path / "gt.csv")
    run = train_model(str(path), folder, _tiny_recipe(), progress=_quiet, log=lambda line: None)
    assert np.isfinite(run.history[-1]["train_loss"])


@pytest.mark.parametrize("case, message", [
    ("short", "00.png: expected 28 coordinates, got 10"),
    ("nan", "00.png: coordinates must be finite numbers"),
    ("text", "00.png: coordinates are not numbers"),
    ("int key", "file name 7 is not a non-empty string"),
    ("huge", "00.png: a coordinate is beyond"),
])
def test_train_detector_checks_a_table_given_as_dict(labelled_folder, case, message):
    folder, table = labelled_folder
    gt = dict(table)
    if case == "short":
        gt["00.png"] = gt["00.png"][:10]
    elif case == "nan":
        gt["00.png"] = np.full(28, np.nan)
    elif case == "text":
        gt["00.png"] = ["x"] * 28
    elif case == "huge":
        gt["00.png"] = np.full(28, 1e300)
    else:
        gt[7] = gt.pop("07.png")
    with pytest.raises(GtFormatError, match=message):
        train_detector(gt, folder, fast_train=True, config=_tiny_recipe(), progress=_quiet,
                       log=lambda line: None)


def test_train_detector_names_an_unreadable_labelled_image(labelled_folder, tmp_path):
    folder, table = labelled_folder
    for name in table:
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "05.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="05.png"):
        train_detector(table, tmp_path, fast_train=True, config=_tiny_recipe(val_size=0),
                       progress=_quiet, log=lambda line: None)


# --------------------------------------------------------------------------- model files

class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code a file could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _payload(hard_model: Path) -> dict:
    return torch.load(hard_model, weights_only=True)


def _broken_model_files(hard_model: Path, folder: Path) -> dict[str, Path]:
    payload = _payload(hard_model)
    files = {}

    def put(name, obj):
        torch.save(obj, folder / name)
        files[name] = folder / name

    (folder / "empty.pt").write_bytes(b"")
    files["empty.pt"] = folder / "empty.pt"
    data = hard_model.read_bytes()
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    files["truncated.pt"] = folder / "truncated.pt"
    (folder / "text.pt").write_text("not a model\n")
    files["text.pt"] = folder / "text.pt"
    put("plain_state_dict.pt", payload["state_dict"])                   # another program's format
    put("other_format.pt", {**payload, "format": "facepoints-checkpoint-99"})
    other = build_model(ModelConfig(image_size=32, stem_width=8, widths=(8, 8, 8, 8),
                                    depths=(1, 1, 1, 1), decoder_width=8))
    put("other_architecture.pt", {**payload, "state_dict": other.state_dict()})
    put("other_head.pt", {**payload, "model_config": {**payload["model_config"], "head": "regression"}})
    put("unknown_config_key.pt", {**payload, "model_config": {**payload["model_config"], "colour": 1}})
    put("config_not_a_dict.pt", {**payload, "model_config": [1, 2, 3]})
    put("no_weights.pt", {k: v for k, v in payload.items() if k != "state_dict"})
    nan = {k: v.clone() for k, v in payload["state_dict"].items()}
    nan["heatmaps.weight"].fill_(float("nan"))
    put("nan_weights.pt", {**payload, "state_dict": nan})
    for value in (0.0, -0.5):
        std = {k: v.clone() for k, v in payload["state_dict"].items()}
        std["pixel_std"].fill_(value)
        put(f"pixel_std_{value}.pt", {**payload, "state_dict": std})
    return files


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory, hard_model):
    return _broken_model_files(hard_model, tmp_path_factory.mktemp("broken_models"))


@pytest.mark.parametrize("name", [
    "empty.pt", "truncated.pt", "text.pt", "plain_state_dict.pt", "other_format.pt",
    "other_architecture.pt", "other_head.pt", "unknown_config_key.pt", "config_not_a_dict.pt",
    "no_weights.pt", "nan_weights.pt", "pixel_std_0.0.pt", "pixel_std_-0.5.pt",
])
def test_broken_model_file_raises_checkpoint_error(broken_models, messy_folder, name):
    path = broken_models[name]
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert str(path) in str(info.value)
    folder, _ = messy_folder
    with pytest.raises(CheckpointError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detect(path, folder)


def test_missing_model_file(tmp_path, messy_folder):
    with pytest.raises(CheckpointError, match="model file not found"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="model file not found"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detect(tmp_path, messy_folder[0])                # a folder is not a model file


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_pickle_payload_is_refused_and_runs_no_code(tmp_path, hard_model, container):
    marker = tmp_path / "code-ran.txt"
    evil = tmp_path / "evil.pt"
    obj = {**_payload(hard_model), "metadata": {"note": _RunsCode(marker)}}
    if container == "torch.save":
        torch.save(obj, evil)
    else:
        evil.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(CheckpointError, match="objects other than weights"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError):
        load_model(evil)
    assert not marker.exists()
    # Control: an ordinary (not weights-only) load of the same file runs the payload.
    if container == "torch.save":
        loaded = torch.load(evil, weights_only=False)
    else:
        loaded = pickle.loads(evil.read_bytes())
    loaded["metadata"]["note"].close()
    assert marker.exists()


def test_a_good_model_file_loads(hard_model):
    model = load_model(hard_model)
    assert model.config == HARD_MODEL
    assert model.metadata["versions"]["torch"] == str(torch.__version__)


# --------------------------------------------------------------------------- arguments

def test_empty_folder(tmp_path, hard_model, labelled_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.warns(UserWarning, match="no images to detect keypoints in"):
        assert detect(hard_model, empty) == {}
    with pytest.warns(UserWarning, match="10 files listed in the keypoint table are not in"), \
            pytest.raises(ValueError, match="need at least 2 labelled images .* found 0"):
        train_detector(labelled_folder[1], empty, fast_train=True, config=_tiny_recipe(),
                       progress=_quiet, log=lambda line: None)


@pytest.mark.parametrize("fast_train", ["True", "False", 1, 0, None, np.True_])
def test_fast_train_must_be_a_bool(labelled_folder, fast_train):
    folder, table = labelled_folder
    with pytest.raises(TypeError, match="fast_train must be True or False"):
        train_detector(table, folder, fast_train=fast_train)


@pytest.mark.parametrize("train_gt, img_dir, message", [
    (None, ".", "train_gt must be a dict"),
    (5, ".", "train_gt must be a dict"),
    ([("a.jpg", [0] * 28)], ".", "train_gt must be a dict"),
    ({}, None, "train_img_dir must be a folder path"),
    ({}, 3.5, "train_img_dir must be a folder path"),
])
def test_train_detector_wrong_types(train_gt, img_dir, message):
    with pytest.raises(TypeError, match=message):
        train_detector(train_gt, img_dir, fast_train=True)


def test_train_detector_missing_folder(labelled_folder, tmp_path):
    with pytest.raises(NotADirectoryError, match="training image folder not found"):
        train_detector(labelled_folder[1], tmp_path / "nope", fast_train=True)


def test_detect_wrong_types_and_missing_folder(hard_model, messy_folder, tmp_path):
    folder, _ = messy_folder
    with pytest.raises(TypeError, match="model_filename must be a path"):
        detect(None, folder)
    with pytest.raises(TypeError, match="model_filename must be a path"):
        detect(hard_model.read_bytes(), folder)
    with pytest.raises(TypeError, match="test_img_dir must be a path"):
        detect(hard_model, 42)
    with pytest.raises(TypeError, match="filenames must be a list"):
        detect(hard_model, folder, filenames="wide.jpg")
    with pytest.raises(ValueError, match="chunk must be a positive integer"):
        detect(hard_model, folder, chunk=0)
    with pytest.raises(NotADirectoryError, match="test image folder not found"):
        detect(hard_model, tmp_path / "nope")
    with pytest.raises(NotADirectoryError, match="test image folder not found"):
        detect(hard_model, hard_model)


def test_many_missing_rows_are_dropped(labelled_folder, monkeypatch):
    """20000 rows for absent files are left out in one pass (the filter once rebuilt a set
    of them per row: 25 s for 16000 rows)."""
    import facepoints_lib.core.train as train_module

    folder, table = labelled_folder
    gt = dict(table)
    gt.update({f"ghost{i:05d}.png": table["00.png"] for i in range(20_000)})
    seen = {}

    def stop(train, val, *args, **kwargs):
        seen["faces"] = len(train) + len(val)
        raise StopIteration

    monkeypatch.setattr(train_module, "fit", stop)
    with pytest.warns(UserWarning, match="20000 files listed"), pytest.raises(StopIteration):
        train_detector(gt, folder, fast_train=True, config=_tiny_recipe(), progress=_quiet,
                       log=lambda line: None)
    assert seen["faces"] == len(table)


def test_concurrent_saves_use_their_own_temporary_files(hard_model, tmp_path, monkeypatch):
    import os

    from facepoints_lib.core import checkpoint

    model = load_model(hard_model)
    sources = []
    real_replace = os.replace

    def recording_replace(src, dst):
        sources.append(str(src))
        assert Path(src).parent == tmp_path and Path(dst) == tmp_path / "m.pt"
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", recording_replace)
    save_checkpoint(model, tmp_path / "m.pt")
    save_checkpoint(model, tmp_path / "m.pt")
    assert len(set(sources)) == 2                     # a temporary name of each writer's own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    assert (tmp_path / "m.pt").stat().st_mode & 0o044  # readable by others, like any saved file
    load_model(tmp_path / "m.pt")


def test_a_failed_save_leaves_no_temporary_file(hard_model, tmp_path, monkeypatch):
    from facepoints_lib.core import checkpoint

    class FullDisk:
        def __init__(self, path, mode):
            Path(path).write_bytes(b"partial")

        def __enter__(self):
            raise OSError(28, "No space left on device")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(checkpoint, "open", FullDisk, raising=False)    # the module's own writes
    with pytest.raises(OSError, match=r"could not write .*m\.pt: No space left"):
        save_checkpoint(load_model(hard_model), tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("threads", [0, -1, 100_000, 2.0, True])
def test_detect_refuses_thread_counts_it_cannot_use(hard_model, messy_folder, threads):
    with pytest.raises(ValueError, match="threads must be None or an integer from 1 to 256"):
        detect(hard_model, messy_folder[0], threads=threads)


def test_cli_detect_reports_a_bad_thread_count(hard_model, messy_folder, tmp_path, capsys):
    from facepoints_lib.tools.cli import main

    assert main(["detect", str(messy_folder[0]), "--model", str(hard_model), "--threads", "-1",
                 "--out", str(tmp_path / "out.csv")]) == 2
    assert "threads must be None or an integer from 1 to 256, got -1" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing folder", "a folder", "empty string"])
def test_an_unwritable_model_path_is_refused_before_training(labelled_folder, tmp_path, monkeypatch, case):
    import facepoints_lib.core.train as train_module

    monkeypatch.setattr(train_module, "fit", lambda *a, **k: pytest.fail("trained before checking --out"))
    out = {"missing folder": tmp_path / "nope" / "m.pt", "a folder": tmp_path, "empty string": ""}[case]
    message = {"missing folder": "folder for the model file not found", "a folder": "is a folder",
               "empty string": "is a folder"}[case]
    folder, table = labelled_folder
    with pytest.raises(OSError, match=message):
        train_detector(table, folder, fast_train=False, config=_tiny_recipe(), model_path=out,
                       progress=_quiet, log=lambda line: None)


def test_a_failed_save_keeps_the_trained_model_and_says_where(labelled_folder, tmp_path, monkeypatch):
    import tempfile

    import facepoints_lib.core.checkpoint as checkpoint_module

    real_save = checkpoint_module.save_checkpoint

    def disk_full_at_the_target(model, path, metadata=None):
        if Path(path).parent == tmp_path / "out":
            raise OSError(28, "No space left on device")
        return real_save(model, path, metadata)

    (tmp_path / "out").mkdir()
    (tmp_path / "spare").mkdir()
    monkeypatch.setattr(checkpoint_module, "save_checkpoint", disk_full_at_the_target)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "spare"))
    folder, table = labelled_folder
    with pytest.raises(OSError, match=r"could not save the trained model to .*m\.pt .*No space left.*; "
                                      r"it was saved to .*spare.*facepoints_model-.*\.pt instead"):
        train_detector(table, folder, fast_train=False, config=_tiny_recipe(),
                       model_path=tmp_path / "out" / "m.pt", progress=_quiet, log=lambda line: None)
    rescued = list((tmp_path / "spare").glob("facepoints_model-*.pt"))
    assert len(rescued) == 1 and load_model(rescued[0]).config == _tiny_recipe().model


def test_cli_train_reports_an_unwritable_out_at_once(labelled_folder, tmp_path, capsys):
    from facepoints_lib.tools.cli import main
    from facepoints_lib.core.gt_csv import write_gt

    folder, table = labelled_folder
    data = tmp_path / "data"
    data.mkdir()
    (data / "images").symlink_to(folder)
    write_gt(table, data / "gt.csv")
    assert main(["train", str(data), "--out", str(tmp_path / "nope" / "m.pt")]) == 2
    assert "folder for the model file not found" in capsys.readouterr().err


@pytest.mark.parametrize("setting, message", [
    ("batch_size=0", "batch_size must be an integer from 1, got 0"),
    ("lr=nan", "lr must be a number above 0, got 'nan'"),
    ("epochs=0", "epochs must be an integer from 1, got 0"),
    ("epochs=2.5", "epochs must be an integer from 1, got 2.5"),
    ("ema_decay=1", "ema_decay must be a number from 0 to 0.999999, got 1"),
    ("threads=-1", "threads must be an integer from 1 to 256, got -1"),
    ("optimizer='adam'", "optimizer must be one of 'sgd', 'adamw', got 'adam'"),
    ("loss='l1'", r"unknown config key in \"loss='l1'\""),
    ("flip_tta=1", "flip_tta must be True or False, got 1"),
    ("device='gpu'", "device must be 'auto', 'cpu' or 'cuda'"),
    ("model.image_size=96.0", r"image_size must be an integer from 1 to 256, got 96.0"),
    ("model.widths=[48,96,160,10000]", r"widths\[3\] must be an integer from 1 to 1024, got 10000"),
    ("model.depths=[200000,2,2,1]", r"depths\[0\] must be an integer from 1 to 16, got 200000"),
    ("model.hidden=2000000", "hidden must be an integer from 1 to 4096, got 2000000"),
    ("model.image_size=8192", "image_size must be an integer from 1 to 256, got 8192"),
    ("model.widths=[1024,1024,1024,1024]", r"the network would have about \d+ M parameters, more than 50 M"),
])
def test_recipe_settings_are_checked_before_any_work(setting, message):
    from facepoints_lib.core.config import apply_overrides

    with pytest.raises(ValueError, match=message):
        apply_overrides(full_config(), [setting])


def test_a_non_finite_number_is_refused_as_well():
    with pytest.raises(ValueError, match="lr must be a number above 0, got nan"):
        full_config(lr=float("nan")).validate()


def test_a_model_file_asking_for_a_huge_network_is_refused_before_building(hard_model, tmp_path, monkeypatch):
    import facepoints_lib.core.model as model_module

    payload = load_checkpoint(hard_model)
    huge = {**payload, "model_config": {**payload["model_config"], "widths": [48, 96, 160, 10000]}}
    torch.save(huge, tmp_path / "huge.pt")
    monkeypatch.setattr(model_module.KeypointNet, "__init__",
                        lambda *a, **k: pytest.fail("allocated the network before checking its config"))
    with pytest.raises(CheckpointError, match=r"widths\[3\] must be an integer from 1 to 1024, got 10000"):
        load_model(tmp_path / "huge.pt")


@pytest.fixture()
def trap_folder(tmp_path):
    """Two good images beside a symlink loop and a FIFO, both named like images."""
    folder = tmp_path / "traps"
    folder.mkdir()
    for i in range(2):
        _save(_face(300 + i, (64, 64))[0], folder / f"good{i}.png")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    import os
    os.mkfifo(folder / "pipe.jpg")
    return folder


def test_a_symlink_loop_or_a_fifo_costs_only_itself(trap_folder, hard_model):
    with pytest.warns(UserWarning, match=r"skipped 2 entries that are not images: loop.jpg \(.*\), pipe.jpg"):
        assert list_images(trap_folder) == ["good0.png", "good1.png"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert sorted(detect(hard_model, trap_folder)) == ["good0.png", "good1.png"]


def test_a_fifo_named_in_filenames_is_reported_not_waited_on(trap_folder, hard_model):
    import threading

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
    import os

    from facepoints_lib.tools.cli import main

    folder = tmp_path / "latin1"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")                 # how Python spells a raw-byte name
    _save(_face(7, (64, 64))[0], folder / name)
    out = tmp_path / "out.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["detect", str(folder), "--model", str(hard_model), "--out", str(out)]) == 0
    assert b"\ncaf\xe9.png," in out.read_bytes()


def test_write_gt_is_all_or_nothing(tmp_path, monkeypatch):
    from facepoints_lib.core import gt_csv

    path = tmp_path / "out.csv"
    path.write_text("old content\n")
    with pytest.raises(ValueError, match="expected 28 coordinates"):
        write_gt({"a.jpg": np.zeros(28), "b.jpg": np.zeros(3)}, path)

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gt_csv.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        write_gt({"a.jpg": np.zeros(28)}, path)
    assert path.read_text() == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


@pytest.mark.parametrize("case", ["missing folder", "the model file"])
def test_cli_detect_checks_out_before_detecting(hard_model, messy_folder, tmp_path, monkeypatch, capsys, case):
    import sys

    from facepoints_lib.tools.cli import main

    detect_module = sys.modules["facepoints_lib.core.detect"]    # the package exports a function of that name
    monkeypatch.setattr(detect_module, "detect", lambda *a, **k: pytest.fail("detected before checking --out"))
    model = tmp_path / "m.pt"
    model.write_bytes(Path(hard_model).read_bytes())
    out = tmp_path / "nope" / "out.csv" if case == "missing folder" else model
    assert main(["detect", str(messy_folder[0]), "--model", str(model), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert ("folder for the output file not found" if case == "missing folder"
            else "is the model file: it would be overwritten") in err
    assert model.read_bytes() == Path(hard_model).read_bytes()


def test_a_model_file_that_unpacks_to_more_than_a_model_needs_is_refused(hard_model, tmp_path, monkeypatch):
    """A zero tensor hidden in the metadata compresses to almost nothing (a 750M-element one
    zipped to 11 MB loaded as 3.1 GB); the archive's unpacked size is checked first."""
    import zipfile

    from facepoints_lib.core import checkpoint

    payload = load_checkpoint(hard_model)
    payload["metadata"]["padding"] = torch.zeros(2_000_000)           # 8 MB unpacked
    torch.save(payload, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, \
            zipfile.ZipFile(tmp_path / "packed.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert (tmp_path / "packed.pt").stat().st_size < 200_000
    monkeypatch.setattr(checkpoint, "MAX_CHECKPOINT_BYTES", 4 * 2**20)  # stands in for the real bound
    monkeypatch.setattr(checkpoint.torch, "load", lambda *a, **k: pytest.fail("loaded before checking"))
    with pytest.raises(CheckpointError, match=r"packed.pt unpacks to 8 MB, more than any model"):
        load_model(tmp_path / "packed.pt")


def test_the_unpacked_size_bound_admits_the_largest_allowed_network():
    from facepoints_lib.core import checkpoint
    from facepoints_lib.core.model import MAX_PARAMETERS

    assert checkpoint.MAX_CHECKPOINT_BYTES >= 4 * MAX_PARAMETERS
    shipped = Path(__file__).resolve().parents[1] / "facepoints_model.pt"
    assert checkpoint.unpacked_bytes(shipped) < 16 * 2**20


@pytest.mark.parametrize("name", ["../x.jpg", "/abs/x.jpg", "./a.jpg", "sub\\\\x.jpg", ".."])
def test_gt_names_with_folders_are_refused(tmp_path, name):
    path = _write_csv(tmp_path / "gt.csv", HEADER + "\n" + _row(name) + "\n")
    with pytest.raises(GtFormatError, match="is not a plain file name"):
        read_gt(path)
    with pytest.raises(GtFormatError, match="is not a plain file name"):
        train_detector({name: np.zeros(28), "b.jpg": np.zeros(28)}, tmp_path, config=_tiny_recipe(),
                       progress=_quiet, log=lambda line: None)


def test_a_number_with_underscores_is_not_a_coordinate(tmp_path):
    path = _write_csv(tmp_path / "gt.csv", _row("a.jpg", ["1_000"] + list(range(27))) + "\n")
    with pytest.raises(GtFormatError, match="column x1 is '1_000', not a finite number"):
        read_gt(path)


def test_a_header_after_blank_lines_is_still_the_header(tmp_path):
    path = _write_csv(tmp_path / "gt.csv", "\n\n" + HEADER + "\n" + _row("a.jpg") + "\n")
    assert list(read_gt(path)) == ["a.jpg"]


def test_jfif_and_jpe_files_are_images(tmp_path):
    for name in ("a.jfif", "b.JPE"):
        _save(_face(1, (40, 40))[0], tmp_path / name, format="JPEG")
    assert list_images(tmp_path) == ["a.jfif", "b.JPE"]


def _every_command_raises(monkeypatch, error: BaseException):
    """Make every ``facepoints`` sub-command raise ``error``; return the cli module."""
    from facepoints_lib.tools import cli

    def fails(args):
        raise error

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(func=fails)
    return cli


def test_ctrl_c_says_what_was_kept(monkeypatch, capsys):
    cli = _every_command_raises(monkeypatch, KeyboardInterrupt())
    assert cli.main(["train", "somewhere"]) == 130
    assert "interrupted" in capsys.readouterr().err


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
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(tmp_path / "big.png")],
                          capture_output=True, text=True, timeout=120, check=True)
    grew_mb = float(proc.stdout.strip().splitlines()[-1])
    assert grew_mb < 300, grew_mb


@pytest.mark.parametrize("error, status, text", [
    (FloatingPointError("training diverged at step 3"), 2, "FloatingPointError: training diverged"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127]"), 2, "RuntimeError: [enforce fail"),
    (MemoryError(), 2, "MemoryError"),
    (TypeError("something unforeseen"), 1, "unexpected error: TypeError: something unforeseen"),
])
def test_no_cli_path_ends_in_a_traceback(monkeypatch, capsys, error, status, text):
    """Whatever a command raises, the user reads one line and an exit status; the
    traceback only with FACEPOINTS_DEBUG=1."""
    cli = _every_command_raises(monkeypatch, error)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.main(["detect", "somewhere"]) == status
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    if status == 1:
        monkeypatch.setenv(cli.DEBUG_ENV, "1")
        with pytest.raises(type(error)):
            cli.main(["detect", "somewhere"])


def test_train_with_a_missing_exclusion_file_exits_2(tmp_path, capsys):
    from facepoints_lib.tools import cli

    assert cli.main(["train", str(tmp_path), "--exclude", str(tmp_path / "missing.txt"), "--out",
                     str(tmp_path / "m.pt")]) == 2
    assert "missing.txt" in capsys.readouterr().err
