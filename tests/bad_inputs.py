"""What the bad-input tests share (``test_bad_images.py``, ``test_bad_tables.py``,
``test_bad_training_input.py``, ``test_bad_model_files.py``, ``test_bad_arguments.py``).

The narrow network ``HARD_MODEL`` and the folders built from it are session fixtures in
``conftest.py`` (``hard_model``, ``messy_folder``, ``labelled_folder``); this module holds
the helpers that build them and the constants the tests check against.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from facepoints_lib.core.checkpoint import save_checkpoint
from facepoints_lib.core.config import RunConfig, TrainConfig, full_config, full_run
from facepoints_lib.core.gt_csv import GT_HEADER
from facepoints_lib.core.model import ModelConfig, build_model
from facepoints_lib.tools.synth import render_face

HARD_MODEL = ModelConfig(image_size=32, stem_width=4, widths=(4, 8, 8, 8), depths=(1, 1, 1, 1),
                         decoder_width=4, hidden=8, dropout=0.0)

HEADER = ",".join(GT_HEADER)


def tiny_recipe(**overrides) -> TrainConfig:
    """The full recipe on ``HARD_MODEL``: one epoch of batches of four faces."""
    values = dict(model=HARD_MODEL, epochs=1, batch_size=4, warmup_epochs=0.5, ema_decay=0.0)
    values.update(overrides)
    return full_config(**values)


def tiny_recipe_run(**overrides) -> RunConfig:
    """How ``tiny_recipe`` runs: three steps, four faces validating, one thread, CPU, float32."""
    values = dict(max_steps=3, val_size=4, threads=1, device="cpu", bf16="off")
    values.update(overrides)
    return full_run(**values)


def face(seed: int, size=None) -> tuple[Image.Image, np.ndarray]:
    """A synthetic face (seeded) and its 28 pixel coordinates."""
    img, points = render_face(np.random.default_rng([99, seed]), size)
    return img, points.reshape(-1)


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def row(name: str, values=None) -> str:
    """One ``gt.csv`` line: the name and 28 values (0 to 27 unless given)."""
    values = list(range(28)) if values is None else values
    return name + "," + ",".join(str(v) for v in values)


def save_hard_model(path: Path) -> Path:
    """``HARD_MODEL`` with seeded random heatmap weights (predictions depend on the image)."""
    torch.manual_seed(0)
    model = build_model(HARD_MODEL)
    torch.nn.init.normal_(model.heatmaps.weight, std=0.5)
    return save_checkpoint(model.eval(), path)


# --------------------------------------------------------------------------- a messy image folder

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


def as_mode(img: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    return img.convert(mode)


def make_messy_folder(folder: Path) -> tuple[Path, dict[str, tuple[int, int]]]:
    """Readable images of many kinds, unreadable ones and non-images, side by side; returns
    the folder and ``{name: (width, height)}`` of the readable images."""
    sizes = {}
    for i, (name, (mode, fmt)) in enumerate(sorted(READABLE.items())):
        img, _ = face(i)
        save(as_mode(img, mode), folder / name, format=fmt)
        sizes[name] = img.size
    big = Image.new("RGB", (6000, 6000), (20, 20, 20))
    ImageDraw.Draw(big).rectangle((3000, 0, 5999, 5999), fill=(230, 230, 230))
    save(big, folder / "huge 6000.jpg", quality=70)
    sizes["huge 6000.jpg"] = (6000, 6000)
    small, _ = face(50, (16, 16))
    save(small, folder / "tiny 16.png")
    sizes["tiny 16.png"] = (16, 16)
    wide, _ = face(51, (120, 60))
    save(wide, folder / "wide.jpg")
    sizes["wide.jpg"] = (120, 60)

    (folder / "empty.jpg").write_bytes(b"")
    (folder / "not really.jpg").write_text("this is a text file\n")
    whole = io.BytesIO()
    face(52, (300, 300))[0].save(whole, "JPEG")
    (folder / "truncated.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (folder / "notes.csv").write_text("a,b\n1,2\n")
    (folder / "sub").mkdir()
    save(face(53)[0], folder / "sub" / "nested.jpg")
    (folder / "dir.jpg").mkdir()
    return folder, sizes


def make_labelled_folder(folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Ten 64 px faces and their table; face 3's row puts points outside the frame (the
    course data has such rows)."""
    table = {}
    for i in range(10):
        img, points = face(100 + i, (64, 64))
        save(img, folder / f"{i:02d}.png")
        table[f"{i:02d}.png"] = points
    table["03.png"] = table["03.png"].copy()
    table["03.png"][:2] = (-7.0, 70.0)
    return folder, table
