"""Property-based fuzzing (hypothesis) of the readers and the augmentation geometry.

* ``read_gt``: any text or bytes gives a valid table or ``GtFormatError``, never another
  exception; valid tables survive ``write_gt`` -> ``read_gt``.
* ``read_image_resized``: random or mutated bytes give ``ImageReadError`` or an image;
  valid images of any mode, size and format give RGB uint8 of the requested size with
  the right colours in the right places.
* ``augment``: transformed points equal the analytic transform computed here
  independently, and the warped image carries a blob to where its point went.

Runs are derandomised (the same examples every run) and small, so the suite stays fast.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from facepoints_lib.core.augment import (AffineParams, affine_matrices, flip_keypoints, transform_keypoints,
                                    warp_images)
from facepoints_lib.core.gt_csv import GT_HEADER, GtFormatError, read_gt, write_gt
from facepoints_lib.core.images import ImageReadError, read_image_resized
from facepoints_lib.core.schema import FLIP_PERMUTATION, NUM_POINTS


def fuzz_settings(max_examples: int):
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One folder for the whole module (hypothesis reruns a test body many times)."""
    return tmp_path_factory.mktemp("fuzz")


# --------------------------------------------------------------------------- gt.csv

def _check_table(table):
    assert isinstance(table, dict) and table
    for name, values in table.items():
        assert isinstance(name, str) and name.strip() == name and name
        assert values.dtype == np.float64 and values.shape == (2 * NUM_POINTS,)
        assert np.isfinite(values).all()


def _read_gt_or_error(path: Path) -> None:
    try:
        table = read_gt(path)
    except GtFormatError as exc:
        assert str(path) in str(exc)
    else:
        _check_table(table)


CSV_PIECES = st.sampled_from([",", "\n", "\r\n", '"', " ", "a.jpg", "filename", "1", "-2.5", "1e3",
                              "nan", "inf", "", "x1", "\ufeff", "é", "\x00", ";", "\t"])


@fuzz_settings(150)
@given(text=st.one_of(st.text(max_size=300), st.lists(CSV_PIECES, max_size=120).map("".join)))
def test_read_gt_random_text(scratch, text):
    path = scratch / "text.csv"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _read_gt_or_error(path)


@fuzz_settings(100)
@given(data=st.binary(max_size=400))
def test_read_gt_random_bytes(scratch, data):
    path = scratch / "bytes.csv"
    path.write_bytes(data)
    _read_gt_or_error(path)


CELL = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                 st.integers(-10**6, 10**6).map(str), st.text(max_size=5))


@fuzz_settings(150)
@given(rows=st.lists(st.lists(CELL, min_size=26, max_size=30).flatmap(
    lambda cells: st.sampled_from(["a.jpg", "b.png", "", " c d.jpg"]).map(lambda n: [n] + cells)),
    max_size=6), header=st.booleans(), crlf=st.booleans())
def test_read_gt_random_rows(scratch, rows, header, crlf):
    import csv
    path = scratch / "rows.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\r\n" if crlf else "\n")
        if header:
            writer.writerow(GT_HEADER)
        writer.writerows(rows)
    _read_gt_or_error(path)


NAME = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="/\\"),
               min_size=1, max_size=12) \
    .map(str.strip).filter(lambda s: s and s.lower() != "filename" and s not in (".", ".."))   # plain file names
COORD = st.floats(-1e5, 1e5, allow_nan=False).map(lambda v: round(v, 2))


@fuzz_settings(100)
@given(table=st.dictionaries(NAME, st.lists(COORD, min_size=28, max_size=28), min_size=1, max_size=5))
def test_write_then_read_gt_round_trip(scratch, table):
    path = write_gt({k: np.array(v) for k, v in table.items()}, scratch / "round.csv")
    back = read_gt(path)
    assert sorted(back) == sorted(table)
    for name, values in table.items():
        np.testing.assert_allclose(back[name], values, rtol=0, atol=0.006)


# --------------------------------------------------------------------------- images

