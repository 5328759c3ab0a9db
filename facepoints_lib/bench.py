"""Benchmarks that print numbers: holdout accuracy, training and detection speed.

``facepoints bench DATA_DIR`` (a course-format ``train/`` folder) does, with fixed seeds:

1. split off a holdout (500 faces by default) that training never sees;
2. train the recipe (``full_config`` plus any ``--set key=value`` overrides) with
   ``train_detector(..., fast_train=False)`` on the rest, timing it;
3. detect the holdout in a fresh process with one thread (images/s including JPEG
   decoding, peak resident memory) and score it: course err, mark, NME, CED AUC;
4. time ``fast_train`` with one thread in another fresh process;
5. write everything, with the command, commit, machine and versions, to
   ``bench/results/<name>.json``.

Experiments are the same command with overrides, e.g.
``facepoints bench DATA --name head-regression --set model.head=regression``.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .dataset import load_faces
from .gt_csv import read_gt
from .images import read_image_size
from .metrics import ced_auc, course_mark, per_image_err, per_image_nme
from .inference import cpu_flags, cpu_has_bf16
from .train import TrainConfig, full_config, split_names, train_detector

RESULTS_DIR = Path("bench") / "results"


def parse_override(text: str) -> tuple[list[str], object]:
    """``"model.head=regression"`` -> ``(["model", "head"], "regression")``; values are Python literals."""
    if "=" not in text:
        raise ValueError(f"override must look like key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip().split("."), value


def apply_overrides(cfg: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Set ``key=value`` overrides (dotted for ``model.`` / ``augment.``) on ``cfg`` in place."""
    for text in overrides:
        path, value = parse_override(text)
        target = cfg
        for part in path[:-1]:
            target = getattr(target, part, None)
            if not is_dataclass(target):
                raise ValueError(f"unknown config section in {text!r}")
        names = {f.name for f in fields(target)}
        if path[-1] not in names:
            raise ValueError(f"unknown config key in {text!r}; known: {', '.join(sorted(names))}")
        if isinstance(value, list):
            value = tuple(value)
        setattr(target, path[-1], value)
    cfg.validate()
    return cfg


def shown_command(argv: Sequence[str] | None = None, program: str = "facepoints") -> str:
    """The command line as a results file records it: an absolute path becomes relative to
    the working directory when it lies inside it, else its last two parts (a results file
    names no machine's folders)."""
    here = Path.cwd().resolve()
    shown = [program]
    for arg in (sys.argv[1:] if argv is None else argv):
        if arg.startswith(os.sep):
            path = Path(arg)
            try:
                arg = str(path.resolve().relative_to(here))
            except ValueError:
                arg = str(Path(*path.parts[-2:]))
        shown.append(arg)
    return " ".join(shown)


def machine_info() -> dict:
    """Cores, CPU model and flags, the kernels torch picked (and any variable that capped
    them, see docs/cpu-notes.md), torch version and the git commit, for the results file."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, check=False).stdout.strip())
    except OSError:
        commit, dirty = None, None
    overrides = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ}
    return {"cores": os.cpu_count(), "cpu": cpu, "cpu_flags": cpu_flags(),
            "bf16_native": cpu_has_bf16(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "isa_overrides": overrides, "torch": torch.__version__,
            "python": platform.python_version(), "commit": commit, "dirty": dirty}


def describe_cpu(info: dict | None = None) -> str:
    """One line naming the CPU, the flags that decide the kernels and any ISA cap."""
    info = info or machine_info()
    flags = " ".join(k for k, v in info["cpu_flags"].items() if v) or "none of " + "/".join(info["cpu_flags"])
    caps = "".join(f", {k}={v}" for k, v in info["isa_overrides"].items())
    return (f"{info['cpu']}, {info['cores']} cores; flags: {flags}; "
            f"ATen kernels {info['cpu_capability']}{caps}")


_DETECT_SCRIPT = """
import json, resource, sys, time
import torch
from facepoints_lib.detect import detect
torch.set_num_threads(1)
names = json.loads(open(sys.argv[3]).read())
look = False if "--single-look" in sys.argv else None
start = time.perf_counter()
out = detect(sys.argv[1], sys.argv[2], filenames=names, threads=1, second_look=look)
seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
plain = {} if "--tta-only" in sys.argv else detect(sys.argv[1], sys.argv[2], filenames=names, threads=1, flip_tta=False)
print(json.dumps({"seconds": seconds, "peak_rss_mb": rss,
                  "detections": {k: v.tolist() for k, v in out.items()},
                  "detections_no_tta": {k: v.tolist() for k, v in plain.items()}}))
