"""How well ``facepoints photo`` finds faces in larger pictures (``make-composites``, ``bench-photo``).

``make_composites`` pastes faces of the benchmark holdout (course crops, split seed 0) at
known places into larger pictures: one to three faces each, 20-60 % of the picture's
height, upright in half of the pictures and turned by any angle in the other half, on
four kinds of background (flat, noise, texture, synthetic scene; none holds a face).
``faces.json`` records each pasted face's source, the affine map from the crop's pixels
to the picture's, and its points in the picture.

``run_photo_bench`` measures on them: the faces each finder finds (upright and turned
pictures apart) and its false finds, the finder's time; for the faces ``facepoints
photo`` finds, the course err in each face's own crop frame (its points mapped back
through the paste) against the err of the same faces given to ``detect`` as course crops;
and the time of ``facepoints photo`` on a 12-megapixel picture on one thread.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.checkpoint import load_model
from ..core.dataset import split_names
from ..core.detect import detect
from ..core.gt_csv import read_gt
from ..core.images import read_image
from ..core.metrics import per_image_err
from .framing_sets import _GENERATORS, _prepare_out_dir
from .photo import Framing, _detector, faces_in_photo, find_faces, points_frame, read_photo

HEIGHTS = (900, 1400)                  # px: the composites' heights
FACE_SHARE = (0.2, 0.6)                # a pasted crop's height against the picture's
ASPECTS = (4 / 3, 3 / 4, 1.0, 3 / 2)   # width / height
MEGAPIXELS_12 = (4000, 3000)


def _paste_matrix(size, scale: float, angle: float, centre) -> np.ndarray:
    """2x3 affine taking a crop's pixel edges to the picture's: scaled, turned by
    ``angle`` degrees anticlockwise about the crop's centre, centred at ``centre``."""
    w, h = size
    t = math.radians(angle)
    rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]]) * scale   # y points down
    shift = np.asarray(centre) - rot @ np.array([w / 2, h / 2])
    return np.hstack([rot, shift[:, None]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points in pixel-centre coordinates through an affine map of pixel edges."""
    return (np.asarray(points) + 0.5) @ matrix[:, :2].T + matrix[:, 2] - 0.5


def _invert(matrix: np.ndarray) -> np.ndarray:
    inverse = np.linalg.inv(matrix[:, :2])
    return np.hstack([inverse, (-inverse @ matrix[:, 2])[:, None]])


def make_composites(data_dir, out_dir, *, count: int = 200, holdout: int = 500, split_seed: int = 0,
                    seed: int = 0, progress=None) -> dict:
    """Write ``count`` composites of holdout faces to ``out_dir`` (images/ + faces.json)."""
    data_dir = Path(data_dir)
    gt = read_gt(data_dir / "gt.csv")
    names = split_names(sorted(gt), holdout, split_seed)[1]
    out_dir = _prepare_out_dir(out_dir, "faces.json",
                               lambda marker: [c["file"] for c in json.loads(marker.read_text())["pictures"]])
    rng = np.random.default_rng(seed)
    kinds = list(_GENERATORS)
    pictures = []
    bar = progress(total=count, desc="composites", unit="picture") if progress else None
    for i in range(count):
        turned, kind = i % 2 == 1, kinds[(i // 2) % len(kinds)]
        h = int(rng.integers(*HEIGHTS))
        w = int(round(h * ASPECTS[int(rng.integers(len(ASPECTS)))]))
        canvas = _GENERATORS[kind](rng, w, h).convert("RGB")
        placed, faces = [], []
        for _ in range(int(rng.integers(1, 4))):
            for _attempt in range(40):
                name = names[int(rng.integers(len(names)))]
                crop = read_image(data_dir / "images" / name)
                scale = rng.uniform(*FACE_SHARE) * h / crop.height
                angle = float(rng.uniform(-180, 180)) if turned else 0.0
                t = math.radians(angle)
                bw = abs(math.cos(t)) * crop.width * scale + abs(math.sin(t)) * crop.height * scale
                bh = abs(math.sin(t)) * crop.width * scale + abs(math.cos(t)) * crop.height * scale
                if bw >= w or bh >= h:
                    continue
                cx, cy = rng.uniform(bw / 2, w - bw / 2), rng.uniform(bh / 2, h - bh / 2)
                bounds = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
                if all(bounds[2] <= b[0] or b[2] <= bounds[0] or bounds[3] <= b[1] or b[3] <= bounds[1] for b in placed):
                    break
            else:
                continue
            placed.append(bounds)
            matrix = _paste_matrix(crop.size, scale, angle, (cx, cy))
            source = crop
            if scale < 0.5:            # shrink with an antialiasing filter first; the map stays exact
                source = crop.resize((max(1, round(crop.width * scale * 2)), max(1, round(crop.height * scale * 2))),
                                     Image.Resampling.BILINEAR)
            shrink = np.diag([source.width / crop.width, source.height / crop.height])
            inverse = shrink @ _invert(matrix)[:, :2], shrink @ _invert(matrix)[:, 2]
            coeffs = tuple(np.hstack([inverse[0], inverse[1][:, None]]).reshape(-1))
            layer = source.transform((w, h), Image.Transform.AFFINE, coeffs, Image.Resampling.BICUBIC)
            mask = Image.new("L", source.size, 255).transform((w, h), Image.Transform.AFFINE, coeffs,
                                                               Image.Resampling.BILINEAR)
            canvas.paste(layer, (0, 0), mask)
            points = _apply(matrix, np.asarray(gt[name], dtype=np.float64).reshape(14, 2))
            faces.append({"source": name, "size": list(crop.size), "matrix": matrix.round(9).tolist(),
                          "angle": angle, "points": points.round(3).tolist()})
        file = f"{i:04d}.jpg"
        canvas.save(out_dir / "images" / file, quality=92)
        pictures.append({"file": file, "size": [w, h], "turned": turned, "background": kind, "faces": faces})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    record = {"data": {"holdout": holdout, "split_seed": split_seed, "seed": seed}, "pictures": pictures}
    (out_dir / "faces.json").write_text(json.dumps(record, indent=1) + "\n")
    return {"pictures": count, "faces": sum(len(p["faces"]) for p in pictures)}


def _match(found_centres, found_sides, faces) -> tuple[list[int | None], int]:
    """Which true face each find is (its centre within half the face's scale of the face's
    points' centre, its side within 0.4-3x that scale; nearest first); and the false finds."""
    truth = [points_frame(np.array(f["points"]))[:2] for f in faces]
    taken, owner = set(), []
    for centre, side in zip(found_centres, found_sides):
        best = None
        for j, (c, s) in enumerate(truth):
            d = math.dist(centre, c)
            if j not in taken and d < 0.5 * s and 0.4 * s <= side <= 3 * s and (best is None or d < best[0]):
                best = (d, j)
        owner.append(None if best is None else best[1])
        if best is not None:
            taken.add(best[1])
    return owner, sum(o is None for o in owner)


class HaarFinder:
    """OpenCV's Haar cascade for frontal faces with dlib's ``run`` interface (for comparing
    finders; needs ``opencv-python-headless``)."""

    def __init__(self):
        import cv2

        self.cv2 = cv2
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    def run(self, pixels, upsample, threshold):
        gray = self.cv2.cvtColor(np.ascontiguousarray(pixels), self.cv2.COLOR_RGB2GRAY)
        boxes = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(40, 40))
        rects = [_Box(int(x), int(y), int(x + bw - 1), int(y + bh - 1)) for x, y, bw, bh in boxes]
        return rects, [1.0] * len(rects), [0] * len(rects)


class _Box:
    def __init__(self, left, top, right, bottom):
        self._b = (left, top, right, bottom)

    def left(self):
        return self._b[0]

    def top(self):
        return self._b[1]

    def right(self):
        return self._b[2]

    def bottom(self):
        return self._b[3]

    def width(self):
        return self._b[2] - self._b[0] + 1

    def height(self):
        return self._b[3] - self._b[1] + 1


def _finders() -> dict:
    finders = {"dlib-hog": _detector()}
    try:
        finders["opencv-haar"] = HaarFinder()
    except ImportError:
        pass
    return finders


FINDER_VARIANTS = {"upright": dict(views=(0,)), "quarter-turns": dict(views=(0, 90, 270, 180)),
                   "eighth-turns": dict(views=(0, 90, 270, 180, 45, 315, 135, 225))}


@torch.inference_mode()
def run_photo_bench(composites_dir, data_dir, model_path, progress=None) -> dict:
    """Measure finders and ``facepoints photo`` on a composites folder (see the module docstring)."""
    composites_dir, data_dir = Path(composites_dir), Path(data_dir)
    pictures = json.loads((composites_dir / "faces.json").read_text())["pictures"]
    photos = {p["file"]: read_photo(composites_dir / "images" / p["file"]) for p in pictures}
    torch.set_num_threads(1)
    result = {"pictures": len(pictures), "faces": {"upright": sum(len(p["faces"]) for p in pictures if not p["turned"]),
                                                   "turned": sum(len(p["faces"]) for p in pictures if p["turned"])},
              "finders": {}}
    for finder_name, finder in _finders().items():
        for variant, options in FINDER_VARIANTS.items():
            if finder_name != "dlib-hog" and variant == "eighth-turns":
                continue            # the slowest setting, for the finder that already finds fewer faces at the others
            found = {"upright": 0, "turned": 0}
            false, seconds = 0, 0.0
            for p in pictures:
                started = time.perf_counter()
                faces = find_faces(photos[p["file"]], finder, **options)
                seconds += time.perf_counter() - started
                owner, wrong = _match([f.centre for f in faces], [f.side for f in faces], p["faces"])
                found["turned" if p["turned"] else "upright"] += sum(o is not None for o in owner)
                false += wrong
            result["finders"].setdefault(finder_name, {})[variant] = {
                "found_upright": found["upright"] / max(1, result["faces"]["upright"]),
                "found_turned": found["turned"] / max(1, result["faces"]["turned"]),
                "false_finds": false, "false_finds_per_picture": false / len(pictures),
                "seconds_per_picture": seconds / len(pictures)}
    model = load_model(model_path)
    framing, detector = Framing.load(), _detector()
    gt = read_gt(data_dir / "gt.csv")
    rows = []
    bar = progress(total=len(pictures), desc="photo", unit="picture") if progress else None
    for p in pictures:
        answers = faces_in_photo(photos[p["file"]], model, framing=framing, detector=detector, threads=1)
        owner, _ = _match([np.array(a.box[:2]) / 2 + np.array(a.box[2:]) / 2 for a in answers],
                          [math.sqrt((a.box[2] - a.box[0]) * (a.box[3] - a.box[1])) for a in answers], p["faces"])
        for answer, j in zip(answers, owner):
            if j is None:
                continue
            face = p["faces"][j]
            back = _apply(_invert(np.array(face["matrix"])), answer.points)
            true = np.asarray(gt[face["source"]], dtype=np.float64).reshape(1, 14, 2)
            err = float(per_image_err(back[None], true, np.array([face["size"]]))[0])
            rows.append((face["source"], p["turned"], err))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    sources = sorted({r[0] for r in rows})
    as_crops = detect(model_path, data_dir / "images", filenames=sources, threads=1)
    crop_err = {n: float(per_image_err(as_crops[n].reshape(1, 14, 2),
                                       np.asarray(gt[n], dtype=np.float64).reshape(1, 14, 2),
                                       np.array([read_image(data_dir / "images" / n).size]))[0]) for n in sources}
    for turned in (False, True):
        mine = [(err, crop_err[n]) for n, t, err in rows if t == turned]
        key = "turned" if turned else "upright"
        if mine:
            a, b = np.array(mine).T
            result[f"photo_{key}"] = {"faces": len(mine), "err": float(a.mean()), "median": float(np.median(a)),
                                      "err_as_course_crops": float(b.mean()), "ratio": float(a.mean() / b.mean())}
    big = photos[pictures[0]["file"]].resize(MEGAPIXELS_12, Image.Resampling.BILINEAR)
    path = composites_dir / "twelve-megapixels.jpg"
    big.save(path, quality=92)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        faces_in_photo(read_photo(path), model, framing=framing, detector=detector, threads=1)
        times.append(time.perf_counter() - started)
    path.unlink()
    result["twelve_megapixels"] = {"size": list(MEGAPIXELS_12), "seconds": float(np.median(times)),
                                   "faces": len(pictures[0]["faces"])}
    return result
