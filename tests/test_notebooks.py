"""The notebooks and their support modules (``facepoints_lib.notebook``: ``data``, ``analysis``, ``benchmarks``, ``plotting``, ``widgets``; ``photos`` in tests/test_notebook_photos.py).

* The committed notebooks carry no outputs; the expected text of cells tagged
  ``nbval-check-output`` is in ``notebooks/expected_outputs.json``. They use the
  ``python3`` kernel, define no library code and name no machine's paths.
* Each notebook runs under nbval (``--nbval-lax``) in its own ``python -m pytest``
  process, on a copy with those outputs put back and no others (so running a notebook in
  JupyterLab and saving it changes nothing here), in CI mode on synthetic faces (``notebooks/conftest.py`` sets
  ``FACEPOINTS_DATA=synthetic`` and ``FACEPOINTS_NB_FAST=1``), with a time limit; a run
  that outlives it (a stalled kernel) is retried once. Marked ``notebooks``: skip them
  with ``-m "not notebooks"``. Notebook 05 needs the photos extra: without it, it is
  skipped (failed where ``$FACEPOINTS_PHOTOS_REQUIRED=1``), as tests/test_photo.py is.
* The support modules work on small synthetic inputs, without a kernel.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # noqa: E402 - before pyplot is imported by the modules below

import nbformat
import numpy as np
import pytest
import torch

from facepoints_lib.notebook import analysis, benchmarks, plotting
from facepoints_lib.notebook import data as notebook_data
from facepoints_lib.core.augment import AugmentConfig, flip_images, flip_keypoints, photometric
from facepoints_lib.core.dataset import load_faces
from facepoints_lib.core.images import read_image_size
from facepoints_lib.core.metrics import per_image_err, per_point_err
from facepoints_lib.core.schema import FLIP_PERMUTATION, NUM_POINTS
from facepoints_lib.tools.synth import make_synthetic_faces
from conftest import require_photos_extra

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
PHOTO_NOTEBOOKS = {"05_your_own_photos.ipynb"}     # need the photos extra (dlib, scikit-image)
NBVAL_TIMEOUT = 420          # seconds for one notebook (CI mode takes about 10-30 s)
CELL_TIMEOUT = 300


def _load_refresh_tool():
    spec = importlib.util.spec_from_file_location("refresh_outputs", NOTEBOOK_DIR / "refresh_outputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _code_cells(path: Path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


# ---- the committed notebooks ------------------------------------------------------------

def test_the_five_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_data_exploration.ipynb", "02_augmentations.ipynb",
                                           "03_architecture_experiments.ipynb", "04_error_analysis.ipynb",
                                           "05_your_own_photos.ipynb"]
    assert (NOTEBOOK_DIR / "README.md").is_file()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_checks_are_recorded(path):
    """Every cell tagged ``nbval-check-output`` has its expected text in
    ``expected_outputs.json`` (and nothing else does), whatever outputs the file holds."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert _load_refresh_tool().problems(nb, path.name) == [], "run: python notebooks/refresh_outputs.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs(path):
    """The committed version carries no outputs (a notebook run and saved in JupyterLab may:
    the tests never read its outputs)."""
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout: no committed version to read")
    shown = subprocess.run(["git", "show", f"HEAD:notebooks/{path.name}"], cwd=REPO_ROOT, capture_output=True,
                           text=True, check=False)
    if shown.returncode != 0:
        pytest.skip(f"{path.name} is not committed yet")
    assert not _load_refresh_tool().has_outputs(nbformat.reads(shown.stdout, as_version=4)), \
        "run: python notebooks/refresh_outputs.py, then commit"