"""

_FAST_SCRIPT = """
import json, sys, time
import torch
from facepoints_lib.gt_csv import read_gt
from facepoints_lib.train import train_detector
torch.set_num_threads(1)
gt = read_gt(sys.argv[1])
names = set(json.loads(open(sys.argv[3]).read()))
start = time.perf_counter()
model = train_detector({k: v for k, v in gt.items() if k in names}, sys.argv[2], fast_train=True,
                       log=lambda s: None)
print(json.dumps({"seconds": time.perf_counter() - start, "val_err": model.train_history[-1]["val_err"]}))
"""


def _bench_subprocess(script: str, *args: str) -> dict:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


TIME_TO_ERR_TARGETS = (3.5, 3.22)    # issue targets: err 3.5, and the 90-epoch recipe's 3.22


def time_to_err(history: list[dict], targets: Sequence[float]) -> dict[str, float | None]:
    """Training seconds (evaluations excluded) until the holdout err first reached each
    target, from a history with ``track_err`` (None: never reached)."""
    out: dict[str, float | None] = {}
    for target in targets:
        hit = next((r for r in history if r.get("track_err") is not None and r["track_err"] <= target), None)
        out[f"{target:g}"] = hit["train_seconds"] if hit else None
    return out


def run_bench(data_dir: str | os.PathLike, *, name: str = "recipe", overrides: Sequence[str] = (),
              holdout: int = 500, seed: int = 0, split_seed: int = 0, time_fast_train: bool = True,
              results_dir: str | os.PathLike = RESULTS_DIR, model_path: str | os.PathLike | None = None,
              command: str | None = None, exclude: Sequence[str] = ()) -> dict:
    """Train on all but a seeded holdout, score the holdout, time detect and fast_train; save JSON.

    ``exclude``: faces left out of training (never of the holdout, which stays comparable)."""
    data_dir = Path(data_dir)
    img_dir = data_dir / "images"
    gt = read_gt(data_dir / "gt.csv")
    rest, held = split_names(sorted(gt), holdout, split_seed)
    cfg = apply_overrides(full_config(seed=seed), overrides)
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    model_path = Path(model_path) if model_path else Path("artifacts") / f"bench-{name}.pt"
    model_path.parent.mkdir(parents=True, exist_ok=True)

    track = load_faces(img_dir, cfg.model.image_size, gt, held)   # scored at each validation
    started = time.perf_counter()
    model = train_detector({n: gt[n] for n in rest}, img_dir, fast_train=False, config=cfg,
                           model_path=model_path, track=track, exclude=exclude)
    train_seconds = time.perf_counter() - started
    history = model.train_history
    fit_seconds = history[-1]["seconds"] if history else float("nan")
    steps = history[-1]["step"] if history else 0

    with tempfile.TemporaryDirectory() as tmp:
        names_file = Path(tmp) / "names.json"
        names_file.write_text(json.dumps(held))
        detected = _bench_subprocess(_DETECT_SCRIPT, str(model_path), str(img_dir), str(names_file))
        fast = None
        if time_fast_train:
            names_file.write_text(json.dumps(rest))
            fast = _bench_subprocess(_FAST_SCRIPT, str(data_dir / "gt.csv"), str(img_dir), str(names_file))

    holdout_figures = _score_holdout(detected, held, gt, img_dir)
    err = holdout_figures["err"]
    result = {
        "name": name,
        "command": command or shown_command(),
        "data": {"dir": data_dir.name, "faces": len(gt), "train": len(rest), "holdout": len(held),
                 "split_seed": split_seed},
        "config": cfg.to_dict(),
        "overrides": list(overrides),
        "excluded": sorted(set(exclude) & set(rest)),
        "parameters": sum(p.numel() for p in model.parameters()),   # the EMA copy has requires_grad off
        "model_mb": model_path.stat().st_size / 2**20,
        "holdout": holdout_figures,
        "train": {"wall_seconds": train_seconds, "fit_seconds": fit_seconds, "steps": steps,
                  "epochs": history[-1]["epoch"] if history else 0,
                  "images_per_second": steps * min(cfg.batch_size, len(rest)) / fit_seconds,
                  "threads": torch.get_num_threads(), "history": history,
                  "time_to_holdout_err": time_to_err(history, TIME_TO_ERR_TARGETS)},
        "detect_1thread": {"images": len(held), "seconds": detected["seconds"],
                           "images_per_second": len(held) / detected["seconds"],
                           "peak_rss_mb": detected["peak_rss_mb"]},
        "fast_train_1thread": fast,
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = results_dir / f"{name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{name}: holdout err {err:.3f} (mark {result['holdout']['mark']}), NME {result['holdout']['nme']:.4f}, "
          f"AUC@0.08 {result['holdout']['auc08']:.3f}; train {train_seconds / 60:.1f} min "
          f"({result['train']['images_per_second']:.0f} img/s); detect {result['detect_1thread']['images_per_second']:.0f} "
          f"img/s, peak RSS {detected['peak_rss_mb']:.0f} MB"
          + (f"; fast_train {fast['seconds']:.1f} s" if fast else "") + f" -> {out}")
    return result


def _score_holdout(detected: dict, held: list[str], gt: dict, img_dir: Path) -> dict:
    """Holdout figures from ``_DETECT_SCRIPT``'s output: err, mark, NME, AUC, median, worst."""
    pred = np.stack([np.asarray(detected["detections"][n]).reshape(-1, 2) for n in held])
    pred_no_tta = np.stack([np.asarray(detected["detections_no_tta"][n]).reshape(-1, 2) for n in held])
    true = np.stack([gt[n].reshape(-1, 2) for n in held])
    sizes = np.array([read_image_size(img_dir / n) for n in held], dtype=np.float64)
    err_per_image = per_image_err(pred, true, sizes)
    err = float(err_per_image.mean())
    nme = per_image_nme(pred, true)
    return {"err": err, "mark": course_mark(err), "nme": float(nme.mean()), "auc08": ced_auc(nme, 0.08),
            "median_err": float(np.median(err_per_image)), "worst_err": float(err_per_image.max()),
            "err_without_flip_tta": float(per_image_err(pred_no_tta, true, sizes).mean())}


