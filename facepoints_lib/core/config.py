"""The training recipe and how a run executes it, as plain data.

``TrainConfig`` is the recipe: the network, the augmentation, the optimiser and its
schedule, the seed, and the cascade's second stage (``CascadeConfig``); what decides the
model a run gives. ``RunConfig`` is how one run
executes it: threads, device, bfloat16, how many faces it takes and validates on, how
often it validates, a cap on its steps. ``full_config()`` / ``full_run()`` are the
shipped model's (README's model card); ``fast_config()`` / ``fast_run()`` the grader's
``fast_train`` (the same loop, smaller). Both are stored in every model file as
``to_dict()``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import torch

from .augment import AugmentConfig
from .inference import MAX_THREADS
from .model import ModelConfig


def _check_number(owner: object, name: str, low: float, high: float = math.inf, integer: bool = False,
                  optional: bool = False, low_open: bool = False) -> None:
    """Refuse ``owner.name`` unless it is a finite number (an integer where asked) in range."""
    value = getattr(owner, name)
    if optional and value is None:
        return
    kinds = (int,) if integer else (int, float)
    if not isinstance(value, kinds) or isinstance(value, bool) or not math.isfinite(value) \
            or value < low or value > high or (low_open and value == low):
        kind = "an integer" if integer else "a number"
        bound = f"above {low:g}" if low_open else f"from {low:g}"
        raise ValueError(f"{name} must be {kind} {bound}" + (f" to {high:g}" if high < math.inf else "")
                         + f", got {value!r}")


def _check_choice(owner: object, name: str, allowed: tuple) -> None:
    if getattr(owner, name) not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {getattr(owner, name)!r}")


def _second_stage_model() -> ModelConfig:
    return ModelConfig(second_look=False)


@dataclass
class CascadeConfig:
    """The recipe of the cascade's second stage (``cascade``): a network trained only on
    faces aligned onto a tight frame, with the first stage's optimiser settings."""

    epochs: int = 76                 # passes over the aligned training faces
    zoom: float = 1.3                # the frame is the first stage's mean face magnified this much ...
    centre_y: float = 0.46           # ... about (0.5, centre_y) of the picture
    source_scale: int = 2            # crops are cut from pictures decoded at this many times the input side
    jitter: float = 3.0              # the alignment jitter: the first stage's residuals, measured on
                                     # the validation faces (robust: the typical face's), times this;
                                     # 3 beat 1, 2 and 4 (bench/README.md, "A second network")
    flip_tta: bool = False           # detection averages the second stage's answer with its mirrored
                                     # crop's: the mirror's extra pass bought little err for its work
                                     # (bench/README.md, "The shipped cascade")
    model: ModelConfig = field(default_factory=_second_stage_model)

    def to_dict(self) -> dict:
        """Plain-data form for checkpoints and result files."""
        data = asdict(self)
        data["model"] = self.model.to_dict()
        return data

    def validate(self) -> None:
        """Refuse settings of the wrong type or out of range, naming the setting."""
        self.model.validate()
        _check_number(self, "epochs", 1, integer=True)
        _check_number(self, "zoom", 0.5, 3.0)
        _check_number(self, "centre_y", 0.2, 0.8)
        _check_number(self, "source_scale", 1, 4, integer=True)
        _check_number(self, "jitter", 0, 5)
        if not isinstance(self.flip_tta, bool):
            raise ValueError(f"flip_tta must be True or False, got {self.flip_tta!r}")
        if self.model.second_look:
            raise ValueError("the second stage sees aligned faces only: its model.second_look must be False")


@dataclass
class TrainConfig:
    """The recipe: everything that decides the model a run gives; stored in the checkpoint."""

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
    flip_tta: bool = True            # validate averaged with the mirrored image's prediction (as detect does)
    seed: int = 0                    # the faces' split and subset, the weights' start, the augmentation
    cascade: CascadeConfig | None = None   # a second stage on the aligned faces (None: one network)

    def to_dict(self) -> dict:
        """Plain-data form for checkpoints and result files."""
        data = asdict(self)
        data["model"] = self.model.to_dict()
        data["cascade"] = self.cascade.to_dict() if self.cascade is not None else None
        return data

    def decode_side(self) -> int:
        """The side faces are decoded at: the network's input, or the larger pictures the
        second stage cuts its crops from."""
        if self.cascade is None:
            return self.model.image_size
        return max(self.model.image_size, self.cascade.model.image_size * self.cascade.source_scale)

    def validate(self) -> None:
        """Refuse settings of the wrong type or out of range, naming the setting (a
        ``--set batch_size=0`` ended in ZeroDivisionError, ``lr=nan`` in a TypeError)."""
        self.model.validate()
        _check_number(self, "epochs", 1, integer=True)
        _check_number(self, "batch_size", 1, integer=True)
        _check_number(self, "lr", 0, low_open=True)
        _check_number(self, "weight_decay", 0)
        _check_number(self, "warmup_epochs", 0)
        _check_number(self, "heatmap_js", 0)
        _check_number(self, "heatmap_sigma", 0, low_open=True)
        _check_number(self, "ema_decay", 0, 0.999999)
        _check_number(self, "seed", 0, integer=True)
        _check_choice(self, "optimizer", ("sgd", "adamw"))
        if self.heatmap_js and self.model.head != "heatmap":
            raise ValueError("heatmap_js needs the heatmap head")
        if not isinstance(self.flip_tta, bool):
            raise ValueError(f"flip_tta must be True or False, got {self.flip_tta!r}")
        if self.cascade is not None:
            if not isinstance(self.cascade, CascadeConfig):
                raise ValueError(f"cascade must be a CascadeConfig or None, got {self.cascade!r}")
            self.cascade.validate()


