"""What the three sandbox tests share: the frozen solution.py, loaded by path in a child
process that reports back in one tagged JSON line.

``test_sandbox.py`` (a whole read-only file system), ``test_readonly_tmp.py`` (no usable
temporary folder) and ``test_hardening_sandbox.py`` (an unprivileged user and a memory
cap) each build their own confinement; the child's side is the same everywhere:
``CHILD_PRELUDE`` probes which folders refuse a write, loads ``solution.py`` as the
course's run.py would (by path, as the module ``solution``), and defines
``report(**fields)``. ``FAST_TRAIN`` runs ``train_detector(..., fast_train=True)``
exactly as the grader calls it and keeps its log lines, from which ``validations`` reads
the validation records back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SOLUTION = REPO_ROOT / "solution.py"
REPORT_TAG = "CHILD-REPORT "

# Python source run first in every sandbox child; it expects ``code_dir`` (the folder of
# solution.py) and ``read_only`` (folders that must refuse a new file) to be defined.
CHILD_PRELUDE = r'''
import importlib.util, json, os, sys

probes = {}                                   # each folder must refuse a new file
for folder in read_only:
    try:
        with open(os.path.join(folder, "write-probe"), "x"):
            pass
        probes[folder] = "written"
    except OSError as exc:
        probes[folder] = type(exc).__name__

_found = importlib.util.spec_from_file_location("solution", os.path.join(code_dir, "solution.py"))
solution = importlib.util.module_from_spec(_found)
sys.modules["solution"] = solution            # as a normal import does (dataclasses need it)
_found.loader.exec_module(solution)


def report(**fields):
    import torch
    fields.update(probes=probes, uid=os.getuid(), threads=torch.get_num_threads(),
                  cuda=torch.cuda.is_available(),
                  package_loaded=sorted(m for m in sys.modules if m.split(".")[0] == "facepoints_lib"))
    print("CHILD-REPORT " + json.dumps(fields), flush=True)
'''

# ``train_detector`` as the grader calls it; expects ``train_gt`` and ``img_dir``.
FAST_TRAIN = r'''
log_lines = []

def log(line):
    log_lines.append(line)
    print(line, flush=True)

model = solution.train_detector(train_gt, img_dir, fast_train=True, log=log)
'''

_VALIDATION = re.compile(r"^epoch (\d+): train loss ([^,]+), val err ([^,]+), NME ([^,]+),")


def validations(log_lines: list[str]) -> list[dict]:
    """The validation records of a training log (``fit`` logs one line per validation)."""
    records = []
    for line in log_lines:
        found = _VALIDATION.match(line)
        if found:
            records.append({"epoch": int(found[1]), "train_loss": float(found[2]),
                            "val_err": float(found[3]), "val_nme": float(found[4])})
    return records


def child_report(stdout: str) -> dict | None:
    """The last report a child printed, or None."""
    lines = [line for line in stdout.splitlines() if line.startswith(REPORT_TAG)]
    return json.loads(lines[-1][len(REPORT_TAG):]) if lines else None


def copy_solution(code_dir: Path, child_source: str) -> Path:
    """Put solution.py and a child script into ``code_dir``; return the script's path."""
    code_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(SOLUTION, code_dir / "solution.py")
    script = code_dir / "child.py"
    script.write_text(child_source)
    return script


def skip_unless_private_mounts() -> None:
    """Skip the calling test where ``unshare --mount`` is not permitted."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --mount is not permitted here (no private mount namespaces)")


def clean_environment() -> dict[str, str]:
    """This process's environment without the variables that steer Python itself."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


needs_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                                reason="needs root: as root a plain chmod could not make a folder unwritable")
