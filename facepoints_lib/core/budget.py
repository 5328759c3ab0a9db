"""Training to a time budget (``TrainConfig.minutes``): how many epochs fit, and what the
recipe's measured curve says of that many.

``fit`` times a few steps (``fit.measure_step_seconds``) and one validation, then
``epochs_for_budget`` gives the most epochs that fit; ``predicted_err_note`` tells the
user what holdout err the recipe reached at that many epochs in the benchmarks.
"""

from __future__ import annotations

import math
import time

from .config import TrainConfig, full_config
from .dataset import FaceSet
from .inference import predict
from .model import KeypointNet


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
# checks these numbers against those files. Empty: the recipe with cut faces has no such
# run yet (the one point before it, 3.41 at 90 epochs in turn-seed0.json, is another recipe).
RECIPE_CURVE: tuple = ()
_CURVE_FREE_KEYS = {"epochs", "minutes", "seed", "threads", "device", "bf16", "max_steps",
                    "eval_every", "val_size", "max_images"}


def predicted_err_note(epochs: int, cfg: TrainConfig) -> str:
    """What the recipe's measured err-vs-epochs curve says of ``epochs`` (log-linear in between)."""
    mine = {k: v for k, v in cfg.to_dict().items() if k not in _CURVE_FREE_KEYS}
    recipe = {k: v for k, v in full_config().to_dict().items() if k not in _CURVE_FREE_KEYS}
    if mine != recipe or not RECIPE_CURVE:
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