def test_a_notebook_saved_with_outputs_is_checked_without_them(tmp_path):
    """A run in JupyterLab stores outputs and counts in the file; the copy nbval runs has
    none of them, only the recorded outputs of the checked cells."""
    tool = _load_refresh_tool()
    path = NOTEBOOK_DIR / "02_augmentations.ipynb"
    nb = nbformat.read(path, as_version=4)
    for number, cell in enumerate((c for c in nb.cells if c.cell_type == "code"), start=1):
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="a student's own run\n")]
        cell.execution_count = number
    saved = tmp_path / path.name
    nbformat.write(nb, saved)
    copy = nbformat.read(tool.checked_copy(saved, tmp_path / "copy.ipynb"), as_version=4)
    expected = tool.read_expected()[path.name]
    for cell in (c for c in copy.cells if c.cell_type == "code"):
        if tool.is_checked(cell):
            assert [dict(o) for o in cell.outputs] == expected[cell.id] and cell.execution_count
        else:
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_code_only_calls_the_package(path):
    cells = _code_cells(path)
    assert cells[0].source.startswith("%matplotlib inline")
    source = "\n".join(c.source for c in cells)
    if path.name in PHOTO_NOTEBOOKS:            # its faces come from photos: the setting is the model
        assert "nbdata.model_path(MODEL)" in source, "the model must be chosen by the one setting"
    else:
        assert "nbdata.choose_data(DATA)" in source, "the data must be chosen by the one setting"
    for line in source.splitlines():
        assert not re.match(r"\s*(def|class|async def)\s", line), f"library code in a notebook: {line}"
        assert "lambda" not in line, line
        if line.startswith(("import ", "from ")):
            module = line.split()[1]
            assert module.split(".")[0] in {"facepoints_lib", "matplotlib", "numpy", "torch", "operator"}, line
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"(/work/|/home/|/Users/|/root/|[A-Z]:\\\\)", text), "machine-specific path"


# ---- the notebooks under nbval ----------------------------------------------------------

def _nbval(path: Path) -> subprocess.CompletedProcess:
    """Run nbval on a copy of ``path`` beside it (same folder, so relative paths hold):
    no outputs but the recorded ones of the checked cells."""
    copy = _load_refresh_tool().checked_copy(path, path.with_name(f".nbval-{os.getpid()}-{path.name}"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("FACEPOINTS_FIGURES", "MPLBACKEND", "PYTEST_ADDOPTS")}
    env.update(FACEPOINTS_DATA="synthetic", FACEPOINTS_NB_FAST="1")
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--nbval-lax",
               "--nbval-current-env", f"--nbval-cell-timeout={CELL_TIMEOUT}",
               "--nbval-kernel-startup-timeout=120", str(copy.relative_to(REPO_ROOT))]
    try:
        return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=NBVAL_TIMEOUT, check=False)
    finally:
        copy.unlink(missing_ok=True)


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_under_nbval(path):
    if path.name in PHOTO_NOTEBOOKS:
        # Without the extra the notebook says so in one line and finds nothing: its checked
        # output (the example pictures) cannot match.
        require_photos_extra()
    try:
        proc = _nbval(path)
    except subprocess.TimeoutExpired:
        proc = _nbval(path)           # once more: a kernel that stalled is not a failing cell
    assert proc.returncode == 0, f"{path.name} failed under nbval:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"


# ---- notebook_data ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def face_folder(tmp_path_factory):
    return make_synthetic_faces(tmp_path_factory.mktemp("faces") / "train", 12, seed=5)


def test_choose_data_from_environment(face_folder, monkeypatch):
    monkeypatch.setenv(notebook_data.DATA_ENV, str(face_folder))
    monkeypatch.delenv(notebook_data.FAST_ENV, raising=False)
    data = notebook_data.choose_data()
    assert data.root == face_folder.resolve() and not data.synthetic and not data.fast
    gt = data.read_gt()
    assert len(gt) == 12
    names = sorted(gt)
    assert data.image_sizes(names).tolist() == [list(read_image_size(data.img_dir / n)) for n in names]
    assert "12 faces" in data.describe() and notebook_data.DATA_ENV in data.describe()
    faces = data.load(32, names[:3])
    assert faces.images.shape == (3, 3, 32, 32)


def test_the_argument_wins_and_a_wrong_folder_is_an_error(face_folder, monkeypatch, tmp_path):
    monkeypatch.setenv(notebook_data.DATA_ENV, str(tmp_path / "nowhere"))
    assert notebook_data.choose_data(face_folder).root == face_folder.resolve()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        notebook_data.choose_data()


def test_synthetic_faces_are_written_once(monkeypatch, tmp_path):
    monkeypatch.setattr(notebook_data, "synthetic_dir", lambda count, seed=0: tmp_path / f"s{count}-{seed}")
    data = notebook_data.choose_data("synthetic", synthetic_count=5)
    assert data.synthetic and len(data.read_gt()) == 5
    stamp = (data.root / "gt.csv").stat().st_mtime_ns
    again = notebook_data.choose_data("SYNTHETIC", synthetic_count=5)
    assert again.root == data.root and (again.root / "gt.csv").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["s5-0"]     # no scratch folders left


