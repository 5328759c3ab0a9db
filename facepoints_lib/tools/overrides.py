"""``key=value`` overrides of a recipe and a run, as the command line's ``--set`` gives them.

``apply_overrides(cfg, ["model.head=regression", "augment.max_rotation=20", "threads=1"], run)``
sets each value, a Python literal, on the recipe (dotted for its ``model.``,
``augment.`` and ``cascade.`` sections; a ``cascade.`` setting adds the second stage to a
recipe without one, ``cascade=None`` removes it) or, for a setting of ``RunConfig``, on the run. Unknown keys are
refused with the known ones named; the results are validated. The benchmarks and
notebook 03 use the same strings.
"""

from __future__ import annotations

import ast
from dataclasses import fields, is_dataclass
from typing import Sequence

from ..core.config import CascadeConfig, RunConfig, TrainConfig


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


def apply_overrides(cfg: TrainConfig, overrides: Sequence[str], run: RunConfig | None = None) -> TrainConfig:
    """Set ``key=value`` overrides on ``cfg`` (and on ``run`` for its settings) in place;
    returns ``cfg``. A run setting without a ``run`` to set it on is refused."""
    run_keys = {f.name for f in fields(RunConfig)}
    for text in overrides:
        path, value = parse_override(text)
        if len(path) == 1 and path[0] in run_keys:
            if run is None:
                raise ValueError(f"{path[0]!r} is a setting of the run, not of the recipe, in {text!r}")
            target = run
        else:
            target = cfg
            for part in path[:-1]:
                if target is cfg and part == "cascade" and cfg.cascade is None:
                    cfg.cascade = CascadeConfig()          # a second-stage setting turns the cascade on
                target = getattr(target, part, None)
                if not is_dataclass(target):
                    raise ValueError(f"unknown config section in {text!r}")
        names = {f.name for f in fields(target)}
        if path[-1] not in names:
            known = names | (run_keys if target is cfg else set())
            raise ValueError(f"unknown config key in {text!r}; known: {', '.join(sorted(known))}")
        setattr(target, path[-1], tuple(value) if isinstance(value, list) else value)
    cfg.validate()
    if run is not None:
        run.validate()
    return cfg
