"""Re-record the notebooks' checked outputs and strip every output from the notebooks.

    python notebooks/refresh_outputs.py            # all notebooks
    python notebooks/refresh_outputs.py 02_augmentations.ipynb
    python notebooks/refresh_outputs.py --check    # exit 1 if a notebook is not clean

Each notebook is executed in CI mode (``FACEPOINTS_DATA=synthetic``,
``FACEPOINTS_NB_FAST=1``, the settings the test suite uses). The text printed by cells
tagged ``nbval-check-output`` is recorded in ``expected_outputs.json`` (by notebook and
cell id); the notebook itself is stored with no outputs at all. The tests build a copy
of each notebook with those outputs put back (``checked_copy``) and run nbval on it, so
a notebook you ran and saved in JupyterLab, outputs and all, changes nothing they check.
See README.md in this folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import nbformat
from jupyter_client.manager import start_new_kernel
from nbformat.v4 import output_from_msg

HERE = Path(__file__).resolve().parent
CHECK_TAG = "nbval-check-output"
EXPECTED = HERE / "expected_outputs.json"
CI_ENV = {"FACEPOINTS_DATA": "synthetic", "FACEPOINTS_NB_FAST": "1"}


def is_checked(cell) -> bool:
    return cell.cell_type == "code" and CHECK_TAG in cell.metadata.get("tags", [])


def text_only(output) -> dict:
    """An output reduced to its text (figures and widget views are never compared)."""
    output = dict(output)
    if output.get("output_type") in ("display_data", "execute_result"):
        output["data"] = {k: v for k, v in output["data"].items() if k == "text/plain"}
        output["metadata"] = {}
    return output


def read_expected() -> dict:
    """{notebook file name: {cell id: [outputs]}} (empty when the file is absent)."""
    return json.loads(EXPECTED.read_text(encoding="utf-8")) if EXPECTED.exists() else {}


def strip(nb) -> dict:
    """Clear every output, count and widget state; return the checked cells' text
    outputs by cell id (what ``refresh`` records)."""
    nb.metadata.pop("widgets", None)
    recorded = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if is_checked(cell):
            recorded[cell.id] = [text_only(o) for o in cell.outputs if o.get("name") != "stderr"]
        cell.metadata.pop("execution", None)
        cell.outputs, cell.execution_count = [], None
    return recorded


def checked_copy(path: Path, target: Path) -> Path:
    """Write ``path`` to ``target`` with every output stripped and the recorded outputs of
    its checked cells put back (with an execution count, which nbval needs)."""
    nb = nbformat.read(path, as_version=4)
    strip(nb)
    expected = read_expected().get(path.name, {})
    for count, cell in enumerate((c for c in nb.cells if is_checked(c)), start=1):
        cell.outputs = [nbformat.from_dict(o) for o in expected.get(cell.id, [])]
        cell.execution_count = count
    nbformat.write(nb, target)
    return target


def problems(nb, name: str, expected: dict | None = None) -> list[str]:
    """What is wrong with a notebook's checks ([] when nothing): a checked cell without
    recorded outputs, recorded outputs for a cell that is gone or no longer checked."""
    expected = read_expected() if expected is None else expected
    mine = expected.get(name, {})
    checked = {c.id for c in nb.cells if is_checked(c)}
    found = [f"cell {cid} is tagged {CHECK_TAG} but has no recorded output" for cid in sorted(checked - set(mine))]
    found += [f"recorded output for cell {cid}, which is not a checked cell" for cid in sorted(set(mine) - checked)]
    found += [f"cell {c.id} still starts with the old # NBVAL_CHECK_OUTPUT comment: use the tag"
              for c in nb.cells if c.cell_type == "code" and c.source.lstrip().startswith("# NBVAL_CHECK_OUTPUT")]
    return found


def has_outputs(nb) -> bool:
    """True when any code cell carries outputs or an execution count."""
    return any(c.cell_type == "code" and (c.outputs or c.execution_count) for c in nb.cells)


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
    """Execute ``path`` in CI mode, record its checked cells' outputs, store it stripped."""
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
    expected = read_expected()
    expected[path.name] = strip(nb)
    EXPECTED.write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n", encoding="utf-8")
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
            nb = nbformat.read(path, as_version=4)
            found = problems(nb, path.name) + (["outputs stored in the notebook"] if has_outputs(nb) else [])
            for problem in found:
                print(f"{path.name}: {problem}")
            status |= bool(found)
        else:
            print(f"refreshing {path.name}")
            refresh(path)
    return status


if __name__ == "__main__":
    sys.exit(main())
