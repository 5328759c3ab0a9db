"""Notebooks that stay clean: the outputs of a run never reach the files or a commit.

A student runs a notebook and saves it (JupyterLab's autosave does it for them); its
outputs then hold pictures of course faces, which must never be committed, and every
save would show the notebook as modified. ``clean_notebook`` strips what a run adds
(outputs, execution counts, widget state, the cells' run metadata, the kernel's Python
version), in two places:

* **On save, in JupyterLab**: ``pre_save_hook`` is the Jupyter server's
  ``ContentsManager.pre_save_hook`` for the project's ``notebooks/`` folder (other
  notebooks pass untouched), so the file on disk stays exactly as committed and
  ``git status`` shows nothing; the open notebook keeps showing its outputs until it is
  closed. ``facepoints jupyter-config`` (in the README's install command) merges
  ``JUPYTER_CONFIG`` into the environment's ``etc/jupyter/jupyter_server_config.json``.
* **On commit, from any editor**: the module is also a git *clean filter*
  (``.gitattributes``, ``.gitconfig``; the README's install command includes the latter
  with ``git config include.path ../.gitconfig``). It runs as
  ``python3 facepoints_lib/notebook/clean.py`` with the standard library only; ``git add``
  stores a notebook without outputs whatever saved it. Text that is not a notebook passes
  through unchanged: the filter never loses anything.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
JUPYTER_CONFIG = {"ContentsManager": {"pre_save_hook": "facepoints_lib.notebook.clean.pre_save_hook"}}
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


def clean_text(text: str) -> str:
    """A notebook file's text, cleaned and written as Jupyter writes notebooks (sorted keys,
    indent 1, a final newline); any text that is not a notebook, unchanged."""
    try:
        notebook = json.loads(text)
    except ValueError:
        return text
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        return text
    return json.dumps(clean_notebook(notebook), sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def is_project_notebook(path: str | os.PathLike, root_dir: str | os.PathLike) -> bool:
    """True when ``path`` (relative to the server's ``root_dir``) is a notebook directly in
    the project's ``notebooks/`` folder."""
    where = Path(os.path.realpath(Path(root_dir) / str(path).lstrip("/")))
    return where.suffix == ".ipynb" and where.parent == NOTEBOOKS.resolve()


def pre_save_hook(model: dict, path: str, contents_manager, **kwargs) -> None:
    """The Jupyter server's ``ContentsManager.pre_save_hook``: clean a project notebook's
    content before it is written; anything else passes untouched."""
    if model.get("type") == "notebook" and isinstance(model.get("content"), dict) \
            and is_project_notebook(path, contents_manager.root_dir):
        clean_notebook(model["content"])


def write_jupyter_config(prefix: str | os.PathLike = sys.prefix) -> Path:
    """Switch ``pre_save_hook`` on for the Jupyter server of the environment at ``prefix``:
    merge ``JUPYTER_CONFIG`` into its ``etc/jupyter/jupyter_server_config.json`` (the
    environment's own configuration file; other settings in it are kept). Files in
    ``jupyter_server_config.d`` would not do: the server reads only the extensions they
    enable."""
    target = Path(prefix) / "etc" / "jupyter" / "jupyter_server_config.json"
    config = json.loads(target.read_text(encoding="utf-8")) if target.is_file() else {}
    if not isinstance(config, dict):
        raise ValueError(f"{target} does not hold a JSON object: fix or remove it first")
    for section, values in JUPYTER_CONFIG.items():
        config.setdefault(section, {}).update(values)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(config, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return target


def main() -> int:
    """The git filter: a notebook on standard input, the clean notebook on standard output."""
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        sys.stdout.buffer.write(data)
        return 0
    sys.stdout.buffer.write(clean_text(text).encode("utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