def rescore_bench(name: str, data_dir: str | os.PathLike, *, model_path: str | os.PathLike | None = None,
                  results_dir: str | os.PathLike = RESULTS_DIR, command: str | None = None) -> dict:
    """Detect and score a finished benchmark's holdout again with today's code (after a
    change of detection only), keeping its training figures.

    The weights are the ones the run saved (``artifacts/bench-NAME.pt``); the file's
    ``holdout`` and ``detect_1thread`` are replaced, the former figures kept under
    ``rescored.before`` with the commit and date of the rescoring.
    """
    path = Path(results_dir) / f"{name}.json"
    result = json.loads(path.read_text())
    data_dir = Path(data_dir)
    img_dir = data_dir / "images"
    gt = read_gt(data_dir / "gt.csv")
    _, held = split_names(sorted(gt), result["data"]["holdout"], result["data"]["split_seed"])
    model_path = Path(model_path) if model_path else Path("artifacts") / f"bench-{name}.pt"
    with tempfile.TemporaryDirectory() as tmp:
        names_file = Path(tmp) / "names.json"
        names_file.write_text(json.dumps(held))
        detected = _bench_subprocess(_DETECT_SCRIPT, str(model_path), str(img_dir), str(names_file))
    before = {"holdout": result["holdout"], "detect_1thread": result["detect_1thread"],
              "commit": result["machine"].get("commit")}
    result["holdout"] = _score_holdout(detected, held, gt, img_dir)
    result["detect_1thread"] = {"images": len(held), "seconds": detected["seconds"],
                                "images_per_second": len(held) / detected["seconds"],
                                "peak_rss_mb": detected["peak_rss_mb"]}
    result["rescored"] = {"command": command or shown_command(),
                          "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(), "before": before}
    path.write_text(json.dumps(result, indent=1) + "\n")
    h = result["holdout"]
    print(f"{name} rescored: holdout err {h['err']:.3f} (was {before['holdout']['err']:.3f}), median "
          f"{h['median_err']:.2f}, worst {h['worst_err']:.1f}; detect "
          f"{result['detect_1thread']['images_per_second']:.0f} img/s -> {path}")
    return result


def run_detect_bench(model_path: str | os.PathLike, *, img_dir: str | os.PathLike | None = None,
                     synthetic: int = 10_000, name: str | None = None,
                     results_dir: str | os.PathLike = RESULTS_DIR, command: str | None = None,
                     single_look: bool = False) -> dict:
    """Time ``detect`` with one thread in a fresh process and record its peak memory.

    Runs on ``img_dir`` when given, else on ``synthetic`` generated faces (sizes as varied
    as the course's), and writes ``bench/results/<name>.json``. ``single_look`` turns the
    model's second look off (to compare the cost of the two passes).
    """
    from .images import list_images
    from .synth import make_synthetic_faces

    synthetic_used = img_dir is None
    with tempfile.TemporaryDirectory() as tmp:
        if img_dir is None:
            print(f"generating {synthetic} synthetic faces ...", file=sys.stderr)
            img_dir = make_synthetic_faces(Path(tmp) / "faces", synthetic, seed=1) / "images"
        names = list_images(img_dir)
        names_file = Path(tmp) / "names.json"
        names_file.write_text(json.dumps(names))
        timing = _bench_subprocess(_DETECT_SCRIPT, str(model_path), str(img_dir), str(names_file),
                                   "--tta-only", *(["--single-look"] if single_look else []))
    result = {
        "name": name or f"detect-{len(names)}",
        "command": command or shown_command(),
        "images": len(names), "source": "synthetic faces" if synthetic_used else "folder",
        "seconds": timing["seconds"], "images_per_second": len(names) / timing["seconds"],
        "peak_rss_mb": timing["peak_rss_mb"], "threads": 1, "flip_tta": True, "second_look": not single_look,
        "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"{result['name']}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"detect on {len(names)} images, 1 thread: {result['images_per_second']:.0f} img/s "
          f"(incl. decode), peak RSS {result['peak_rss_mb']:.0f} MB -> {out}")
    return result


def _rate(work: Callable[[], None], images: int, seconds: float) -> float:
    """Images per second of ``work`` (``images`` a call): two warm-up calls, then calls
    for ``seconds`` (at least one)."""
    work()
    work()
    started, calls = time.perf_counter(), 0
    while calls == 0 or time.perf_counter() - started < seconds:
        work()
        calls += 1
    return calls * images / (time.perf_counter() - started)


def run_speed_bench(*, name: str = "speed", threads: int = 2, seconds: float = 8.0,
                    results_dir: str | os.PathLike = RESULTS_DIR, command: str | None = None) -> dict:
    """Throughput of the recipe's network on this CPU, per memory layout.

    Training: images/s of whole steps (augmentation, forward, backward, SGD) on ``threads``
    threads. Detection: faces/s of the network with flip TTA on one thread, as trained and
    with batch norm folded (what ``detect`` runs). Synthetic pixels: the cost does not
    depend on them. Writes ``bench/results/<name>.json`` with the CPU flags and kernels
    (see docs/cpu-notes.md).
    """
    from .model import build_model, fold_batch_norm
    from .inference import use_bf16
    from .train import make_optimizer, train_step

    cfg = full_config()
    size, batch = cfg.model.image_size, 64
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    keypoints = 0.2 + 0.6 * torch.rand((batch, 14, 2), generator=generator)
    bf16 = use_bf16("auto", torch.device("cpu"))
    layouts = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
    train_rates: dict[str, float] = {}
    detect_rates: dict[str, dict[str, float]] = {}
    for label, layout in layouts.items():
        torch.set_num_threads(threads)
        model = build_model(cfg.model).to(memory_format=layout)
        optimizer = make_optimizer(model, cfg)
        train_rates[label] = _rate(lambda: train_step(model, optimizer, images, keypoints, size, cfg, generator,
                                                      torch.device("cpu"), layout, bf16), batch, seconds)
        torch.set_num_threads(1)
        model.eval()
        pixels = images.float().div(255.0)
        both = torch.cat([pixels, pixels.flip(-1)]).contiguous(memory_format=layout)
        detect_rates[label] = {}
        for kind, net in (("as_trained", model), ("batch_norm_folded", fold_batch_norm(model))):
            def forward(net=net) -> None:
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    net(both)
            detect_rates[label][kind] = _rate(forward, batch, seconds)
        print(f"{label}: train {train_rates[label]:.0f} img/s ({threads} threads); detect network with flip TTA "
              f"{detect_rates[label]['as_trained']:.0f} faces/s, "
              f"{detect_rates[label]['batch_norm_folded']:.0f} with batch norm folded (1 thread)")
    result = {"name": name, "command": command or shown_command(),
              "bf16": bf16, "batch": batch, "train_threads": threads,
              "train_images_per_second": train_rates, "detect_network_faces_per_second": detect_rates,
              "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"{name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"CPU: {describe_cpu(result['machine'])}; bf16={bf16} -> {out}")
    return result


def profile_training(steps: int = 20, batch_size: int = 64, threads: int = 2,
                     overrides: Sequence[str] = (), out: str | os.PathLike | None = None) -> str:
    """Where a training step's time goes: augmentation, forward, backward, optimiser, by op.

    Trains ``steps`` steps of the recipe on synthetic faces (the cost of a step does not
    depend on the pictures) under ``torch.profiler`` and returns (and optionally writes)
    a table of the phases and the most expensive operators.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    from .augment import augment_batch
    from .model import build_model, memory_format_for
    from .synth import synthetic_faces_in_memory
    from .inference import use_bf16
    from .train import make_optimizer, stack_loss

    cfg = apply_overrides(full_config(), overrides)
    torch.set_num_threads(threads)
    size = cfg.model.image_size
    pictures, points = synthetic_faces_in_memory(batch_size, seed=0)
    images = torch.stack([torch.from_numpy(np.array(p.convert("RGB").resize((size, size)))).permute(2, 0, 1)
                          for p in pictures])
    keypoints = torch.as_tensor(
        (points + 0.5) / np.array([[p.width, p.height] for p in pictures])[:, None, :], dtype=torch.float32)
    model = build_model(cfg.model)
    layout = memory_format_for(model)
    model = model.to(memory_format=layout)
    optimizer = make_optimizer(model, cfg)
    bf16 = use_bf16(cfg.bf16, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        with record_function("augment"):
            x, y = augment_batch(images, keypoints, cfg.augment, size, generator)
            x = x.contiguous(memory_format=layout)
        with record_function("forward"):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                outputs = model.forward_stacks(x)
            loss = sum(stack_loss(pred, probs, y, cfg) for pred, probs in outputs)
        with record_function("backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("optimizer"):
            optimizer.step()

    for _ in range(3):                      # warm-up: oneDNN picks its kernels
        step()
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    seconds = time.perf_counter() - started
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)
    phases = {e.key: e.cpu_time_total / 1e3 / steps for e in prof.key_averages()
              if e.key in ("augment", "forward", "backward", "optimizer")}
    text = (f"CPU: {describe_cpu()}\n"
            f"training step profile: {cfg.model.head} head, {size} px, batch {batch_size}, "
            f"{threads} threads, bf16={bf16}; {steps} steps in {seconds:.2f} s "
            f"({steps * batch_size / seconds:.0f} img/s, profiler overhead included)\n"
            + "".join(f"  {k:10s} {v:8.1f} ms/step\n" for k, v in phases.items())
            + "\n" + table)
    if out is not None:
        Path(out).write_text(text)
    return text
