"""The confidence file of ``facepoints detect --confidence`` and ``facepoints calibrate``.

``write_confidence`` writes one row per picture: ``filename,expected_err,confidence``
then ``conf_<point name>`` for the 14 points (see ``core.confidence``), plus the look
that gave the answer and whether the picture looks like no face crop.
``no_face_warning`` is the one line the CLI prints about such pictures.
``calibrate_file`` fits the confidence calibration of a model file on its own
validation faces (their names are in the file) and writes it back into the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.checkpoint import CheckpointError, load_checkpoint, load_model, write_payload
from ..core.confidence import calibrate
from ..core.dataset import load_faces
from ..core.detect import FaceConfidence
from ..core.gt_csv import read_gt, write_csv
from ..core.model import fold_batch_norm
from ..core.schema import POINT_NAMES

CONFIDENCE_HEADER = ("filename", "expected_err", "confidence",
                     *(f"conf_{name}" for name in POINT_NAMES), "look", "no_face")


def write_confidence(table: dict[str, FaceConfidence], path: str | os.PathLike) -> Path:
    """Write ``{filename: FaceConfidence}`` as a CSV file, rows sorted by name (whole or not at all)."""
    rows = []
    for name in sorted(table):
        face = table[name]
        rows.append([name, f"{face.expected_err:.3f}", f"{face.confidence:.4f}",
                     *(f"{v:.4f}" for v in face.point_confidence), face.look, int(face.no_face)])

    return write_csv(path, CONFIDENCE_HEADER, rows)


def no_face_warning(table: dict[str, FaceConfidence], shown: int = 5) -> str | None:
    """One line naming how many pictures look like no face crop, and the first few (None: none)."""
    names = sorted(name for name, face in table.items() if face.no_face)
    if not names:
        return None
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return (f"{len(names)} of {len(table)} pictures look like no face crop (their points are "
            f"guesses; see the confidence file): {', '.join(names[:shown])}{more}")


def calibrate_file(model_path: str | os.PathLike, data_dir: str | os.PathLike, seed: int = 0) -> dict:
    """Fit the confidence calibration of ``model_path`` on its validation faces (named in
    the file, read from the course folder ``data_dir``) and store it in the file."""
    model_path, data_dir = Path(model_path), Path(data_dir)
    payload = load_checkpoint(model_path)
    names = payload.get("metadata", {}).get("val_names") or []
    if len(names) < 2:
        raise CheckpointError(f"{model_path} names no validation faces to calibrate on")
    gt = read_gt(data_dir / "gt.csv")
    missing = [name for name in names if name not in gt]
    if missing:
        raise ValueError(f"{data_dir}: {len(missing)} of the model's validation faces are not in its "
                         f"gt.csv ({', '.join(missing[:3])}): calibrate on the data it was trained from")
    model = fold_batch_norm(load_model(model_path))           # as detect runs it
    faces = load_faces(data_dir / "images", model.decode_side(), gt, names)
    cal = calibrate(model, faces, seed)
    payload["metadata"]["calibration"] = cal.to_dict()
    write_payload(payload, model_path)
    return cal.to_dict()