@dataclass
class RunConfig:
    """How one run executes a recipe: where and how fast it runs, which faces it takes and
    validates on. Stored in the checkpoint beside the recipe."""

    threads: int | None = None       # torch threads (None: leave torch's default)
    device: str = "auto"             # "auto" (GPU when present), "cpu", "cuda"
    bf16: str = "auto"               # bfloat16 autocast: "auto" (where the CPU computes it natively), "on", "off"
    max_images: int | None = None    # use at most this many faces (a seeded subset)
    val_size: int = 250              # faces held out for validation (a fifth of them when fewer than 5x)
    eval_every: int = 10             # epochs between validations (the last one is always run)
    max_steps: int | None = None     # stop after this many optimiser steps (the schedule is fitted to them)

    def to_dict(self) -> dict:
        """Plain-data form for checkpoints and result files."""
        return asdict(self)

    def validate(self) -> None:
        """Refuse settings of the wrong type or out of range, naming the setting."""
        _check_number(self, "threads", 1, MAX_THREADS, integer=True, optional=True)
        _check_number(self, "max_images", 2, integer=True, optional=True)
        _check_number(self, "val_size", 0, integer=True)
        _check_number(self, "eval_every", 1, integer=True)
        _check_number(self, "max_steps", 1, integer=True, optional=True)
        _check_choice(self, "bf16", ("auto", "on", "off"))
        try:
            if not isinstance(self.device, str):
                raise TypeError
            if self.device != "auto":
                torch.device(self.device)
        except (TypeError, RuntimeError):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda' (or 'cuda:N'), got {self.device!r}") from None


def first_stage_model() -> ModelConfig:
    """The shipped recipe's first network: narrower than ``ModelConfig``'s default (0.15
    against 0.30 GFLOP a forward pass), as it only has to find the face well enough for the
    second stage to align it (bench/README.md, "The full budget, both designs")."""
    return ModelConfig(stem_width=16, widths=(32, 64, 112, 192), decoder_width=48)


def full_config(**overrides) -> TrainConfig:
    """The recipe of the shipped model (see README's model card): a cascade. Its first
    network (``first_stage_model``) trains on faces of which half are turned by any angle,
    its second (``CascadeConfig``) on the faces aligned by their points; ``overrides``
    replace whole settings (``cascade=None``: the first network alone)."""
    values = dict(model=first_stage_model(), augment=AugmentConfig(full_turn_prob=0.5), cascade=CascadeConfig())
    values.update(overrides)
    return TrainConfig(**values)


def with_epochs(cfg: TrainConfig, epochs: int) -> TrainConfig:
    """``cfg`` trained for ``epochs`` of its first network, a second network keeping its
    share of them (76 of every 90 in the shipped recipe): the points of the err-vs-epochs
    curve and the demo's short run."""
    second = None if cfg.cascade is None else replace(
        cfg.cascade, epochs=max(1, round(epochs * cfg.cascade.epochs / cfg.epochs)))
    return replace(cfg, epochs=epochs, cascade=second)


def full_run(**overrides) -> RunConfig:
    """How the shipped model was trained: every face, 250 of them validating."""
    return RunConfig(**overrides)


def fast_config(**overrides) -> TrainConfig:
    """The grader's ``fast_train`` recipe: the full one, each stage 2 epochs of batches of 32."""
    values = dict(epochs=2, batch_size=32, warmup_epochs=0.5, cascade=CascadeConfig(epochs=2))
    values.update(overrides)
    return full_config(**values)


def fast_run(**overrides) -> RunConfig:
    """The grader's ``fast_train`` run: 600 faces (100 validating, after each epoch), one
    CPU thread."""
    values = dict(max_images=600, val_size=100, eval_every=1, threads=1, device="cpu")
    values.update(overrides)
    return RunConfig(**values)
