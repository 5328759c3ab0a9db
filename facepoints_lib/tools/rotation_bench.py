"""Benchmark of turned faces: does the detector find the points however a face is turned?

``facepoints bench-rotation MODEL DATA_DIR`` takes the seeded holdout of ``bench`` (500
faces, split seed 0) and writes two turned copies of it to a temporary folder:

* **quarter turns**: a quarter of the faces each turned by 0, 90, 180 or 270 degrees,
  exact pixel moves (PNG, nothing resampled);
* **any angle**: each face turned by a random angle in [-180, 180) on a canvas enlarged
  so that nothing is cut off (corners black), resampled bilinearly.

The points move with the pixels, exactly (``turn_quarter``, ``turn_any``). The model
detects the upright holdout and both copies in a fresh one-thread process, once with its
second look and once without; err is the course's metric on each picture as it is (the
turned picture's own width and height). It also reports the holdout faces that are
rolled in the data itself (the line from the eyes' centre to the mouth centre more than
30 / 45 degrees from upright), the worst faces, and detection speed with and without
the second look. Results go to ``bench/results/<name>.json``.

A model trained on the holdout (the shipped one) flatters the upright figure; use a
model from ``facepoints bench`` (trained without the holdout) for honest numbers.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.dataset import split_names
from ..core.gt_csv import read_gt
from ..core.images import read_image
from ..core.metrics import course_mark, per_image_err
from .machine import RESULTS_DIR, machine_info, run_script, shown_command, write_result

QUARTERS = (0, 90, 180, 270)
_TRANSPOSE = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
              270: Image.Transpose.ROTATE_270}


def turn_quarter(img: Image.Image, points: np.ndarray, degrees: int) -> tuple[Image.Image, np.ndarray]:
    """Turn a picture counter-clockwise (as seen on screen) by 0, 90, 180 or 270 degrees,
    moving its pixel points (K, 2) with it exactly."""
    if degrees not in QUARTERS:
        raise ValueError(f"a quarter turn is 0, 90, 180 or 270 degrees, got {degrees!r}")
    w, h = img.size
    x, y = points[:, 0], points[:, 1]
    if degrees == 0:
        return img.copy(), points.copy()
    moved = {90: (y, w - 1 - x), 180: (w - 1 - x, h - 1 - y), 270: (h - 1 - y, x)}[degrees]
    return img.transpose(_TRANSPOSE[degrees]), np.stack(moved, axis=1)


def turn_any(img: Image.Image, points: np.ndarray, degrees: float) -> tuple[Image.Image, np.ndarray]:
    """Turn a picture counter-clockwise (as seen on screen) by any angle about its centre,
    on a canvas just large enough to hold all of it (black corners), and move its pixel
    points (K, 2) with it.

    Works in edge coordinates (pixel ``i`` spans ``[i, i + 1]``, so ``e = x + 0.5``),
    which are Pillow's for ``Image.transform``: the inverse map it is given sends each
    output pixel centre to the input point the points' forward map comes from.
    """
    w, h = img.size
    a = math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    new_w = max(int(math.ceil(abs(w * cos) + abs(h * sin) - 1e-9)), 1)
    new_h = max(int(math.ceil(abs(w * sin) + abs(h * cos) - 1e-9)), 1)
    # forward, on screen (y down): counter-clockwise by a is [[cos, sin], [-sin, cos]]
    fwd = np.array([[cos, sin], [-sin, cos]])
    c_in, c_out = np.array([w / 2, h / 2]), np.array([new_w / 2, new_h / 2])
    inv = fwd.T
    offset = c_in - inv @ c_out
    data = (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])
    turned = img.transform((new_w, new_h), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR,
                           fillcolor=(0, 0, 0) if img.mode == "RGB" else 0)
    moved = (points + 0.5 - c_in) @ fwd.T + c_out - 0.5
    return turned, moved


def face_roll_degrees(points: np.ndarray) -> np.ndarray:
    """How far each face (N, 14, 2 pixel points) is rolled from upright, in degrees
    (0 to 180): the angle between straight down and the line from the eye centres'
    midpoint to the mouth centre."""
    eyes = 0.5 * (points[:, 5] + points[:, 8])
    down = points[:, 12] - eyes
    return np.degrees(np.abs(np.arctan2(down[:, 0], down[:, 1])))


_DETECT_SETS_SCRIPT = """
import json, sys, time
import torch
from facepoints_lib.core.detect import detect
torch.set_num_threads(1)
model, sets = sys.argv[1], json.loads(open(sys.argv[2]).read())
out = {}
for label, folder in sets.items():
    for second in (True, False):
        start = time.perf_counter()
        found = detect(model, folder, threads=1, second_look=second)
        out[f"{label}/{'second' if second else 'single'}"] = {
            "seconds": time.perf_counter() - start, "detections": {k: v.tolist() for k, v in found.items()}}
