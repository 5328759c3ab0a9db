"""The cascade's second stage: its frame, its jitter, the crop and its exact inverse, the
model file holding both stages, and training both stages."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import quiet_progress, tiny_model_config, tiny_run, tiny_train_config
from facepoints_lib.core.align import invert_transform, similarity_to
from facepoints_lib.core.augment import AugmentConfig, apply_transform, augment_batch, flip_keypoints, sample_affine
from facepoints_lib.core.cascade import (MAX_RESIDUALS, aligned_faces, alignment_residuals, canonical_frame,
                                         compose, jitter_augment, second_stage_recipe)
from facepoints_lib.core.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from facepoints_lib.core.config import CascadeConfig, TrainConfig
from facepoints_lib.core.dataset import FaceSet
from facepoints_lib.core.files import write_atomically
from facepoints_lib.core.fit import fit
from facepoints_lib.core.inference import PADDED, predict_details
from facepoints_lib.core.model import Refiner, build_model
from facepoints_lib.core.schema import NUM_POINTS
from facepoints_lib.core.train import train_model
from facepoints_lib.tools.overrides import apply_overrides

FACE = torch.tensor([[0.22, 0.30], [0.40, 0.28], [0.60, 0.28], [0.78, 0.30], [0.25, 0.42], [0.32, 0.42],
                     [0.40, 0.42], [0.60, 0.42], [0.68, 0.42], [0.75, 0.42], [0.50, 0.58], [0.36, 0.74],
                     [0.50, 0.76], [0.64, 0.74]])


def _similarities(n: int, rotation_deg: float, scale: float, shift: float, seed: int = 0) -> torch.Tensor:
    """(n, 2, 3) random similarities about the grid's origin: normal rotation (degrees),
    log-zoom and shift (share of the side) with these standard deviations."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.randn(n, generator=g, dtype=torch.float64) * math.radians(rotation_deg)
    zoom = torch.exp(torch.randn(n, generator=g, dtype=torch.float64) * scale)
    t = torch.randn((n, 2), generator=g, dtype=torch.float64) * shift * 2          # grid units
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    return torch.stack([torch.stack([cos, -sin, t[:, 0]], -1), torch.stack([sin, cos, t[:, 1]], -1)], 1)


