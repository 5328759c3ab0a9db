"""Tests of the networks: output shapes, soft-argmax, the plain-data config."""

import json

import pytest
import torch

from facepoints_lib.core.model import (KeypointNet, ModelConfig, build_model, count_parameters,
                                       expected_coordinates, spatial_softmax)
from facepoints_lib.core.schema import NUM_POINTS

from conftest import tiny_model_config


@pytest.mark.parametrize("head", ["heatmap", "regression"])
@pytest.mark.parametrize("image_size", [32, 64])
def test_both_heads_give_n_14_2(head, image_size):
    torch.manual_seed(0)
    model = build_model(tiny_model_config(image_size, head)).eval()
    images = torch.rand(3, 3, image_size, image_size)
    with torch.no_grad():
        out = model(images)
    assert out.shape == (3, NUM_POINTS, 2) and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    if head == "heatmap":       # a soft-argmax is a mean of cell centres: inside the image
        assert float(out.min()) > 0 and float(out.max()) < 1


def test_forward_with_heatmaps_returns_the_maps_behind_the_points():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    heatmap = build_model(tiny_model_config(32)).eval()
    with torch.no_grad():
        points, probs = heatmap(images, with_heatmaps=True)
        torch.testing.assert_close(points, heatmap(images))
    assert probs.shape == (2, NUM_POINTS, 8, 8)                      # stride 4
    torch.testing.assert_close(probs.flatten(2).sum(-1), torch.ones(2, NUM_POINTS))
    torch.testing.assert_close(expected_coordinates(probs), points)
    regression = build_model(tiny_model_config(32, "regression")).eval()
    with torch.no_grad():
        points, probs = regression(images, with_heatmaps=True)
    assert probs is None and points.shape == (2, NUM_POINTS, 2)


def test_default_network_shapes_and_gradients():
    model = build_model(ModelConfig())
    assert 100_000 < count_parameters(model) < 5_000_000
    model.train()
    out = model(torch.rand(2, 3, 96, 96))
    assert out.shape == (2, NUM_POINTS, 2)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_regression_head_starts_at_mean_shape():
    model = build_model(tiny_model_config(32, "regression")).eval()
    shape = torch.rand(NUM_POINTS, 2, generator=torch.Generator().manual_seed(0))
    model.set_statistics(torch.full((3,), 0.4), torch.full((3,), 0.2), shape)
    with torch.no_grad():
        out = model(torch.rand(4, 3, 32, 32))
    torch.testing.assert_close(out, shape.expand(4, -1, -1))


def test_set_statistics_normalises_input():
    torch.manual_seed(0)
    model = build_model(tiny_model_config(32)).eval()
    images = torch.rand(2, 3, 32, 32)
    model.set_statistics(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.5, 0.5]),
                         torch.full((NUM_POINTS, 2), 0.5))
    with torch.no_grad():
        shifted = model(images + torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1))
        model.set_statistics(torch.zeros(3), torch.full((3,), 0.5), torch.full((NUM_POINTS, 2), 0.5))
        plain = model(images)
    torch.testing.assert_close(shifted, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("h, w", [(8, 8), (6, 10)])
def test_soft_argmax_of_one_hot_is_the_pixel_centre(h, w):
    n, k = 2, 3
    logits = torch.full((n, k, h, w), -1e4)
    spots = [[(0, 0), (h - 1, w - 1), (2, 3)], [(1, 5 % w), (h // 2, 0), (h - 1, 1)]]
    for i in range(n):
        for c, (row, col) in enumerate(spots[i]):
            logits[i, c, row, col] = 0.0
    out = expected_coordinates(spatial_softmax(logits))
    assert out.shape == (n, k, 2)
    for i in range(n):
        for c, (row, col) in enumerate(spots[i]):
            torch.testing.assert_close(out[i, c], torch.tensor([(col + 0.5) / w, (row + 0.5) / h]))


def test_soft_argmax_uniform_map_gives_centre_and_is_differentiable():
    logits = torch.zeros(1, 1, 5, 7, requires_grad=True)
    out = expected_coordinates(spatial_softmax(logits))
    torch.testing.assert_close(out, torch.tensor([[[0.5, 0.5]]]))
    out[..., 0].sum().backward()
    assert float(logits.grad.abs().sum()) > 0


def test_model_files_from_before_the_stacks_were_retired_still_load():
    """Files written with ``stacks: 1`` (the shipped model among them) load as the same
    network; a file with refining stacks is refused with a message that says why."""
    data = ModelConfig().to_dict()
    assert ModelConfig.from_dict({**data, "stacks": 1}) == ModelConfig()
    for stacks in (0, 2, "1"):
        with pytest.raises(ValueError, match="stacks"):
            ModelConfig.from_dict({**data, "stacks": stacks})
    with pytest.raises(ValueError, match="head"):
        ModelConfig.from_dict({**data, "head": "offsets"})


def test_config_round_trip():
    cfg = ModelConfig(image_size=64, head="regression", widths=(8, 16, 24, 32), depths=(1, 2, 1, 1))
    data = cfg.to_dict()
    assert data["widths"] == [8, 16, 24, 32] and isinstance(data["depths"], list)
    json.dumps(data)                                              # plain data only
    again = ModelConfig.from_dict(json.loads(json.dumps(data)))
    assert again == cfg and isinstance(again.widths, tuple)
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()
    assert build_model(data).config == cfg


def test_config_refuses_unknown_keys_and_bad_values():
    data = ModelConfig().to_dict()
    with pytest.raises(ValueError, match="unknown model config keys: colour"):
        ModelConfig.from_dict({**data, "colour": "blue"})
    with pytest.raises(ValueError, match="head"):
        ModelConfig.from_dict({**data, "head": "magic"})
    with pytest.raises(ValueError, match="multiple of 32"):
        ModelConfig.from_dict({**data, "image_size": 100})
    with pytest.raises(ValueError, match="one entry per stage"):
        ModelConfig.from_dict({**data, "widths": [8, 16]})
    with pytest.raises(ValueError):
        KeypointNet(ModelConfig(image_size=16))


def test_missing_keys_take_defaults():
    assert ModelConfig.from_dict({"image_size": 64}) == ModelConfig(image_size=64)


def test_folding_batch_norm_keeps_the_function_and_leaves_the_model_alone():
    from facepoints_lib.core.model import fold_batch_norm

    torch.manual_seed(0)
    model = build_model(tiny_model_config(32))
    model.train()
    for _ in range(3):                                   # move the running statistics off 0 / 1
        model(torch.rand(8, 3, 32, 32) * 2)
    for module in model.modules():                       # and the affine parameters off 1 / 0
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(images), model(images), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_feature_map_bound_refuses_huge_inputs_before_building():
    """A config whose one-image forward pass would hold more than MAX_ACTIVATIONS values is
    refused from its numbers alone (a model file is untrusted input)."""
    from facepoints_lib.core.model import MAX_ACTIVATIONS, ModelConfig

    recipe = ModelConfig()
    assert recipe.estimated_activations() < MAX_ACTIVATIONS / 10
    wide_stem = ModelConfig(image_size=256, stem_width=512)
    assert wide_stem.estimated_parameters() < 50_000_000          # the parameter bound lets it through
    with pytest.raises(ValueError, match="feature values"):
        wide_stem.validate()
