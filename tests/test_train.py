"""Tests of training: recipe pieces, train_detector's contract, and one real training run."""

import json
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from facepoints_lib.core.checkpoint import load_checkpoint, load_model
from facepoints_lib.core.dataset import normalized_to_pixels, pixels_to_normalized
from facepoints_lib.core.detect import detect
from facepoints_lib.core.gt_csv import read_gt, read_img_shapes
from facepoints_lib.core.metrics import course_err
from facepoints_lib.core.checkpoint import default_model_path
from facepoints_lib.core.config import fast_config, fast_run, full_config, full_run
from facepoints_lib.core.dataset import split_names
from facepoints_lib.core.inference import predict, resolve_device, use_bf16
from facepoints_lib.core.losses import gaussian_log_targets, heatmap_js_loss, keypoint_loss
from facepoints_lib.core.model import expected_coordinates
from facepoints_lib.core.model import ModelConfig
from facepoints_lib.core.fit import StepSchedule, fit
from facepoints_lib.core.train import train_detector, train_model
from facepoints_lib.tools.rotation_bench import QUARTERS, turn_quarter

from sandbox_harness import validations
from conftest import (REPO_ROOT, as_points, quiet_progress, tiny_model_config, tiny_run, tiny_train_config,
                      without_retired_settings)


def _snapshot(folder):
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.rglob("*"))


# ---- recipe pieces ----

def test_fast_config_is_the_graders_short_run():
    cfg, run = fast_config(), fast_run()
    assert (cfg.epochs, cfg.batch_size, cfg.cascade.epochs) == (2, 32, 2)          # both stages small
    assert {k: v for k, v in cfg.to_dict().items() if k not in ("epochs", "batch_size", "warmup_epochs", "cascade")} \
        == {k: v for k, v in full_config().to_dict().items() if k not in ("epochs", "batch_size", "warmup_epochs",
                                                                          "cascade")}  # otherwise the full recipe
    assert (run.max_images, run.val_size, run.threads, run.device, run.eval_every) == (600, 100, 1, "cpu", 1)
    assert fast_config(epochs=5, seed=3).epochs == 5 and fast_config(seed=3).seed == 3
    full, full_run_ = full_config(epochs=7), full_run()
    assert full.epochs == 7 and full_run_.threads is None and full_run_.max_images is None
    with pytest.raises(TypeError):
        full_config(no_such_setting=1)
    with pytest.raises(TypeError):
        full_config(threads=1)                  # a setting of the run, not of the recipe


def test_train_config_to_dict_is_plain_data():
    data = tiny_train_config().to_dict()
    assert json.loads(json.dumps(data)) == data
    assert json.loads(json.dumps(tiny_run().to_dict())) == tiny_run().to_dict()
    assert data["model"] == tiny_model_config().to_dict()
    assert data["augment"]["flip_prob"] == 0.5


def test_keypoint_loss_is_l1_in_percent_of_the_side():
    target = torch.zeros(2, 14, 2)
    assert keypoint_loss(target + 0.01, target).item() == pytest.approx(1.0)     # 1 % everywhere
    assert keypoint_loss(target - 0.03, target).item() == pytest.approx(3.0)
    assert keypoint_loss(target, target).item() == 0.0
    half = target.clone()
    half[0] += 0.02                                        # one face off by 2 %, the other exact
    assert keypoint_loss(half, target).item() == pytest.approx(1.0)
    assert keypoint_loss((target + 0.01).bfloat16(), target).dtype == torch.float32


def test_gaussian_targets_peak_at_the_keypoint_and_sum_to_one():
    points = torch.tensor([[[0.5, 0.5], [0.125, 0.875], [1.7, -0.4]]])  # the last lies outside
    maps = gaussian_log_targets(points, 24, 24, sigma=1.0).exp()
    assert maps.shape == (1, 3, 24, 24)
    assert torch.allclose(maps.flatten(2).sum(-1), torch.ones(1, 3))
    peak = maps[0, 1].flatten().argmax().item()
    assert divmod(peak, 24) == (20, 2)                          # row v = 0.875, column u = 0.125
    centred = expected_coordinates(maps[:, :2])
    assert torch.allclose(centred, points[:, :2], atol=0.01)    # inside: the mean is the point
    assert torch.isfinite(maps).all()


