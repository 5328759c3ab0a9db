"""fast_train must work where no temporary folder is writable.

Every ``torch.optim`` optimiser imports ``torch._dynamo`` on first use, and that import
resolves inductor's cache folder through ``tempfile.gettempdir()``, which raises
``FileNotFoundError: No usable temporary directory`` when /tmp, /var/tmp, /usr/tmp and
the working directory are all read-only (as a grader's sandbox may mount them). Here the
frozen ``solution.py`` runs a small fast_train in a private mount namespace with every one
of those folders (and /dev/shm) bind-mounted read-only, and must train and validate.

Skipped without root, ``unshare`` or ``mount``, or where private mount namespaces are not
permitted: as root a plain ``chmod`` would not make a folder unwritable.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from facepoints_lib.tools.synth import make_synthetic_faces
from sandbox_harness import (CHILD_PRELUDE, SOLUTION, child_report, clean_environment, copy_solution,
                             needs_root, skip_unless_private_mounts, validations)

MOUNT = shutil.which("mount")

pytestmark = [
    needs_root,
    pytest.mark.skipif(shutil.which("unshare") is None or MOUNT is None, reason="needs util-linux's unshare and mount"),
    pytest.mark.skipif(not SOLUTION.is_file(), reason="solution.py has not been generated"),
]

# Runs as root inside ``unshare --mount``: makes the temporary folders read-only, runs the child.
WRAPPER = r'''
import os, subprocess, sys

mount, python, child, cwd = sys.argv[1:5]
folders = [d for d in ("/tmp", "/var/tmp", "/usr/tmp", "/dev/shm") if os.path.isdir(d)] + [cwd]
for folder in folders:
    for args in (["--bind", folder, folder], ["-o", "remount,bind,ro", folder]):
        done = subprocess.run([mount, *args], capture_output=True, text=True)
        if done.returncode:
            print(f"SKIP cannot make {folder} read-only: {done.stderr.strip()}")
            sys.exit(0)
env = {k: v for k, v in os.environ.items()
       if k not in ("TMPDIR", "TEMP", "TMP", "TORCHINDUCTOR_CACHE_DIR") and not k.startswith("PYTHON")}
env["CUDA_VISIBLE_DEVICES"] = ""
sys.exit(subprocess.run([python, "-I", "-B", child, *sys.argv[5:]], cwd=cwd, env=env).returncode)
'''

# Runs inside the namespace: checks that no temporary folder is usable, then trains.
CHILD = r'''
import sys, tempfile
code_dir, data_dir, cwd = sys.argv[1:4]
read_only = [cwd]
''' + CHILD_PRELUDE + r'''
try:
    tempfile.gettempdir()
    temp_usable = True
except FileNotFoundError:
    temp_usable = False
log_lines = []
run = solution.fast_run(max_images=40, val_size=8)     # fast_train's run, on fewer faces
model = solution.train_detector(os.path.join(data_dir, "gt.csv"), os.path.join(data_dir, "images"),
                                fast_train=True, run=run, log=log_lines.append)
report(temp_usable=temp_usable, log=log_lines, training=model.training,
       cache_env=os.environ.get("TORCHINDUCTOR_CACHE_DIR"))
'''


def test_fast_train_with_read_only_temp_folders(tmp_path):
    skip_unless_private_mounts()
    data = make_synthetic_faces(tmp_path / "data", 40, seed=5)
    child = copy_solution(tmp_path / "code", CHILD)
    (tmp_path / "cwd").mkdir()
    run = subprocess.run([shutil.which("unshare"), "--mount", "--propagation", "private", sys.executable, "-I",
                          "-c", WRAPPER, MOUNT, sys.executable, str(child), str(tmp_path / "cwd"),
                          str(child.parent), str(data), str(tmp_path / "cwd")],       # the child's arguments
                         capture_output=True, text=True, timeout=300, env=clean_environment())
    if run.returncode == 0 and run.stdout.startswith("SKIP "):
        pytest.skip(run.stdout[5:].strip())
    result = child_report(run.stdout)
    assert run.returncode == 0 and result is not None, run.stdout[-2000:] + run.stderr[-3000:]

    assert result["temp_usable"] is False          # the sandbox really had no usable temp folder
    assert set(result["probes"].values()) <= {"OSError", "PermissionError"}, result["probes"]
    assert result["training"] is False
    history = validations(result["log"])           # fast_run validates after each of fast_config's 2 epochs,
    assert [h["epoch"] for h in history] == [1, 2, 1, 2]   # of each network
    assert all(0 < h["val_err"] < float("inf") for h in history)
    assert any("(8 for validation)" in line for line in result["log"])
    assert result["cache_env"] is None             # the environment is left as it was