def test_fast_mode_pick_and_subset(face_folder, monkeypatch):
    monkeypatch.setenv(notebook_data.FAST_ENV, "1")
    assert notebook_data.fast_mode() and notebook_data.pick(100, 3) == 3
    monkeypatch.setattr(notebook_data, "COURSE_FACES_FAST", 4)
    data = notebook_data.choose_data(face_folder)
    assert data.fast and len(data.read_gt()) == 4 and data.read_gt().keys() == data.read_gt().keys()
    monkeypatch.setenv(notebook_data.FAST_ENV, "0")
    assert not notebook_data.fast_mode() and notebook_data.pick(100, 3) == 100


def test_model_path(monkeypatch, tmp_path):
    monkeypatch.delenv(notebook_data.MODEL_ENV, raising=False)
    assert notebook_data.model_path() == notebook_data.project_root() / "facepoints_model.pt"
    monkeypatch.setenv(notebook_data.MODEL_ENV, str(tmp_path / "m.pt"))
    assert notebook_data.model_path() == tmp_path / "m.pt"
    assert notebook_data.model_path(tmp_path / "x.pt") == tmp_path / "x.pt"
    assert notebook_data.model_path("train") is None
    monkeypatch.setenv(notebook_data.MODEL_ENV, "train")
    assert notebook_data.model_path() is None
    assert notebook_data.project_root() == REPO_ROOT
    monkeypatch.chdir(tmp_path)                    # a notebook copied elsewhere still finds the project
    assert notebook_data.project_root() == REPO_ROOT


# ---- analysis ---------------------------------------------------------------------------

def _points(n=6, seed=0):
    rng = np.random.default_rng(seed)
    base = np.array([[20, 20], [40, 18], [60, 18], [80, 20], [22, 35], [32, 35], [42, 35],
                     [58, 35], [68, 35], [78, 35], [50, 55], [35, 75], [50, 78], [65, 75]], float)
    return base[None] + rng.normal(0, 1, (n, NUM_POINTS, 2))


def test_per_point_err_averages_to_the_course_err():
    true, pred = _points(5, 0), _points(5, 1)
    sizes = np.array([[100, 100], [100, 120], [90, 100], [100, 100], [150, 100]], float)
    share = per_point_err(pred, true, sizes)
    assert share.shape == (5, NUM_POINTS)
    assert np.allclose(share.mean(axis=1), per_image_err(pred, true, sizes))


def test_data_checks():
    points = _points(3)
    assert (np.abs(analysis.eye_roll_degrees(points)) < 10).all()
    turned = points[:, :, ::-1].copy()                    # swap x and y: the eyes stand vertical
    assert np.allclose(np.abs(analysis.eye_roll_degrees(turned)), 90, atol=10)
    assert analysis.left_of_right(points).all()
    mirrored = points.copy()
    mirrored[..., 0] = 99 - mirrored[..., 0]             # mirrored in a 100 px image, labels kept
    assert not analysis.left_of_right(mirrored).any()
    relabelled = mirrored[:, list(FLIP_PERMUTATION)]
    assert analysis.left_of_right(relabelled).all()
    sizes = np.full((3, 2), 100.0)
    assert not analysis.points_outside(points, sizes).any()
    points[1, 3, 0] = 99.6
    assert analysis.points_outside(points, sizes).sum() == 1
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    images[1] = images[1, :1]
    assert analysis.grayscale_mask(images).tolist() == [False, True, False]


def test_find_duplicates_and_label_spread():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 32, 32), generator=generator, dtype=torch.uint8)
    noisy = images[1].int() + torch.randint(-3, 4, (3, 32, 32), generator=generator)
    images[4] = noisy.clamp(0, 255).to(torch.uint8)         # a re-encoded copy of face 1
    assert analysis.find_duplicates(images) == [[1, 4]]
    keypoints = np.full((5, NUM_POINTS, 2), 0.5)
    keypoints[4, 0] = [0.53, 0.54]
    assert analysis.label_spread(keypoints, [1, 4]) == pytest.approx(5.0)


