"""``facepoints bench-cascade``: the first stage alone against the cascade, on faces
neither stage trained on (the model file's validation faces).

For each way of answering (the first stage on the pictures decoded at its own side, as
a single-network model file is run; the first stage on the cascade's larger decodes
shrunk; the cascade with its second stage mirrored too; the cascade with it not mirrored,
as the shipped recipe detects, ``CascadeConfig.flip_tta``) it measures the err
of the faces upright, turned by each quarter turn and cut by a border, each point's
err, the detection work per face in FLOPs (every look and mirror included, counted by
``torch.utils.flop_counter``) and the faces per second on one thread, decoding
included; with ``--baseline``, another model file (the one the cascade replaces) on
the same faces in the same run. The result file feeds bench/README.md and notebook 04.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..core.checkpoint import load_checkpoint, load_model
from ..core.confidence import cut_copies, quarter_turned
from ..core.dataset import FaceSet, decode_images
from ..core.gt_csv import read_gt
from .machine import machine_info
from ..core.inference import cpu_flags, predict_details, restores_torch_threads, use_bf16
from ..core.metrics import per_image_err, per_point_err
from ..core.model import fold_batch_norm

SPEED_REPEATS = 2          # timed passes over the faces (the best one counts)


def _flops_per_face(model, images: torch.Tensor, bf16: bool) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        predict_details(model, images, bf16=bf16)
    return counter.get_total_flops() / len(images)


def _faces_per_second(model, paths: list[Path], side: int, bf16: bool) -> dict:
    """Faces per second on one thread, decoding (at ``side``) and answering, best of
    ``SPEED_REPEATS`` passes; the decoding's share on its own too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best, decode_best = float("inf"), float("inf")
        for _ in range(SPEED_REPEATS):
            began = time.perf_counter()
            images, _ = decode_images(paths, side)
            decoded = time.perf_counter()
            predict_details(model, images, bf16=bf16)
            best = min(best, time.perf_counter() - began)
            decode_best = min(decode_best, decoded - began)
    finally:
        torch.set_num_threads(before)
    return {"images_per_second": len(paths) / best, "decode_images_per_second": len(paths) / decode_best}


def _scores(model, faces: FaceSet, bf16: bool, seed: int) -> dict:
    upright = predict_details(model, faces.images, bf16=bf16)
    truth = faces.keypoints.double().numpy()
    errs = per_image_err(upright.points, truth)
    turned = []
    for turns in (1, 2, 3):
        images, points = quarter_turned(faces, turns)
        turned.append(per_image_err(predict_details(model, images, bf16=bf16).points, points.double().numpy()))
    images, points = cut_copies(faces, torch.Generator().manual_seed(seed))
    cut = per_image_err(predict_details(model, images, bf16=bf16).points, points.double().numpy())
    turned_all = np.concatenate(turned)
    return {"err": float(errs.mean()), "median_err": float(np.median(errs)), "worst_err": float(errs.max()),
            "per_point_err": per_point_err(upright.points, truth).mean(0).tolist(),
            "quarter_turned_err": float(turned_all.mean()),
            "quarter_turned_median_err": float(np.median(turned_all)),
            "quarter_turned_ratio": float(turned_all.mean() / errs.mean()),
            "cut_err": float(cut.mean()), "faces": len(errs)}


@restores_torch_threads
def bench_cascade(model_path: str | Path, data_dir: str | Path, out: Path | None = None, threads: int = 2,
                  seed: int = 0, log=print, baseline: str | Path | None = None) -> dict:
    """Score a two-stage model file against its first stage alone (see the module's text),
    and against ``baseline``, another model file, on the same faces in the same run
    (speeds measured hours apart on a shared machine differed by a tenth)."""
    torch.set_num_threads(threads)
    cascade = fold_batch_norm(load_model(model_path))
    if cascade.refiner is None:
        raise ValueError(f"{model_path} has no second stage: nothing to compare")
    metadata = load_checkpoint(model_path)["metadata"]
    data_dir = Path(data_dir)
    gt = read_gt(data_dir / "gt.csv")
    names = sorted(set(metadata.get("val_names", [])) & set(gt))
    if len(names) < 2:
        raise ValueError(f"{model_path} names fewer than 2 validation faces found in {data_dir}")
    paths = [data_dir / "images" / name for name in names]
    truth = np.stack([gt[name] for name in names]).reshape(-1, 14, 2)

    def faces_at(side: int) -> FaceSet:
        images, sizes = decode_images(paths, side)
        points = torch.from_numpy((truth + 0.5) / sizes.numpy()[:, None, :]).float()
        return FaceSet(images, points, sizes, names)

    first = copy.deepcopy(cascade)
    first.attach_refiner(None)
    mirrored, unmirrored = copy.deepcopy(cascade), copy.deepcopy(cascade)
    mirrored.refiner.flip_tta, unmirrored.refiner.flip_tta = True, False   # whichever the file says
    small, large = faces_at(first.config.image_size), faces_at(cascade.decode_side())
    bf16 = use_bf16("auto", torch.device("cpu"))
    ways = {"first_stage": (first, small), "first_stage_shrunk": (first, large),
            "cascade": (mirrored, large), "cascade_second_unmirrored": (unmirrored, large)}
    if baseline is not None:
        other = fold_batch_norm(load_model(baseline))
        ways["baseline"] = (other, faces_at(other.decode_side()))
    command = (f"facepoints bench-cascade {model_path} {data_dir}" + (f" --threads {threads}" if threads != 2 else "")
               + (f" --baseline {baseline}" if baseline is not None else "") + (f" --name {out.stem}" if out else ""))
    result = {"command": command,
              "model": Path(model_path).name, "faces": len(names), "source": "the model's validation faces",
              "cascade_recipe": metadata.get("train_config", {}).get("cascade"),
              "residuals": metadata.get("cascade", {}).get("residuals"), "threads": threads,
              "file_mirrors_second_stage": cascade.refiner.flip_tta,
              "baseline": Path(baseline).name if baseline is not None else None,
              "cpu_flags": cpu_flags(), "bf16": bf16, "ways": {}, "machine": machine_info()}
    for name, (model, faces) in ways.items():
        log(f"{name}: scoring {len(faces)} faces upright, quarter-turned and cut ...")
        row = _scores(model, faces, bf16, seed)
        row["flops_per_face"] = _flops_per_face(model, faces.images[:64], bf16)
        row.update(_faces_per_second(model, paths, faces.image_size, bf16))
        log(f"  err {row['err']:.3f} (median {row['median_err']:.3f}), turned {row['quarter_turned_err']:.3f}, "
            f"cut {row['cut_err']:.2f}, {row['flops_per_face'] / 1e9:.2f} GFLOP a face, "
            f"{row['images_per_second']:.1f} faces/s on 1 thread")
        result["ways"][name] = row
    base, full = result["ways"]["first_stage"], result["ways"]["cascade"]
    keys = ("err", "median_err", "flops_per_face", "images_per_second")
    result["cascade_vs_first_stage"] = {key: full[key] / base[key] for key in keys}
    if baseline is not None:       # the file as detection runs it, against the other file
        shipped, other_row = result["ways"]["cascade_second_unmirrored" if not cascade.refiner.flip_tta
                                            else "cascade"], result["ways"]["baseline"]
        result["file_vs_baseline"] = {key: shipped[key] / other_row[key] for key in keys}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        log(f"wrote {out}")
    return result
