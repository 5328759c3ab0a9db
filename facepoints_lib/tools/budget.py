"""Training to a time budget (``facepoints train --minutes M``): a schedule that ends on time.

``TimeBudget`` is a schedule for ``fit`` (the interface of ``fit.StepSchedule``) that reads
the clock instead of counting steps: the learning rate warms up over the first part of
the time left and decays along a cosine to zero at its end, and training stops when that
time is spent, however fast or slow the steps run (a machine that gets busier trains
fewer steps, each with the learning rate the time calls for). The clock starts when the
budget is made, so decoding the faces counts; the time that the last validation, the
confidence calibration and saving will take is set aside first (``reserve_seconds``,
estimated by ``estimate_reserve_seconds``).

A cascade's two fits share the budget by their epochs, each weighted by its network's
measured seconds a step (``estimate_step_seconds``), so each stage trains the recipe's
share. Once the step rate has been measured on the run's own first steps, the budget
says how many epochs that rate gives and what holdout err the recipe's measured
err-vs-epochs curve (``RECIPE_CURVE``, from ``bench/results``) predicts for them.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from ..core.align import similarity_to
from ..core.cascade import DEFAULT_RESIDUALS, second_stage_recipe
from ..core.config import RunConfig, TrainConfig, full_config
from ..core.dataset import FaceSet
from ..core.fit import measure_step_seconds
from ..core.inference import predict_details, resolve_device, restores_torch_threads, use_bf16
from ..core.model import build_model, fold_batch_norm, memory_format_for
from ..core.progress import format_seconds

# Holdout err of the shipped recipe (``curve_recipe``: both stages) trained for a number
# of first-stage epochs, the second stage for the recipe's share of them (``config.with_epochs``;
# seed 0, 4250 training faces, the 500-face holdout of split seed 0, 2 threads), as
# measured by ``facepoints bench --set epochs=N --set cascade.epochs=M`` in
# bench/results/<file>.json. A test checks these numbers against those files.
RECIPE_CURVE: tuple = ((12, 5.36, "cascade-curve-e12-seed0"), (24, 5.03, "cascade-curve-e24-seed0"),
                        (90, 3.24, "cascade-seed0"))


MAX_MINUTES = 30 * 24 * 60       # a time budget beyond 30 days is a typo (1e308 overflowed the epoch count)
WARMUP_SHARE = 2 / 90            # the recipe's 2 warm-up epochs of 90, as a share of the time
RATE_STEPS = 10                  # steps timed before the budget says what the rate gives
CALIBRATION_VIEWS = 3            # calibrate() detects the validation faces upright, turned and cut
SAVE_SECONDS = 5.0               # writing the model file, with margin


def curve_recipe() -> TrainConfig:
    """The recipe ``RECIPE_CURVE`` was measured for: the shipped one."""
    return full_config()


def _recipe_key(config: dict) -> dict:
    """A recipe's settings as plain data without those a point of the curve is free to set
    (the seed, and the epochs of each stage)."""
    key = {k: v for k, v in config.items() if k not in ("epochs", "seed")}
    if key.get("cascade") is not None:
        key["cascade"] = {k: v for k, v in key["cascade"].items() if k != "epochs"}
    return key


def predicted_err_note(epochs: float, cfg: TrainConfig) -> str:
    """What the recipe's measured err-vs-epochs curve says of ``epochs`` of the first stage
    (log-linear in between); the curve applies to the shipped recipe only, with its
    second stage taking its share of the time."""
    recipe = curve_recipe()
    same_split = cfg.cascade is None or cfg.cascade.epochs * recipe.epochs == recipe.cascade.epochs * cfg.epochs
    if _recipe_key(cfg.to_dict()) != _recipe_key(recipe.to_dict()) or not same_split or len(RECIPE_CURVE) < 3:
        return "no measured err-vs-epochs curve for this recipe, so no prediction"
    points = [(e, err) for e, err, _ in RECIPE_CURVE]
    if epochs < points[0][0]:
        return f"the recipe's measured holdout err is {points[0][1]:.2f} at {points[0][0]} epochs; fewer epochs do worse"
    if epochs >= points[-1][0]:
        return f"the recipe's measured holdout err is {points[-1][1]:.2f} at {points[-1][0]} epochs (the most measured)"
    for (e0, err0), (e1, err1) in zip(points, points[1:]):
        if e0 <= epochs <= e1:
            t = (math.log(epochs) - math.log(e0)) / (math.log(e1) - math.log(e0))
            return (f"the recipe's measured err-vs-epochs curve predicts holdout err about "
                    f"{err0 + t * (err1 - err0):.2f} (measured: {err0:.2f} at {e0}, {err1:.2f} at {e1} epochs)")
    raise AssertionError("unreachable")


@restores_torch_threads
def estimate_step_seconds(cfg: TrainConfig, run: RunConfig, timed: int = 3) -> tuple[float, ...]:
    """Seconds a training step of each of the recipe's networks takes on the run's
    threads, augmentation included, timed on fresh networks and noise pictures at the
    side each stage decodes (the second stage cuts its crops from larger ones): what
    ``TimeBudget.stage_shares`` weighs the stages' epochs by."""
    if run.threads:
        torch.set_num_threads(run.threads)
    device = resolve_device(run.device)
    bf16 = use_bf16(run.bf16, device)
    batch = cfg.batch_size
    generator = torch.Generator().manual_seed(0)
    stages = [(cfg, cfg.model.image_size, False)]
    if cfg.cascade is not None:
        stages.append((second_stage_recipe(cfg, DEFAULT_RESIDUALS), cfg.decode_side(), True))
    seconds = []
    for stage, side, framed in stages:
        images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=generator)
        points = 0.3 + 0.4 * torch.rand(batch, 14, 2, generator=generator)
        frames = similarity_to(points, points[0]) if framed else None
        faces = FaceSet(images, points, torch.full((batch, 2), float(side), dtype=torch.float64),
                        [f"noise{i}" for i in range(batch)], frames)
        probe = build_model(stage.model).to(device)
        seconds.append(measure_step_seconds(probe, faces, stage, batch, device, memory_format_for(probe), bf16,
                                            warmup=1, timed=timed))
    return tuple(seconds)


