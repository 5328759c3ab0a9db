"""Saving and loading trained networks as plain data (``torch.load(weights_only=True)``).

A checkpoint is a dict of tensors and plain Python values only:
``format``, ``model_config`` (``ModelConfig.to_dict()``), ``state_dict``, and
``metadata`` (training recipe, seed, validation figures, library versions). Nothing in it
is a pickled object, so loading never runs code from the file.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .files import write_atomically
from .model import MAX_PARAMETERS, KeypointNet, build_model

CHECKPOINT_FORMAT = "facepoints-checkpoint-1"
MODEL_FILENAME = "facepoints_model.pt"


class CheckpointError(ValueError):
    """A model file is missing, damaged or not a facepoints checkpoint."""


def default_model_path() -> Path:
    """``facepoints_model.pt`` in the repository root (two folders above this module), or
    beside solution.py when this code runs frozen into it."""
    here = Path(__file__).resolve().parent
    return (here.parents[1] if (here / "__init__.py").exists() else here) / MODEL_FILENAME


def library_versions() -> dict:
    """Versions that decide whether a training run can be reproduced bit for bit."""
    # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses.
    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "numpy": str(np.__version__), "machine": platform.machine()}


def save_checkpoint(model: KeypointNet, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``model`` (weights + config) and plain-data ``metadata`` to ``path``."""
    path = Path(path)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_config": model.config.to_dict(),
        "state_dict": state,
        "metadata": {**(metadata or {}), "versions": library_versions()},
    }
    # never a half-written model file, and two saves to one path cannot collide
    return write_atomically(path, lambda tmp: torch.save(payload, tmp))


# Largest unpacked checkpoint loaded: the weights of the largest network a config may ask
# for (model.MAX_PARAMETERS float32 values) plus 64 MB of metadata. The recipe's is 9 MB.
def save_or_rescue(model: KeypointNet, path: Path, metadata: dict, log: Callable[[str], None]) -> None:
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


MAX_CHECKPOINT_BYTES = 4 * MAX_PARAMETERS + 64 * 2**20


def _unpacked_bytes(path: Path) -> int:
    """What a checkpoint's zip archive holds once unpacked (its own size when not a zip)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return path.stat().st_size          # not an archive: torch.load reports it below


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint's plain data safely (``weights_only=True``) and check its shape."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"model file is empty: {path}")
    unpacked = _unpacked_bytes(path)
    if unpacked > MAX_CHECKPOINT_BYTES:      # a compressed archive can unpack to gigabytes
        raise CheckpointError(f"{path} unpacks to {unpacked / 2**20:.0f} MB, more than any model of "
                              f"this project needs ({MAX_CHECKPOINT_BYTES / 2**20:.0f} MB)")
    try:
        # TorchVersion (a str subclass) is allowed: files written before versions were str()'d hold one.
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
        raise CheckpointError(f"cannot load model file {path} (damaged, truncated, or it holds "
                              f"objects other than weights): {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a facepoints checkpoint ({CHECKPOINT_FORMAT})")
    return payload


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> KeypointNet:
    """Rebuild the network stored in ``path``, in eval mode on ``device``."""
    payload = load_checkpoint(path)
    try:
        model = build_model(payload["model_config"])
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored network config: {exc}") from exc
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:   # NaN/inf weights would give NaN keypoints for every image
        raise CheckpointError(f"{path}: non-finite weights in {', '.join(bad[:3])}")
    if not bool((model.pixel_std > 0).all()):   # images are divided by it: NaN or inf points
        raise CheckpointError(f"{path}: pixel_std must be positive, got {model.pixel_std.flatten().tolist()}")
    model.metadata = payload.get("metadata", {})
    return model.to(device).eval()