def test_heatmap_js_loss_is_zero_on_target_and_bounded_by_log2():
    points = torch.tensor([[[0.3, 0.6], [0.7, 0.2]]])
    target = gaussian_log_targets(points, 16, 16, sigma=1.0).exp()
    assert heatmap_js_loss(target, points, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    spread = torch.full_like(target, 1 / 256)
    wrong = gaussian_log_targets(1 - points, 16, 16, sigma=1.0).exp()
    assert 0 < heatmap_js_loss(spread, points, 1.0).item() < heatmap_js_loss(wrong, points, 1.0).item()
    assert heatmap_js_loss(wrong, points, 1.0).item() <= np.log(2) + 1e-6


def test_lr_schedule_warms_up_then_decays_to_zero():
    cosine = StepSchedule(total_steps=100, warmup_steps=10).lr_factor
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(55) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0, abs=1e-12)
    values = [cosine(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_heatmap_loss_trains_and_needs_the_heatmap_head(synth_train):
    from facepoints_lib.core.dataset import load_faces
    gt = read_gt(synth_train / "gt.csv")
    names = sorted(gt)[:32]
    faces = load_faces(synth_train / "images", 32, gt, names)
    cfg, run = tiny_train_config(heatmap_js=5.0), tiny_run(max_steps=2)
    model, _ = fit(faces, None, cfg, run, progress=quiet_progress, log=lambda _: None)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(ValueError, match="heatmap head"):
        fit(faces, None, tiny_train_config(heatmap_js=1.0, model=tiny_model_config(head="regression")), run,
            progress=quiet_progress, log=lambda _: None)
    # the term changes what is learnt: the same seed without it gives other weights
    plain, _ = fit(faces, None, tiny_train_config(), run, progress=quiet_progress, log=lambda _: None)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters()))


def test_devices_and_bf16_setting():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert use_bf16("off", torch.device("cpu")) is False
    assert use_bf16("on", torch.device("cpu")) is True
    assert isinstance(use_bf16("auto", torch.device("cpu")), bool)
    with pytest.raises(ValueError, match="bf16"):
        use_bf16("maybe", torch.device("cpu"))


def test_split_names():
    names = [f"{i:03d}.jpg" for i in range(50)]
    train, val = split_names(names, 10, seed=0)
    assert len(val) == 10 and len(train) == 40
    assert sorted(train + val) == names and not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)
    assert split_names(names, 10, seed=0) == (train, val)
    assert split_names(names, 10, seed=1)[1] != val
    assert split_names(names, 500, seed=0)[0] != []          # at least one face trains
    assert split_names(names, 0, seed=0) == (names, [])


def test_default_model_path_is_the_repository_root():
    assert default_model_path() == REPO_ROOT / "facepoints_model.pt"


# ---- train_detector's contract (tiny network, seconds) ----

