"""Bad inputs, model files: empty, truncated, text and foreign files, other formats,
architectures and heads, unknown or malformed configs, NaN weights and bad pixel
statistics, pickled code, configs asking for a huge network, archives that unpack to far
more than a model needs; and saving a model file safely (docs/bad-inputs.md, "Model files").

Each bad file raises ``CheckpointError`` naming it, from ``load_model`` and ``detect``,
and runs no code. The network is the session fixture ``hard_model`` (conftest.py).
"""

from __future__ import annotations

import builtins
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from bad_inputs import HARD_MODEL
from facepoints_lib.core.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from facepoints_lib.core.detect import detect
from facepoints_lib.core.model import ModelConfig, build_model


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code a file could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _payload(hard_model: Path) -> dict:
    return torch.load(hard_model, weights_only=True)


def _broken_model_files(hard_model: Path, folder: Path) -> dict[str, Path]:
    payload = _payload(hard_model)
    files = {}

    def put(name, obj):
        torch.save(obj, folder / name)
        files[name] = folder / name

    (folder / "empty.pt").write_bytes(b"")
    files["empty.pt"] = folder / "empty.pt"
    data = hard_model.read_bytes()
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    files["truncated.pt"] = folder / "truncated.pt"
    (folder / "text.pt").write_text("not a model\n")
    files["text.pt"] = folder / "text.pt"
    put("plain_state_dict.pt", payload["state_dict"])                   # another program's format
    put("other_format.pt", {**payload, "format": "facepoints-checkpoint-99"})
    other = build_model(ModelConfig(image_size=32, stem_width=8, widths=(8, 8, 8, 8),
                                    depths=(1, 1, 1, 1), decoder_width=8))
    put("other_architecture.pt", {**payload, "state_dict": other.state_dict()})
    put("other_head.pt", {**payload, "model_config": {**payload["model_config"], "head": "regression"}})
    put("unknown_config_key.pt", {**payload, "model_config": {**payload["model_config"], "colour": 1}})
    put("config_not_a_dict.pt", {**payload, "model_config": [1, 2, 3]})
    put("no_weights.pt", {k: v for k, v in payload.items() if k != "state_dict"})
    nan = {k: v.clone() for k, v in payload["state_dict"].items()}
    nan["heatmaps.weight"].fill_(float("nan"))
    put("nan_weights.pt", {**payload, "state_dict": nan})
    for value in (0.0, -0.5):
        std = {k: v.clone() for k, v in payload["state_dict"].items()}
        std["pixel_std"].fill_(value)
        put(f"pixel_std_{value}.pt", {**payload, "state_dict": std})
    return files


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory, hard_model):
    return _broken_model_files(hard_model, tmp_path_factory.mktemp("broken_models"))


