"""``facepoints label-floor``: how good any model can look on these labels, two ways.

A model that found every point exactly where it is would still score the labels' own
noise: err = the mean squared label error per coordinate (in percent of the side), the
"floor". Two independent estimates, each point's and overall:

1. **Duplicates.** The public set holds the same picture more than once (re-encoded or
   resized copies, ``notebook.analysis.find_duplicates``), each labelled on its own. Two
   labellings of one face differ by two draws of the noise, so half the err between them
   is one labelling's noise.
2. **Two networks.** Two networks trained apart answer ``p1 = y* + e1`` and ``p2 = y* + e2``
   for a face whose label is ``y = y* + n``. The mean of ``(p1 - y)(p2 - y)`` over faces
   neither trained on is the label noise ``E[n^2]`` plus the part of the two networks'
   errors they share: an upper bound of the floor, from faces and labels the first
   estimate does not use. Nets that make the same mistakes raise it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..core.align import similarity_to
from ..core.augment import apply_transform
from ..core.checkpoint import load_checkpoint, load_model
from ..core.dataset import load_faces
from ..core.gt_csv import read_gt
from .machine import machine_info
from ..core.inference import cpu_flags, predict, restores_torch_threads
from ..core.metrics import per_point_err
from ..core.model import fold_batch_norm
from ..notebook.analysis import find_duplicates

THUMBNAIL_SIDE = 32        # the side the pictures are decoded at to find duplicates


def duplicate_floor(images: torch.Tensor, keypoints: torch.Tensor) -> dict:
    """The floor from the labels of duplicate pictures: half the err of each pair of
    labellings of one picture (per point and overall), also after taking out the
    similarity (shift, scale, turn) that best maps one labelling onto the other."""
    groups = find_duplicates(images)
    pairs = [(g[i], g[j]) for g in groups for i in range(len(g)) for j in range(i + 1, len(g))]
    if not pairs:
        return {"groups": 0, "pairs": 0}
    first = keypoints[[a for a, _ in pairs]].double()
    second = keypoints[[b for _, b in pairs]].double()
    per_point = per_point_err(first.numpy(), second.numpy()) / 2
    moved = apply_transform(similarity_to(first, second), first)
    rest = per_point_err(moved.numpy(), second.numpy()) / 2
    return {"groups": len(groups), "faces": sum(len(g) for g in groups), "pairs": len(pairs),
            "err": float(per_point.mean()), "median_err": float(np.median(per_point.mean(1))),
            "per_point_err": per_point.mean(0).tolist(), "err_without_similarity": float(rest.mean())}


def two_network_floor(first: np.ndarray, second: np.ndarray, truth: np.ndarray) -> dict:
    """The floor's upper bound from two networks' answers (N, 14, 2) on faces neither
    trained on: the mean product of their residuals, in err units (per point, overall)."""
    product = (100.0 * (first - truth)) * (100.0 * (second - truth))        # (N, 14, 2)
    per_point = product.mean(-1)                                            # (N, 14)
    own = [per_point_err(p, truth).mean() for p in (first, second)]
    return {"faces": len(truth), "err": float(per_point.mean()), "per_point_err": per_point.mean(0).tolist(),
            "networks_err": [float(e) for e in own]}


@restores_torch_threads
def label_floor(data_dir: str | Path, models: tuple[str | Path, str | Path], out: Path | None = None,
                threads: int = 2, log=print) -> dict:
    """Both estimates on the labelled folder ``data_dir``; the second on the validation
    faces of the first model file, which the second must not have trained on either (a
    benchmark's model, whose 500-face holdout holds the shipped model's validation faces)."""
    torch.set_num_threads(threads)
    data_dir = Path(data_dir)
    gt = read_gt(data_dir / "gt.csv")
    log(f"decoding {len(gt)} pictures at {THUMBNAIL_SIDE} px to find duplicates ...")
    faces = load_faces(data_dir / "images", THUMBNAIL_SIDE, gt)
    duplicates = duplicate_floor(faces.images, faces.keypoints)
    log(f"duplicates: {duplicates['pairs']} pairs in {duplicates['groups']} groups, one labelling's err "
        f"{duplicates.get('err', float('nan')):.3f}")
    names = sorted(set(gt) & set(load_checkpoint(models[0])["metadata"].get("val_names", [])))
    if len(names) < 2:
        raise ValueError(f"{models[0]} names fewer than 2 validation faces found in the folder")
    answers = []
    for path in models:
        model = fold_batch_norm(load_model(path))
        held = load_faces(data_dir / "images", model.decode_side(), gt, names)
        answers.append(predict(model, held.images))
    networks = two_network_floor(answers[0], answers[1], held.keypoints.double().numpy())
    networks["models"] = [Path(p).name for p in models]
    log(f"two networks on {len(names)} faces neither trained on: floor at most {networks['err']:.3f} "
        f"(their errs {networks['networks_err'][0]:.3f} and {networks['networks_err'][1]:.3f})")
    command = ("facepoints label-floor " + " ".join([str(data_dir), *[f"--model {m}" for m in models]])
               + (f" --threads {threads}" if threads != 2 else "") + (f" --name {out.stem}" if out else ""))
    result = {"command": command, "duplicates": duplicates, "two_networks": networks,
              "cpu_flags": cpu_flags(), "machine": machine_info()}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        log(f"wrote {out}")
    return result