@pytest.fixture
def three_threads():
    """The caller runs 3 torch threads (its own choice); the test's process gets its count back."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


def test_fast_train_writes_nothing_and_validates(synth_train, tmp_path, monkeypatch, three_threads):
    monkeypatch.chdir(tmp_path)
    before = _snapshot(synth_train)
    shipped = default_model_path()
    shipped_before = shipped.stat().st_mtime_ns if shipped.exists() else None
    lines = []
    gt = read_gt(synth_train / "gt.csv")
    model = train_detector(gt, synth_train / "images", fast_train=True, config=tiny_train_config(),
                           run=tiny_run(), model_path=tmp_path / "should_not_exist.pt", progress=quiet_progress,
                           log=lines.append)
    assert not model.training
    assert _snapshot(synth_train) == before
    assert list(tmp_path.iterdir()) == []
    assert (shipped.stat().st_mtime_ns if shipped.exists() else None) == shipped_before
    history = validations(lines)                                            # the log's validation lines
    assert len(history) == 1 and history[0]["epoch"] == 1 and np.isfinite(history[0]["val_err"])
    assert any("64 faces (16 for validation)" in line for line in lines)    # max_images 80
    assert any("val err" in line for line in lines)
    assert any(line.endswith(", 1 thread") for line in lines)               # the run's one thread
    assert torch.get_num_threads() == 3                                     # and the caller's count is back


def test_full_train_saves_a_loadable_model(synth_train, tmp_path):
    path = tmp_path / "out" / "model.pt"
    path.parent.mkdir()
    cfg, run = tiny_train_config(epochs=2, optimizer="sgd", lr=0.01), tiny_run(eval_every=5)
    model = train_detector(synth_train / "gt.csv", synth_train / "images", fast_train=False,
                           config=cfg, run=run, model_path=path, progress=quiet_progress, log=lambda s: None)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]
    payload = load_checkpoint(path)
    meta = payload["metadata"]
    assert meta["train_config"] == cfg.to_dict() and meta["run_config"] == run.to_dict()
    assert meta["trained"] == {"steps": 8, "epochs": 2.0, "schedule": "steps", "total_steps": 8, "warmup_steps": 2}
    assert meta["train_images"] == 64 and meta["val_images"] == 16
    assert len(meta["history"]) == 1 and meta["history"][0]["epoch"] == 2   # the last epoch always validates
    loaded = load_model(path)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    for (name, saved), kept in zip(loaded.state_dict().items(), model.state_dict().values()):
        assert torch.equal(saved, kept), name                              # the very same weights
    # the same function; not bit for bit, since the model in memory keeps its training memory
    # layout and the caller's threads may split the work differently
    np.testing.assert_allclose(predict(loaded, images), predict(model, images), rtol=0, atol=1e-5)


def test_train_detector_refuses_bad_input(synth_train, tmp_path):
    gt = read_gt(synth_train / "gt.csv")
    images = synth_train / "images"
    with pytest.raises(TypeError, match="fast_train"):
        train_detector(gt, images, fast_train="yes")
    with pytest.raises(NotADirectoryError, match="nothere"):
        train_detector(gt, tmp_path / "nothere", config=tiny_train_config(), run=tiny_run())
    one = {"00000.jpg": gt["00000.jpg"]}
    with pytest.raises(ValueError, match="at least 2"):
        train_detector(one, images, config=tiny_train_config(), run=tiny_run(), progress=quiet_progress)
    with pytest.raises(ValueError, match="optimizer"):
        train_detector(gt, images, config=tiny_train_config(optimizer="adam?"), run=tiny_run(),
                       progress=quiet_progress, log=lambda s: None)


def test_missing_images_are_warned_about_and_left_out(synth_train):
    gt = {name: coords for name, coords in list(read_gt(synth_train / "gt.csv").items())[:30]}
    gt["ghost_face.jpg"] = gt["00000.jpg"]
    lines = []
    with pytest.warns(UserWarning, match="ghost_face.jpg") as caught:
        train_detector(gt, synth_train / "images", config=tiny_train_config(), run=tiny_run(val_size=5),
                       progress=quiet_progress, log=lines.append)
    assert any("on 25 faces (5 for validation)" in line for line in lines)
    assert [w.filename for w in caught] == [__file__]          # the warning names the caller's line
    with pytest.warns(UserWarning, match="ghost_face.jpg") as caught:
        train_model(gt, synth_train / "images", tiny_train_config(), tiny_run(val_size=5, max_steps=1),
                    progress=quiet_progress, log=lines.append)
    assert [w.filename for w in caught] == [__file__]


# ---- end to end: a real (short) training run beats the mean face by far ----

def _mean_shape_detections(train_dir, test_dir):
    """The mean-shape predictor: the training set's mean normalised face on every image."""
    gt, shapes = read_gt(train_dir / "gt.csv"), read_img_shapes(train_dir / "img_shapes.csv")
    names = sorted(gt)
    sizes = np.array([(shapes[n][1], shapes[n][0]) for n in names], dtype=np.float64)
    mean = pixels_to_normalized(as_points(gt, names), sizes).mean(axis=0)
    test_shapes = read_img_shapes(test_dir / "img_shapes.csv")
    return {n: normalized_to_pixels(mean[None], np.array([[cols, rows]], dtype=np.float64))[0].ravel()
            for n, (rows, cols) in test_shapes.items()}