def test_binned():
    rows = analysis.binned([1, 2, 3, 10, 11], [1.0, 2.0, 3.0, 10.0, 20.0], [0, 5, 10, 15, 20])
    assert [(r["count"], r["mean"]) for r in rows] == [(3, 2.0), (2, 15.0)]


def _result(name, overrides, err, epochs=8, history_len=3):
    history = [{"epoch": e, "step": 10 * e, "train_loss": 5 / e, "val_err": 10 / e, "seconds": 2.0 * e}
               for e in range(1, history_len + 1)]
    return {"name": name, "parameters": 1000 + len(name), "overrides": overrides,
            "config": {"epochs": epochs}, "holdout": {"err": err, "mark": 9, "nme": 0.05, "auc08": 0.4},
            "train": {"wall_seconds": 120.0, "images_per_second": 50.0, "threads": 1, "history": history}}


@pytest.fixture
def results_dir(tmp_path):
    budget = ["epochs=8", "threads=1"]
    for result in (_result("exp-base", budget, 4.0), _result("exp-head-regression", budget + ["model.head=regression"], 5.0),
                   _result("exp-loss-mse", budget + ["loss=mse"], 4.5),
                   _result("exp-no-flip", budget + ["augment.flip_prob=0"], 4.2),
                   _result("recipe", [], 3.0, epochs=60)):
        (tmp_path / f"{result['name']}.json").write_text(json.dumps(result))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"name": "not a result"}))
    (tmp_path / "speed.json").write_text(json.dumps({"name": "speed", "machine": {"cores": 2}}))
    (tmp_path / "second-stage.json").write_text(json.dumps({"base_model": "bench-x.pt", "machine": {"cores": 2},
                                                            "holdout": {"faces": 500, "cascade": {"err": 4.5}}}))
    return tmp_path


def test_bench_results_are_read_and_grouped(results_dir, tmp_path_factory):
    with pytest.warns(UserWarning, match="skipped") as caught:
        results = benchmarks.load_bench_results(results_dir)
    assert sorted(str(w.message).split(":")[0] for w in caught) == ["skipped broken.json", "skipped other.json"]
    assert [r["name"] for r in results] == ["exp-base", "exp-head-regression", "exp-loss-mse",
                                            "exp-no-flip", "recipe"]
    groups = benchmarks.group_experiments(results)
    short = benchmarks.budget_label(results[0])
    assert {g: [r["name"] for r in m] for g, m in groups.items()} == {       # the 90-epoch recipe stays out
        f"head · {short}": ["exp-base", "exp-head-regression"], f"loss · {short}": ["exp-base", "exp-loss-mse"],
        f"augmentation · {short}": ["exp-base", "exp-no-flip"]}
    by_budget = benchmarks.rows_by_budget(benchmarks.bench_rows(results))
    assert list(by_budget) == [benchmarks.budget_label(results[4]), short]      # the longest budget first
    assert [r["err"] for r in by_budget[short]] == sorted(r["err"] for r in by_budget[short])
    assert "best" in benchmarks.bench_conclusion(benchmarks.bench_rows(results))
    rows = benchmarks.bench_rows(results)
    assert rows[1]["change"] == "model.head=regression" and rows[0]["change"] == "-"
    assert rows[4]["budget"] != rows[0]["budget"]
    table = benchmarks.format_table(rows, ["name", "err", "parameters"], {"err": ".2f", "parameters": ","})
    assert table.splitlines()[2].split() == ["exp-base", "4.00", "1,008"]
    from facepoints_lib.core.model import ModelConfig, build_model
    recorded_zero = dict(results[0], parameters=0, config={"epochs": 8, "model": ModelConfig(image_size=64).to_dict()})
    expected = sum(p.numel() for p in build_model(ModelConfig(image_size=64)).parameters())
    assert benchmarks.result_parameters(recorded_zero) == expected
    assert benchmarks.result_parameters({"parameters": 0, "config": {}}) is None
    assert benchmarks.load_bench_results(tmp_path_factory.mktemp("empty")) == []
    assert benchmarks.load_bench_results(tmp_path_factory.mktemp("x") / "missing") == []


