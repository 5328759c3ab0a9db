"""Training: the loop (``fit``), one run from a gt table (``train_model``) and the
course's ``train_detector``.

``train_detector(train_gt, train_img_dir, fast_train=...)`` is the course's entry point.
Both modes run the same code: ``fast_train=True`` only swaps in a smaller recipe
(``config.fast_config``: a subset of the faces, few steps, one thread, CPU) and writes
nothing; ``fast_train=False`` trains ``config.full_config`` and saves ``facepoints_model.pt``.
The recipe is in ``config``, the loss in ``losses``, prediction in ``inference`` and the
time budget in ``budget``.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.profiler import record_function

from .augment import augment_batch
from .budget import epochs_for_budget, measure_eval_seconds, predicted_err_note
from .checkpoint import default_model_path, save_or_rescue
from .config import TrainConfig, fast_config, full_config
from .confidence import calibrate
from .dataset import FaceSet, load_faces, split_names
from .files import check_writable
from .gt_csv import check_gt_table, read_gt
from .inference import predict, resolve_device, use_bf16
from .losses import training_loss
from .metrics import ced_auc, course_err, per_image_nme
from .model import KeypointNet, build_model, count_parameters, fold_batch_norm, memory_format_for
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


def _new_model(train: FaceSet, cfg: TrainConfig, device: torch.device) -> tuple[KeypointNet, torch.memory_format]:
    """A fresh network holding the training faces' pixel statistics and mean shape, on
    ``device`` in the memory layout it trains in (channels-last where safe)."""
    model = build_model(cfg.model)
    pixels = train.images.float().div_(255.0)                      # (N, 3, S, S)
    model.set_statistics(pixels.mean(dim=(0, 2, 3)), pixels.std(dim=(0, 2, 3)),
                         train.keypoints.mean(0))
    del pixels
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
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = max(int(cfg.warmup_epochs * steps_per_epoch), 1)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(total_steps, warmup))
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
            log(f"epoch {epoch}: train loss {record['train_loss']:.3f}, val err {record['val_err']:.3f}, "
                f"NME {record['val_nme']:.4f}, {format_seconds(elapsed)} elapsed, "
                f"{format_seconds(elapsed / step * (total_steps - step))} left")
    bar.close()
    ema.eval()
    return ema, history


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning raised in this module at the first caller
    outside it (the user's line, whether it called ``train_detector`` or ``train_model``)."""
    frame, level = sys._getframe(2), 2          # 1: the function that warns
    while frame.f_back is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1  # (the outermost frame, at worst: a script's own line)
    return level


@dataclass
class TrainingRun:
    """What ``train_model`` did: the model (EMA weights, eval mode), one record per
    validation (see ``fit``), the faces it trained and validated on, those left out, and
    the model file it wrote (None when it wrote none)."""

    model: KeypointNet
    history: list[dict]
    train_names: list[str]
    val_names: list[str]
    excluded: list[str] = field(default_factory=list)
    model_path: Path | None = None


def _check_inputs(train_gt, train_img_dir) -> tuple[dict, Path]:
    """The gt table as a dict and the image folder, with clear errors for the wrong kinds."""
    if not isinstance(train_gt, (dict, str, os.PathLike)):
        raise TypeError(f"train_gt must be a dict {{filename: 28 coordinates}} or the path of a "
                        f"gt.csv, got {type(train_gt).__name__}")
    if not isinstance(train_img_dir, (str, os.PathLike)):
        raise TypeError(f"train_img_dir must be a folder path, got {type(train_img_dir).__name__}")
    gt = check_gt_table(train_gt, "train_gt") if isinstance(train_gt, dict) else read_gt(train_gt)
    img_dir = Path(train_img_dir)
    if not img_dir.is_dir():
        raise NotADirectoryError(f"training image folder not found: {img_dir}")
    return gt, img_dir


def train_model(train_gt, train_img_dir, cfg: TrainConfig, *, model_path: str | Path | None = None,
                progress: Callable[..., object] = TextProgress, log: Callable[[str], None] = print,
                track: FaceSet | None = None, exclude: Sequence[str] = ()) -> TrainingRun:
    """Train ``cfg`` on the labelled faces of a folder; save the model to ``model_path`` if given.

    With validation faces, the trained model's confidence is calibrated on them at the end
    (``confidence.calibrate``) and stored with it (``model.metadata["calibration"]``).
    ``train_gt`` is ``{filename: 28 coordinates}`` or the path of a gt.csv. Rows for files
    missing from the folder are dropped with a warning; a malformed table raises
    ``GtFormatError``, an unreadable listed image ``ImageReadError``. ``exclude``: file names
    to leave out (faces whose labels look wrong, see notebook 01's label audit); the model
    file records them. ``track``: see ``fit`` (benchmarks only).
    """
    cfg.validate()                                                # before any image is decoded
    gt, img_dir = _check_inputs(train_gt, train_img_dir)
    path = Path(model_path) if model_path is not None else None
    if path is not None:
        check_writable(path, "model file")                      # before any training is spent on it
    missing = sorted(name for name in gt if not (img_dir / name).is_file())
    if missing:
        warnings.warn(f"{len(missing)} files listed in the keypoint table are not in {img_dir} "
                      f"and are left out: {', '.join(missing[:5])}", stacklevel=_caller_stacklevel())
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
    calibration = None
    if len(val_set) >= 2:                 # the confidence of detect_details, fitted on unseen faces
        calibration = calibrate(fold_batch_norm(model), val_set, cfg.seed).to_dict()   # as detect runs it
        model.metadata = {**getattr(model, "metadata", {}), "calibration": calibration}
        log(f"confidence calibrated on {calibration['faces']} views of the validation faces")
    if path is not None:
        save_or_rescue(model, path, {"train_config": cfg.to_dict(), "history": history,
                                      "seed": cfg.seed, "train_images": len(train_set),
                                      "val_images": len(val_set), "val_names": list(val_set.filenames),
                                      "excluded": left_out, "calibration": calibration},
                        log)
    return TrainingRun(model, history, train_names, val_names, left_out, path)


def train_detector(train_gt, train_img_dir, fast_train: bool = True, *,
                   config: TrainConfig | None = None, model_path: str | Path | None = None,
                   progress: Callable[..., object] = TextProgress,
                   log: Callable[[str], None] = print, exclude: Sequence[str] = ()) -> KeypointNet:
    """Train a keypoint detector on the course's data and return it (in eval mode).

    The course's interface: ``train_gt`` is ``{filename: 28 coordinates}`` (as the course's
    run.py reads it) or the path of a gt.csv; ``train_img_dir`` the folder of the images.
    With ``fast_train=True`` a short run on one CPU thread checks that training works and
    writes nothing; with ``fast_train=False`` the full recipe runs and the model is saved
    to ``model_path`` (default: ``facepoints_model.pt`` beside the code). ``config``
    replaces the recipe; the rest as in ``train_model``, which returns the history too.
    """
    if not isinstance(fast_train, bool):
        raise TypeError(f"fast_train must be True or False, got {fast_train!r}")
    cfg = config if config is not None else (fast_config() if fast_train else full_config())
    path = None if fast_train else (model_path if model_path is not None else default_model_path())
    return train_model(train_gt, train_img_dir, cfg, model_path=path, progress=progress, log=log,
                       exclude=exclude).model