def _err(detected, test_dir):
    gt, shapes = read_gt(test_dir / "gt.csv"), read_img_shapes(test_dir / "img_shapes.csv")
    names = sorted(gt)
    sizes = np.array([(shapes[n][1], shapes[n][0]) for n in names], dtype=np.float64)
    return course_err(as_points(detected, names), as_points(gt, names), sizes)


@pytest.mark.slow
def test_end_to_end_training_beats_the_mean_shape(synth_train, synth_holdout, tmp_path):
    model_config = ModelConfig(image_size=64, stem_width=16, widths=(24, 32, 48, 64),
                               depths=(1, 1, 1, 1), decoder_width=32)
    # 250 training faces in batches of 32: 7 steps an epoch, 700 optimiser steps (the recipe's
    # learning rate; a share of the batches are turned faces). One thread: small convolutions
    # gain little from a second one, and it keeps a busy machine usable.
    cfg = full_config(model=model_config, epochs=100, batch_size=32, warmup_epochs=1.0, seed=0)
    path = tmp_path / "e2e_model.pt"
    started = time.monotonic()
    run = train_model(synth_train / "gt.csv", synth_train / "images", cfg,
                      full_run(val_size=50, eval_every=20, bf16="off", device="cpu", threads=1), model_path=path,
                      progress=quiet_progress, log=lambda s: None)
    seconds = time.monotonic() - started
    assert path.is_file() and run.model_path == path
    history = run.history
    assert [h["epoch"] for h in history] == [20, 40, 60, 80, 100] and history[-1]["step"] == 700
    assert history[-1]["val_err"] < history[0]["val_err"]

    with warnings.catch_warnings():
        warnings.simplefilter("error")                # a clean folder gives no warning
        detected = detect(path, synth_holdout / "images")
    assert len(detected) == 100
    err = _err(detected, synth_holdout)
    baseline = _err(_mean_shape_detections(synth_train, synth_holdout), synth_holdout)
    assert baseline > 20                              # the faces really vary
    assert err < 0.5 * baseline, (err, baseline, seconds)

    # The recipe turns a share of its samples by any angle, and detection looks again at the
    # face aligned upright: the same faces turned by a quarter, a half or three quarters are
    # found as well as upright ones.
    gt = read_gt(synth_holdout / "gt.csv")
    names = sorted(gt)
    for degrees in QUARTERS:
        folder = tmp_path / f"turned-{degrees}"
        folder.mkdir()
        truth, sizes = [], []
        for name in names:
            with Image.open(synth_holdout / "images" / name) as img:
                turned, points = turn_quarter(img.convert("RGB"), gt[name].reshape(-1, 2), degrees)
            turned.save(folder / name)
            truth.append(points)
            sizes.append(turned.size)
        found = detect(path, folder)
        turned_err = course_err(as_points(found, names), np.stack(truth),
                                np.array(sizes, dtype=np.float64))
        assert turned_err < 0.5 * baseline, (degrees, turned_err, err, baseline)