def test_bench_changes_are_judged_against_the_budgets_baseline():
    def with_config(result, **config):
        result["config"].update(config)
        return result

    base = with_config(_result("exp-base", ["epochs=8"], 4.0), optimizer="adamw", lr=0.002,
                       model={"depths": [2, 2, 2, 1]}, seed=0)
    # The experiment table pins its baseline's optimiser: restating it is no change.
    pinned = with_config(_result("exp-deep", ["epochs=8", "optimizer=adamw", "lr=0.002", "model.depths=(2,3,3,2)"], 3.9),
                         optimizer="adamw", lr=0.002, model={"depths": [2, 3, 3, 2]}, seed=0)
    # A run made after the default optimiser changed: the stored config shows it.
    drifted = with_config(_result("exp-js", ["epochs=8", "heatmap_js=10"], 3.8),
                          optimizer="sgd", lr=0.05, model={"depths": [2, 2, 2, 1]}, seed=1)
    results = [base, pinned, drifted]
    assert benchmarks.budget_baselines(results) == {benchmarks.budget_label(base): base}
    assert benchmarks.config_changes(pinned, base) == {"model.depths": "(2,3,3,2)"}
    assert benchmarks.experiment_group(pinned, base) == "capacity"
    assert benchmarks.config_changes(drifted, base) == {"heatmap_js": "10", "optimizer": "sgd", "lr": "0.05"}
    assert benchmarks.experiment_group(drifted, base) == "combination"
    assert benchmarks.experiment_group(drifted) == "loss"            # overrides alone
    assert [r["change"] for r in benchmarks.bench_rows(results)] == [
        "-", "model.depths=(2,3,3,2)", "heatmap_js=10, optimizer=sgd, lr=0.05"]
    short = benchmarks.budget_label(base)
    assert {g: [r["name"] for r in m] for g, m in benchmarks.group_experiments(results).items()} == {
        f"capacity · {short}": ["exp-base", "exp-deep"], f"combination · {short}": ["exp-base", "exp-js"]}


def test_bench_plots(results_dir):
    import matplotlib.pyplot as plt

    with pytest.warns(UserWarning):
        results = benchmarks.load_bench_results(results_dir)
    fig, axes = plt.subplots(1, 3)
    plotting.plot_bench_scatter(axes[0], benchmarks.bench_rows(results))
    plotting.plot_histories(axes[1], results, "val_err")
    plotting.plot_group(axes[2], next(m for g, m in benchmarks.group_experiments(results).items()
                                      if g.startswith("head")))
    assert len(axes[1].get_lines()) == len(results)
    assert len(axes[0].get_legend().get_texts()) == len(benchmarks.rows_by_budget(benchmarks.bench_rows(results)))
    plotting.plot_histories(axes[1], results, "val_err", max_lines=2)
    assert len(axes[1].get_lines()) == len(results) + 2
    plt.close(fig)


# ---- plotting ---------------------------------------------------------------------------

