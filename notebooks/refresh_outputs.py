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
from jupyter_client.manager import start_new_kernel
from nbformat.v4 import output_from_msg

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
        if is_checked(cell) and not (cell.outputs and cell.execution_count):
            found.append(f"cell {i} is marked {CHECK_MARK} but has no stored output "
                         "(nbval needs the output and its execution count)")
    return found


def execute(nb, cwd: Path, timeout: int = 600) -> None:
    """Run every code cell in a fresh python3 kernel, storing outputs as JupyterLab would.

    Uses jupyter_client's blocking client, as nbval does: nbclient's asynchronous client
    sometimes waits for its whole cell timeout after a widget cell (jupyter/nbclient#312).
    """
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(cwd))
    try:
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            outputs = []

            def keep(msg, outputs=outputs):
                kind = msg["header"]["msg_type"]
                if kind in ("stream", "display_data", "execute_result", "error"):
                    outputs.append(output_from_msg(msg))
                elif kind == "clear_output":
                    outputs.clear()

            reply = client.execute_interactive(cell.source, timeout=timeout, output_hook=keep,
                                               allow_stdin=False)
            cell.outputs, cell.execution_count = outputs, reply["content"].get("execution_count")
            if reply["content"]["status"] != "ok":
                error = reply["content"]
                raise RuntimeError(f"cell {index} failed: {error.get('ename')}: {error.get('evalue')}")
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def refresh(path: Path, timeout: int = 600) -> None:
    """Execute ``path`` in CI mode, then keep only the checked cells' outputs."""
    nb = nbformat.read(path, as_version=4)
    saved = {k: os.environ.get(k) for k in CI_ENV}
    os.environ.update(CI_ENV)
    try:
        execute(nb, path.parent, timeout)
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