def test_shipped_model_is_the_documented_recipe():
    """facepoints_model.pt was trained by full_config() (README's model card), only the seed
    set on the command line."""
    from facepoints_lib.core.checkpoint import load_checkpoint

    metadata = load_checkpoint(REPO_ROOT / "facepoints_model.pt")["metadata"]
    stored = without_retired_settings(metadata["train_config"])
    expected = full_config(seed=metadata["seed"]).to_dict()
    assert stored["model"]["head"] == "heatmap"
    assert stored == expected, "retrain the shipped model with the current recipe (see README)"
    assert metadata["train_images"] + metadata["val_images"] == 5000
    assert metadata["history"][-1]["epoch"] == expected["epochs"]


def test_exclusion_list_leaves_faces_out_and_is_recorded(synth_train, tmp_path):
    gt = read_gt(synth_train / "gt.csv")
    names = sorted(gt)
    dropped = names[:5] + ["not-in-the-table.jpg"]
    lines = []
    path = tmp_path / "excluded.pt"
    with pytest.warns(UserWarning, match=r"1 names in the exclusion list match no face in the keypoint "
                                         r"table and leave nothing out: 'not-in-the-table.jpg'"):
        train_detector(synth_train / "gt.csv", synth_train / "images", fast_train=False,
                       config=tiny_train_config(), run=tiny_run(max_images=None, max_steps=1), model_path=path,
                       progress=quiet_progress, log=lines.append, exclude=dropped)
    meta = load_checkpoint(path)["metadata"]
    assert meta["excluded"] == names[:5]
    assert meta["train_images"] + meta["val_images"] == len(names) - 5
    assert not set(meta["val_names"]) & set(names[:5])
    assert any("leaving out 5 faces" in line for line in lines)
    with pytest.raises(TypeError, match="list of file names"):
        train_detector(synth_train / "gt.csv", synth_train / "images", config=tiny_train_config(),
                       run=tiny_run(max_steps=1),
                       progress=quiet_progress, log=lines.append, exclude="00001.jpg")


def test_few_faces_validate_on_a_fifth(synth_train, tmp_path):
    """With fewer than 5 x val_size faces, a fifth validates (it was all but one face)."""
    gt = read_gt(synth_train / "gt.csv")
    few = {name: gt[name] for name in sorted(gt)[:30]}
    lines = []
    path = tmp_path / "few.pt"
    train_detector(few, synth_train / "images", fast_train=False, config=tiny_train_config(),
                   run=tiny_run(max_steps=1, val_size=16),
                   model_path=path, progress=quiet_progress, log=lines.append)
    meta = load_checkpoint(path)["metadata"]
    assert (meta["train_images"], meta["val_images"]) == (24, 6)
    assert any("only 30 faces: validating on 6" in line for line in lines)


def test_predict_batches_are_bounded_by_the_models_feature_maps(monkeypatch):
    """A model whose feature maps are large is run in smaller batches: same answers."""
    import facepoints_lib.core.inference as train_module
    from facepoints_lib.core.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_model_config()).eval()
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    whole = train_module.predict(model, images, batch_size=64)
    calls = []
    original = model.forward
    monkeypatch.setattr(model, "forward", lambda x, **kw: calls.append(len(x)) or original(x, **kw))
    per_image = train_module.predict_bytes_per_image(model, 32)
    assert per_image == 4 * model.config.estimated_activations() * 2 + 12 * 32 * 32   # maps, mirrors, picture
    monkeypatch.setattr(train_module, "PREDICT_MEMORY_BYTES", 3 * per_image)
    np.testing.assert_allclose(train_module.predict(model, images, batch_size=64), whole, atol=1e-5)
    assert max(calls) == 2 * 3                       # 3 images and their mirrors per forward pass


def test_with_epochs_keeps_the_second_stages_share():
    """The curve's points and the demo train both networks in the recipe's proportion."""
    from facepoints_lib.core.config import with_epochs

    short = with_epochs(full_config(seed=2), 12)
    assert (short.epochs, short.cascade.epochs, short.seed) == (12, 10, 2)        # 76 of every 90
    assert with_epochs(full_config(), 1).cascade.epochs == 1                       # never none
    assert with_epochs(full_config(cascade=None), 7).cascade is None and full_config().epochs == 90
