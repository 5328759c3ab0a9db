"""Training memory against the number of faces (``facepoints bench-memory``).

Each count runs in a fresh process (peak memory is a process's own): ``train_model``
with the recipe (``--set`` overrides apply), a few steps only, its validation and its
confidence calibration, on that many faces. Counts beyond the folder's faces repeat its
pictures under new names (links in a temporary folder), so that the decoded faces grow
as a larger data set's would. The result records each count's peak resident memory and
what the decoded faces themselves take, and writes ``bench/results/NAME.json``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Sequence

from ..core.gt_csv import read_gt, write_gt
from .machine import RESULTS_DIR, describe_cpu, machine_info, run_script, shown_command, write_result

MEMORY_SCRIPT = """
import json, resource, sys, time
import torch
from facepoints_lib.core.config import full_config, full_run
from facepoints_lib.core.progress import TextProgress
from facepoints_lib.core.train import train_model
from facepoints_lib.tools.overrides import apply_overrides
threads, steps, faces = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])


def peak_mb():   # this process's own peak (VmHWM): ru_maxrss keeps the forking parent's size on Linux
    try:
        line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


cfg, run_config = full_config(), full_run(max_images=faces, max_steps=steps, threads=threads)
apply_overrides(cfg, json.loads(sys.argv[6]), run_config)
start = time.perf_counter()
run = train_model(sys.argv[1], sys.argv[2], cfg, run_config, log=lambda s: None,
                  progress=lambda **k: TextProgress(disable=True, **k))
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_rss_mb": peak_mb(),
                  "faces": len(run.train_names) + len(run.val_names),
                  "image_size": cfg.model.image_size}))
"""


def _folder_of(data_dir: Path, faces: int, scratch: Path) -> tuple[Path, Path]:
    """(gt.csv, images/) holding ``faces`` faces: the folder itself when it has that many,
    else its pictures repeated under new names (symbolic links) in ``scratch``."""
    gt = read_gt(data_dir / "gt.csv")
    if faces <= len(gt):
        return data_dir / "gt.csv", data_dir / "images"
    images = scratch / f"x{faces}" / "images"
    images.mkdir(parents=True)
    names, table = sorted(gt), {}
    for i in range(faces):
        name = names[i % len(names)]
        copy = f"r{i // len(names)}_{name}"
        os.symlink((data_dir / "images" / name).resolve(), images / copy)
        table[copy] = gt[name]
    write_gt(table, images.parent / "gt.csv")
    return images.parent / "gt.csv", images


def run_memory_bench(data_dir: str | os.PathLike, counts: Sequence[int] = (2000, 5000, 20000), *,
                     name: str = "train-memory", steps: int = 4, threads: int = 2,
                     overrides: Sequence[str] = (), results_dir: str | os.PathLike = RESULTS_DIR,
                     command: str | None = None) -> dict:
    """Peak resident memory of a short training on each number of faces in ``counts``."""
    data_dir = Path(data_dir)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for faces in counts:
            gt_path, images = _folder_of(data_dir, faces, Path(scratch))
            got = run_script(MEMORY_SCRIPT, str(gt_path), str(images), str(threads), str(steps),
                             str(faces), json.dumps(list(overrides)))
            side = got["image_size"]
            decoded_mb = got["faces"] * 3 * side * side / 2**20
            rows.append({"faces": got["faces"], "peak_rss_mb": got["peak_rss_mb"],
                         "decoded_faces_mb": decoded_mb, "seconds": got["seconds"]})
            print(f"{got['faces']} faces: peak RSS {got['peak_rss_mb']:.0f} MB (decoded faces "
                  f"{decoded_mb:.0f} MB), {got['seconds']:.0f} s")
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        per_face_kb = (last["peak_rss_mb"] - first["peak_rss_mb"]) * 1024 / (last["faces"] - first["faces"])
    else:
        per_face_kb = None
    result = {"name": name, "command": command or shown_command(), "steps": steps, "threads": threads,
              "overrides": list(overrides), "rows": rows, "growth_kb_per_face": per_face_kb,
              "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = write_result(result, results_dir, name)
    if per_face_kb is not None:
        print(f"growth {per_face_kb:.0f} KB per face ({describe_cpu(result['machine'])}) -> {out}")
    return result
