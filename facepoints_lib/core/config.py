"""The training recipe as plain data: ``TrainConfig``, the two presets and ``key=value`` overrides.

``full_config()`` is the recipe of the shipped model (README's model card); ``fast_config()``
the grader's ``fast_train`` (the same loop, smaller). ``apply_overrides`` sets dotted
``key=value`` strings (``model.head=regression``, ``augment.max_rotation=20``) on a config,
for the command line, the benchmarks and notebook 03. A config is stored in every model
file and result file as ``to_dict()``.
"""

from __future__ import annotations

import ast
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Sequence

import torch

from .augment import AugmentConfig
from .inference import MAX_THREADS
from .model import ModelConfig

MAX_MINUTES = 30 * 24 * 60      # a time budget beyond 30 days is a typo (1e308 overflowed the epoch count)


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
    heatmap_js: float = 0.0          # weight of the heatmap-shape loss (DSNT's Jensen-Shannon term)
    heatmap_sigma: float = 1.0       # its Gaussian target's spread, in heatmap cells
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
        number("minutes", 0, MAX_MINUTES, optional=True, low_open=True)
        for name, allowed in (("optimizer", ("sgd", "adamw")), ("bf16", ("auto", "on", "off"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, "
                                 f"got {getattr(self, name)!r}")
        if self.heatmap_js and self.model.head != "heatmap":
            raise ValueError("heatmap_js needs the heatmap head")
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
