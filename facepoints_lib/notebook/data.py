"""Which faces the notebooks look at, chosen by one setting, and how big their runs are.

Every notebook starts with ``data = choose_data(DATA)``. The faces come from, in order:

1. the argument ``DATA`` when it is not None: a course-format ``train/`` folder
   (``images/`` + ``gt.csv``), or the word ``"synthetic"``;
2. the environment variable ``FACEPOINTS_DATA`` (the same two kinds of value);
3. ``data/train`` in the project, the README's place for the course data;
4. otherwise synthetic faces from :func:`facepoints_lib.tools.synth.make_synthetic_faces`,
   written once to ``data/synthetic/notebooks-<count>-seed<seed>/`` (or to the system's
   temporary folder when ``data/`` is not writable) and reused afterwards.

``FACEPOINTS_NB_FAST=1`` is CI mode (the test suite sets it): the same code paths with
small sizes, so that all notebooks run in a few minutes on two cores. Notebooks write
sizes as ``pick(normal, fast)``. ``FACEPOINTS_MODEL`` names a model file for notebook 04
(default: ``facepoints_model.pt`` at the project root; ``train`` trains one in the notebook).

This module is for the notebooks only; it is not frozen into ``solution.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.checkpoint import MODEL_FILENAME
from ..core.dataset import FaceSet, load_faces
from ..core.gt_csv import read_gt, read_img_shapes
from ..core.images import read_image_size
from ..core.inference import restores_torch_threads
from ..tools.synth import make_synthetic_faces

DATA_ENV = "FACEPOINTS_DATA"
FAST_ENV = "FACEPOINTS_NB_FAST"
MODEL_ENV = "FACEPOINTS_MODEL"
SYNTHETIC = "synthetic"
TRAIN_HERE = "train"

SYNTHETIC_FACES = 1000          # synthetic faces generated when a person runs a notebook
SYNTHETIC_FACES_FAST = 300      # ... and in CI mode
COURSE_FACES_FAST = 300         # course faces used in CI mode (a seeded subset)


def fast_mode() -> bool:
    """True in CI mode (``FACEPOINTS_NB_FAST`` set to anything but ``""``, ``0``, ``false``)."""
    return os.environ.get(FAST_ENV, "").strip().lower() not in ("", "0", "false", "no")


def pick(normal, fast):
    """``fast`` in CI mode, ``normal`` otherwise: the notebooks' sizes and step counts."""
    return fast if fast_mode() else normal


def project_root() -> Path:
    """The project's root: the folder holding ``pyproject.toml`` above the package or the cwd."""
    here = Path(__file__).resolve().parents[2]          # facepoints_lib/notebook/data.py -> the root
    for folder in (here, *Path.cwd().resolve().parents, Path.cwd().resolve()):
        if (folder / "pyproject.toml").is_file() and (folder / "facepoints_lib").is_dir():
            return folder
    return Path.cwd().resolve()


def shown_path(path: str | os.PathLike) -> str:
    """``path`` for printing, naming no machine's folders: relative to the project root
    when it lies inside it (a symlink such as ``data/train`` shown as itself, not as its
    target), else its last two parts."""
    plain, root = Path(os.path.abspath(path)), Path(os.path.abspath(project_root()))
    for inside, base in ((plain, root), (plain.resolve(), root.resolve())):
        try:
            return inside.relative_to(base).as_posix()
        except ValueError:
            continue
    return Path(*plain.parts[-2:]).as_posix()


@dataclass
class NotebookData:
    """A course-format folder of faces and what the notebooks should do with it."""

    root: Path                  # holds images/ and gt.csv
    synthetic: bool             # True for the generated faces
    fast: bool                  # CI mode: use few faces and few steps
    reason: str                 # why this folder was chosen, for the reader

    @property
    def img_dir(self) -> Path:
        return self.root / "images"

    @property
    def gt_path(self) -> Path:
        return self.root / "gt.csv"

    def read_gt(self) -> dict[str, np.ndarray]:
        """The keypoint table; in CI mode on course data, a seeded subset of it."""
        gt = read_gt(self.gt_path)
        if self.fast and not self.synthetic and len(gt) > COURSE_FACES_FAST:
            names = sorted(gt)
            keep = np.random.default_rng(0).choice(len(names), COURSE_FACES_FAST, replace=False)
            gt = {names[i]: gt[names[i]] for i in sorted(keep)}
        return gt

    def image_sizes(self, names: list[str]) -> np.ndarray:
        """``(N, 2)`` (width, height) of the stored images, from img_shapes.csv when present."""
        shapes = {}
        if (self.root / "img_shapes.csv").is_file():
            shapes = read_img_shapes(self.root / "img_shapes.csv")
        sizes = [(shapes[n][1], shapes[n][0]) if n in shapes else read_image_size(self.img_dir / n)
                 for n in names]
        return np.asarray(sizes, dtype=np.float64).reshape(-1, 2)

    def load(self, image_size: int, names: list[str] | None = None,
             gt: dict[str, np.ndarray] | None = None) -> FaceSet:
        """Decode the faces (all of ``read_gt()``, or ``names``) at ``image_size`` pixels."""
        gt = gt if gt is not None else self.read_gt()
        return load_faces(self.img_dir, image_size, gt, sorted(names) if names is not None else None)

    def describe(self) -> str:
        """One line for the reader: which faces, how many, and why."""
        kind = "synthetic faces" if self.synthetic else "faces"
        mode = " (CI mode: small sizes)" if self.fast else ""
        count = len(read_gt(self.gt_path))
        return f"{count} {kind} in {shown_path(self.root)}: {self.reason}{mode}"


