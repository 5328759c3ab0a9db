"""Synthetic faces with exact keypoints, written in the course's folder format.

A fresh clone has no real face data, so this module is the project's embedded default
data set: the main command, the tests and the notebooks can all run on it. Each face
is drawn with Pillow from its 14 keypoints (see :mod:`facepoints_lib.core.schema` for the
order), so every point is visually determined by the drawing and a small CNN can learn
to find it. Faces vary in in-plane rotation, a yaw-like turn of the inner features,
scale, position, colours, background texture, lighting, blur and noise; about 15% are
grayscale and about 10% are not square.

The written folder looks like the course data::

    out_dir/images/00000.jpg, 00001.jpg, ...
    out_dir/gt.csv           filename,x1,y1,...,x14,y14   (integer pixel coordinates)
    out_dir/img_shapes.csv   img_filename,n_rows,n_cols

Keypoints are rounded to integers *before* drawing, so the integer labels in
``gt.csv`` are exact for the pictures. Pixel convention: the centre of pixel column
``i`` is ``x = i``.
"""

import argparse
import io
import pathlib
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..core.gt_csv import write_gt, write_img_shapes
from ..core.schema import NUM_POINTS

_SYNTH_SS = 2  # supersampling factor used for anti-aliased drawing
_SYNTH_HAIR = ((20, 15, 12), (70, 45, 25), (140, 100, 55), (200, 170, 110), (120, 120, 120))
_SYNTH_IRIS = ((90, 55, 30), (60, 40, 25), (70, 110, 150), (80, 120, 80))