def test_face_grid_and_ced(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    images = [np.zeros((100, 100, 3), np.uint8), torch.zeros(3, 96, 96), np.zeros((80, 120))]
    points = list(_points(3))
    fig = plotting.face_grid(images, points, pred=points, titles=["a", "b", "c"], ncols=2)
    assert len(fig.axes) == 4 and fig.axes[3].axison is False
    monkeypatch.delenv(plotting.FIGURES_ENV, raising=False)
    assert plotting.save_figure(fig, "grid") is None
    monkeypatch.setenv(plotting.FIGURES_ENV, str(tmp_path / "figs"))
    assert plotting.save_figure(fig, "grid") == tmp_path / "figs" / "grid.png"
    assert (tmp_path / "figs" / "grid.png").stat().st_size > 1000
    fig, ax = plt.subplots()
    aucs = plotting.plot_ced(ax, {"perfect": np.zeros(10), "bad": np.full(10, 1.0)})
    assert aucs["perfect"] == pytest.approx(1.0, abs=0.01) and aucs["bad"] == 0.0
    plotting.plot_mean_shape(ax, _points(20) / 100)
    plotting.plot_per_point(ax, np.arange(NUM_POINTS))
    plotting.plot_binned(ax, analysis.binned([1, 2], [3, 4], [0, 3]), xlabel="x", ylabel="y")
    plt.close("all")


# ---- widgets ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def faces(face_folder):
    return load_faces(face_folder / "images", 32, face_folder / "gt.csv")


def test_transform_face_identity_and_flip(faces):
    from facepoints_lib.notebook.widgets import transform_face

    image, points = faces.images[0], faces.keypoints[0]
    same_image, same_points = transform_face(image, points)
    assert torch.allclose(same_image, image.float() / 255, atol=1e-5)
    assert torch.allclose(same_points, points, atol=1e-6)
    mirrored_image, mirrored_points = transform_face(image, points, flip=True)
    assert torch.allclose(mirrored_image, flip_images(image).float() / 255, atol=1e-5)
    assert torch.allclose(mirrored_points, flip_keypoints(points[None])[0], atol=1e-6)
    turned = transform_face(image, points, rotation=90)[1]
    centre = torch.tensor([0.5, 0.5])
    assert torch.allclose((turned - centre).norm(dim=1), (points - centre).norm(dim=1), atol=1e-5)
    assert FLIP_PERMUTATION[0] == 3


def test_adjust_photometric_matches_training(faces):
    from facepoints_lib.notebook.widgets import adjust_photometric

    images = faces.images[:4].float() / 255
    generator = torch.Generator().manual_seed(0)
    fixed = AugmentConfig(brightness=0, contrast=0, grayscale_prob=1, lowres_prob=0)
    assert torch.allclose(photometric(images.clone(), fixed, generator), adjust_photometric(images, grayscale=True))
    none = AugmentConfig(brightness=0, contrast=0, grayscale_prob=0, lowres_prob=0)
    assert torch.allclose(photometric(images.clone(), none, generator), adjust_photometric(images))
    brighter = adjust_photometric(images, brightness=0.1, contrast=1.5)
    assert brighter.min() >= 0 and brighter.max() <= 1 and not torch.allclose(brighter, images)


def test_augmentation_explorer_reacts(faces):
    from facepoints_lib.notebook.widgets import AugmentationExplorer

    explorer = AugmentationExplorer(faces)
    for name in ("face", "rotation", "scale", "shift x", "shift y", "flip", "brightness", "contrast", "grayscale"):
        assert explorer.controls[name].description == name
    assert explorer.batch_button.description == "random batch"
    start = explorer.last[1].clone()
    explorer.controls["rotation"].value = 30
    assert not torch.allclose(explorer.last[1], start)
    explorer.controls["flip"].value = True
    explorer.controls["face"].value = 3
    explorer._on_reset(None)
    assert explorer.controls["rotation"].value == 0 and explorer.controls["flip"].value is False
    assert explorer.controls["face"].value == 3
    assert torch.allclose(explorer.last[1], faces.keypoints[3], atol=1e-6)
    explorer.draw_batch()
    explorer.batch_button.click()
    assert explorer.batches_drawn == 2


def test_shape_outliers_find_swapped_and_misplaced_labels():
    """The label audit: turned, scaled and shifted copies of the mean face are not
    outliers; a face with left and right swapped, or one point on the image edge, is."""
    from facepoints_lib.core.augment import apply_transform
    from facepoints_lib.core.schema import FLIP_PERMUTATION

    rng = np.random.default_rng(0)
    mean = torch.tensor([[0.3, 0.3], [0.42, 0.3], [0.58, 0.3], [0.7, 0.3], [0.3, 0.4], [0.36, 0.4], [0.42, 0.4],
                         [0.58, 0.4], [0.64, 0.4], [0.7, 0.4], [0.5, 0.55], [0.38, 0.7], [0.5, 0.72], [0.62, 0.7]],
                        dtype=torch.float64)
    faces = []
    for k in range(20):
        angle, zoom = rng.uniform(-np.pi, np.pi), rng.uniform(0.5, 1.2)
        m = torch.tensor([[[zoom * np.cos(angle), -zoom * np.sin(angle), rng.uniform(-0.2, 0.2)],
                           [zoom * np.sin(angle), zoom * np.cos(angle), rng.uniform(-0.2, 0.2)]]])
        faces.append(apply_transform(m, mean[None])[0] + torch.from_numpy(rng.normal(0, 0.003, (14, 2))))
    swapped = mean[list(FLIP_PERMUTATION)].clone()                  # left and right labels exchanged
    edge = mean.clone()
    edge[13] = torch.tensor([0.99, 0.99])                           # a mouth corner at the image edge
    points = torch.stack(faces + [swapped, edge]).numpy()
    rms, worst = analysis.shape_outliers(points, mean.numpy())
    assert set(np.argsort(-rms)[:2]) == {20, 21}
    assert rms[:20].max() < 1.0 < rms[20:].min()
    assert worst[21] == 13