def synthetic_dir(count: int, seed: int = 0) -> Path:
    """Where the notebooks' synthetic faces live (created by :func:`ensure_synthetic`)."""
    name = f"notebooks-{count}-seed{seed}"
    folder = project_root() / "data" / "synthetic"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError:
        folder = Path(tempfile.gettempdir()) / "facepoints-synthetic"
    return folder / name


def ensure_synthetic(count: int, seed: int = 0) -> Path:
    """Write ``count`` synthetic faces once (same faces every time) and return the folder."""
    target = synthetic_dir(count, seed)
    if _complete(target, count):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        make_synthetic_faces(scratch, count, seed=seed)
        if target.exists() and not _complete(target, count):
            shutil.rmtree(target, ignore_errors=True)
        try:
            scratch.rename(target)          # appears complete or not at all
        except OSError:
            if not _complete(target, count):   # another process may have won the race
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _complete(folder: Path, count: int) -> bool:
    """True when ``folder`` holds a finished set of ``count`` faces (gt.csv is written last)."""
    try:
        return (folder / "gt.csv").is_file() and len(read_gt(folder / "gt.csv")) == count
    except (OSError, ValueError):
        return False


def _is_course_folder(path: Path) -> bool:
    return (path / "gt.csv").is_file() and (path / "images").is_dir()


def choose_data(setting: str | os.PathLike | None = None, *, seed: int = 0,
                synthetic_count: int | None = None) -> NotebookData:
    """Pick the notebook's faces (see the module docstring for the order of the choices).

    A folder that is named but does not hold ``images/`` and ``gt.csv`` is an error, so
    a typo never silently falls back to synthetic faces.
    """
    fast = fast_mode()
    count = synthetic_count or pick(SYNTHETIC_FACES, SYNTHETIC_FACES_FAST)
    reason = None
    if setting is None and os.environ.get(DATA_ENV, "").strip():
        setting, reason = os.environ[DATA_ENV].strip(), f"chosen by {DATA_ENV}"
    elif setting is not None:
        reason = "chosen in the notebook"
    if setting is not None and str(setting).lower() == SYNTHETIC:
        return NotebookData(ensure_synthetic(count, seed), True, fast, f"{reason}, {count} generated")
    if setting is not None:
        folder = Path(setting).expanduser()
        if not folder.is_absolute() and not folder.exists():
            folder = project_root() / folder
        if not _is_course_folder(folder):
            raise FileNotFoundError(f"{setting} ({reason}) is not a course-format folder with "
                                    f"images/ and gt.csv")
        return NotebookData(folder.resolve(), False, fast, reason)
    default = project_root() / "data" / "train"
    if _is_course_folder(default):
        return NotebookData(default, False, fast, "the course data found at data/train")
    return NotebookData(ensure_synthetic(count, seed), True, fast,
                        f"no course data in data/train, so {count} were generated")


def model_path(setting: str | os.PathLike | None = None) -> Path | None:
    """The model file notebook 04 analyses: the argument, ``FACEPOINTS_MODEL``, or the shipped one.

    ``"train"`` (as argument or variable) returns None: train a model in the notebook.
    """
    if setting is None:
        setting = os.environ.get(MODEL_ENV, "").strip() or project_root() / MODEL_FILENAME
    if str(setting).lower() == TRAIN_HERE:
        return None
    path = Path(setting).expanduser()
    if not path.is_absolute() and not path.exists():
        path = project_root() / path
    return path


@dataclass
class AnalysedModel:
    """The model notebook 04 analyses and the faces it has never trained on."""

    model: object               # a KeypointNet in eval mode
    names: list[str]            # the faces to analyse
    note: str                   # what the model is and why these faces, for the reader


