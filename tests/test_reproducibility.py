"""Reproducibility on the CPU: the same seed, data, thread count and torch version give
bit-identical weights, and the checkpoint records what is needed to repeat a run.

(On a GPU, cuDNN algorithm choice and atomic adds make runs differ slightly; README says
what is and is not deterministic.)
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from facepoints_lib.core.checkpoint import load_checkpoint, load_model
from facepoints_lib.core.model import ModelConfig
from facepoints_lib.core.progress import TextProgress
from facepoints_lib.tools.synth import make_synthetic_faces
from facepoints_lib.core.config import full_config, full_run
from facepoints_lib.core.train import train_detector

REPRO_MODEL = dict(image_size=32, stem_width=4, widths=[4, 8, 8, 8], depths=[1, 1, 1, 1],
                   decoder_width=4, hidden=8, dropout=0.0)
REPRO_RECIPE = dict(epochs=1, batch_size=8)
REPRO_RUN = dict(max_steps=5, val_size=10, threads=1, device="cpu", eval_every=1)


def _recipe(seed: int):
    model = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in REPRO_MODEL.items()})
    return full_config(model=model, seed=seed, **REPRO_RECIPE)


def _quiet(**kwargs):
    return TextProgress(disable=True, **kwargs)


@pytest.fixture(scope="module")
def repro_data(tmp_path_factory) -> Path:
    return make_synthetic_faces(tmp_path_factory.mktemp("repro") / "train", 60, seed=5)


def _train(data: Path, path: Path, seed: int) -> Path:
    train_detector(data / "gt.csv", data / "images", fast_train=False, config=_recipe(seed), run=full_run(**REPRO_RUN),
                   model_path=path, progress=_quiet, log=lambda line: None)
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def _assert_bit_identical(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].numpy().tobytes() == b[name].numpy().tobytes(), name


@pytest.fixture(scope="module")
def two_runs(repro_data, tmp_path_factory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("repro_models")
    return (_train(repro_data, folder / "a.pt", seed=3), _train(repro_data, folder / "b.pt", seed=3),
            _train(repro_data, folder / "other_seed.pt", seed=4))


def test_same_seed_gives_bit_identical_weights(two_runs):
    a, b, other = two_runs
    _assert_bit_identical(_weights(a), _weights(b))
    # ... and the comparison can fail: another seed moves the weights.
    different = [n for n, t in _weights(a).items()
                 if t.is_floating_point() and not torch.equal(t, _weights(other)[n])]
    assert len(different) > 5


def test_a_fresh_process_gives_the_same_weights(two_runs, repro_data, tmp_path):
    """Nothing left over in this process (RNG state, caches) decides the result."""
    target = tmp_path / "fresh.pt"
    script = textwrap.dedent(f"""
        import sys
        from facepoints_lib.core.model import ModelConfig
        from facepoints_lib.core.progress import TextProgress
        from facepoints_lib.core.config import full_config, full_run
        from facepoints_lib.core.train import train_detector
        model = ModelConfig(**{{k: tuple(v) if isinstance(v, list) else v
                               for k, v in {json.dumps(REPRO_MODEL)}.items()}})
        cfg = full_config(model=model, seed=3, **{json.dumps(REPRO_RECIPE)})
        run = full_run(**{json.dumps(REPRO_RUN)})
        train_detector(sys.argv[1] + "/gt.csv", sys.argv[1] + "/images", fast_train=False, config=cfg, run=run,
                       model_path=sys.argv[2], progress=lambda **kw: TextProgress(disable=True, **kw),
                       log=lambda line: None)
    """)
    subprocess.run([sys.executable, "-c", script, str(repro_data), str(target)], check=True,
                   timeout=120, capture_output=True)
    _assert_bit_identical(_weights(two_runs[0]), _weights(target))


def test_checkpoint_records_seed_recipe_and_versions(two_runs):
    payload = load_checkpoint(two_runs[0])
    meta = payload["metadata"]
    assert meta["seed"] == 3
    assert meta["train_config"]["seed"] == 3
    assert meta["run_config"]["threads"] == 1 and "threads" not in meta["train_config"]
    assert len(meta["val_names"]) == meta["val_images"] == REPRO_RUN["val_size"]
    assert all(isinstance(n, str) and n.endswith(".jpg") for n in meta["val_names"])
    assert meta["train_config"]["model"] == payload["model_config"] == REPRO_MODEL | {"head": "heatmap", "second_look": True}
    assert meta["versions"] == {"python": platform.python_version(), "torch": str(torch.__version__),
                                "numpy": str(np.__version__), "machine": platform.machine()}
    assert all(type(v) is str for v in meta["versions"].values())   # plain data, loads weights-only
    assert meta["history"] and meta["history"][-1]["step"] == 5
    assert meta["train_images"] + meta["val_images"] == 60 and meta["val_images"] == 10


def test_saved_weights_equal_the_returned_model(repro_data, tmp_path):
    model = train_detector(repro_data / "gt.csv", repro_data / "images", fast_train=False,
                           config=_recipe(3), run=full_run(**REPRO_RUN), model_path=tmp_path / "m.pt", progress=_quiet,
                           log=lambda line: None)
    loaded = load_model(tmp_path / "m.pt")
    returned = {k: v.contiguous() for k, v in model.state_dict().items()}
    _assert_bit_identical(returned, dict(loaded.state_dict()))
    images = torch.randint(0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(0)).float() / 255
    with torch.no_grad():   # memory formats differ (channels_last), so allow rounding
        torch.testing.assert_close(model.eval()(images), loaded(images))