@restores_torch_threads
def estimate_reserve_seconds(cfg: TrainConfig, run: RunConfig, val_faces: int, sample: int = 16) -> float:
    """Seconds the end of a run takes after its last step: one validation of ``val_faces``
    faces, the confidence calibration on them (``CALIBRATION_VIEWS`` detections each) and
    saving, from a timed detection of ``sample`` noise pictures by a fresh network on the
    run's threads (the time a network takes does not depend on its weights)."""
    if val_faces == 0:
        return SAVE_SECONDS
    if run.threads:
        torch.set_num_threads(run.threads)
    model = fold_batch_norm(build_model(cfg.model).eval())
    size = cfg.model.image_size
    images = torch.randint(0, 256, (sample, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    predict_details(model, images)                                 # warm-up: oneDNN picks its kernels
    started = time.perf_counter()
    predict_details(model, images)
    per_face = (time.perf_counter() - started) / sample
    stages = 1 if cfg.cascade is None else 2      # a second stage about doubles detection's work
    return stages * per_face * val_faces * (1 + CALIBRATION_VIEWS) + SAVE_SECONDS


def check_minutes(minutes: object) -> None:
    """Refuse a budget that is not a number above 0 to ``MAX_MINUTES``, before any work."""
    if not isinstance(minutes, (int, float)) or isinstance(minutes, bool) or not math.isfinite(minutes) \
            or not 0 < minutes <= MAX_MINUTES:
        raise ValueError(f"minutes must be a number above 0 to {MAX_MINUTES}, got {minutes!r}")


class TimeBudget:
    """``minutes`` of wall-clock time from now for a whole training run; pass its
    ``schedule`` to ``train_model``/``train_detector``/``fit`` (``schedule=budget.schedule``).

    ``reserve_seconds`` is set aside for what follows the last step. The budget counts
    from ``started`` (default: now) on ``clock`` (default ``time.monotonic``; injectable
    for tests).
    """

    def __init__(self, minutes: float, reserve_seconds: float = 0.0, *, started: float | None = None,
                 log: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
                 shares: tuple[float, ...] = (1.0,)):
        check_minutes(minutes)
        if not shares or any(not (isinstance(s, (int, float)) and s > 0) for s in shares):
            raise ValueError(f"shares must be positive numbers, got {shares!r}")
        self.minutes, self.log, self.clock = minutes, log, clock
        self.reserve = max(reserve_seconds, 0.0)
        self.started = clock() if started is None else started
        self.stop_at = self.started + 60 * minutes - self.reserve      # the last step ends by then
        self.shares = list(shares)            # the training time left, split between the fits to come
        self.fits = 0                         # schedules handed out so far (one a fit)

    def schedule(self, cfg: TrainConfig, run: RunConfig, steps_per_epoch: int) -> "_TimeSchedule":
        """The schedule ``fit`` asks for (the signature of ``StepSchedule.for_recipe``).
        Each call is the next stage's (a cascade trains two networks, one after the
        other): it gets its share of the time left, and the last one ends at the budget's end."""
        now = self.clock()
        mine = self.shares.pop(0) if self.shares else 1.0
        if self.shares:                       # more fits follow: this one gets its share of the time left
            end = now + max(self.stop_at - now, 0.0) * mine / (mine + sum(self.shares))
        else:
            end = self.stop_at
        self.fits += 1
        return _TimeSchedule(self, cfg, steps_per_epoch, end, first_fit=self.fits == 1)

    @staticmethod
    def stage_shares(cfg: TrainConfig, step_seconds: tuple[float, ...] | None = None) -> tuple[float, ...]:
        """How a recipe's time splits between its fits: by their epochs, each weighted by
        its network's seconds a step (``estimate_step_seconds``; equal when not given),
        so each stage trains its share of the recipe's epochs."""
        if cfg.cascade is None:
            return (1.0,)
        first, second = step_seconds if step_seconds is not None else (1.0, 1.0)
        return (cfg.epochs * first, cfg.cascade.epochs * second)


class _TimeSchedule:
    """A ``TimeBudget`` as ``fit`` sees it: ``finished``, ``lr_factor``, ``expected_steps``,
    ``describe``, ``to_dict`` (see ``fit.StepSchedule``)."""

    def __init__(self, budget: TimeBudget, cfg: TrainConfig, steps_per_epoch: int, stop_at: float | None = None,
                 first_fit: bool = True):
        self.budget, self.cfg, self.steps_per_epoch = budget, cfg, steps_per_epoch
        self.first_fit = first_fit                        # a later fit is a cascade's second stage
        self.stop_at = budget.stop_at if stop_at is None else stop_at     # this fit's last step ends by then
        self.begin = budget.clock()                       # the first step starts about now
        self.rate: float | None = None                    # steps per second, once measured
        self.said_rate = self.said_end = False
        spent = self.begin - budget.started
        if self.begin >= self.stop_at:
            budget.log(f"warning: the time budget of {budget.minutes:g} min is spent before training starts "
                       f"({format_seconds(spent)} went on reading the faces, and "
                       f"{format_seconds(budget.reserve)} are set aside for validating, calibrating and "
                       f"saving); training one step anyway, which overshoots the budget")

    def _fraction(self) -> float:
        """The share of the training time spent so far (0 to 1)."""
        return min((self.budget.clock() - self.begin) / max(self.stop_at - self.begin, 1e-9), 1.0)

    def finished(self, step: int) -> bool:
        if step == 0:
            return False                                   # at least one step, however short the budget
        now = self.budget.clock()
        if step >= RATE_STEPS and self.rate is None:
            self.rate = step / max(now - self.begin, 1e-9)
            self._say_rate()
        if now < self.stop_at:
            return False
        if not self.said_end:
            self.said_end = True
            self.budget.log(f"time budget: {step} step{'s' if step != 1 else ''} "
                            f"({step / self.steps_per_epoch:.1f} epochs) trained in "
                            f"{format_seconds(now - self.begin)}; validating, calibrating and saving follow "
                            f"({format_seconds(self.budget.reserve)} set aside)")
        return True

    def _say_rate(self) -> None:
        left = max(self.stop_at - self.begin, 0.0)
        epochs = self.rate * left / self.steps_per_epoch
        note = predicted_err_note(epochs, self.cfg) if self.first_fit else \
            "the second stage gets the time the first one left (the curve counts the first stage's epochs)"
        self.budget.log(f"time budget {self.budget.minutes:g} min: {1000 / self.rate:.0f} ms per step measured, "
                        f"so about {epochs:.1f} epochs fit in the {format_seconds(left)} left for training "
                        f"(it stops on time if the rate changes); {note}")

    def lr_factor(self, step: int) -> float:
        fraction = self._fraction()
        if fraction < WARMUP_SHARE:
            return max(fraction, 1e-3) / WARMUP_SHARE
        return 0.5 * (1 + math.cos(math.pi * (fraction - WARMUP_SHARE) / (1 - WARMUP_SHARE)))

    def expected_steps(self, step: int) -> int:
        elapsed = self.budget.clock() - self.begin
        if step == 0 or elapsed <= 0:
            return max(step, 1)
        return step + int(step / elapsed * max(self.stop_at - self.budget.clock(), 0.0))

    def describe(self) -> str:
        return f"steps until the {self.budget.minutes:g}-minute time budget is spent"

    def to_dict(self) -> dict:
        return {"schedule": "time", "minutes": self.budget.minutes, "reserve_seconds": self.budget.reserve}