def model_to_analyse(setting: str | os.PathLike | None, data: NotebookData, gt: dict[str, np.ndarray], *,
                     holdout: int, split_seed: int = 0, log=print) -> AnalysedModel:
    """Load (or train) the model notebook 04 analyses and pick faces it never trained on.

    * A model file that records its validation faces (``facepoints train`` does) is
      analysed on those, when the data is the course data they come from.
    * A model trained on no more faces than lie outside the seeded holdout of
      ``facepoints bench`` (a benchmark model) is analysed on that holdout.
    * Any other model file is analysed on the holdout with a warning that it has
      probably seen those faces.
    * ``setting="train"``, or no model file: a small model is trained here on the faces
      outside the holdout (fast_train's recipe, more faces and epochs) and analysed on it.
    """
    from ..core.checkpoint import load_model
    from ..core.config import fast_config, fast_run
    from ..core.dataset import split_names
    from ..core.train import train_detector

    rest, held = split_names(sorted(gt), holdout, split_seed)
    path = model_path(setting)
    if path is not None and path.is_file():
        model = load_model(path)
        meta = model.metadata
        shown = f"{shown_path(path)} ({model.config.head} head, {model.config.image_size} px input)"
        own = [n for n in meta.get("val_names", []) if n in gt]
        used = meta.get("train_images", 0) + meta.get("val_images", 0)
        if not data.synthetic and own and len(own) == len(meta["val_names"]):
            return AnalysedModel(model, sorted(own), f"{shown} on its own {len(own)} validation faces, which it "
                                                     "never trained on")
        if data.synthetic:
            note = (f"{shown} on {len(held)} synthetic faces; a model trained on course faces does worse on "
                    "them (MODEL = \"train\" trains one on the synthetic faces)")
        elif used and used <= len(rest):
            note = f"{shown} on the benchmark holdout of {len(held)} faces, which it never trained on"
        else:
            note = (f"{shown} on a holdout of {len(held)} faces. WARNING: it trained on "
                    f"{used or 'an unknown number of'} faces, so it has probably seen these and the figures "
                    "flatter it; a model that records its validation faces, or one from `facepoints bench`, "
                    "gives honest figures")
        return AnalysedModel(model, held, note)
    why = "the setting says \"train\"" if path is None else f"there is no {shown_path(path)}"
    log(f"Because {why}, a small model is trained here on the {len(rest)} faces outside the holdout.")
    cfg = fast_config(epochs=pick(12, 2))
    cfg.cascade.epochs = pick(10, 2)                  # the second stage's share, as in the full recipe
    run = fast_run(max_images=pick(2000, 200), val_size=pick(100, 30), threads=pick(None, 1))
    model = train_detector({name: gt[name] for name in rest}, data.img_dir, fast_train=True, config=cfg,
                           run=run, log=log)
    return AnalysedModel(model, held, f"a small model trained here on {len(rest)} faces, on the {len(held)}-face "
                                      "holdout; it describes that model, not the shipped one")


def progress_bar(**kwargs):
    """A progress bar for notebooks: one line on stdout, redrawn in place (the default
    writes a new stderr line now and then, which a notebook shows as a pink box each)."""
    import sys

    from ..core.progress import TextProgress

    return TextProgress(stream=sys.stdout, interactive=True, min_interval=1.0, **kwargs)


@restores_torch_threads
def train_here(train: FaceSet, val: FaceSet, cfg, run, label: str = ""):
    """``fit.fit`` for a notebook's live experiment (recipe ``cfg``, run settings ``run``):
    first the time it should take on this machine (two steps timed on a throwaway copy,
    see ``fit.measure_step_seconds``), then one redrawn progress line and a one-line
    summary instead of a log line per validation. Returns ``(model, history)``."""
    import torch

    from ..tools.machine import describe_cpu
    from ..core.model import build_model, memory_format_for
    from ..core.inference import resolve_device, use_bf16
    from ..core.fit import StepSchedule, fit, measure_step_seconds

    device = resolve_device(run.device)
    if run.threads:
        torch.set_num_threads(run.threads)
    probe = build_model(cfg.model).to(device)
    batch = min(cfg.batch_size, len(train))
    step = measure_step_seconds(probe, train, cfg, batch, device, memory_format_for(probe),
                                use_bf16(run.bf16, device), warmup=1, timed=2)
    steps = StepSchedule.for_recipe(cfg, run, max(len(train) // batch, 1)).total_steps
    threads = torch.get_num_threads()
    print(f"{label}: {steps} steps, about {steps * step:.{0 if steps * step >= 10 else 1}f} s of training on this CPU "
          f"({describe_cpu()}; {threads} thread{'s' if threads != 1 else ''})")
    model, history = fit(train, val, cfg, run, progress=progress_bar, log=_quiet)
    last = history[-1] if history else {}
    print(f"{label}: val err {last.get('val_err', float('nan')):.3f} after {last.get('seconds', 0):.0f} s")
    return model, history


def _quiet(_line: str) -> None:
    """A ``log`` that keeps fit's lines out of the notebook (the history holds them)."""


def write_names(path: str | os.PathLike, names: list[str]) -> Path:
    """Write file names one per line (the format of ``facepoints train --exclude``)."""
    from ..core.files import write_atomically

    path = Path(path)
    if not path.is_absolute():
        path = project_root() / "notebooks" / path
    text = "".join(f"{name}\n" for name in names)
    write_atomically(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))
    print(f"wrote {len(names)} names to {shown_path(path)}")
    return path
