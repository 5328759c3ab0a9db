"""A notebook run and saved the way JupyterLab saves it leaves the project clean.

JupyterLab saves through the Jupyter server's contents manager (``PUT /api/contents`` ->
``ContentsManager.save``), which runs the ``pre_save_hook`` that ``facepoints
jupyter-config`` configures (``notebook.clean.JUPYTER_CONFIG``). Here a notebook is
executed in a kernel as JupyterLab runs it, given the metadata JupyterLab adds, and saved
through that contents manager, so configured, into a git repository set up as the
README's install command sets up a clone: ``git status`` must show nothing. An editor
that writes the outputs into the file anyway is caught by git's clean filter: ``git add``
stores the notebook exactly as committed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from facepoints_lib.notebook import clean
from facepoints_lib.notebook.data import shown_path

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"
SAVED = "02_augmentations.ipynb"          # sliders, figures and checked text: a bit of everything
FILTER_FILES = (".gitattributes", ".gitconfig", ".gitignore", "facepoints_lib/notebook/clean.py")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}).stdout


def _clone_with_filter(tmp_path: Path) -> Path:
    """A git repository holding the committed notebook and the filter's files, configured
    as the README's install command configures a clone."""
    repo = tmp_path / "clone"
    for name in (*FILTER_FILES, f"notebooks/{SAVED}"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / name, repo / name)
    _git(repo, "init", "-q")
    _git(repo, "config", "--local", "include.path", "../.gitconfig")      # the README's line
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "committed notebook")
    return repo


def _refresh_outputs():
    spec = importlib.util.spec_from_file_location("refresh_outputs", NOTEBOOKS / "refresh_outputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_install_command_sets_up_the_hook_and_the_filter(tmp_path):
    readme = (REPO_ROOT / "README.md").read_text()
    assert "facepoints jupyter-config && git config include.path ../.gitconfig" in readme
    assert "notebooks/*.ipynb filter=facepoints-notebook" in (REPO_ROOT / ".gitattributes").read_text()
    assert "clean = python3 facepoints_lib/notebook/clean.py" in (REPO_ROOT / ".gitconfig").read_text()
    config = tmp_path / "etc" / "jupyter" / "jupyter_server_config.json"
    config.parent.mkdir(parents=True)
    config.write_text('{"ServerApp": {"port": 9999}}')                 # a setting of the user's own
    assert clean.write_jupyter_config(tmp_path) == config
    assert json.loads(config.read_text()) == {"ServerApp": {"port": 9999}, **clean.JUPYTER_CONFIG}


def _run_like_jupyterlab(repo: Path, monkeypatch) -> dict:
    """The committed notebook executed in a kernel, as JupyterLab sends it to be saved."""
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(repo / "notebooks" / SAVED, as_version=4)
    for key, value in {"FACEPOINTS_DATA": "synthetic", "FACEPOINTS_NB_FAST": "1"}.items():
        monkeypatch.setenv(key, value)
    _refresh_outputs().execute(notebook, NOTEBOOKS)              # outputs and all
    content = json.loads(nbformat.writes(notebook))
    content["metadata"]["language_info"]["version"] = "3.11.7"   # what JupyterLab adds
    content["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    content["cells"][1]["metadata"].update(scrolled=True, execution={"iopub.status.busy": "2026-12-07"})
    assert sum(len(cell.get("outputs", [])) for cell in content["cells"]) > 3
    return content


@pytest.mark.notebooks
def test_running_and_saving_a_notebook_in_jupyterlab_leaves_git_clean(tmp_path, monkeypatch):
    """Running all four notebooks and saving left three modified, one at 1.4 MB of outputs
    holding pictures of course faces."""
    pytest.importorskip("jupyter_server")
    from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
    from traitlets.config import Config

    repo = _clone_with_filter(tmp_path)
    monkeypatch.setattr(clean, "NOTEBOOKS", repo / "notebooks")   # the clone's notebooks are the project's
    content = _run_like_jupyterlab(repo, monkeypatch)
    manager = AsyncLargeFileManager(root_dir=str(repo), config=Config(clean.JUPYTER_CONFIG))
    asyncio.run(manager.save({"type": "notebook", "format": "json", "content": content}, f"notebooks/{SAVED}"))
    assert (repo / "notebooks" / SAVED).read_bytes() == (NOTEBOOKS / SAVED).read_bytes()
    assert _git(repo, "status", "--porcelain") == ""


@pytest.mark.notebooks
def test_outputs_another_editor_saves_are_never_committed(tmp_path, monkeypatch):
    repo = _clone_with_filter(tmp_path)
    content = _run_like_jupyterlab(repo, monkeypatch)
    (repo / "notebooks" / SAVED).write_text(json.dumps(content, indent=1), encoding="utf-8")   # no hook
    assert _git(repo, "diff") == ""                              # git sees it through the filter
    _git(repo, "add", ".")
    stored = subprocess.run(["git", "-C", str(repo), "show", f":notebooks/{SAVED}"], check=True,
                            capture_output=True).stdout
    assert stored == (NOTEBOOKS / SAVED).read_bytes()            # stored exactly as committed
    assert _git(repo, "status", "--porcelain") == ""


def test_the_filter_passes_anything_else_through():
    assert clean.clean_text("not json {") == "not json {"
    assert clean.clean_text('{"a": 1}') == '{"a": 1}'
    text = (NOTEBOOKS / SAVED).read_text(encoding="utf-8")
    assert clean.clean_text(text) == text                        # a committed notebook is clean already


def test_printed_paths_name_no_machine_folder(tmp_path, monkeypatch):
    """data.describe() printed the absolute target of the data/train symlink (notebook 03's
    saved output then held a machine path)."""
    from facepoints_lib.notebook import data

    target = tmp_path / "somewhere" / "course" / "train"
    target.mkdir(parents=True)
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "train").symlink_to(target)
    monkeypatch.setattr(data, "project_root", lambda: project)
    assert shown_path(project / "data" / "train") == "data/train"
    assert shown_path(target) == "course/train"