def _faces(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 14, 2) face shapes: ``FACE`` moved by a random similarity and a little noise."""
    moves = _similarities(n, 20.0, 0.1, 0.05, seed)
    moved = apply_transform(moves, FACE.double().expand(n, -1, -1))
    noise = 0.004 * torch.randn(moved.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return (moved + noise).float()


def test_canonical_frame_magnifies_the_mean_face_about_its_centre():
    frame = canonical_frame(FACE, 1.3, 0.46)
    assert torch.allclose(frame - torch.tensor([0.5, 0.46]), 1.3 * (FACE - torch.tensor([0.5, 0.46])))
    assert torch.equal(canonical_frame(FACE, 1.0, 0.46), FACE)


def test_residuals_recover_a_known_jitter_of_the_alignment():
    """Answers that put each face's crop off by a known similarity: the residuals read
    back its spread (rotation, zoom, shift), robustly, even with a few faces missed."""
    truth, frame = _faces(600), canonical_frame(FACE, 1.3, 0.46)
    jitter = _similarities(600, 2.0, 0.03, 0.01, seed=5).float()
    by_truth = similarity_to(truth, frame)
    # answer = truth moved by by_truth^-1 . jitter^-1 . by_truth: aligning it gives jitter . by_truth
    moved = compose(invert_transform(by_truth), compose(invert_transform(jitter), by_truth))
    answers = apply_transform(moved, truth)
    answers[:15] = torch.rand((15, NUM_POINTS, 2), generator=torch.Generator().manual_seed(9))   # missed faces
    found = alignment_residuals(answers, truth, frame)
    assert found["faces"] == 600
    assert found["rotation_deg"] == pytest.approx(2.0, rel=0.12)
    assert found["scale"] == pytest.approx(0.03, rel=0.12)
    assert found["shift"] == pytest.approx(0.01, rel=0.12)
    perfect = alignment_residuals(truth, truth, frame)
    assert max(perfect[key] for key in ("rotation_deg", "scale", "shift")) < 1e-4


def test_residuals_of_an_untrained_first_stage_are_capped():
    truth, frame = _faces(50), canonical_frame(FACE, 1.3, 0.46)
    wild = torch.rand((50, NUM_POINTS, 2), generator=torch.Generator().manual_seed(3))
    found = alignment_residuals(wild, truth, frame)
    assert all(found[key] <= cap for key, cap in MAX_RESIDUALS.items())
    assert found["rotation_deg"] == MAX_RESIDUALS["rotation_deg"]


def test_jitter_draws_have_the_residuals_spread_and_no_turned_or_cut_faces():
    residuals = {"rotation_deg": 2.0, "scale": 0.03, "shift": 0.01, "faces": 250}
    config = jitter_augment(AugmentConfig(), residuals, factor=1.5)
    assert config.full_turn_prob == 0 and config.cut_prob == 0
    assert (config.flip_prob, config.contrast) == (AugmentConfig().flip_prob, AugmentConfig().contrast)
    params = sample_affine(20000, config, torch.Generator().manual_seed(0))
    assert math.degrees(float(params.angle.std())) == pytest.approx(3.0, rel=0.03)
    assert float(params.scale.std()) == pytest.approx(0.045, rel=0.03)
    assert float(params.shift.std() / 2) == pytest.approx(0.015, rel=0.03)       # grid units -> side


def test_second_stage_recipe_takes_the_stage_network_and_epochs():
    cfg = TrainConfig(cascade=CascadeConfig(epochs=7, model=tiny_model_config(64)), lr=0.02)
    cfg.cascade.model.second_look = False
    recipe = second_stage_recipe(cfg, {"rotation_deg": 1.0, "scale": 0.02, "shift": 0.01, "faces": 30})
    assert recipe.epochs == 7 and recipe.model is cfg.cascade.model and recipe.cascade is None
    assert recipe.lr == 0.02 and recipe.augment.full_turn_prob == 0
    recipe.validate()


@pytest.mark.parametrize("setting, value", [("zoom", 0.1), ("zoom", "big"), ("epochs", 0), ("source_scale", 5),
                                            ("jitter", -1.0), ("centre_y", 1.5)])
def test_bad_cascade_settings_are_refused_by_name(setting, value):
    cfg = TrainConfig(cascade=CascadeConfig())
    with pytest.raises(ValueError, match=setting):
        apply_overrides(cfg, [f"cascade.{setting}={value!r}"])


def test_a_second_stage_that_would_look_again_is_refused():
    with pytest.raises(ValueError, match="second_look"):
        TrainConfig(cascade=CascadeConfig(model=tiny_model_config())).validate()    # second_look=True


def test_decode_side_is_what_the_second_stage_cuts_from():
    assert TrainConfig().decode_side() == 96
    assert TrainConfig(cascade=CascadeConfig()).decode_side() == 192
    assert TrainConfig(cascade=CascadeConfig(source_scale=1)).decode_side() == 96


def test_aligned_crop_holds_the_points_where_the_frame_says_and_maps_back_exactly():
    n, side = 6, 64
    truth = _faces(n, seed=2)
    images = torch.randint(0, 256, (n, 3, 128, 128), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    faces = FaceSet(images, truth, torch.full((n, 2), 500.0, dtype=torch.float64), [f"{i}.jpg" for i in range(n)])
    frame = canonical_frame(FACE, 1.3, 0.46)
    crops = aligned_faces(faces, truth, frame, side)
    assert crops.images.shape == (n, 3, side, side) and crops.images.dtype == torch.uint8
    matrices = similarity_to(truth, frame)
    assert torch.allclose(crops.keypoints, apply_transform(matrices, truth), atol=1e-6)
    assert (crops.keypoints - frame).abs().max() < 0.05                 # aligned: near the frame
    back = apply_transform(invert_transform(matrices), crops.keypoints)
    assert (back - truth).abs().max() < 1e-5
    # the crop's pixels are the picture's pixels at the matching place (a point deep inside)
    u = torch.tensor([[[0.5, 0.5]]]).expand(n, 1, 2)
    source = apply_transform(invert_transform(matrices), u)              # where the crop's centre comes from
    for i in range(n):
        x, y = (source[i, 0] * 128 - 0.5).round().long().tolist()
        if 2 <= x < 126 and 2 <= y < 126:
            crop_centre = crops.images[i, :, side // 2 - 1:side // 2 + 1, side // 2 - 1:side // 2 + 1].float().mean()
            near = images[i, :, y - 2:y + 3, x - 2:x + 3].float()
            assert near.min() - 1 <= crop_centre <= near.max() + 1


def test_a_framed_training_face_without_jitter_is_the_detection_crop():
    """Training cuts each aligned face from its decoded picture per batch (``frames``):
    with no jitter, the same pixels and points as the crop detection cuts, one
    resampling each, and a mirror relabels the points in the crop."""
    n, side = 4, 48
    truth = _faces(n, seed=4)
    images = torch.randint(0, 256, (n, 3, 96, 96), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    faces = FaceSet(images, truth, torch.full((n, 2), 96.0, dtype=torch.float64), [f"{i}.jpg" for i in range(n)])
    frame = canonical_frame(FACE, 1.3, 0.46)
    direct = aligned_faces(faces, truth, frame, side)
    frames = similarity_to(truth, frame)
    still = AugmentConfig(flip_prob=0, rotation_deg=0, full_turn_prob=0, scale=0, shift=0, brightness=0,
                          contrast=0, grayscale_prob=0, lowres_prob=0, cut_prob=0)
    shown, points = augment_batch(images, truth, still, side, torch.Generator().manual_seed(0), frames)
    assert torch.allclose(points, direct.keypoints, atol=1e-6)
    assert (shown * 255 - direct.images.float()).abs().max() <= 0.5 + 1e-3     # the uint8 crop's rounding
    mirrored, mirrored_points = augment_batch(images, truth, replace(still, flip_prob=1.0), side,
                                              torch.Generator().manual_seed(0), frames)
    assert torch.equal(mirrored, shown.flip(-1))
    assert torch.allclose(mirrored_points, flip_keypoints(points), atol=1e-6)
    with pytest.raises(ValueError, match="cut"):
        augment_batch(images, truth, replace(still, cut_prob=1.0), side, torch.Generator().manual_seed(0), frames)


def test_the_second_stage_learns_the_statistics_of_its_crops():
    """A network fitted on framed faces holds the mean shape and pixel statistics of the
    crops it is shown, not of the whole pictures."""
    n = 32
    truth = _faces(n, seed=5)
    images = torch.zeros((n, 3, 64, 64), dtype=torch.uint8)
    images[:, :, 16:48, 16:48] = 200                                      # a bright face on black
    frame = canonical_frame(FACE, 1.3, 0.46)
    faces = FaceSet(images, truth, torch.full((n, 2), 64.0, dtype=torch.float64), [f"{i}.jpg" for i in range(n)],
                    frames=similarity_to(truth, frame))
    cfg = tiny_train_config(augment=AugmentConfig(full_turn_prob=0, cut_prob=0))
    cfg.model.second_look = False
    net, _ = fit(faces, None, cfg, tiny_run(), progress=quiet_progress, log=lambda _: None)
    assert torch.allclose(net.mean_shape, apply_transform(faces.frames, truth).mean(0), atol=1e-5)
    assert float(net.pixel_mean.flatten()[0]) > float(images.float().mean() / 255) + 0.05   # the crops are mostly face


def _constant_net(image_size: int, shape: torch.Tensor, second_look: bool = True):
    """A regression network whose answer is exactly ``shape`` for any picture."""
    config = tiny_model_config(image_size, head="regression")
    config.second_look = second_look
    net = build_model(config)
    net.set_statistics(torch.full((3,), 0.5), torch.full((3,), 0.25), shape)
    return net.eval()


def _cascade(first_shape: torch.Tensor, second_shape: torch.Tensor, frame: torch.Tensor, second_look: bool = False):
    model = _constant_net(32, first_shape, second_look=second_look)
    refiner = Refiner(_constant_net(32, second_shape, second_look=False), source_scale=2)
    refiner.canonical.copy_(frame)
    model.attach_refiner(refiner)
    return model.eval()


def test_the_second_stage_answer_is_mapped_back_exactly():
    """A first stage that always answers S and a second stage that always answers T (in
    its aligned crop): the cascade answers T mapped back through the similarity that
    aligned S onto the frame."""
    frame = canonical_frame(FACE, 1.3, 0.46)
    first = FACE + torch.tensor([0.03, -0.02])
    second = frame + 0.01 * torch.randn((NUM_POINTS, 2), generator=torch.Generator().manual_seed(1))
    model = _cascade(first, second, frame)
    images = torch.randint(0, 256, (3, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    found = predict_details(model, images, flip_tta=False)
    aligning = similarity_to(first[None], frame)
    expected = apply_transform(invert_transform(aligning), second[None].double())
    assert np.abs(found.points - expected.numpy()).max() < 1e-5
    assert model.decode_side() == 64


def test_faces_the_first_stage_doubts_are_refined_too():
    """A face with a point at the picture's border gets the first stage's second try (a
    look inside a margin); the second stage then refines that answer as any other."""
    frame = canonical_frame(FACE, 1.3, 0.46)
    at_border = FACE.clone()
    at_border[:, 0] = at_border[:, 0] * 0.5            # points down to u = 0.11 ...
    at_border[0] = torch.tensor([0.01, 0.3])           # ... and one at the border
    second = frame + 0.02
    model = _cascade(at_border, second, frame, second_look=True)
    model.refiner.flip_tta = False                     # its answer is exactly `second` (not mirror-averaged)
    images = torch.full((2, 3, 64, 64), 128, dtype=torch.uint8)
    found = predict_details(model, images)
    alone = _constant_net(32, at_border, second_look=True)
    alone.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("refiner.")})
    first = predict_details(alone.eval(), images)
    assert (found.look == PADDED).all() and (first.look == PADDED).all()
    aligning = similarity_to(torch.from_numpy(first.points).float(), frame)
    expected = apply_transform(invert_transform(aligning), second.expand(2, -1, -1).double())
    assert np.abs(found.points - expected.numpy()).max() < 1e-5
    assert np.array_equal(found.spread, first.spread) and np.array_equal(found.blur, first.blur)


def test_a_model_file_holds_both_stages(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_model_config(32))
    torch.nn.init.normal_(model.heatmaps.weight, std=0.5)
    net = build_model(tiny_model_config(32))
    net.config.second_look = False
    torch.nn.init.normal_(net.heatmaps.weight, std=0.5)
    refiner = Refiner(net, source_scale=2)
    refiner.canonical.copy_(canonical_frame(FACE, 1.3, 0.46))
    model.attach_refiner(refiner)
    path = save_checkpoint(model.eval(), tmp_path / "cascade.pt", {"note": "two stages"})
    loaded = load_model(path)
    assert loaded.refiner is not None and loaded.refiner.source_scale == 2
    assert loaded.decode_side() == 64
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    images = torch.randint(0, 256, (4, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert np.array_equal(predict_details(model, images).points, predict_details(loaded, images).points)
    # a file whose second stage lost its description, or its weights, is refused
    payload = load_checkpoint(path)
    for broken in ({**payload, "refiner": None},
                   {**payload, "state_dict": {k: v for k, v in payload["state_dict"].items()
                                              if not k.startswith("refiner.net.backbone")}},
                   {**payload, "refiner": {**payload["refiner"], "source_scale": 9}}):
        target = tmp_path / "broken.pt"
        write_atomically(target, lambda name, data=broken: torch.save(data, name))
        with pytest.raises(CheckpointError):
            load_model(target)


def _tiny_cascade(**second_stage) -> TrainConfig:
    """The tiny recipe with a tiny second stage of one epoch (``second_stage``: its other settings)."""
    second = tiny_model_config(32)
    second.second_look = False
    return tiny_train_config(cascade=CascadeConfig(epochs=1, model=second, **second_stage))


def test_training_runs_both_stages_and_saves_them(synth_train, tmp_path):
    cfg = _tiny_cascade(source_scale=2)
    logs: list[str] = []
    run = train_model(synth_train / "gt.csv", synth_train / "images", cfg, tiny_run(max_images=120, val_size=24),
                      model_path=tmp_path / "m.pt", progress=quiet_progress, log=logs.append)
    assert run.model.refiner is not None
    record = run.model.metadata["cascade"]
    assert record["residuals"]["faces"] == 24 and len(record["history"]) == 1
    assert math.isfinite(record["val_err"]) and math.isfinite(record["val_err_first_stage"])
    assert any(line.startswith("cascade: val err") for line in logs)
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.refiner is not None and loaded.decode_side() == 64
    stored = load_checkpoint(tmp_path / "m.pt")
    assert stored["metadata"]["train_config"]["cascade"]["epochs"] == 1
    assert loaded.refiner.flip_tta is False                       # the recipe's: the second stage unmirrored


def test_the_recipe_decides_whether_detection_mirrors_the_second_stage(synth_train, tmp_path):
    """``cascade.flip_tta`` reaches the model file, and a mirrored second stage costs one
    more pass of its network than an unmirrored one."""
    cfg = _tiny_cascade(flip_tta=True)
    train_model(synth_train / "gt.csv", synth_train / "images", cfg, tiny_run(max_images=60, val_size=0),
                model_path=tmp_path / "m.pt", progress=quiet_progress, log=lambda _: None)
    mirrored = load_model(tmp_path / "m.pt")
    assert mirrored.refiner.flip_tta is True
    calls = []
    hook = mirrored.refiner.net.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    predict_details(mirrored, images, second_try=False, second_look=False)
    mirrored.refiner.flip_tta = False
    predict_details(mirrored, images, second_try=False, second_look=False)
    hook.remove()
    assert calls == [6, 3]                     # the crops and their mirror images in one batch, then the crops
    with pytest.raises(ValueError, match="flip_tta"):
        CascadeConfig(flip_tta="yes").validate()


def test_a_second_stage_worse_than_the_first_is_left_off(synth_train, tmp_path, monkeypatch):
    """A budget too short for the second stage (a cascade that scores the validation faces
    worse than its first stage alone) leaves the model its first stage, and says so."""
    import facepoints_lib.core.train as train_module

    monkeypatch.setattr(train_module, "evaluate", lambda model, faces, flip_tta=True: {"err": 1e9})
    cfg = _tiny_cascade(source_scale=2)
    logs: list[str] = []
    run = train_model(synth_train / "gt.csv", synth_train / "images", cfg, tiny_run(max_images=80, val_size=20),
                      model_path=tmp_path / "m.pt", progress=quiet_progress, log=logs.append)
    assert run.model.refiner is None and run.model.metadata["cascade"]["kept"] is False
    assert any(line.startswith("warning: the second stage made the validation faces worse") for line in logs)
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.refiner is None and loaded.decode_side() == loaded.config.image_size
