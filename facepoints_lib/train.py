"""Training: the recipe (``TrainConfig``), the loop (``fit``) and ``train_detector``.

``train_detector(train_gt, train_img_dir, fast_train=...)`` is the course's entry point.
Both modes run the same code: ``fast_train=True`` only swaps in a smaller recipe
(``fast_config``: a subset of the faces, few steps, one thread, CPU) and writes nothing;
``fast_train=False`` trains ``full_config`` and saves ``facepoints_model.pt``.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .augment import AugmentConfig, augment_batch
from .checkpoint import MODEL_FILENAME, save_checkpoint
from .dataset import FaceSet, load_faces
from .files import check_writable
from .gt_csv import check_gt_table, read_gt
from .inference import MAX_THREADS, predict, resolve_device, use_bf16
from .metrics import ced_auc, course_err, per_image_nme
from .model import (KeypointNet, ModelConfig, build_model, count_parameters, memory_format_for,
                    offsets_at)
from .progress import TextProgress, format_seconds




@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in the checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    epochs: int = 90                 # passes over the training faces
    batch_size: int = 64
    optimizer: str = "sgd"           # "sgd" (Nesterov momentum 0.9) or "adamw"
    lr: float = 0.05                 # peak learning rate (AdamW: 2e-3 worked best)
    weight_decay: float = 1e-4       # on convolution and linear weights only
    warmup_epochs: float = 2.0       # linear warm-up, then cosine decay to zero
    schedule: str = "cosine"         # "cosine" (warm-up + cosine) or "onecycle" (30 % ramp from lr/25)
    loss: str = "l1"                 # "l1", "smooth_l1", "mse" or "wing" (in percent of the side)
    heatmap_js: float = 0.0          # weight of the heatmap-shape loss (DSNT's Jensen-Shannon term)
    heatmap_sigma: float = 1.0       # its Gaussian target's spread, in heatmap cells
    heatmap_loss: str = "awing"      # offsets head: "awing" (Adaptive Wing) or "mse" on its heatmaps
    ema_decay: float = 0.998         # exponential moving average of the weights (0: off)
    val_size: int = 250              # faces held out for validation
    max_images: int | None = None    # use at most this many faces (seeded subset)
    max_steps: int | None = None     # stop after this many optimiser steps
    eval_every: int = 10             # epochs between validations (the last one is always run)
    minutes: float | None = None     # time budget: measure the first steps, then fit epochs to it
    flip_tta: bool = True            # average with the mirrored image's prediction
    bf16: str = "auto"               # bfloat16 autocast: "auto", "on" or "off"
    threads: int | None = None       # torch threads (None: leave torch's default)
    device: str = "auto"             # "auto" (GPU when present), "cpu", "cuda"
    seed: int = 0

    def to_dict(self) -> dict:
        """Plain-data form for checkpoints and result files."""
        data = asdict(self)
        data["model"] = self.model.to_dict()
        return data

    def validate(self) -> None:
        """Refuse settings of the wrong type or out of range, naming the setting (a
        ``--set batch_size=0`` ended in ZeroDivisionError, ``lr=nan`` in a TypeError)."""
        self.model.validate()

        def number(name: str, low: float, high: float = math.inf, integer: bool = False,
                   optional: bool = False, low_open: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            kinds = (int,) if integer else (int, float)
            if not isinstance(value, kinds) or isinstance(value, bool) or not math.isfinite(value) \
                    or value < low or value > high or (low_open and value == low):
                kind = "an integer" if integer else "a number"
                bound = f"above {low:g}" if low_open else f"from {low:g}"
                raise ValueError(f"{name} must be {kind} {bound}" + (f" to {high:g}" if high < math.inf else "")
                                 + f", got {value!r}")

        number("epochs", 1, integer=True)
        number("batch_size", 1, integer=True)
        number("lr", 0, low_open=True)
        number("weight_decay", 0)
        number("warmup_epochs", 0)
        number("heatmap_js", 0)
        number("heatmap_sigma", 0, low_open=True)
        number("ema_decay", 0, 0.999999)
        number("val_size", 0, integer=True)
        number("max_images", 2, integer=True, optional=True)
        number("max_steps", 1, integer=True, optional=True)
        number("eval_every", 1, integer=True)
        number("threads", 1, MAX_THREADS, integer=True, optional=True)
        number("seed", 0, integer=True)
        number("minutes", 0, optional=True, low_open=True)
        for name, allowed in (("optimizer", ("sgd", "adamw")), ("schedule", ("cosine", "onecycle")),
                              ("loss", ("l1", "smooth_l1", "mse", "wing")), ("heatmap_loss", HEATMAP_LOSSES),
                              ("bf16", ("auto", "on", "off"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, "
                                 f"got {getattr(self, name)!r}")
        if not isinstance(self.flip_tta, bool):
            raise ValueError(f"flip_tta must be True or False, got {self.flip_tta!r}")
        try:
            if not isinstance(self.device, str):
                raise TypeError
            if self.device != "auto":
                torch.device(self.device)
        except (TypeError, RuntimeError):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda' (or 'cuda:N'), got {self.device!r}") from None


def full_config(**overrides) -> TrainConfig:
    """The recipe of the shipped model (see README's model card)."""
    return TrainConfig(**overrides)


def fast_config(**overrides) -> TrainConfig:
    """The grader's ``fast_train``: same loop, 600 faces, 2 epochs, one CPU thread."""
    values = dict(epochs=2, batch_size=32, max_images=600, val_size=100, eval_every=1,
                  threads=1, device="cpu", warmup_epochs=0.5)
    values.update(overrides)
    return TrainConfig(**values)


def keypoint_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Loss between normalised keypoints, measured in percent of the image side."""
    diff = (pred - target) * 100.0
    if kind == "l1":
        return diff.abs().mean()
    if kind == "mse":
        return diff.pow(2).mean()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(diff, torch.zeros_like(diff), beta=1.0)
    if kind == "wing":                      # Feng et al. 2018, w = 5 %, eps = 1 %
        w, eps = 5.0, 1.0
        c = w - w * math.log(1 + w / eps)
        a = diff.abs()
        return torch.where(a < w, w * torch.log1p(a / eps), a - c).mean()
    raise ValueError(f"unknown loss {kind!r}")


def cell_distance_squared(keypoints: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Squared distance, in heatmap cells, from every cell centre to each normalised keypoint.

    ``keypoints`` (N, K, 2) -> (N, K, H, W).
    """
    xs = (torch.arange(width, dtype=keypoints.dtype, device=keypoints.device) + 0.5) / width
    ys = (torch.arange(height, dtype=keypoints.dtype, device=keypoints.device) + 0.5) / height
    dx = (xs.view(1, 1, 1, width) - keypoints[..., 0, None, None]) * width
    dy = (ys.view(1, 1, height, 1) - keypoints[..., 1, None, None]) * height
    return dx ** 2 + dy ** 2


def gaussian_log_targets(keypoints: torch.Tensor, height: int, width: int,
                         sigma: float) -> torch.Tensor:
    """Log of a normalised Gaussian on the heatmap grid around each keypoint.

    ``keypoints`` are normalised (N, K, 2); the result is (N, K, H, W) log-probabilities
    (computed in log space, so points far outside the image still give a valid map).
    """
    logits = -cell_distance_squared(keypoints, height, width) / (2 * sigma ** 2)
    n, k = keypoints.shape[:2]
    return torch.log_softmax(logits.reshape(n, k, -1), dim=-1).view(n, k, height, width)


def heatmap_js_loss(probs: torch.Tensor, keypoints: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mean Jensen-Shannon divergence (nats) between heatmaps and Gaussians at the keypoints.

    The regulariser of DSNT (Nibali et al. 2018): the coordinate loss alone only fixes
    each heatmap's mean, this term also asks for one compact peak there.
    """
    target = gaussian_log_targets(keypoints, probs.shape[-2], probs.shape[-1], sigma).exp()
    mixture = 0.5 * (probs + target)
    kl_p = torch.special.xlogy(probs, probs) - torch.special.xlogy(probs, mixture)
    kl_q = torch.special.xlogy(target, target) - torch.special.xlogy(target, mixture)
    return 0.5 * (kl_p + kl_q).flatten(2).sum(-1).mean()


def stack_loss(pred: torch.Tensor, probs: torch.Tensor | None, targets: torch.Tensor,
               cfg: TrainConfig) -> torch.Tensor:
    """The training loss of one output: coordinate loss plus the weighted heatmap term
    (the offsets head: its map loss, see ``offsets_head_loss``)."""
    if cfg.model.head == "offsets":
        return offsets_head_loss(probs, targets, cfg)
    loss = keypoint_loss(pred.float(), targets, cfg.loss)
    if cfg.heatmap_js:
        loss = loss + cfg.heatmap_js * heatmap_js_loss(probs, targets, cfg.heatmap_sigma)
    return loss


HEATMAP_LOSSES = ("awing", "mse")     # the offsets head's heatmap losses (``heatmap_loss``)


def _check_heatmap_loss(name: str) -> None:
    if name not in HEATMAP_LOSSES:
        raise ValueError(f"heatmap_loss must be 'awing' or 'mse', got {name!r}")


def gaussian_peaks(keypoints: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """Heatmap targets of the offsets head: a Gaussian of height 1 centred on each keypoint.

    ``keypoints`` are normalised (N, K, 2); the result is (N, K, H, W) in [0, 1] (a point
    far outside the picture gives an empty map).
    """
    return torch.exp(-cell_distance_squared(keypoints, height, width) / (2 * sigma ** 2))


def adaptive_wing(pred: torch.Tensor, target: torch.Tensor, alpha: float = 2.1, omega: float = 14.0,
                  epsilon: float = 1.0, theta: float = 0.5) -> torch.Tensor:
    """Adaptive Wing loss (Wang et al., ICCV 2019) between heatmaps in [0, 1], per cell.

    Its exponent ``alpha - target`` makes errors on the peak (target near 1) count like an
    L1 loss that stays steep near zero, and errors on the background (target 0) like a
    gentle MSE; beyond ``theta`` it continues linearly.
    """
    diff = (pred - target).abs()
    power = alpha - target
    ratio = theta / epsilon
    slope = omega / (1 + ratio ** power) * power * ratio ** (power - 1) / epsilon
    offset = theta * slope - omega * torch.log1p(ratio ** power)
    near = omega * torch.log1p((diff / epsilon) ** power)
    return torch.where(diff < theta, near, slope * diff - offset)


def offsets_head_loss(maps: torch.Tensor, keypoints: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Loss of the offsets head: its heatmaps against Gaussian peaks (``cfg.heatmap_loss``,
    summed over each map's cells, so that the few cells of the peak are not drowned by the
    background) plus the L1 error of the offsets read at each point's own cell, in percent
    of the side; both averaged over points and faces.

    Points outside the picture are clamped to the border cells; their offsets then reach out.
    """
    h, w = maps.shape[-2:]
    k = maps.shape[1] // 3
    peaks = gaussian_peaks(keypoints, h, w, cfg.heatmap_sigma)
    heat = torch.sigmoid(maps[:, :k])
    _check_heatmap_loss(cfg.heatmap_loss)
    per_cell = adaptive_wing(heat, peaks) if cfg.heatmap_loss == "awing" else (heat - peaks).pow(2)
    heat_loss = per_cell.flatten(2).sum(-1).mean()
    size = torch.tensor([w, h], dtype=keypoints.dtype, device=keypoints.device)
    grid = keypoints * size - 0.5                                  # (N, K, 2) in cell units
    cell = torch.minimum(grid.round().clamp_min(0), size - 1)
    index = (cell[..., 1] * w + cell[..., 0]).long()               # (N, K)
    offset_error = (offsets_at(maps, index) - (grid - cell)) / size * 100.0
    return heat_loss + offset_error.abs().mean()


def lr_schedule(schedule: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor per step (multiplies the peak ``lr``).

    ``cosine``: linear warm-up over ``warmup_steps``, then cosine decay to zero.
    ``onecycle``: the learning-rate shape of Smith's one-cycle policy, a cosine ramp from
    1/25 of the peak over the first 30 % of the steps, then cosine decay to 1/10^4.
    """
    if schedule == "cosine":
        def factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(total_steps - warmup_steps, 1)))
    elif schedule == "onecycle":
        ramp = max(int(0.3 * total_steps), 1)
        start, end = 1 / 25, 1e-4

        def factor(step: int) -> float:
            if step < ramp:
                return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * step / ramp))
            t = (step - ramp) / max(total_steps - ramp, 1)
            return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    else:
        raise ValueError(f"schedule must be 'cosine' or 'onecycle', got {schedule!r}")
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
               keypoints: torch.Tensor, size: int, cfg: TrainConfig, generator: torch.Generator,
               device: torch.device, layout: torch.memory_format, bf16: bool) -> torch.Tensor:
    """One optimiser step on a uint8 batch, augmented to ``size`` px; returns the loss."""
    images, targets = augment_batch(images, keypoints, cfg.augment, size, generator)
    images = images.to(device).contiguous(memory_format=layout)
    targets = targets.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        outputs = model.forward_stacks(images)
    loss = sum(stack_loss(pred, probs, targets, cfg) for pred, probs in outputs)
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
                       cfg.model.image_size, cfg, generator, device, layout, bf16)
    return (time.perf_counter() - started) / timed


def measure_eval_seconds(model: KeypointNet, faces: FaceSet, cfg: TrainConfig, sample: int = 64) -> float:
    """Seconds one validation on ``faces`` takes, scaled from a timed sample."""
    images = faces.images[:sample]
    predict(model, images[:8], flip_tta=cfg.flip_tta)                  # warm-up
    started = time.perf_counter()
    predict(model, images, flip_tta=cfg.flip_tta)
    return (time.perf_counter() - started) * len(faces) / len(images)


def epochs_for_budget(budget_seconds: float, steps_per_epoch: int, step_seconds: float,
                      cfg: TrainConfig, eval_seconds: float = 0.0) -> int:
    """The most epochs whose steps and validations fit in ``budget_seconds`` (at least 1)."""
    per_epoch = steps_per_epoch * step_seconds + eval_seconds / cfg.eval_every
    return max(int((budget_seconds - eval_seconds) / per_epoch), 1)   # the last validation always runs


# Holdout err of the shipped recipe trained for a number of epochs (seed 0, 4250 faces,
# the 500-face holdout of split seed 0), as measured in bench/results/<file>.json. A test
# checks these numbers against those files.
RECIPE_CURVE = ((90, 3.41, "turn-seed0"),)
_CURVE_FREE_KEYS = {"epochs", "minutes", "seed", "threads", "device", "bf16", "max_steps",
                    "eval_every", "val_size", "max_images"}


def predicted_err_note(epochs: int, cfg: TrainConfig) -> str:
    """What the recipe's measured err-vs-epochs curve says of ``epochs`` (log-linear in between)."""
    mine = {k: v for k, v in cfg.to_dict().items() if k not in _CURVE_FREE_KEYS}
    recipe = {k: v for k, v in full_config().to_dict().items() if k not in _CURVE_FREE_KEYS}
    if mine != recipe:
        return "no measured err-vs-epochs curve for this recipe, so no prediction"
    points = [(e, err) for e, err, _ in RECIPE_CURVE]
    if epochs <= points[0][0]:
        return f"the recipe's measured holdout err is {points[0][1]:.2f} at {points[0][0]} epochs; fewer epochs do worse"
    if epochs >= points[-1][0]:
        return f"the recipe's measured holdout err is {points[-1][1]:.2f} at {points[-1][0]} epochs"
    for (e0, err0), (e1, err1) in zip(points, points[1:]):
        if e0 <= epochs <= e1:
            t = (math.log(epochs) - math.log(e0)) / (math.log(e1) - math.log(e0))
            return (f"the recipe's measured err-vs-epochs curve predicts holdout err about "
                    f"{err0 + t * (err1 - err0):.2f} (measured: {err0:.2f} at {e0}, {err1:.2f} at {e1} epochs)")
    raise AssertionError("unreachable")


def fit(train: FaceSet, val: FaceSet | None, cfg: TrainConfig,
        progress: Callable[..., object] = TextProgress,
        log: Callable[[str], None] = print,
        track: FaceSet | None = None) -> tuple[KeypointNet, list[dict]]:
    """Train a network on ``train``, validating on ``val``; return (model, history).

    The returned model is the weight average (EMA) when ``ema_decay > 0``, in eval mode.
    ``history`` has one dict per validation: epoch, step, train loss (the coordinate loss
    plus the weighted heatmap term, if any), val figures, time (``seconds``, and
    ``train_seconds`` without the evaluations). ``track`` (optional) is scored at each
    validation too, as ``track_err``: benchmarks use it for time-to-accuracy on a holdout;
    it never steers training.

    With ``cfg.minutes`` the number of epochs is chosen to fit that budget
    from a few timed steps (see ``epochs_for_budget``) and written back to ``cfg.epochs``,
    so that a saved checkpoint records what ran (the count depends on the machine's speed:
    repeat such a run with that ``epochs`` and no ``minutes``).
    """
    cfg.validate()
    if train.keypoints is None or len(train) == 0:
        raise ValueError("training needs at least one labelled face")
    if train.image_size != cfg.model.image_size:
        raise ValueError(f"faces are {train.image_size} px, the model expects {cfg.model.image_size}")
    if cfg.heatmap_js and cfg.model.head != "heatmap":
        raise ValueError("heatmap_js needs the heatmap head")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    bf16 = use_bf16(cfg.bf16, device)

    model = build_model(cfg.model)
    pixels = train.images.float().div_(255.0)                      # (N, 3, S, S)
    model.set_statistics(pixels.mean(dim=(0, 2, 3)), pixels.std(dim=(0, 2, 3)),
                         train.keypoints.mean(0))
    del pixels
    layout = memory_format_for(model)                              # channels-last where safe
    model = model.to(device, memory_format=layout)
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
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = max(int(cfg.warmup_epochs * steps_per_epoch), 1)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg.schedule, total_steps, warmup))
    log(f"training {count_parameters(model) / 1e6:.2f}M parameters on {len(train)} faces "
        f"({len(val) if val is not None else 0} for validation), {total_steps} steps of "
        f"{batch_size}, {device.type}{' bf16' if bf16 else ''}, {torch.get_num_threads()} threads")

    history: list[dict] = []
    step, epoch, eval_seconds_so_far = 0, 0, 0.0
    bar = progress(total=total_steps, desc="train", unit="step")
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
                              cfg.model.image_size, cfg, generator, device, layout, bf16)
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
            figures = evaluate(ema, val, flip_tta=cfg.flip_tta)
            record = {"epoch": epoch, "step": step, "train_loss": running / max(seen, 1),
                      "val_err": figures["err"], "val_nme": figures["nme"],
                      "val_auc08": figures["auc08"]}
            if track is not None:
                record["track_err"] = evaluate(ema, track, flip_tta=cfg.flip_tta)["err"]
            eval_seconds_so_far += time.monotonic() - eval_start
            record["seconds"] = elapsed = time.monotonic() - start
            record["train_seconds"] = elapsed - eval_seconds_so_far
            history.append(record)
            log(f"epoch {epoch}: train loss {record['train_loss']:.3f}, val err {record['val_err']:.3f}, "
                f"NME {record['val_nme']:.4f}, {format_seconds(elapsed)} elapsed, "
                f"{format_seconds(elapsed / step * (total_steps - step))} left")
    bar.close()
    ema.eval()
    ema.train_history = history
    return ema, history


