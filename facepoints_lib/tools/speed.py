"""Speed benchmarks: ``detect`` on a folder in a fresh process, the network's throughput
per memory layout, and a profile of one training step.

``facepoints bench-detect MODEL [--img-dir DIR]``, ``facepoints bench-speed`` and
``facepoints profile`` (see bench/README.md). Every result names the CPU it ran on.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..core.config import full_config, full_run
from ..core.inference import restores_torch_threads
from .bench import DETECT_SCRIPT
from .machine import RESULTS_DIR, describe_cpu, machine_info, run_script, shown_command, write_result
from .overrides import apply_overrides


def run_detect_bench(model_path: str | os.PathLike, *, img_dir: str | os.PathLike | None = None,
                     synthetic: int = 10_000, name: str | None = None,
                     results_dir: str | os.PathLike = RESULTS_DIR, command: str | None = None,
                     single_look: bool = False) -> dict:
    """Time ``detect`` with one thread in a fresh process and record its peak memory.

    Runs on ``img_dir`` when given, else on ``synthetic`` generated faces (sizes as varied
    as the course's), and writes ``bench/results/<name>.json``. ``single_look`` turns the
    model's second look off (to compare the cost of the two passes).
    """
    from ..core.images import list_images
    from .synth import make_synthetic_faces

    synthetic_used = img_dir is None
    with tempfile.TemporaryDirectory() as tmp:
        if img_dir is None:
            print(f"generating {synthetic} synthetic faces ...", file=sys.stderr)
            img_dir = make_synthetic_faces(Path(tmp) / "faces", synthetic, seed=1) / "images"
        names = list_images(img_dir)
        names_file = Path(tmp) / "names.json"
        names_file.write_text(json.dumps(names))
        timing = run_script(DETECT_SCRIPT, str(model_path), str(img_dir), str(names_file),
                                   "--tta-only", *(["--single-look"] if single_look else []))
    result = {
        "name": name or f"detect-{len(names)}",
        "command": command or shown_command(),
        "images": len(names), "source": "synthetic faces" if synthetic_used else "folder",
        "seconds": timing["seconds"], "images_per_second": len(names) / timing["seconds"],
        "peak_rss_mb": timing["peak_rss_mb"], "threads": 1, "flip_tta": True, "second_look": not single_look,
        "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = write_result(result, results_dir, result["name"])
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


@restores_torch_threads
def run_speed_bench(*, name: str = "speed", threads: int = 2, seconds: float = 8.0,
                    results_dir: str | os.PathLike = RESULTS_DIR, command: str | None = None) -> dict:
    """Throughput of the recipe's network on this CPU, per memory layout.

    Training: images/s of whole steps (augmentation, forward, backward, SGD) on ``threads``
    threads. Detection: faces/s of the network with flip TTA on one thread, as trained and
    with batch norm folded (what ``detect`` runs). Synthetic pixels: the cost does not
    depend on them. Writes ``bench/results/<name>.json`` with the CPU flags and kernels
    (see docs/cpu-notes.md).
    """
    from ..core.model import build_model, fold_batch_norm
    from ..core.inference import use_bf16
    from ..core.fit import make_optimizer, train_step

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
        train_rates[label] = _rate(lambda: train_step(model, optimizer, images, keypoints, cfg, generator,
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
        print(f"{label}: train {train_rates[label]:.0f} img/s ({threads} thread{'s' if threads != 1 else ''}); detect network with flip TTA "
              f"{detect_rates[label]['as_trained']:.0f} faces/s, "
              f"{detect_rates[label]['batch_norm_folded']:.0f} with batch norm folded (1 thread)")
    result = {"name": name, "command": command or shown_command(),
              "bf16": bf16, "batch": batch, "train_threads": threads,
              "train_images_per_second": train_rates, "detect_network_faces_per_second": detect_rates,
              "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = write_result(result, results_dir, name)
    print(f"CPU: {describe_cpu(result['machine'])}; bf16={bf16} -> {out}")
    return result


@contextlib.contextmanager
def labelled_phases(model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """Label the phases of ``fit.train_step`` for ``torch.profiler`` without touching it:
    ``augment`` (the module's ``augment_batch``), ``forward`` (the network's forward call),
    ``backward`` (from the loss's ``backward`` to the optimiser step) and ``optimizer``."""
    from torch.autograd.profiler import record_function

    from ..core import fit as fit_module

    open_ranges: dict[str, record_function] = {}

    def begin(name: str) -> None:
        open_ranges[name] = record_function(name).__enter__()

    def end(name: str) -> None:
        if name in open_ranges:
            open_ranges.pop(name).__exit__(None, None, None)

    def before_step(*_) -> None:                   # a pre-hook returning something replaces step()'s arguments
        end("backward")
        begin("optimizer")

    real_augment = fit_module.augment_batch

    def augment(*args, **kwargs):
        with record_function("augment"):
            return real_augment(*args, **kwargs)

    hooks = [model.register_forward_pre_hook(lambda *_: begin("forward")),
             model.register_forward_hook(lambda *_: end("forward")),
             optimizer.register_step_pre_hook(before_step),
             optimizer.register_step_post_hook(lambda *_: end("optimizer"))]
    real_zero_grad = optimizer.zero_grad

    def zero_grad(*args, **kwargs):                # train_step: zero_grad, then backward, then step
        real_zero_grad(*args, **kwargs)
        begin("backward")

    fit_module.augment_batch, optimizer.zero_grad = augment, zero_grad
    try:
        yield
    finally:
        fit_module.augment_batch = real_augment
        del optimizer.zero_grad
        for hook in hooks:
            hook.remove()


@restores_torch_threads
def profile_training(steps: int = 20, batch_size: int = 64, threads: int = 2,
                     overrides: Sequence[str] = (), out: str | os.PathLike | None = None) -> str:
    """Where a training step's time goes: augmentation, forward, backward, optimiser, by op.

    Runs ``fit.train_step`` itself for ``steps`` steps of the recipe under
    ``torch.profiler``, its phases labelled from outside (``labelled_phases``), on
    synthetic faces written to a temporary folder and loaded as training loads faces (the
    cost of a step does not depend on the pictures), and returns (and optionally writes) a
    table of the phases and the most expensive operators.
    """
    from torch.profiler import ProfilerActivity, profile

    from ..core.dataset import load_faces
    from ..core.gt_csv import read_gt
    from ..core.inference import use_bf16
    from ..core.model import build_model, memory_format_for
    from ..core.fit import make_optimizer, train_step
    from .synth import make_synthetic_faces

    cfg, run = full_config(), full_run()
    apply_overrides(cfg, overrides, run)
    torch.set_num_threads(threads)
    size = cfg.model.image_size
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_synthetic_faces(Path(tmp) / "faces", batch_size, seed=0)
        faces = load_faces(folder / "images", size, read_gt(folder / "gt.csv"))
    model = build_model(cfg.model)
    layout = memory_format_for(model)
    model = model.to(memory_format=layout)
    optimizer = make_optimizer(model, cfg)
    device = torch.device("cpu")
    bf16 = use_bf16(run.bf16, device)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        train_step(model, optimizer, faces.images, faces.keypoints, cfg, generator, device, layout, bf16)

    for _ in range(3):                      # warm-up: oneDNN picks its kernels
        step()
    started = time.perf_counter()
    with labelled_phases(model, optimizer), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    seconds = time.perf_counter() - started
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)
    phases = {e.key: e.cpu_time_total / 1e3 / steps for e in prof.key_averages()
              if e.key in ("augment", "forward", "backward", "optimizer")}
    text = (f"CPU: {describe_cpu()}\n"
            f"training step profile: {cfg.model.head} head, {size} px, batch {len(faces)}, "
            f"{threads} thread{'s' if threads != 1 else ''}, bf16={bf16}; {steps} steps in {seconds:.2f} s "
            f"({steps * len(faces) / seconds:.0f} img/s, profiler overhead included)\n"
            + "".join(f"  {k:10s} {v:8.1f} ms/step\n" for k, v in phases.items())
            + "\n" + table)
    if out is not None:
        Path(out).write_text(text)
    return text