def _synth_curve(a, mid, b, n=12):
    """Points of the quadratic curve through a (t=0), mid (t=0.5) and b (t=1)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) * (1 - 2 * t) * a + 4 * t * (1 - t) * mid + t * (2 * t - 1) * b


def _synth_ellipse(centre, ax, ay, angle, n=40):
    """Polygon approximating an ellipse with semi-axes (ax, ay) rotated by angle."""
    th = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(angle), np.sin(angle)
    ex, ey = ax * np.cos(th), ay * np.sin(th)
    return np.stack([centre[0] + c * ex - s * ey, centre[1] + s * ex + c * ey], axis=1)


def _synth_shade(colour, factor, towards=None, amount=0.0):
    """Colour scaled by factor, optionally mixed with another colour first."""
    col = np.asarray(colour, dtype=float)
    if towards is not None:
        col = (1 - amount) * col + amount * np.asarray(towards, dtype=float)
    return tuple(int(v) for v in np.clip(col * factor, 0, 255))


def _synth_canonical(rng):
    """Random face geometry in face units: (14, 2) points, face semi-axes, yaw, extras."""
    ay = rng.uniform(1.2, 1.4)  # face half-height; half-width is 1
    eye_y, eye_cx, eye_hw = rng.uniform(-0.35, -0.18), rng.uniform(0.36, 0.46), rng.uniform(0.16, 0.23)
    brow_y = eye_y - rng.uniform(0.2, 0.32)
    brow_out, brow_in = eye_cx + eye_hw + rng.uniform(-0.02, 0.1), rng.uniform(0.1, 0.22)
    nose_y = eye_y + rng.uniform(0.42, 0.58)
    mouth_y, mouth_hw = nose_y + rng.uniform(0.26, 0.38), rng.uniform(0.27, 0.42)
    smile = rng.uniform(-0.04, 0.08)
    pts = np.array([
        [-brow_out, brow_y + 0.04], [-brow_in, brow_y],
        [brow_in, brow_y], [brow_out, brow_y + 0.04],
        [-eye_cx - eye_hw, eye_y], [-eye_cx, eye_y], [-eye_cx + eye_hw, eye_y],
        [eye_cx - eye_hw, eye_y], [eye_cx, eye_y], [eye_cx + eye_hw, eye_y],
        [0.0, nose_y],
        [-mouth_hw, mouth_y - smile], [0.0, mouth_y], [mouth_hw, mouth_y - smile],
    ])
    # Yaw: features sit on a surface whose half-width follows the face outline; turning
    # it moves them sideways and squashes the far side. The nose tip sticks out further.
    yaw = rng.uniform(-0.35, 0.35)
    radius = np.sqrt(np.clip(1 - (pts[:, 1] / ay) ** 2, 0.05, 1.0))
    phi = np.arcsin(np.clip(pts[:, 0] / radius, -0.95, 0.95))
    pts[:, 0] = radius * np.sin(phi + yaw)
    pts[10, 0] += rng.uniform(0.15, 0.3) * np.sin(yaw)
    return pts, ay, yaw


def _synth_size(rng):
    """Random (width, height): log-uniform in 48..200, ~10% not square."""
    side = np.exp(rng.uniform(np.log(48), np.log(200)))
    aspect = rng.uniform(0.75, 1.33) if rng.random() < 0.1 else 1.0
    return int(round(side)), int(np.clip(round(side * aspect), 40, 240))


def _synth_background(rng, width, height):
    """A smooth random colour field with a few blotches, at drawing resolution."""
    grid = rng.integers(0, 256, size=(rng.integers(2, 6), rng.integers(2, 6), 3)).astype(float)
    grid = grid + rng.uniform(0.2, 0.8) * (grid.mean(axis=2, keepdims=True) - grid)  # desaturate
    bg = Image.fromarray(grid.astype(np.uint8), "RGB").resize((width, height), Image.BILINEAR)
    draw = ImageDraw.Draw(bg)
    for _ in range(rng.integers(0, 5)):
        centre = rng.uniform(0, 1, 2) * (width, height)
        poly = _synth_ellipse(centre, *rng.uniform(0.05, 0.3, 2) * width, rng.uniform(0, np.pi), 16)
        draw.polygon(poly.ravel().tolist(), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return bg


def _synth_draw_features(draw, rng, p, s, angle, yaw, skin, hair):
    """Draw eyebrows, eyes, nose and mouth at the keypoints p (drawing coordinates).

    s is drawing pixels per face unit; every shape is built from the points and the
    face's own axes, and left/right parts are built the same way, so a mirrored face
    (with FLIP_PERMUTATION applied to its points) is drawn like any other face.
    """
    ux, vy = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    sq = np.cos(yaw)  # horizontal squash of the turned face

    def poly(pts, fill):
        draw.polygon(np.asarray(pts).ravel().tolist(), fill=fill)

    # Eyebrows: arched bands from the outer to the inner point, thicker at the inner end.
    brow_col = _synth_shade(hair, rng.uniform(0.35, 0.7), skin, 0.15)
    brow_th, arch = rng.uniform(0.05, 0.11) * s, rng.uniform(0.02, 0.08) * s
    for outer, inner in ((p[0], p[1]), (p[3], p[2])):
        centre = _synth_curve(outer, (outer + inner) / 2 - arch * vy, inner)
        half = brow_th * np.linspace(0.3, 0.5, len(centre))[:, None]
        poly(np.concatenate([centre - half * vy, (centre + half * vy)[::-1]]), brow_col)

    # Eyes: almond through the corners, iris and dark pupil at the centre point.
    eye_h = rng.uniform(0.07, 0.1) * s
    iris = _synth_shade(_SYNTH_IRIS[rng.integers(len(_SYNTH_IRIS))], rng.uniform(0.7, 1.1))
    iris = _synth_shade(iris, min(1.0, 0.6 * sum(skin) / max(sum(iris), 1)))  # darker than skin
    sclera = _synth_shade((245, 242, 235), rng.uniform(0.85, 1.0))
    lid_col, lid_w = _synth_shade(skin, 0.3), max(1, int(round(0.025 * s)))
    for outer, centre, inner in ((p[4], p[5], p[6]), (p[9], p[8], p[7])):
        upper = _synth_curve(outer, centre - eye_h * vy, inner)
        lower = _synth_curve(inner, centre + 0.8 * eye_h * vy, outer)
        poly(np.concatenate([upper, lower]), sclera)
        poly(_synth_ellipse(centre, 0.75 * eye_h, 0.75 * eye_h, 0.0, 20), iris)
        poly(_synth_ellipse(centre, 0.34 * eye_h, 0.34 * eye_h, 0.0, 12), (15, 12, 12))
        draw.line(upper.ravel().tolist(), fill=lid_col, width=lid_w, joint="curve")

    # Nose: shaded wedge from between the eyes down to the wings, two dark nostrils
    # either side of the tip, and a light highlight on the tip itself.
    tip, nose_w = p[10], rng.uniform(0.12, 0.18) * s * sq
    top = (p[6] + p[7]) / 2 + 0.1 * s * vy
    poly([top - 0.04 * s * ux, top + 0.04 * s * ux, tip + nose_w * ux + 0.03 * s * vy,
          tip + 0.06 * s * vy, tip - nose_w * ux + 0.03 * s * vy], _synth_shade(skin, 0.85))
    for side in (-1, 1):
        nostril = tip + side * 0.55 * nose_w * ux + 0.03 * s * vy
        poly(_synth_ellipse(nostril, 0.045 * s * sq, 0.028 * s, angle, 12), _synth_shade(skin, 0.35))
    poly(_synth_ellipse(tip, 0.035 * s * sq, 0.035 * s, angle, 12), _synth_shade(skin, 1.12))

    # Mouth: lips through the corners, parted along a dark line through the centre
    # point; sometimes open around it.
    lips = _synth_shade(skin, rng.uniform(0.7, 0.9), (170, 60, 70), rng.uniform(0.2, 0.5))
    up_h, low_h = rng.uniform(0.04, 0.08) * s, rng.uniform(0.05, 0.1) * s
    left, mid, right = p[11], p[12], p[13]
    poly(np.concatenate([_synth_curve(left, mid - up_h * vy, right),
                         _synth_curve(right, mid + low_h * vy, left)]), lips)
    dark = _synth_shade(lips, 0.3)
    if rng.random() < 0.2:
        poly(np.concatenate([_synth_curve(left, mid - 0.4 * up_h * vy, right),
                             _synth_curve(right, mid + 0.4 * low_h * vy, left)]), dark)
    draw.line(_synth_curve(left, mid, right).ravel().tolist(), fill=dark,
              width=max(1, int(round(0.025 * s))), joint="curve")


def _synth_degrade(rng, img):
    """Uneven lighting, sensor noise, sometimes blur, JPEG artefacts and grayscale."""
    width, height = img.size
    arr = np.asarray(img, dtype=np.float32)
    gx, gy = rng.uniform(-0.3, 0.3, 2)
    light = (rng.uniform(0.8, 1.15) + gx * (np.arange(width, dtype=np.float32) / width - 0.5)
             + gy * (np.arange(height, dtype=np.float32) / height - 0.5)[:, None])
    noise = rng.standard_normal(arr.shape, dtype=np.float32) * rng.uniform(1, 8)
    img = Image.fromarray(np.clip(arr * light[..., None] + noise, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0) * width / 100))
    if rng.random() < 0.3:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(30, 80)))
        img = Image.open(buf)
        img.load()
    return img.convert("L") if rng.random() < 0.15 else img


def render_face(rng, size=None):
    """Draw one random synthetic face.

    Args:
        rng: a ``numpy.random.Generator``; the face depends only on its state.
        size: optional ``(width, height)`` in pixels (PIL order). By default a random
            size of roughly 48..200 pixels, about 10% of them not square.

    Returns:
        ``(image, points)``: a PIL image (mode "RGB", or "L" for about 15% of faces) and
        a float array of shape (14, 2) with the (x, y) pixel coordinates of the
        keypoints. The coordinates are whole numbers, lie inside the image, and the
        face is drawn exactly at them.
    """
    width, height = (int(size[0]), int(size[1])) if size is not None else _synth_size(rng)
    canon, ay, yaw = _synth_canonical(rng)

    # Pose: rotation, scale so the face fills 60-95% of the frame, jittered position
    # limited so that every keypoint stays at least a pixel inside the image.
    angle = np.deg2rad(rng.uniform(-25, 25))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    scale = rng.uniform(0.6, 0.95) * min(width / 2.0, height / (2.0 * ay))
    local = canon @ rot.T * scale
    lo, hi = 1.0 - local.min(axis=0), np.array([width - 2.0, height - 2.0]) - local.max(axis=0)
    shift = np.array([width - 1.0, height - 1.0]) / 2 + rng.normal(0, 0.06, 2) * (width, height)
    shift = np.where(lo <= hi, np.clip(shift, lo, hi), (lo + hi) / 2)
    points = np.clip(np.round(local + shift), 0, [width - 1, height - 1])

    # Drawing happens on a canvas _SYNTH_SS times larger; pixel i of the result averages
    # canvas pixels SS*i .. SS*i+SS-1, so image x maps to canvas SS*x + (SS-1)/2.
    def pose(pts):  # face units -> canvas coordinates
        return _SYNTH_SS * (np.asarray(pts, dtype=float) @ rot.T * scale + shift) + (_SYNTH_SS - 1) / 2

    s = scale * _SYNTH_SS
    skin = _synth_shade((242, 208, 182), 1.0, (92, 58, 40), rng.uniform())
    skin = _synth_shade(skin, rng.uniform(0.92, 1.08), tuple(rng.integers(0, 256, 3)), 0.08)
    hair = _synth_shade(_SYNTH_HAIR[rng.integers(len(_SYNTH_HAIR))], rng.uniform(0.7, 1.1))
    canvas = _synth_background(rng, width * _SYNTH_SS, height * _SYNTH_SS)
    draw = ImageDraw.Draw(canvas)

    # Neck, hair behind the head, the face, a hair cap over the forehead.
    neck = pose([[-0.45, 0.6], [0.45, 0.6], [0.55, 3.0], [-0.55, 3.0]])
    draw.polygon(neck.ravel().tolist(), fill=_synth_shade(skin, 0.8))
    has_hair = rng.random() < 0.75
    if has_hair:
        back = _synth_ellipse(pose([0, -0.3 * ay]), 1.12 * s, 0.85 * ay * s, angle)
        draw.polygon(back.ravel().tolist(), fill=hair)
    draw.polygon(_synth_ellipse(pose([0, 0]), s, ay * s, angle, 48).ravel().tolist(), fill=skin)
    if has_hair:
        cap = _synth_ellipse((0, 0), 1.0, ay, 0.0, 48)
        cap = cap[cap[:, 1] < canon[1, 1] - rng.uniform(0.25, 0.5)]  # above the hairline
        if len(cap) >= 3:
            draw.polygon(pose(cap).ravel().tolist(), fill=hair)

    canvas_points = _SYNTH_SS * points + (_SYNTH_SS - 1) / 2
    _synth_draw_features(draw, rng, canvas_points, s, angle, yaw, skin, hair)
    return _synth_degrade(rng, canvas.reduce(_SYNTH_SS)), points.astype(float)


def synthetic_faces_in_memory(count, seed=0):
    """Render ``count`` faces without touching the disk.

    Face ``i`` is the same picture as ``images/{i:05d}.jpg`` written by
    :func:`make_synthetic_faces` with the same seed (before JPEG compression).

    Returns:
        ``(images, points)``: a list of PIL images and a float array (count, 14, 2).
    """
    images, points = [], np.zeros((count, NUM_POINTS, 2))
    for i in range(count):
        img, points[i] = render_face(np.random.default_rng([seed, i]))
        images.append(img)
    return images, points


def make_synthetic_faces(out_dir, count, seed=0, *, size=None, progress=False):
    """Write ``count`` synthetic faces to ``out_dir`` in the course format.

    Creates ``out_dir/images/00000.jpg ...`` (JPEG quality 90), ``out_dir/gt.csv``
    (integer keypoints) and ``out_dir/img_shapes.csv``. The output is byte-for-byte
    the same for the same ``(count, seed, size)``; image ``i`` does not depend on
    ``count``. ``size`` is an optional fixed ``(width, height)``.

    Returns:
        ``out_dir`` as a :class:`pathlib.Path`.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    out_dir = pathlib.Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    table, shapes = {}, {}
    for i in range(count):
        img, pts = render_face(np.random.default_rng([seed, i]), size)
        name = f"{i:05d}.jpg"
        img.save(out_dir / "images" / name, format="JPEG", quality=90)
        table[name], shapes[name] = pts.ravel(), (img.height, img.width)
        if progress and ((i + 1) % 100 == 0 or i + 1 == count):
            print(f"synth: {i + 1}/{count} faces", file=sys.stderr)
    write_gt(table, out_dir / "gt.csv", decimals=0)            # the points are whole pixels
    write_img_shapes(shapes, out_dir / "img_shapes.csv")
    return out_dir


def main(argv=None):
    """Command line: ``python -m facepoints_lib.tools.synth --out DIR --count N --seed S``."""
    parser = argparse.ArgumentParser(description="Write synthetic faces in the course format.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--count", type=int, default=300, help="number of faces (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    out = make_synthetic_faces(args.out, args.count, args.seed, progress=True)
    print(f"wrote {args.count} faces to {out}")


if __name__ == "__main__":
    main()