def _sample_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8))
    blobs = []
    for fmt, mode in [("JPEG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("BMP", "RGB"), ("GIF", "P"),
                      ("WEBP", "RGB"), ("TIFF", "CMYK"), ("PNG", "I;16"), ("TIFF", "F")]:
        buf = io.BytesIO()
        if mode == "I;16":
            Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257).save(buf, fmt)
        else:
            base.convert(mode).save(buf, fmt)
        blobs.append(buf.getvalue())
    return blobs


SAMPLE_IMAGES = _sample_images()


def _read_image_or_error(path: Path, size: int) -> None:
    try:
        array, (width, height) = read_image_resized(path, size)
    except ImageReadError as exc:
        assert str(path) in str(exc)
    else:
        assert array.shape == (size, size, 3) and array.dtype == np.uint8
        assert width >= 1 and height >= 1


@fuzz_settings(100)
@given(data=st.binary(max_size=600), size=st.sampled_from([8, 32]))
def test_random_bytes_are_an_image_or_image_read_error(scratch, data, size):
    path = scratch / "random.jpg"
    path.write_bytes(data)
    _read_image_or_error(path, size)


@pytest.mark.filterwarnings("ignore::UserWarning")   # Pillow's notes on damaged TIFF tags
@fuzz_settings(150)
@given(index=st.integers(0, len(SAMPLE_IMAGES) - 1),
       edits=st.lists(st.tuples(st.sampled_from(["set", "cut", "insert"]), st.floats(0, 1),
                                st.integers(0, 255)), min_size=1, max_size=4))
def test_damaged_images_are_an_image_or_image_read_error(scratch, index, edits):
    data = bytearray(SAMPLE_IMAGES[index])
    for op, where, value in edits:
        pos = min(int(where * len(data)), max(len(data) - 1, 0))
        if op == "set" and data:
            data[pos] = value
        elif op == "cut":
            del data[pos:]
        else:
            data[pos:pos] = bytes([value]) * 3
    path = scratch / "damaged.img"
    path.write_bytes(bytes(data))
    _read_image_or_error(path, 32)


QUADRANTS = ((230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30))   # TL, TR, BL, BR


def _quadrant_image(width: int, height: int) -> Image.Image:
    array = np.zeros((height, width, 3), dtype=np.uint8)
    hx, hy = width // 2, height // 2
    array[:hy, :hx], array[:hy, hx:] = QUADRANTS[0], QUADRANTS[1]
    array[hy:, :hx], array[hy:, hx:] = QUADRANTS[2], QUADRANTS[3]
    return Image.fromarray(array)


@fuzz_settings(60)
@given(width=st.integers(8, 700), height=st.integers(8, 700), size=st.sampled_from([16, 32, 48]),
       kind=st.sampled_from(["RGB png", "RGB jpg", "RGBA png", "P png", "CMYK tif", "L png", "L jpg",
                             "I;16 png", "LA webp", "RGB bmp"]))
def test_valid_images_become_rgb_of_the_requested_size(scratch, width, height, size, kind):
    mode, ext = kind.split()
    img = _quadrant_image(width, height)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    elif mode != "RGB":
        img = img.convert(mode)
    path = scratch / f"valid.{ext}"
    img.save(path, **({"quality": 95} if ext == "jpg" else {"lossless": True} if ext == "webp" else {}))
    array, stored = read_image_resized(path, size)
    assert stored == (width, height)
    assert array.shape == (size, size, 3) and array.dtype == np.uint8
    gray = mode in ("L", "LA", "I;16")
    q = size // 4                                     # the centre of each quadrant
    for colour, (y, x) in zip(QUADRANTS, [(q, q), (q, 3 * q), (3 * q, q), (3 * q, 3 * q)]):
        expected = np.array(colour, dtype=float)
        if gray:
            expected = np.full(3, np.dot(colour, [0.299, 0.587, 0.114]))
        tolerance = 25 if ext == "jpg" else 4
        assert np.abs(array[y, x].astype(float) - expected).max() <= tolerance, (kind, colour)