print(json.dumps(out))
"""


def _write_set(folder: Path, pictures: dict[str, Image.Image]) -> None:
    folder.mkdir(parents=True)
    for name, img in pictures.items():
        img.save(folder / (Path(name).stem + ".png"))


def _score(found: dict, truth: dict[str, np.ndarray], sizes: dict[str, tuple[int, int]],
           names: list[str]) -> np.ndarray:
    pred = np.stack([np.asarray(found[Path(n).stem + ".png"]).reshape(-1, 2) for n in names])
    true = np.stack([truth[n] for n in names])
    return per_image_err(pred, true, np.array([sizes[n] for n in names], dtype=np.float64))


def _summary(errors: np.ndarray) -> dict:
    if len(errors) == 0:
        return {"faces": 0}
    return {"faces": int(len(errors)), "err": float(errors.mean()), "median_err": float(np.median(errors)),
            "p95_err": float(np.percentile(errors, 95)), "worst_err": float(errors.max()),
            "mark": course_mark(float(errors.mean()))}


def run_rotation_bench(model_path: str | Path, data_dir: str | Path, *, name: str = "rotation",
                       holdout: int = 500, split_seed: int = 0, seed: int = 0,
                       results_dir: str | Path = RESULTS_DIR, command: str | None = None) -> dict:
    """Score ``model_path`` on the holdout upright, quarter-turned and turned by any angle,
    with and without its second look; save ``bench/results/<name>.json``."""
    data_dir = Path(data_dir)
    gt = read_gt(data_dir / "gt.csv")
    _, held = split_names(sorted(gt), holdout, split_seed)
    rng = np.random.default_rng(seed)
    quarter_of = {n: QUARTERS[i % 4] for i, n in enumerate(rng.permutation(held).tolist())}
    angle_of = {n: float(a) for n, a in zip(held, rng.uniform(-180.0, 180.0, len(held)))}
    truth: dict[str, dict[str, np.ndarray]] = {"upright": {}, "quarter": {}, "any": {}}
    sizes: dict[str, dict[str, tuple[int, int]]] = {"upright": {}, "quarter": {}, "any": {}}
    with tempfile.TemporaryDirectory() as tmp:
        pictures: dict[str, dict[str, Image.Image]] = {"upright": {}, "quarter": {}, "any": {}}
        for n in held:
            img, points = read_image(data_dir / "images" / n), gt[n].reshape(-1, 2).astype(np.float64)
            for label, (turned, moved) in (("upright", (img, points)),
                                           ("quarter", turn_quarter(img, points, quarter_of[n])),
                                           ("any", turn_any(img, points, angle_of[n]))):
                pictures[label][n], truth[label][n], sizes[label][n] = turned, moved, turned.size
        folders = {}
        for label, group in pictures.items():
            folders[label] = str(Path(tmp) / label)
            _write_set(Path(folders[label]), group)
        sets_file = Path(tmp) / "sets.json"
        sets_file.write_text(json.dumps(folders))
        detected = run_script(_DETECT_SETS_SCRIPT, str(model_path), str(sets_file))

    errors = {key: _score(value["detections"], truth[key.split("/")[0]], sizes[key.split("/")[0]], held)
              for key, value in detected.items()}
    roll = face_roll_degrees(np.stack([truth["upright"][n] for n in held]))
    roll_any = face_roll_degrees(np.stack([truth["any"][n] for n in held]))
    upright = errors["upright/second"]
    median = float(np.median(upright))
    result: dict = {"name": name, "command": command or shown_command(),
                    "model": Path(model_path).name,
                    "data": {"dir": data_dir.name, "holdout": len(held), "split_seed": split_seed, "seed": seed},
                    "sets": {}}
    for key, err in errors.items():
        result["sets"][key] = _summary(err)
    for look in ("second", "single"):
        base = result["sets"][f"upright/{look}"]["err"]
        for label in ("quarter", "any"):
            result["sets"][f"{label}/{look}"]["ratio_to_upright"] = result["sets"][f"{label}/{look}"]["err"] / base
        quarter = errors[f"quarter/{look}"]
        result["sets"][f"quarter/{look}"]["by_turn"] = {
            str(q): float(quarter[[quarter_of[n] == q for n in held]].mean()) for q in QUARTERS}
        result[f"rolled/{look}"] = {
            "holdout_over_30": _summary(errors[f"upright/{look}"][roll > 30]),
            "holdout_over_45": _summary(errors[f"upright/{look}"][roll > 45]),
            "holdout_rest": _summary(errors[f"upright/{look}"][roll <= 30]),
            "any_angle_over_45": _summary(errors[f"any/{look}"][roll_any > 45]),
        }
    result["upright_median_err"] = median
    result["rolled_over_45_vs_2x_upright_median"] = {
        "limit": 2 * median, "holdout": result["rolled/second"]["holdout_over_45"].get("median_err"),
        "any_angle": result["rolled/second"]["any_angle_over_45"]["median_err"]}
    result["worst_faces"] = {label: sorted(((float(e), n) for e, n in zip(errors[f"{label}/second"], held)),
                                           reverse=True)[:10] for label in ("upright", "quarter", "any")}
    result["detect_1thread_images_per_second"] = {
        look: len(held) / detected[f"upright/{look}"]["seconds"] for look in ("second", "single")}
    result["machine"] = machine_info()
    result["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out = write_result(result, results_dir, name)
    s = result["sets"]
    print(f"{name}: upright err {s['upright/second']['err']:.3f} (single look {s['upright/single']['err']:.3f}); "
          f"quarter turns {s['quarter/second']['err']:.3f} ({s['quarter/second']['ratio_to_upright']:.2f}x); "
          f"any angle {s['any/second']['err']:.3f} ({s['any/second']['ratio_to_upright']:.2f}x); "
          f"detect {result['detect_1thread_images_per_second']['second']:.0f} img/s "
          f"(single look {result['detect_1thread_images_per_second']['single']:.0f}) -> {out}")
    return result
