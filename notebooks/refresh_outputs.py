"""Re-record the notebooks' checked outputs and strip everything else.

    python notebooks/refresh_outputs.py            # all notebooks
    python notebooks/refresh_outputs.py 02_augmentations.ipynb
    python notebooks/refresh_outputs.py --check    # exit 1 if a notebook is not clean

Each notebook is executed in CI mode (``FACEPOINTS_DATA=synthetic``,
``FACEPOINTS_NB_FAST=1``, the settings the test suite uses). Cells whose first line is
``# NBVAL_CHECK_OUTPUT`` keep their outputs (text only) as the expected result that
``pytest --nbval-lax`` compares; every other cell is stored without outputs, and widget
state is dropped. See README.md in this folder.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
CI_ENV = {"FACEPOINTS_DATA": "synthetic", "FACEPOINTS_NB_FAST": "1"}


def is_checked(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith(CHECK_MARK)


def text_only(output):
    """An output reduced to its text (figures and widget views are never compared)."""
    if output.get("output_type") in ("display_data", "execute_result"):
        output["data"] = {k: v for k, v in output["data"].items() if k == "text/plain"}
        output["metadata"] = {}
    return output


def clean(nb) -> None:
    """Keep the checked cells' text outputs, clear all other outputs and counts."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        if is_checked(cell):
            cell.outputs = [text_only(o) for o in cell.outputs if o.get("name") != "stderr"]
        else:
            cell.outputs, cell.execution_count = [], None


def problems(nb) -> list[str]:
    """Why a committed notebook is not clean ([] when it is)."""
    found = []
    if "widgets" in nb.metadata:
        found.append("widget state in the metadata")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and not is_checked(cell) and (cell.outputs or cell.execution_count):
            found.append(f"cell {i} has outputs but is not marked {CHECK_MARK}")
        if is_checked(cell) and not cell.outputs:
            found.append(f"cell {i} is marked {CHECK_MARK} but has no stored output")
    return found


def refresh(path: Path, timeout: int = 600) -> None:
    nb = nbformat.read(path, as_version=4)
    saved = {k: os.environ.get(k) for k in CI_ENV}
    os.environ.update(CI_ENV)
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    clean(nb)
    nbformat.write(nb, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebooks (default: all in this folder)")
    parser.add_argument("--check", action="store_true", help="only report notebooks that are not clean")
    args = parser.parse_args(argv)
    paths = [Path(p) if Path(p).exists() else HERE / p for p in args.notebooks] or sorted(HERE.glob("[0-9]*.ipynb"))
    status = 0
    for path in paths:
        if args.check:
            found = problems(nbformat.read(path, as_version=4))
            for problem in found:
                print(f"{path.name}: {problem}")
            status |= bool(found)
        else:
            print(f"refreshing {path.name}")
            refresh(path)
    return status


if __name__ == "__main__":
    sys.exit(main())
