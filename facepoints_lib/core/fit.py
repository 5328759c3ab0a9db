"""The training loop: ``fit`` trains a network on decoded faces, validating as it goes.

``fit`` takes faces already decoded (``dataset.FaceSet``) and a recipe (``TrainConfig``)
and returns the weight-averaged network and one record per validation; ``train``
chooses the faces and saves the result. A step (``train_step``) augments a whole batch
with tensor ops, runs the network under bfloat16 autocast where the CPU computes it
natively, and takes one optimiser step; its phases are labelled for ``torch.profiler``.
A training stopped by Ctrl-C (or a SIGTERM the command line turns into one) raises
``TrainingInterrupted`` with the best weights so far.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch.profiler import record_function

from .augment import augment_batch
from .budget import epochs_for_budget, measure_eval_seconds, predicted_err_note
from .checkpoint import MIN_PIXEL_STD
from .config import TrainConfig
from .dataset import FaceSet
from .inference import predict, resolve_device, restores_torch_threads, use_bf16
from .losses import training_loss
from .metrics import ced_auc, course_err, per_image_nme
from .model import KeypointNet, build_model, count_parameters, memory_format_for
from .progress import TextProgress, format_seconds


def lr_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor per step (multiplies the peak ``lr``): linear warm-up over
    ``warmup_steps``, then cosine decay to zero at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(total_steps - warmup_steps, 1)))
    return factor


def evaluate(model: KeypointNet, faces: FaceSet, flip_tta: bool = True) -> dict:
    """Course err, NME (inter-ocular, in original pixels) and CED AUC@0.08 on ``faces``."""
    pred = predict(model, faces.images, flip_tta=flip_tta)
    true = faces.keypoints.double().numpy()
    sizes = faces.sizes.numpy()[:, None, :]
    nme = per_image_nme(pred * sizes, true * sizes)
    return {"err": course_err(pred, true), "nme": float(nme.mean()), "auc08": ced_auc(nme, 0.08)}


def _ema_update(ema: KeypointNet, model: KeypointNet, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - decay)
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)


def _param_groups(model: KeypointNet, weight_decay: float) -> list[dict]:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: KeypointNet, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimiser; weight decay on convolution and linear weights only."""
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {cfg.optimizer!r}")


def _import_dynamo_without_tmp() -> None:
    """Import ``torch._dynamo`` even where no temporary folder is writable.

    Every ``torch.optim`` optimiser imports ``torch._dynamo`` on first use (its
    ``add_param_group``, ``zero_grad`` and ``step`` are wrapped by ``torch._disable_dynamo``),
    whatever its ``foreach``/``fused`` flags. That import builds ``torch._dynamo.package.DynamoCache``
    from inductor's cache folder, by default ``tempfile.gettempdir()/torchinductor_<user>``
    (created on the spot), so with /tmp, /var/tmp and the working directory all read-only
    it raises ``FileNotFoundError: No usable temporary directory``. Eager training never
    uses that cache: in that case only, point it at the root folder (which exists, so
    nothing is created) for the import and restore the environment afterwards. Where a
    temporary folder is usable, torch's own behaviour is left alone.
    """
    if "torch._dynamo" in sys.modules or os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return
    try:
        tempfile.gettempdir()
        return
    except FileNotFoundError:
        pass
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.abspath(os.sep)
    try:
        import torch._dynamo  # noqa: F401  (the import is the point)
    finally:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)


def train_step(model: KeypointNet, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               keypoints: torch.Tensor, cfg: TrainConfig, generator: torch.Generator,
               device: torch.device, layout: torch.memory_format, bf16: bool) -> torch.Tensor:
    """One optimiser step on a uint8 batch, augmented to the model's input side; returns the loss.

    Its phases are labelled for ``torch.profiler`` (``facepoints profile``), which times
    this very function.
    """
    with record_function("augment"):
        images, targets = augment_batch(images, keypoints, cfg.augment, cfg.model.image_size, generator)
        images = images.to(device).contiguous(memory_format=layout)
        targets = targets.to(device)
    with record_function("forward"):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred, probs = model(images, with_heatmaps=True)        # (N, 14, 2), (N, 14, H, W)
        loss = training_loss(pred, probs, targets, cfg.heatmap_js, cfg.heatmap_sigma)
    with record_function("backward"):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    with record_function("optimizer"):
        optimizer.step()
    return loss.detach()


def measure_step_seconds(model: KeypointNet, train: FaceSet, cfg: TrainConfig, batch_size: int,
                         device: torch.device, layout: torch.memory_format, bf16: bool,
                         warmup: int = 2, timed: int = 4) -> float:
    """Seconds per training step, timed on a throwaway copy of the model.

    The copy trains on its own random numbers (the run's generator and torch's global one
    are left alone), so measuring does not change the weights a seed gives.
    """
    probe = copy.deepcopy(model)
    optimizer = make_optimizer(probe, cfg)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    index = torch.arange(min(batch_size, len(train)))
    with torch.random.fork_rng(devices=[]):
        for i in range(warmup + timed):
            if i == warmup:
                started = time.perf_counter()
            train_step(probe, optimizer, train.images[index], train.keypoints[index],
                       cfg, generator, device, layout, bf16)
    return (time.perf_counter() - started) / timed


STATISTICS_CHUNK = 64       # faces converted to float at a time for the pixel statistics


def pixel_statistics(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of uint8 faces (N, 3, S, S) as [0, 1] pixels.

    Summed in float64 a chunk of faces at a time, so the memory it takes does not grow
    with the faces (a float copy of every face was four times the decoded faces' size).
    """
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(images), STATISTICS_CHUNK):
        chunk = images[start:start + STATISTICS_CHUNK].double().div_(255.0)
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square_().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    variance = (squares - count * mean ** 2).clamp_min(0) / max(count - 1, 1)
    return mean.float(), variance.sqrt().float()


def _new_model(train: FaceSet, cfg: TrainConfig, device: torch.device) -> tuple[KeypointNet, torch.memory_format]:
    """A fresh network holding the training faces' pixel statistics and mean shape, on
    ``device`` in the memory layout it trains in (channels-last where safe)."""
    model = build_model(cfg.model)
    mean, std = pixel_statistics(train.images)
    model.set_statistics(mean, std.clamp_min(MIN_PIXEL_STD), train.keypoints.mean(0))
    layout = memory_format_for(model)
    return model.to(device, memory_format=layout), layout


def _validation_figures(model: KeypointNet, val: FaceSet, track: FaceSet | None, flip_tta: bool) -> dict:
    """One validation's figures for the history: ``val_err``, ``val_nme``, ``val_auc08``
    and, with a tracked holdout, ``track_err``."""
    figures = evaluate(model, val, flip_tta=flip_tta)
    record = {"val_err": figures["err"], "val_nme": figures["nme"], "val_auc08": figures["auc08"]}
    if track is not None:
        record["track_err"] = evaluate(model, track, flip_tta=flip_tta)["err"]
    return record


@restores_torch_threads
def fit(train: FaceSet, val: FaceSet | None, cfg: TrainConfig,
        progress: Callable[..., object] = TextProgress,
        log: Callable[[str], None] = print,
        track: FaceSet | None = None) -> tuple[KeypointNet, list[dict]]:
    """Train a network on ``train``, validating on ``val``; return (model, history).

    The returned model is the weight average (EMA) when ``ema_decay > 0``, in eval mode.
    ``history`` has one dict per validation: epoch, step, train loss, val figures, time (``seconds``, and
    ``train_seconds`` without the evaluations). ``track`` (optional) is scored at each
    validation too, as ``track_err``: benchmarks use it for time-to-accuracy on a holdout;
    it never steers training.

    With ``cfg.minutes`` the number of epochs is chosen to fit that budget from a few
    timed steps (see ``epochs_for_budget``). ``cfg`` itself is left as it was: the model's
    ``metadata["train_config"]`` records what ran, that epoch count included, for the
    checkpoint (the count depends on the machine's speed: repeat such a run with that
    ``epochs`` and no ``minutes``).
    """
    cfg.validate()
    cfg = copy.deepcopy(cfg)                  # this run's own: a budget's epochs are written here
    if train.keypoints is None or len(train) == 0:
        raise ValueError("training needs at least one labelled face")
    if train.image_size != cfg.model.image_size:
        raise ValueError(f"faces are {train.image_size} px, the model expects {cfg.model.image_size}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    bf16 = use_bf16(cfg.bf16, device)

    model, layout = _new_model(train, cfg, device)
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema_decay > 0 else model
    _import_dynamo_without_tmp()                                  # before any torch.optim use
    optimizer = make_optimizer(model, cfg)

    batch_size = min(cfg.batch_size, len(train))
    steps_per_epoch = max(len(train) // batch_size, 1)            # whole batches only
    start = time.monotonic()                                      # the timing steps count too
    if cfg.minutes:
        step_seconds = measure_step_seconds(model, train, cfg, batch_size, device, layout, bf16)
        eval_seconds = measure_eval_seconds(ema, val, cfg) if val is not None and len(val) else 0.0
        budget = cfg.minutes * 60 - (time.monotonic() - start)
        cfg.epochs = epochs = epochs_for_budget(budget, steps_per_epoch, step_seconds, cfg, eval_seconds)
        log(f"time budget {cfg.minutes:g} min: {format_seconds(steps_per_epoch * step_seconds)} per "
            f"epoch ({1000 * step_seconds:.0f} ms per step measured), so {epochs} "
            f"epoch{'s' if epochs != 1 else ''}; "
            f"{predicted_err_note(epochs, cfg)}")
        one_epoch = steps_per_epoch * step_seconds + eval_seconds
        if one_epoch > budget:
            log(f"warning: the time budget of {cfg.minutes:g} min is shorter than one epoch with its "
                f"validation ({format_seconds(one_epoch)}); training the one epoch anyway, which "
                f"overshoots the budget by about {format_seconds(one_epoch - max(budget, 0.0))}")
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = max(int(cfg.warmup_epochs * steps_per_epoch), 1)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(total_steps, warmup))
    log(f"training {count_parameters(model) / 1e6:.2f}M parameters on {len(train)} faces "
        f"({len(val) if val is not None else 0} for validation), {total_steps} steps of "
        f"{batch_size}, {device.type}{' bf16' if bf16 else ''}, {torch.get_num_threads()} "
        f"thread{'s' if torch.get_num_threads() != 1 else ''}")

    history: list[dict] = []
    step, epoch, eval_seconds_so_far = 0, 0, 0.0
    best: tuple[dict, dict] | None = None            # (record, EMA weights) of the best validation
    bar = progress(total=total_steps, desc="train", unit="step")
    try:
        while step < total_steps:
            epoch += 1
            model.train()
            order = torch.randperm(len(train), generator=generator)
            running, seen = 0.0, 0
            for b in range(steps_per_epoch):
                if step >= total_steps:
                    break
                index = order[b * batch_size:(b + 1) * batch_size]
                loss = train_step(model, optimizer, train.images[index], train.keypoints[index],
                                  cfg, generator, device, layout, bf16)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training diverged at step {step} (loss {loss.item()})")
                scheduler.step()
                step += 1
                if ema is not model:
                    _ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
                running, seen = running + loss.item(), seen + 1
                bar.update(1)
                last_val = f" (val err {history[-1]['val_err']:.2f} at epoch {history[-1]['epoch']})" if history else ""
                bar.set_postfix_str(f"epoch {epoch} loss {running / seen:.3f}{last_val}")
            last = step >= total_steps
            if val is not None and len(val) and (last or epoch % cfg.eval_every == 0):
                eval_start = time.monotonic()
                record = {"epoch": epoch, "step": step, "train_loss": running / max(seen, 1),
                          **_validation_figures(ema, val, track, cfg.flip_tta)}
                eval_seconds_so_far += time.monotonic() - eval_start
                record["seconds"] = elapsed = time.monotonic() - start
                record["train_seconds"] = elapsed - eval_seconds_so_far
                history.append(record)
                if best is None or record["val_err"] < best[0]["val_err"]:
                    best = (record, copy.deepcopy(ema.state_dict()))
                log(f"epoch {epoch}: train loss {record['train_loss']:.3f}, val err {record['val_err']:.3f}, "
                    f"NME {record['val_nme']:.4f}, {format_seconds(elapsed)} elapsed, "
                    f"{format_seconds(elapsed / step * (total_steps - step))} left")
    except KeyboardInterrupt as stop:                # Ctrl-C, or SIGTERM turned into one by the CLI
        bar.close()
        if best is not None:
            ema.load_state_dict(best[1])
        ema.metadata = {"train_config": cfg.to_dict()}
        raise TrainingInterrupted(ema.eval(), history, step, total_steps,
                                  best[0] if best is not None else None) from stop
    bar.close()
    ema.metadata = {"train_config": cfg.to_dict()}                # what ran, for the checkpoint
    ema.eval()
    return ema, history


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped (Ctrl-C, or a SIGTERM the command line turns into this) before
    it finished. ``model`` holds the weights (EMA) of the best validation so far, or the
    latest ones where none had run yet; ``record`` that validation (None: none yet);
    ``saved_to`` the file ``train_model`` kept them in (None: nothing kept)."""

    def __init__(self, model: KeypointNet, history: list[dict], step: int, total_steps: int,
                 record: dict | None):
        super().__init__(f"training stopped at step {step} of {total_steps}")
        self.model, self.history, self.step, self.total_steps = model, history, step, total_steps
        self.record = record
        self.saved_to: Path | None = None