@pytest.mark.parametrize("name", [
    "empty.pt", "truncated.pt", "text.pt", "plain_state_dict.pt", "other_format.pt",
    "other_architecture.pt", "other_head.pt", "unknown_config_key.pt", "config_not_a_dict.pt",
    "no_weights.pt", "nan_weights.pt", "pixel_std_0.0.pt", "pixel_std_-0.5.pt",
])
def test_broken_model_file_raises_checkpoint_error(broken_models, messy_folder, name):
    path = broken_models[name]
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert str(path) in str(info.value)
    folder, _ = messy_folder
    with pytest.raises(CheckpointError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detect(path, folder)


def test_missing_model_file(tmp_path, messy_folder):
    with pytest.raises(CheckpointError, match="model file not found"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="model file not found"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detect(tmp_path, messy_folder[0])                # a folder is not a model file


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_pickle_payload_is_refused_and_runs_no_code(tmp_path, hard_model, container):
    marker = tmp_path / "code-ran.txt"
    evil = tmp_path / "evil.pt"
    obj = {**_payload(hard_model), "metadata": {"note": _RunsCode(marker)}}
    if container == "torch.save":
        torch.save(obj, evil)
    else:
        evil.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(CheckpointError, match="objects other than weights"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError):
        load_model(evil)
    assert not marker.exists()
    # Control: an ordinary (not weights-only) load of the same file runs the payload.
    if container == "torch.save":
        loaded = torch.load(evil, weights_only=False)
    else:
        loaded = pickle.loads(evil.read_bytes())
    loaded["metadata"]["note"].close()
    assert marker.exists()


def test_a_good_model_file_loads(hard_model):
    model = load_model(hard_model)
    assert model.config == HARD_MODEL
    assert model.metadata["versions"]["torch"] == str(torch.__version__)


# --------------------------------------------------------------------------- configs and archives too big

def test_a_model_file_asking_for_a_huge_network_is_refused_before_building(hard_model, tmp_path, monkeypatch):
    import facepoints_lib.core.model as model_module

    payload = load_checkpoint(hard_model)
    huge = {**payload, "model_config": {**payload["model_config"], "widths": [48, 96, 160, 10000]}}
    torch.save(huge, tmp_path / "huge.pt")
    monkeypatch.setattr(model_module.KeypointNet, "__init__",
                        lambda *a, **k: pytest.fail("allocated the network before checking its config"))
    with pytest.raises(CheckpointError, match=r"widths\[3\] must be an integer from 1 to 1024, got 10000"):
        load_model(tmp_path / "huge.pt")


def test_a_model_file_that_unpacks_to_more_than_a_model_needs_is_refused(hard_model, tmp_path, monkeypatch):
    """A zero tensor hidden in the metadata compresses to almost nothing (a 750M-element one
    zipped to 11 MB loaded as 3.1 GB); the archive's unpacked size is checked first."""
    import zipfile

    from facepoints_lib.core import checkpoint

    payload = load_checkpoint(hard_model)
    payload["metadata"]["padding"] = torch.zeros(2_000_000)           # 8 MB unpacked
    torch.save(payload, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, \
            zipfile.ZipFile(tmp_path / "packed.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert (tmp_path / "packed.pt").stat().st_size < 200_000
    monkeypatch.setattr(checkpoint, "MAX_CHECKPOINT_BYTES", 4 * 2**20)  # stands in for the real bound
    monkeypatch.setattr(checkpoint.torch, "load", lambda *a, **k: pytest.fail("loaded before checking"))
    with pytest.raises(CheckpointError, match=r"packed.pt unpacks to 8 MB, more than any model"):
        load_model(tmp_path / "packed.pt")


def test_the_unpacked_size_bound_admits_the_largest_allowed_network():
    from facepoints_lib.core import checkpoint
    from facepoints_lib.core.model import MAX_PARAMETERS

    assert checkpoint.MAX_CHECKPOINT_BYTES >= 4 * MAX_PARAMETERS
    shipped = Path(__file__).resolve().parents[1] / "facepoints_model.pt"
    assert checkpoint.unpacked_bytes(shipped) < 16 * 2**20


# --------------------------------------------------------------------------- saving

def test_concurrent_saves_use_their_own_temporary_files(hard_model, tmp_path, monkeypatch):
    from facepoints_lib.core import checkpoint

    model = load_model(hard_model)
    sources = []
    real_replace = os.replace

    def recording_replace(src, dst):
        sources.append(str(src))
        assert Path(src).parent == tmp_path and Path(dst) == tmp_path / "m.pt"
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", recording_replace)
    save_checkpoint(model, tmp_path / "m.pt")
    save_checkpoint(model, tmp_path / "m.pt")
    assert len(set(sources)) == 2                     # a temporary name of each writer's own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    assert (tmp_path / "m.pt").stat().st_mode & 0o044  # readable by others, like any saved file
    load_model(tmp_path / "m.pt")


def test_a_failed_save_leaves_no_temporary_file(hard_model, tmp_path, monkeypatch):
    from facepoints_lib.core import checkpoint

    class FullDisk:
        def __init__(self, path, mode):
            Path(path).write_bytes(b"partial")

        def __enter__(self):
            raise OSError(28, "No space left on device")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(checkpoint, "open", FullDisk, raising=False)    # the module's own writes
    with pytest.raises(OSError, match=r"could not write .*m\.pt: No space left"):
        save_checkpoint(load_model(hard_model), tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []
