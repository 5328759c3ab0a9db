"""The production landmark models side by side with ours, on the course's holdout.

``facepoints bench-reference MODEL DATA --name NAME`` scores, on the seeded holdout of
``bench`` (500 faces, split seed 0), each picture upright and turned by a quarter turn
(``np.rot90``: 90 degrees counter-clockwise as seen, exact, the points moved alike):

* **dlib's 68-point predictor** (the iBUG 300-W model ``shape_predictor_68_face_landmarks.dat``
  that ``face-recognition-models`` ships). It needs a face box: dlib's HOG frontal face
  finder looks at the crop scaled to a longer side of ``FINDER_SIDE`` px (upsampling 0,
  threshold 0, the best-scoring box wins); where it finds nothing, the box is
  ``fallback_box``: a square of side ``sqrt(w * h / (box_width * box_height))`` centred
  on the crop (the course crops are face crops framed ``box_width`` x ``box_height``
  finder boxes, medians in ``bench/results/course-framing.json``). The 68 points become
  the 14 two ways: ``IBUG_TO_COURSE``, a fixed index map chosen by the point definitions,
  and a linear map (``fit_linear_map``: least squares from the 68 points normalised to the
  box, plus a bias, to the 14) fitted on upright training faces outside the holdout (of
  ``FIT_FACES`` drawn, those where the finder found the face and the index map's err is
  at most 20: least squares would chase dlib's failures).
* **the project's model** (``detect`` in a fresh one-thread process), with its figures
  also on the holdout faces the model never trained on (``unseen_faces``): the shipped
  model trained on the 4750 faces outside its 250 validation faces, which are the first
  half of the same seeded permutation, so half of the holdout flatters it.
* **MediaPipe**: not run; ``MEDIAPIPE_FINDING`` records why.

Each row: err (the course's, mean), median per-face err, share of faces over err 20 and
faces/s on one thread (decoding, the finder and the predictor for dlib; decoding and
``detect`` for the model). Results go to ``bench/results/<name>.json``, each row under
``rows.<dlib68-index|dlib68-linear|model>.<upright|turned>``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.checkpoint import load_checkpoint
from ..core.dataset import split_names
from ..core.gt_csv import read_gt
from ..core.images import read_image, read_image_size
from ..core.metrics import per_image_err
from .machine import RESULTS_DIR, machine_info, run_script, shown_command, write_result
from .photo import Framing, _detector

# Course point i is the mean of these iBUG-68 points (0-based; "left" = image left, which
# is the subject's right: iBUG's 36-41 is the eye on the image's left).
IBUG_TO_COURSE: tuple[tuple[int, ...], ...] = (
    (17,),                      # 0 left eyebrow outer: the brow's first point (17-21 run outer to inner)
    (21,),                      # 1 left eyebrow inner: its last
    (22,),                      # 2 right eyebrow inner: 22-26 run inner to outer
    (26,),                      # 3 right eyebrow outer
    (36,),                      # 4 left eye outer corner
    (36, 37, 38, 39, 40, 41),   # 5 left eye centre: the mean of its six contour points
    (39,),                      # 6 left eye inner corner
    (42,),                      # 7 right eye inner corner
    (42, 43, 44, 45, 46, 47),   # 8 right eye centre
    (45,),                      # 9 right eye outer corner
    (30,),                      # 10 nose tip: the last point of the bridge line 27-30
    (48,),                      # 11 mouth left corner
    (51, 57, 62, 66),           # 12 mouth centre: the mean of the lips' midline points, outer and inner
    (54,),                      # 13 mouth right corner
)

# After mirroring a picture, iBUG point IBUG_FLIP[i] of the original is point i of the mirror.
IBUG_FLIP: tuple[int, ...] = (
    *range(16, -1, -1),                          # jaw 0-16
    *range(26, 21, -1), *range(21, 16, -1),      # brows 17-21 <-> 26-22
    27, 28, 29, 30, *range(35, 30, -1),          # nose bridge, nostrils 31-35
    45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,   # eyes
    *range(54, 47, -1), 59, 58, 57, 56, 55,      # outer lip 48-59
    64, 63, 62, 61, 60, 67, 66, 65,              # inner lip 60-67
)

FINDER_SIDE = 320            # px: the crop's longer side as dlib's finder and predictor see it
OVER = 20.0                  # err above which a face counts as failed (the course's mark 0)
FIT_FACES = 2000             # upright training faces drawn to fit the linear map on
TURN_DEGREES = 90
HONEST_MODELS = ("artifacts/bench-curve-e24-seed0.pt",)   # trained without the holdout, if present

MEDIAPIPE_FINDING = (
    "not run. `pip download mediapipe==0.10.21 --no-deps` gives "
    "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl (35.6 MB), which bundles "
    "modules/face_landmark/face_landmark.tflite and face_detection_short_range.tflite (the legacy "
    "FaceMesh solution, no download needed), but its metadata requires numpy<2 (and "
    "protobuf<5, opencv-contrib-python, jax, jaxlib, matplotlib, sounddevice, sentencepiece); "
    "the venv has numpy 2.4, which is not downgraded, so pip's resolver cannot install it here. Tried in a "
    "throwaway venv (Python 3.11): numpy 2.4.6, the wheel with --no-deps, plus absl-py, attrs, flatbuffers, "
    "protobuf 4.25, opencv-python-headless 5.1 and matplotlib (the imports mediapipe.solutions needs): it "
    "imports, and FaceMesh(static_image_mode=True) finds the face of data/train/images/00000.jpg with its 468 "
    "points, so its native code runs beside numpy 2 despite the pin; an isolated venv could measure it "
    "(a follow-up: it needs a 468-to-14 map). Later versions drop the bundled "
    "legacy solutions: their FaceLandmarker task needs a face_landmarker.task model file "
    "downloaded from storage.googleapis.com, out of reach here (only PyPI).")


def predictor_path() -> Path:
    """Where ``face-recognition-models`` keeps ``shape_predictor_68_face_landmarks.dat``
    (found without importing the package, whose ``__init__`` needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("dlib's 68-point model needs face-recognition-models: pip install -e '.[photos]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise FileNotFoundError(f"face-recognition-models is installed but {path} is missing")
    return path


def index_map(points68: np.ndarray) -> np.ndarray:
    """The 14 course points (..., 14, 2) from iBUG-68 points (..., 68, 2) by ``IBUG_TO_COURSE``."""
    points68 = np.asarray(points68, dtype=np.float64)
    return np.stack([points68[..., list(idx), :].mean(axis=-2) for idx in IBUG_TO_COURSE], axis=-2)


def _features(points68: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, 137): the 68 points normalised to their box ((p - corner) / side) and a 1."""
    boxes = np.asarray(boxes, dtype=np.float64)
    corner, side = boxes[:, None, :2], (boxes[:, None, 2:] - boxes[:, None, :2])
    normalised = (np.asarray(points68, dtype=np.float64) - corner) / side
    return np.concatenate([normalised.reshape(len(boxes), -1), np.ones((len(boxes), 1))], axis=1)


def fit_linear_map(points68: np.ndarray, boxes: np.ndarray, truth14: np.ndarray) -> np.ndarray:
    """Least-squares weights (137, 28) from the 68 points (N, 68, 2) normalised to their
    boxes (N, 4: x0, y0, x1, y1), plus a bias, to the 14 true points (N, 14, 2) likewise normalised."""
    boxes = np.asarray(boxes, dtype=np.float64)
    target = (np.asarray(truth14, dtype=np.float64) - boxes[:, None, :2]) / (boxes[:, None, 2:] - boxes[:, None, :2])
    weights, *_ = np.linalg.lstsq(_features(points68, boxes), target.reshape(len(boxes), -1), rcond=None)
    return weights


def apply_linear_map(weights: np.ndarray, points68: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The 14 points (N, 14, 2, pixels) ``fit_linear_map``'s weights give for these 68 points and boxes."""
    boxes = np.asarray(boxes, dtype=np.float64)
    out = (_features(points68, boxes) @ weights).reshape(len(boxes), 14, 2)
    return out * (boxes[:, None, 2:] - boxes[:, None, :2]) + boxes[:, None, :2]


def quarter_turn(picture: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.rot90`` of a picture (H, W, ...): a quarter turn counter-clockwise as seen, and
    its pixel points (K, 2) moved alike: (x, y) -> (y, W - 1 - x)."""
    width = picture.shape[1]
    points = np.asarray(points, dtype=np.float64)
    return np.ascontiguousarray(np.rot90(picture)), np.stack([points[:, 1], width - 1 - points[:, 0]], axis=1)


def fallback_box(width: int, height: int, framing: Framing) -> tuple[float, float, float, float]:
    """The box assumed where the finder finds no face: a square of side
    ``sqrt(w * h / (box_width * box_height))`` centred on the crop (the framing's small
    centre offset is left out: it depends on which way the face is turned)."""
    side = math.sqrt(width * height / (framing.box_width * framing.box_height))
    cx, cy = width / 2, height / 2
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


class DlibLandmarks:
    """dlib's HOG face finder and 68-point predictor on one picture: call with an RGB
    array (H, W, 3) to get (68 points (68, 2, pixels), box (x0, y0, x1, y1), found)."""

    def __init__(self, framing: Framing, predictor: str | Path | None = None):
        import dlib
        self.dlib, self.framing = dlib, framing
        self.detector = _detector()
        self.predictor = dlib.shape_predictor(str(predictor or predictor_path()))

    def __call__(self, picture: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float], bool]:
        h, w = picture.shape[:2]
        scale = FINDER_SIDE / max(w, h)
        view = np.asarray(Image.fromarray(picture).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                          Image.Resampling.BILINEAR))
        rects, scores, _ = self.detector.run(view, 0, 0.0)
        if len(rects):
            r = rects[int(np.argmax(scores))]
            box = (r.left() / scale, r.top() / scale, (r.right() + 1) / scale, (r.bottom() + 1) / scale)
        else:
            box = fallback_box(w, h, self.framing)
            r = self.dlib.rectangle(round(box[0] * scale), round(box[1] * scale),
                                    round(box[2] * scale) - 1, round(box[3] * scale) - 1)
        shape = self.predictor(view, r)
        points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        return (points + 0.5) / scale - 0.5, box, bool(len(rects))


def run_dlib(landmarks: DlibLandmarks, folder: Path, names: list[str]) -> dict:
    """dlib on ``folder/name`` for each name: 68 points (N, 68, 2), boxes (N, 4), found (N,)
    and the seconds taken, decoding included."""
    points, boxes, found = [], [], []
    start = time.perf_counter()
    for name in names:
        p, box, hit = landmarks(np.asarray(read_image(folder / name)))
        points.append(p)
        boxes.append(box)
        found.append(hit)
    return {"points": np.stack(points), "boxes": np.array(boxes), "found": np.array(found),
            "seconds": time.perf_counter() - start}


_DETECT_SCRIPT = """
import json, sys, time
import torch
from facepoints_lib.core.detect import detect
torch.set_num_threads(1)
model, sets = sys.argv[1], json.loads(open(sys.argv[2]).read())
out = {}
for label, (folder, names) in sets.items():
    start = time.perf_counter()
    found = detect(model, folder, filenames=names, threads=1)
    out[label] = {"seconds": time.perf_counter() - start, "detections": {k: v.tolist() for k, v in found.items()}}
print(json.dumps(out))
"""


def unseen_faces(model_path: str | Path, names: list[str], held: list[str]) -> tuple[list[str], str]:
    """The holdout faces the model never trained on, and how that was decided, from the
    checkpoint's metadata (its validation faces, and how many faces it saw)."""
    meta = load_checkpoint(model_path).get("metadata", {})
    val, seen = set(meta.get("val_names", [])), meta.get("train_images", 0) + meta.get("val_images", 0)
    if meta.get("interrupted"):
        return [], "interrupted training run"
    if seen == len(names) and not meta.get("excluded"):
        return [n for n in held if n in val], (f"trained on this folder's {meta['train_images']} faces outside its "
                                               f"{len(val)} validation faces")
    if seen == len(names) - len(held) and val and not val & set(held):
        return list(held), f"trained on the {seen} faces outside the holdout"
    return [], f"unknown: metadata says {seen} faces seen"


def _summary(errors: np.ndarray, seconds: float | None = None) -> dict:
    out = {"faces": int(len(errors))}
    if len(errors):
        out.update(err=float(errors.mean()), median_err=float(np.median(errors)),
                   share_over_20=float((errors > OVER).mean()), worst_err=float(errors.max()))
    if seconds is not None:
        out["faces_per_second"] = len(errors) / seconds
    return out


def run_reference_bench(model_path: str | Path, data_dir: str | Path, *, name: str = "reference-models",
                        honest_model: str | Path | None = None, holdout: int = 500, split_seed: int = 0,
                        fit_faces: int = FIT_FACES, seed: int = 0, mediapipe: str | None = None,
                        results_dir: str | Path = RESULTS_DIR, command: str | None = None) -> dict:
    """Score dlib (index and linear map) and the project's model(s) on the holdout, upright
    and quarter-turned; save ``<results_dir>/<name>.json`` and print a table."""
    load_start = os.getloadavg()[0]          # the CPU is shared: the timings depend on it
    data_dir = Path(data_dir)
    img_dir = data_dir / "images"
    gt = read_gt(data_dir / "gt.csv")
    names = sorted(gt)
    rest, held = split_names(names, holdout, split_seed)
    fit_names = sorted(np.random.default_rng(seed).choice(rest, size=min(fit_faces, len(rest)), replace=False).tolist())
    if honest_model is None:
        honest_model = next((p for p in HONEST_MODELS if Path(p).is_file()), None)
    framing = Framing.load()
    landmarks = DlibLandmarks(framing)
    truth = {"upright": {n: gt[n].reshape(14, 2).astype(np.float64) for n in held}, "turned": {}}
    sizes: dict[str, dict[str, tuple[int, int]]] = {"upright": {}, "turned": {}}
    with tempfile.TemporaryDirectory() as tmp:
        turned_dir = Path(tmp) / "turned"
        turned_dir.mkdir()
        turned_names = {n: Path(n).stem + ".png" for n in held}
        for n in held:
            picture = np.asarray(read_image(img_dir / n))
            sizes["upright"][n] = (picture.shape[1], picture.shape[0])
            turned, moved = quarter_turn(picture, truth["upright"][n])
            Image.fromarray(turned).save(turned_dir / turned_names[n])
            truth["turned"][n], sizes["turned"][n] = moved, (turned.shape[1], turned.shape[0])
        sets = {"upright": (img_dir, held), "turned": (turned_dir, [turned_names[n] for n in held])}

        fit = run_dlib(landmarks, img_dir, fit_names)
        fit_truth = np.stack([gt[n].reshape(14, 2) for n in fit_names])
        fit_sizes = np.array([read_image_size(img_dir / n) for n in fit_names], dtype=np.float64)
        # least squares chases outliers: fit on the faces the finder found and dlib got roughly right
        keep = fit["found"] & (per_image_err(index_map(fit["points"]), fit_truth, fit_sizes) <= OVER)
        weights = fit_linear_map(fit["points"][keep], fit["boxes"][keep], fit_truth[keep])
        dlib_runs = {label: run_dlib(landmarks, folder, list(files)) for label, (folder, files) in sets.items()}

        models = {"model": Path(model_path)}
        if honest_model:
            models["honest-model"] = Path(honest_model)
        png_dir = Path(tmp) / "upright-png"         # timing only: PNG like the turned set, JPEG draft decoding gone
        png_dir.mkdir()
        for n in held:
            read_image(img_dir / n).save(png_dir / turned_names[n])
        sets_file = Path(tmp) / "sets.json"
        sets_file.write_text(json.dumps({**{k: [str(f), list(v)] for k, (f, v) in sets.items()},
                                         "upright-png": [str(png_dir), sets["turned"][1]]}))
        detected = {key: run_script(_DETECT_SCRIPT, str(path), str(sets_file)) for key, path in models.items()}

    def errors_of(pred: np.ndarray, label: str) -> np.ndarray:
        true = np.stack([truth[label][n] for n in held])
        return per_image_err(pred, true, np.array([sizes[label][n] for n in held], dtype=np.float64))

    preds: dict[str, dict[str, np.ndarray]] = {"dlib68-index": {}, "dlib68-linear": {}, **{k: {} for k in models}}
    rows: dict[str, dict[str, dict]] = {key: {} for key in preds}
    for label in ("upright", "turned"):
        run = dlib_runs[label]
        preds["dlib68-index"][label] = index_map(run["points"])
        preds["dlib68-linear"][label] = apply_linear_map(weights, run["points"], run["boxes"])
        for key in ("dlib68-index", "dlib68-linear"):
            rows[key][label] = {**_summary(errors_of(preds[key][label], label), run["seconds"]),
                                "finder_found": int(run["found"].sum()), "fallback_boxes": int((~run["found"]).sum())}
        for key in models:
            found = detected[key][label]["detections"]
            preds[key][label] = np.stack([np.asarray(found[f]).reshape(14, 2) for f in sets[label][1]])
            rows[key][label] = _summary(errors_of(preds[key][label], label), detected[key][label]["seconds"])
    for key in models:
        rows[key]["upright"]["faces_per_second_png"] = len(held) / detected[key]["upright-png"]["seconds"]
    subsets = {key: unseen_faces(path, names, held) for key, path in models.items()}
    for key in models:       # every row again on the holdout faces this model never trained on
        mask = np.isin(held, subsets[key][0])
        if mask.any() and not mask.all():
            for other, by_label in preds.items():
                for label, pred in by_label.items():
                    rows[other][label][f"unseen_by_{key}"] = _summary(errors_of(pred, label)[mask])

    result = {
        "name": name, "command": command or shown_command(),
        "data": {"dir": data_dir.name, "faces": len(names), "holdout": len(held), "split_seed": split_seed,
                 "turn": f"{TURN_DEGREES} degrees counter-clockwise (np.rot90), every holdout face"},
        "rows": rows,
        "dlib": {"predictor": predictor_path().name, "package": "face-recognition-models",
                 "finder": f"HOG frontal face finder on the crop scaled to a longer side of {FINDER_SIDE} px, "
                           "upsample 0, threshold 0, best score wins",
                 "fallback_rule": "no face found: a square of side sqrt(w*h/(box_width*box_height)) = "
                                  f"sqrt(w*h)/{math.sqrt(framing.box_width * framing.box_height):.3f} centred on "
                                  "the crop (course-framing.json medians)",
                 "index_map": {str(i): list(idx) for i, idx in enumerate(IBUG_TO_COURSE)},
                 "linear_map": {"fit_faces": int(keep.sum()), "drawn": len(fit_names),
                                "fit_from": f"upright training faces outside the holdout (seed {seed}) where the "
                                            f"finder found the face and the index map's err is at most {OVER:g}",
                                "drawn_fallback_boxes": int((~fit["found"]).sum()),
                                "features": "68x2 points normalised to the box, plus a bias (137 -> 28)"}},
        "models": {key: {"path": str(path), "unseen_holdout_faces": len(subsets[key][0]), "trained": subsets[key][1]}
                   for key, path in models.items()},
        "honest_model": str(honest_model) if honest_model else None,
        "note": (f"{Path(model_path).name}: {subsets['model'][1]}. The shipped model's 250 validation faces "
                 "are half of the 500-face holdout (split_names draws both from one seeded permutation), so its "
                 "figures on all of it are flattered: the unseen_by_model entries give every row on the "
                 f"{len(subsets['model'][0])} holdout faces it never saw. " + (f"{honest_model}: {subsets['honest-model'][1]} (the honest-model rows). "
                                  if honest_model else "No model trained without the holdout was found ("
                                  + ", ".join(HONEST_MODELS) + " absent; artifacts/bench-curve-e6-seed0.interrupted"
                                  ".pt stopped at step 72 of 396). ")
                 + "Whether dlib's iBUG 300-W training faces overlap the course's is unknown."),
        "mediapipe": mediapipe or MEDIAPIPE_FINDING,
        "threads": "one: torch.set_num_threads(1) in a fresh process for the model; dlib is single-threaded",
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = write_result(result, results_dir, name)
    print(f"{'model':14s} {'orientation':11s} {'err':>7s} {'median':>7s} {'>20':>6s} {'faces/s':>8s}"
          f"  err on the {len(subsets['model'][0])} faces the model never saw")
    for key, by_label in rows.items():
        for label, row in by_label.items():
            unseen = row.get("unseen_by_model", {}).get("err")
            print(f"{key:14s} {label:11s} {row['err']:7.2f} {row['median_err']:7.2f} {100 * row['share_over_20']:5.1f}%"
                  f" {row['faces_per_second']:8.1f}  " + (f"{unseen:.2f}" if unseen is not None else "-"))
    print(f"dlib's finder found a face in {rows['dlib68-index']['upright']['finder_found']} upright and "
          f"{rows['dlib68-index']['turned']['finder_found']} turned of {len(held)} pictures (the rest: the "
          f"fallback box); model upright from PNG {rows['model']['upright']['faces_per_second_png']:.1f} faces/s"
          f" -> {out}")
    return result


def add_reference_commands(sub) -> None:
    """Register ``facepoints bench-reference``."""
    p = sub.add_parser("bench-reference", help="dlib's 68-point predictor and our model on the holdout, "
                                               "upright and quarter-turned (needs the photos extra)")
    p.add_argument("model", nargs="?", default="facepoints_model.pt", help="our model (default facepoints_model.pt)")
    p.add_argument("data_dir", nargs="?", default="data/train", help="course train folder (default data/train)")
    p.add_argument("--name", default="reference-models", help="result name (default reference-models)")
    p.add_argument("--model", dest="honest_model", default=None,
                   help="also a model trained without the holdout (default: " + ", ".join(HONEST_MODELS)
                        + " where it exists)")
    p.add_argument("--fit-faces", type=int, default=FIT_FACES, help=f"faces the linear map is fitted on ({FIT_FACES})")
    p.set_defaults(func=_cmd_bench_reference)


def _cmd_bench_reference(args) -> int:
    import sys
    try:
        predictor_path()
        if importlib.util.find_spec("dlib") is None:
            raise ImportError("dlib is not installed")
    except (ImportError, FileNotFoundError) as exc:
        print(f"facepoints bench-reference: error: {exc} (pip install -e '.[photos]')", file=sys.stderr)
        return 2
    run_reference_bench(args.model, args.data_dir, name=args.name, honest_model=args.honest_model,
                        fit_faces=args.fit_faces)
    return 0
