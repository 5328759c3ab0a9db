"""Notebooks saved clean: JupyterLab's saves of the project's notebooks carry no outputs.

A student runs a notebook and saves it (autosave does it for them); its outputs would then
hold pictures of course faces, which must never be committed, and every save would show
the notebook as modified. JupyterLab saves through the Jupyter server's contents manager,
which calls its ``pre_save_hook`` first: ``pre_save_hook`` here strips what a run adds
(outputs, execution counts, widget state, the cells' run metadata, the kernel's Python
version) from any notebook in the project's ``notebooks/`` folder, so the file on disk
stays exactly as committed while the open notebook keeps showing its outputs. Other
notebooks the server saves are left alone.

The hook is switched on by ``etc/jupyter/jupyter_server_config.d/facepoints.json``, which
``pip install`` puts into the environment's Jupyter configuration (see pyproject.toml).
``clean_notebook`` is the same stripping for a notebook as a dict (nbformat 4).
"""

from __future__ import annotations

import os
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
KEPT_CELL_METADATA = ("tags",)            # what a cell keeps: its tags (nbval-check-output)
KEPT_NOTEBOOK_METADATA = ("kernelspec", "language_info")


def clean_notebook(notebook: dict) -> dict:
    """Strip, in place, what running and saving a notebook adds; return it.

    Code cells lose their outputs and execution counts; every cell keeps only its
    ``KEPT_CELL_METADATA`` (JupyterLab adds run timings, scroll and collapse states); the
    notebook keeps only ``KEPT_NOTEBOOK_METADATA``, its ``language_info`` without the
    kernel's Python version (widget state goes).
    """
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cell["metadata"] = {key: value for key, value in cell.get("metadata", {}).items()
                            if key in KEPT_CELL_METADATA}
    metadata = notebook.get("metadata", {})
    kept = {key: metadata[key] for key in KEPT_NOTEBOOK_METADATA if key in metadata}
    if isinstance(kept.get("language_info"), dict):
        kept["language_info"] = {k: v for k, v in kept["language_info"].items() if k != "version"}
    notebook["metadata"] = kept
    return notebook


def is_project_notebook(path: str | os.PathLike, root_dir: str | os.PathLike,
                        notebooks: Path = NOTEBOOKS) -> bool:
    """True when ``path`` (relative to the server's ``root_dir``) is a notebook directly in
    the project's ``notebooks/`` folder."""
    where = Path(os.path.realpath(Path(root_dir) / str(path).lstrip("/")))
    return where.suffix == ".ipynb" and where.parent == notebooks.resolve()


def pre_save_hook(model: dict, path: str, contents_manager, **kwargs) -> None:
    """The Jupyter server's ``ContentsManager.pre_save_hook``: clean a project notebook's
    content before it is written (``clean_notebook``); anything else passes untouched."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    if is_project_notebook(path, contents_manager.root_dir):
        clean_notebook(model["content"])
