"""Saving and loading trained networks as plain data (``torch.load(weights_only=True)``).

A checkpoint is a dict of tensors and plain Python values only:
``format``, ``model_config`` (``ModelConfig.to_dict()``), ``state_dict``, and
``metadata`` (training recipe, seed, validation figures, library versions). Nothing in it
is a pickled object, so loading never runs code from the file.
"""

from __future__ import annotations

import io
import os
import platform
import re
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .files import write_atomically
from .model import MAX_PARAMETERS, KeypointNet, Refiner, build_model

CHECKPOINT_FORMAT = "facepoints-checkpoint-1"
_FORMAT_VERSION = re.compile(r"facepoints-checkpoint-(\d+)")
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
    if model.refiner is not None:                   # the cascade's second stage
        payload["refiner"] = model.refiner.to_dict()
    return write_payload(payload, path)


def write_payload(payload: dict, path: str | os.PathLike) -> Path:
    """Write a checkpoint's plain data to ``path``, whole or not at all.

    The archive is built in memory first and then written as plain bytes, so a full disk
    raises an ``OSError`` naming the file (``torch.save`` writing to the file itself fails
    with a ``RuntimeError: ... unexpected pos``), and the write goes through
    ``write_atomically``: never a half-written model file, no collision between two saves.
    """
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getbuffer()

    def write(target: str) -> None:
        with open(target, "wb") as out:
            out.write(data)

    return write_atomically(Path(path), write)


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


# Largest unpacked checkpoint loaded: the weights of the largest network a config may ask
# for (model.MAX_PARAMETERS float32 values) plus 64 MB of metadata. The recipe's is 9 MB.
MAX_CHECKPOINT_BYTES = 4 * MAX_PARAMETERS + 64 * 2**20


def unpacked_bytes(path: Path) -> int | None:
    """What a checkpoint's zip archive holds once unpacked (None: not a zip archive)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def _damaged_member(path: Path) -> str | None:
    """The first member of the archive whose stored checksum (CRC-32) does not match its
    bytes, or None when all match."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        return f"? ({exc})"


def _check_archive(path: Path) -> None:
    """Refuse an archive that would unpack to more than any model needs, or whose stored
    checksums do not match its bytes: one flipped bit in a weight loads without a word
    otherwise and moves points by hundreds of pixels. A file that is not a zip archive is
    left to ``torch.load``, which refuses it."""
    unpacked = unpacked_bytes(path)
    if unpacked is None and path.stat().st_size > MAX_CHECKPOINT_BYTES:
        unpacked = path.stat().st_size       # not an archive (torch.load refuses most such files)
    if unpacked is None:
        return
    if unpacked > MAX_CHECKPOINT_BYTES:      # a compressed archive can unpack to gigabytes
        raise CheckpointError(f"{path} unpacks to {unpacked / 2**20:.0f} MB, more than any model of "
                              f"this project needs ({MAX_CHECKPOINT_BYTES / 2**20:.0f} MB)")
    damaged = _damaged_member(path)
    if damaged is not None:
        raise CheckpointError(f"{path} is damaged: the checksum of its part {damaged!r} does not "
                              f"match its contents (a changed byte, a bad disk or an incomplete copy)")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint's plain data safely (``weights_only=True``) and check its shape."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"model file is empty: {path}")
    _check_archive(path)
    try:
        # TorchVersion (a str subclass) is allowed: files written before versions were str()'d hold one.
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
        raise CheckpointError(f"cannot load model file {path} (damaged, truncated, or it holds "
                              f"objects other than weights): {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else None
        newer = _FORMAT_VERSION.fullmatch(found) if isinstance(found, str) else None
        if newer and int(newer.group(1)) > int(_FORMAT_VERSION.fullmatch(CHECKPOINT_FORMAT).group(1)):
            raise CheckpointError(f"{path} was written by a newer facepoints ({found}); this code reads "
                                  f"{CHECKPOINT_FORMAT}: update facepoints to load it")
        raise CheckpointError(f"{path} is not a facepoints checkpoint ({CHECKPOINT_FORMAT})")
    return payload


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> KeypointNet:
    """Rebuild the network stored in ``path``, in eval mode on ``device``."""
    payload = load_checkpoint(path)
    try:
        model = build_model(payload["model_config"])
        if payload.get("refiner") is not None:
            model.attach_refiner(Refiner.from_dict(payload["refiner"]))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored network config: {exc}") from exc
    _check_numbers(model, path)
    model.metadata = payload.get("metadata", {})
    return model.to(device).eval()


# Ranges a trained network's statistics lie in: pixels are scaled to [0, 1] (so are their
# mean and standard deviation; training keeps the deviation at least MIN_PIXEL_STD, see
# fit._new_model), and the mean shape lies within a few picture sides of the picture.
MIN_PIXEL_STD = 1 / 255
MAX_SHAPE_COORDINATE = 10.0


def _check_numbers(model: KeypointNet, path: Path) -> None:
    """Refuse weights that would give non-finite points: NaN or infinite values, a negative
    batch-norm variance, pixel statistics outside what [0, 1] pixels can have; then run one
    test picture through the network, which catches finite weights large enough to
    overflow."""
    state = model.state_dict()
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:   # NaN/inf weights would give NaN keypoints for every image
        raise CheckpointError(f"{path}: non-finite weights in {', '.join(bad[:3])}")
    negative = [name for name, t in state.items() if name.endswith("running_var") and bool((t < 0).any())]
    if negative:   # batch norm divides by its square root
        raise CheckpointError(f"{path}: negative batch-norm variance in {', '.join(negative[:3])}")
    nets = [("", model)] + ([("refiner's ", model.refiner.net)] if model.refiner is not None else [])
    for who, net in nets:
        std, mean = net.pixel_std.flatten(), net.pixel_mean.flatten()
        if not bool(((std >= MIN_PIXEL_STD) & (std <= 1)).all()):   # images are divided by it
            raise CheckpointError(f"{path}: {who}pixel_std must lie in [{MIN_PIXEL_STD:.4f}, 1] (pixels are "
                                  f"scaled to [0, 1]), got {std.tolist()}")
        if not bool(((mean >= 0) & (mean <= 1)).all()):
            raise CheckpointError(f"{path}: {who}pixel_mean must lie in [0, 1] (pixels are scaled to [0, 1]), "
                                  f"got {mean.tolist()}")
        if not bool((net.mean_shape.abs() <= MAX_SHAPE_COORDINATE).all()):
            raise CheckpointError(f"{path}: {who}mean_shape lies more than {MAX_SHAPE_COORDINATE:g} picture "
                                  f"sides from the picture")
        side = net.config.image_size
        probe = torch.rand((2, 3, side, side), generator=torch.Generator().manual_seed(0))
        probe[1] = 0.5                        # noise, and plain grey: pixels in [0, 1] either way
        with torch.no_grad():
            points = net.eval()(probe)
        if not bool(torch.isfinite(points).all()):
            raise CheckpointError(f"{path}: the {who}network gives non-finite points for a test picture "
                                  f"(weights large enough to overflow): the file is damaged or was altered")
    if model.refiner is not None and not bool((model.refiner.canonical.abs() <= MAX_SHAPE_COORDINATE).all()):
        raise CheckpointError(f"{path}: the refiner's frame lies more than {MAX_SHAPE_COORDINATE:g} picture "
                              f"sides from the picture")
