"""Tests of checkpoints: plain-data round trip, refusal of damaged or foreign files."""

import pickle

import pytest
import torch

from facepoints_lib.core.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, library_versions,
                                       load_checkpoint, load_model, save_checkpoint)
from facepoints_lib.core.model import build_model
from facepoints_lib.core.schema import NUM_POINTS

from conftest import tiny_model_config


def _trained_looking_model(head: str) -> torch.nn.Module:
    """A tiny net with non-default weights and buffers (as after training)."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config(32, head))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.train()
    model(torch.rand(8, 3, 32, 32))                # move the batch-norm running statistics
    model.set_statistics(torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3]),
                         torch.rand(NUM_POINTS, 2))
    return model.eval()


@pytest.mark.parametrize("head", ["heatmap", "regression"])
def test_round_trip_gives_identical_outputs(tmp_path, head):
    model = _trained_looking_model(head)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    path = save_checkpoint(model, tmp_path / "model.pt", {"seed": 3, "history": [{"val_err": 1.5}]})
    assert path == tmp_path / "model.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]      # no temporary file left
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.config == model.config
    assert loaded.metadata["seed"] == 3 and loaded.metadata["history"] == [{"val_err": 1.5}]
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_checkpoint_is_plain_data(tmp_path):
    path = save_checkpoint(_trained_looking_model("heatmap"), tmp_path / "m.pt")
    payload = load_checkpoint(path)
    assert payload["format"] == CHECKPOINT_FORMAT
    assert payload["model_config"] == tiny_model_config(32).to_dict()
    versions = payload["metadata"]["versions"]
    assert versions == library_versions()
    assert all(type(v) is str for v in versions.values())           # no str subclasses
    # The strictest loader accepts it.
    torch.load(path, weights_only=True)


def test_overwrite_replaces_file(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(_trained_looking_model("regression"), path)
    save_checkpoint(_trained_looking_model("heatmap"), path)
    assert load_model(path).config.head == "heatmap"


def test_missing_empty_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model(tmp_path / "empty.pt")
    (tmp_path / "garbage.pt").write_bytes(b"this is not a model" * 50)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_model(tmp_path / "garbage.pt")
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "folder.pt")


def test_truncated_file(tmp_path):
    path = save_checkpoint(_trained_looking_model("heatmap"), tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="m.pt"):
        load_model(path)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_objects_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "thing": _Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_model(path)
    assert "code ran" not in capsys.readouterr().out
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"format": CHECKPOINT_FORMAT}))
    with pytest.raises(CheckpointError):
        load_model(raw)


def test_foreign_and_mismatched_checkpoints(tmp_path):
    model = _trained_looking_model("heatmap")
    torch.save(model.state_dict(), tmp_path / "bare_state_dict.pt")
    with pytest.raises(CheckpointError, match="not a facepoints checkpoint"):
        load_model(tmp_path / "bare_state_dict.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a facepoints checkpoint"):
        load_model(tmp_path / "list.pt")
    payload = load_checkpoint(save_checkpoint(model, tmp_path / "ok.pt"))
    payload["model_config"]["widths"] = [8, 8, 8, 8]                 # weights no longer fit
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "mismatch.pt")
    payload["model_config"] = {"image_size": 32, "colour": "blue"}
    torch.save(payload, tmp_path / "unknown_key.pt")
    with pytest.raises(CheckpointError, match="colour"):
        load_model(tmp_path / "unknown_key.pt")


def test_old_files_with_torch_version_objects_load(tmp_path):
    """Files whose metadata holds torch.__version__ itself (a TorchVersion) still load."""
    model = _trained_looking_model("heatmap")
    payload = load_checkpoint(save_checkpoint(model, tmp_path / "m.pt"))
    payload["metadata"]["versions"]["torch"] = torch.__version__
    torch.save(payload, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").config == model.config


def test_files_from_before_the_retired_variants(tmp_path):
    """A file written while the config had ``stacks`` (always 1 for the shipped recipe) loads
    and predicts as before; one with refining stacks or the offsets head is refused by name."""
    model = _trained_looking_model("heatmap")
    path = save_checkpoint(model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for key, value, refused in (("stacks", 1, None), ("stacks", 2, "stacks"), ("head", "offsets", "head")):
        old = tmp_path / f"{key}-{value}.pt"
        torch.save({**payload, "model_config": {**payload["model_config"], key: value}}, old)
        if refused is None:
            with torch.no_grad():
                assert torch.equal(load_model(old)(images), model(images))
        else:
            with pytest.raises(CheckpointError, match=refused):
                load_model(old)
