"""The training loop: ``fit`` trains a network on decoded faces, validating as it goes.

``fit`` takes faces already decoded (``dataset.FaceSet``), a recipe (``TrainConfig``)
and how to run it (``RunConfig``), and returns the weight-averaged network and one
record per validation; ``train`` chooses the faces and saves the result. A step
(``train_step``) augments a whole batch with tensor ops, runs the network under bfloat16
autocast where the CPU computes it natively, and takes one optimiser step. When training
ends and how the learning rate moves is a ``StepSchedule`` (the recipe's epochs); a
caller may pass another schedule with the same methods (the command line's time budget
does). A training stopped by Ctrl-C (or a SIGTERM the command line turns into
one) raises ``TrainingInterrupted`` with the best weights so far.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .augment import apply_transform, augment_batch, cut_crops
from .checkpoint import MIN_PIXEL_STD
from .config import RunConfig, TrainConfig
from .dataset import FaceSet
from .inference import predict, resolve_device, restores_torch_threads, use_bf16
from .losses import training_loss
from .metrics import ced_auc, course_err, per_image_nme
from .model import KeypointNet, build_model, count_parameters, memory_format_for
from .progress import TextProgress, format_seconds


class StepSchedule:
    """Training ends after ``total_steps``; the learning-rate factor (it multiplies the
    peak ``lr``) rises linearly over ``warmup_steps``, then decays to zero along a cosine.

    The loop asks a schedule ``finished(step)``, ``lr_factor(step)``, ``expected_steps(step)``
    (the progress bar's total), ``describe()`` (for the log) and ``to_dict()`` (for the
    model's metadata); the command line's time budget (``tools/budget.py``) answers from
    the clock instead.
    """

    def __init__(self, total_steps: int, warmup_steps: int):
        self.total_steps, self.warmup_steps = total_steps, max(warmup_steps, 1)

    @classmethod
    def for_recipe(cls, cfg: TrainConfig, run: RunConfig, steps_per_epoch: int) -> "StepSchedule":
        """The recipe's schedule: ``cfg.epochs`` epochs (at most ``run.max_steps`` steps)."""
        total = cfg.epochs * steps_per_epoch
        return cls(min(total, run.max_steps) if run.max_steps else total,
                   int(cfg.warmup_epochs * steps_per_epoch))

    def finished(self, step: int) -> bool:
        return step >= self.total_steps

    def describe(self) -> str:
        return f"{self.total_steps} steps"

    def expected_steps(self, step: int) -> int:
        return self.total_steps

    def to_dict(self) -> dict:
        return {"schedule": "steps", "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}

    def lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay = max(self.total_steps - self.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * (step - self.warmup_steps) / decay))


def evaluate(model: KeypointNet, faces: FaceSet, flip_tta: bool = True) -> dict:
    """Course err, NME (inter-ocular, in original pixels) and CED AUC@0.08 on ``faces``."""
    pred = predict(model, faces.images, flip_tta=flip_tta)
    true = faces.keypoints.double().numpy()
    sizes = faces.sizes.numpy()[:, None, :]
    nme = per_image_nme(pred * sizes, true * sizes)
    return {"err": course_err(pred, true), "nme": float(nme.mean()), "auc08": ced_auc(nme, 0.08)}


def validate(model: KeypointNet, val: FaceSet, flip_tta: bool = True) -> dict:
    """One validation's figures, as a history records them: ``val_err``, ``val_nme``,
    ``val_auc08`` (see ``evaluate``)."""
    return {f"val_{key}": value for key, value in evaluate(model, val, flip_tta).items()}


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
               device: torch.device, layout: torch.memory_format, bf16: bool,
               frames: torch.Tensor | None = None) -> torch.Tensor:
    """One optimiser step on a uint8 batch, augmented to the model's input side (from the
    crops ``frames`` of its pictures, when given); returns the loss."""
    images, targets = augment_batch(images, keypoints, cfg.augment, cfg.model.image_size, generator, frames)
    images = images.to(device).contiguous(memory_format=layout)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        pred, probs = model(images, with_heatmaps=True)                # (N, 14, 2), (N, 14, H, W)
    loss = training_loss(pred, probs, targets.to(device), cfg.heatmap_js, cfg.heatmap_sigma)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
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
                       cfg, generator, device, layout, bf16, _frames(train, index))
    return (time.perf_counter() - started) / timed


def _frames(faces: FaceSet, index: torch.Tensor) -> torch.Tensor | None:
    return None if faces.frames is None else faces.frames[index]


def _shown_images(faces: FaceSet, side: int) -> torch.Tensor:
    """The pictures as the network is shown them unaugmented: the pictures themselves, or
    their ``frames`` cut at ``side`` px (uint8)."""
    return faces.images if faces.frames is None else cut_crops(faces.images, faces.frames, side)


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


@dataclass
class _Trainer:
    """What one run trains with: the network and its weight average, the optimiser and
    where and how the steps run."""

    model: KeypointNet
    ema: KeypointNet                       # the weight average (the network itself when ema_decay is 0)
    optimizer: torch.optim.Optimizer
    generator: torch.Generator             # the augmentation's and the batches' random numbers
    device: torch.device
    layout: torch.memory_format
    bf16: bool
    batch_size: int
    steps_per_epoch: int


def _new_trainer(train: FaceSet, cfg: TrainConfig, run: RunConfig) -> _Trainer:
    """A fresh network holding the training faces' pixel statistics and mean shape, on
    the run's device in the memory layout it trains in (channels-last where safe), with
    its optimiser."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(run.device)
    model = build_model(cfg.model)
    mean, std = pixel_statistics(_shown_images(train, cfg.model.image_size))
    shown = train.keypoints if train.frames is None else apply_transform(train.frames, train.keypoints)
    model.set_statistics(mean, std.clamp_min(MIN_PIXEL_STD), shown.mean(0))
    layout = memory_format_for(model)
    model = model.to(device, memory_format=layout)
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema_decay > 0 else model
    _import_dynamo_without_tmp()                                  # before any torch.optim use
    batch_size = min(cfg.batch_size, len(train))
    return _Trainer(model, ema, make_optimizer(model, cfg), torch.Generator().manual_seed(cfg.seed),
                    device, layout, use_bf16(run.bf16, device), batch_size,
                    max(len(train) // batch_size, 1))             # whole batches only


def _check_fit_inputs(train: FaceSet, val: FaceSet | None, cfg: TrainConfig, run: RunConfig) -> None:
    cfg.validate()
    run.validate()
    if train.keypoints is None or len(train) == 0:
        raise ValueError("training needs at least one labelled face")
    for faces in (train, val) if val is not None else (train,):    # larger faces are resampled
        if faces.image_size < cfg.model.image_size:                  # (augmentation, predict)
            raise ValueError(f"faces are {faces.image_size} px, the model expects at least {cfg.model.image_size}")


def _train_epoch(t: _Trainer, train: FaceSet, cfg: TrainConfig, scheduler, done: Callable[[int], bool],
                 step: int, bar, postfix: str) -> tuple[int, float]:
    """One pass over the training faces in a new random order, until ``done(step)``;
    returns the step count and the mean training loss of the pass."""
    t.model.train()
    order = torch.randperm(len(train), generator=t.generator)
    total, seen = 0.0, 0
    for b in range(t.steps_per_epoch):
        if done(step):
            break
        index = order[b * t.batch_size:(b + 1) * t.batch_size]
        loss = train_step(t.model, t.optimizer, train.images[index], train.keypoints[index],
                          cfg, t.generator, t.device, t.layout, t.bf16, _frames(train, index))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {step} (loss {loss.item()})")
        scheduler.step()
        step += 1
        if t.ema is not t.model:
            _ema_update(t.ema, t.model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        total, seen = total + loss.item(), seen + 1
        bar.update(1)
        bar.set_postfix_str(f"loss {total / seen:.3f}{postfix}")
    return step, total / max(seen, 1)


@restores_torch_threads
def fit(train: FaceSet, val: FaceSet | None, cfg: TrainConfig, run: RunConfig | None = None, *,
        schedule=None, progress: Callable[..., object] = TextProgress, log: Callable[[str], None] = print,
        on_validation: Callable[[KeypointNet, dict], None] | None = None) -> tuple[KeypointNet, list[dict]]:
    """Train a network on ``train`` by the recipe ``cfg``, validating on ``val``; return
    (model, history).

    The returned model is the weight average (EMA) when ``ema_decay > 0``, in eval mode;
    its ``metadata`` records the recipe, the run and the steps taken. ``history`` has one
    dict per validation: epoch, step, train loss, ``val_err``, ``val_nme``, ``val_auc08``,
    time (``seconds``, and ``train_seconds`` without the validations). ``run`` (default
    ``RunConfig()``) sets threads, device, bfloat16, validation and a step cap;
    ``schedule(cfg, run, steps_per_epoch)`` (default ``StepSchedule.for_recipe``) gives the
    schedule: when training ends and how the learning rate moves. ``on_validation(model,
    record)`` runs at each validation and may add figures to the record (benchmarks score
    a holdout there); it never steers training.
    """
    run = run if run is not None else RunConfig()
    _check_fit_inputs(train, val, cfg, run)
    val = val if val is not None and len(val) else None
    if run.threads:
        torch.set_num_threads(run.threads)
    t = _new_trainer(train, cfg, run)
    schedule = (schedule or StepSchedule.for_recipe)(cfg, run, t.steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(t.optimizer, schedule.lr_factor)
    threads = torch.get_num_threads()
    log(f"training {count_parameters(t.model) / 1e6:.2f}M parameters on {len(train)} faces "
        f"({len(val) if val is not None else 0} for validation), batches of {t.batch_size}, "
        f"{schedule.describe()}, {t.device.type}{' bf16' if t.bf16 else ''}, {threads} thread{'s' if threads != 1 else ''}")

    def done(step: int) -> bool:
        return schedule.finished(step) or (run.max_steps is not None and step >= run.max_steps)

    history: list[dict] = []
    best: tuple[dict, dict] | None = None            # (record, EMA weights) of the best validation
    step, epoch, started, validating = 0, 0, time.monotonic(), 0.0
    bar = progress(total=schedule.expected_steps(0), desc="train", unit="step")
    try:
        while not done(step):
            epoch += 1
            last = f" (val err {history[-1]['val_err']:.2f} at epoch {history[-1]['epoch']})" if history else ""
            step, loss = _train_epoch(t, train, cfg, scheduler, done, step, bar, f", epoch {epoch}{last}")
            bar.total = schedule.expected_steps(step)
            if val is None or not (done(step) or epoch % run.eval_every == 0):
                continue
            began = time.monotonic()
            record = {"epoch": epoch, "step": step, "train_loss": loss, **validate(t.ema, val, cfg.flip_tta)}
            if on_validation is not None:
                on_validation(t.ema, record)
            validating += time.monotonic() - began
            record["seconds"] = elapsed = time.monotonic() - started
            record["train_seconds"] = elapsed - validating
            history.append(record)
            if best is None or record["val_err"] < best[0]["val_err"]:
                best = (record, copy.deepcopy(t.ema.state_dict()))
            log(f"epoch {epoch}: train loss {loss:.3f}, val err {record['val_err']:.3f}, "
                f"NME {record['val_nme']:.4f}, {format_seconds(elapsed)} elapsed, "
                f"{format_seconds(elapsed / step * (schedule.expected_steps(step) - step))} left")
    except KeyboardInterrupt as stop:                # Ctrl-C, or SIGTERM turned into one by the CLI
        bar.close()
        if best is not None:
            t.ema.load_state_dict(best[1])
        t.ema.metadata = _what_ran(cfg, run, schedule, step, t.steps_per_epoch)
        raise TrainingInterrupted(t.ema.eval(), history, step, schedule.expected_steps(step),
                                  best[0] if best is not None else None) from stop
    bar.close()
    t.ema.metadata = _what_ran(cfg, run, schedule, step, t.steps_per_epoch)
    return t.ema.eval(), history


def _what_ran(cfg: TrainConfig, run: RunConfig, schedule, steps: int, steps_per_epoch: int) -> dict:
    """The model's ``metadata``: the recipe, the run, and the steps the schedule gave."""
    return {"train_config": cfg.to_dict(), "run_config": run.to_dict(),
            "trained": {"steps": steps, "epochs": round(steps / steps_per_epoch, 3), **schedule.to_dict()}}


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