def default_model_path() -> Path:
    """``facepoints_model.pt`` beside the code: the repository root, or solution.py's folder."""
    here = Path(__file__).resolve().parent
    return (here.parent if (here / "__init__.py").exists() else here) / MODEL_FILENAME


def split_names(names: list[str], val_size: int, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of file names into (train, validation); at least one face trains."""
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(max(val_size, 0), len(names) - 1)
    return sorted(names[i] for i in order[n_val:]), sorted(names[i] for i in order[:n_val])


def _save_or_rescue(model: KeypointNet, path: Path, metadata: dict, log: Callable[[str], None]) -> None:
    """Save the trained model; if that fails (a full disk), save it in the temporary folder
    instead and say where, so that the training is not lost."""
    try:
        save_checkpoint(model, path, metadata)
    except OSError as exc:
        rescue = Path(tempfile.gettempdir()) / f"facepoints_model-{time.strftime('%Y%m%d-%H%M%S')}.pt"
        try:
            save_checkpoint(model, rescue, metadata)
        except OSError:
            raise OSError(f"could not save the trained model to {path} ({exc}), nor to {rescue}") from exc
        raise OSError(f"could not save the trained model to {path} ({exc}); it was saved to {rescue} "
                      f"instead") from exc
    log(f"saved {path}")


def train_detector(train_gt, train_img_dir, fast_train: bool = True, *,
                   config: TrainConfig | None = None, model_path: str | Path | None = None,
                   progress: Callable[..., object] = TextProgress,
                   log: Callable[[str], None] = print, track: FaceSet | None = None,
                   exclude: Sequence[str] = ()) -> KeypointNet:
    """Train a keypoint detector on the course's data and return it (in eval mode).

    ``train_gt`` is ``{filename: 28 coordinates}`` (as the course's run.py reads it) or
    the path of a gt.csv; ``train_img_dir`` the folder of the images. With
    ``fast_train=True`` a short run on one CPU thread checks that training works and
    writes nothing; with ``fast_train=False`` the full recipe runs and the model is
    saved to ``model_path`` (default: ``facepoints_model.pt`` beside the code).
    Rows for files missing from the folder are dropped with a warning; a malformed table
    raises ``GtFormatError``, an unreadable listed image ``ImageReadError``. ``track``: see
    ``fit`` (benchmarks only). ``exclude``: file names to leave out (faces whose labels
    look wrong, see notebook 01's label audit); the model file records them.
    """
    if not isinstance(fast_train, bool):
        raise TypeError(f"fast_train must be True or False, got {fast_train!r}")
    if not isinstance(train_gt, (dict, str, os.PathLike)):
        raise TypeError(f"train_gt must be a dict {{filename: 28 coordinates}} or the path of a "
                        f"gt.csv, got {type(train_gt).__name__}")
    if not isinstance(train_img_dir, (str, os.PathLike)):
        raise TypeError(f"train_img_dir must be a folder path, got {type(train_img_dir).__name__}")
    cfg = config if config is not None else (fast_config() if fast_train else full_config())
    cfg.validate()                                                # before any image is decoded
    gt = check_gt_table(train_gt, "train_gt") if isinstance(train_gt, dict) else read_gt(train_gt)
    img_dir = Path(train_img_dir)
    if not img_dir.is_dir():
        raise NotADirectoryError(f"training image folder not found: {img_dir}")
    path = None
    if not fast_train:
        path = Path(model_path) if model_path is not None else default_model_path()
        check_writable(path, "model file")                      # before any training is spent on it
    missing = sorted(name for name in gt if not (img_dir / name).is_file())
    if missing:
        warnings.warn(f"{len(missing)} files listed in the keypoint table are not in {img_dir} "
                      f"and are left out: {', '.join(missing[:5])}", stacklevel=2)
        left_out = set(missing)                                   # one set: linear in the rows
        gt = {name: coords for name, coords in gt.items() if name not in left_out}
    if isinstance(exclude, (str, os.PathLike)):
        raise TypeError("exclude must be a list of file names, not a single name")
    left_out = sorted(set(exclude) & set(gt))
    if left_out:
        log(f"leaving out {len(left_out)} faces named in the exclusion list")
        drop = set(left_out)
        gt = {name: coords for name, coords in gt.items() if name not in drop}
    if len(gt) < 2:
        raise ValueError(f"need at least 2 labelled images in {img_dir}, found {len(gt)}")
    names = sorted(gt)
    if cfg.max_images and len(names) > cfg.max_images:
        keep = torch.randperm(len(names), generator=torch.Generator().manual_seed(cfg.seed))
        names = sorted(names[i] for i in keep[:cfg.max_images].tolist())
    val_size = cfg.val_size
    if len(names) < 5 * val_size:        # few faces: a fifth validates, the rest trains
        val_size = min(val_size, max(len(names) // 5, 1))
        log(f"only {len(names)} faces: validating on {val_size} of them (val_size={cfg.val_size} would leave "
            f"{max(len(names) - cfg.val_size, 1)} to train on)")
    train_names, val_names = split_names(names, val_size, cfg.seed)

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with progress(total=len(names), desc="decode", unit="img") as bar:
        train_set = load_faces(img_dir, cfg.model.image_size, gt, train_names, bar.update)
        val_set = load_faces(img_dir, cfg.model.image_size, gt, val_names, bar.update)
    model, history = fit(train_set, val_set if len(val_set) else None, cfg, progress, log, track)
    if path is not None:
        _save_or_rescue(model, path, {"train_config": cfg.to_dict(), "history": history,
                                      "seed": cfg.seed, "train_images": len(train_set),
                                      "val_images": len(val_set), "val_names": list(val_set.filenames),
                                      "excluded": left_out},
                        log)
    return model