# --------------------------------------------------------------------------- augmentation geometry

def _analytic(points: np.ndarray, flip: bool, angle: float, scale: float, shift) -> np.ndarray:
    """Normalised (K, 2) points moved as ``augment`` documents, computed from scratch."""
    gx, gy = 2 * points[:, 0] - 1, 2 * points[:, 1] - 1
    if flip:
        gx = -gx
    c, s = math.cos(angle), math.sin(angle)
    ox = scale * (c * gx - s * gy) + shift[0]
    oy = scale * (s * gx + c * gy) + shift[1]
    out = np.stack([(ox + 1) / 2, (oy + 1) / 2], axis=1)
    return out[list(FLIP_PERMUTATION)] if flip else out


PARAMS = st.tuples(st.booleans(), st.floats(-math.pi, math.pi), st.floats(0.3, 3.0),
                   st.tuples(st.floats(-1, 1), st.floats(-1, 1)))


@fuzz_settings(150)
@given(batch=st.lists(PARAMS, min_size=1, max_size=4), seed=st.integers(0, 2**31 - 1))
def test_transform_keypoints_is_the_analytic_affine(batch, seed):
    points = np.random.default_rng(seed).uniform(-0.2, 1.2, (len(batch), NUM_POINTS, 2))
    params = AffineParams(torch.tensor([b[0] for b in batch]), torch.tensor([b[1] for b in batch]),
                          torch.tensor([b[2] for b in batch]), torch.tensor([b[3] for b in batch]))
    moved = transform_keypoints(torch.from_numpy(points).float(), affine_matrices(params), params.flip)
    for i, (flip, angle, scale, shift) in enumerate(batch):
        expected = _analytic(points[i], flip, angle, scale, shift)
        np.testing.assert_allclose(moved[i].numpy(), expected, atol=2e-5 * (1 + scale))


@fuzz_settings(50)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 4))
def test_a_pure_flip_is_flip_keypoints(seed, n):
    points = torch.from_numpy(np.random.default_rng(seed).uniform(0, 1, (n, NUM_POINTS, 2))).float()
    params = AffineParams(torch.ones(n, dtype=torch.bool), torch.zeros(n), torch.ones(n), torch.zeros(n, 2))
    moved = transform_keypoints(points, affine_matrices(params), params.flip)
    torch.testing.assert_close(moved, flip_keypoints(points), rtol=0, atol=1e-6)
    twice = transform_keypoints(moved, affine_matrices(params), params.flip)
    torch.testing.assert_close(twice, points, rtol=0, atol=1e-6)


@fuzz_settings(40)
@given(flip=st.booleans(), angle=st.floats(-0.6, 0.6), scale=st.floats(0.7, 1.4),
       shift=st.tuples(st.floats(-0.3, 0.3), st.floats(-0.3, 0.3)),
       point=st.tuples(st.floats(0.3, 0.7), st.floats(0.3, 0.7)))
def test_warped_image_moves_a_blob_to_the_transformed_point(flip, angle, scale, shift, point):
    size = 64
    moved = _analytic(np.array([point] * NUM_POINTS), flip, angle, scale, shift)[0]
    assume(((moved > 0.2) & (moved < 0.8)).all())          # the blob stays well inside the frame
    centres = (np.arange(size) + 0.5) / size               # pixel centres, normalised
    blob = np.exp(-((centres[None, :] - point[0]) ** 2 + (centres[:, None] - point[1]) ** 2)
                  / (2 * (2.0 / size) ** 2))
    image = torch.from_numpy(blob).float()[None, None]
    params = AffineParams(torch.tensor([flip]), torch.tensor([angle]), torch.tensor([scale]),
                          torch.tensor([shift]))
    out = warp_images(image, affine_matrices(params), size)[0, 0].double().numpy()
    weights = out / out.sum()
    found = np.array([(weights.sum(0) * centres).sum(), (weights.sum(1) * centres).sum()])
    assert np.abs(found - moved).max() < 0.6 / size          # within about half a pixel
