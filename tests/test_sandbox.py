"""The grader's fast_train in a sandbox: it must train, validate and write nothing.

``solution.py`` (the single submitted file) runs in a private mount namespace where the
whole file system is read-only (the data folder, the working directory and HOME
included) and the usual scratch folders (``/tmp``, ``/var/tmp``, ``/dev/shm``,
``/run/lock``) are fresh, empty and writable: every file the run leaves there is its own
doing, whatever else runs on the machine. The code under test runs as the unprivileged
user 65534 ("nobody"), with one thread and no GPU. Afterwards the scratch folders must be
as empty as before, except for the empty ``/tmp/torchinductor_<user>`` folder that torch
itself creates on the first optimiser step.

If this Python installation cannot be started by user 65534 (its files are not readable
by other users), the run falls back to uid 0 with every capability dropped, which the
read-only mounts confine just as well; the test says which in its failure messages.
Skipped without root, ``unshare`` or ``setpriv``: everything in the project's test
environment runs as root, so a plain ``chmod`` could not prove that nothing is written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from facepoints_lib.tools.synth import make_synthetic_faces
from sandbox_harness import (CHILD_PRELUDE, FAST_TRAIN, SOLUTION, child_report, clean_environment,
                             copy_solution, needs_root, skip_unless_private_mounts, validations)

UNSHARE, SETPRIV = shutil.which("unshare"), shutil.which("setpriv")

pytestmark = [
    needs_root,
    pytest.mark.skipif(UNSHARE is None or SETPRIV is None,
                       reason="needs util-linux's unshare and setpriv"),
    pytest.mark.skipif(not SOLUTION.is_file(), reason="solution.py has not been generated"),
]

# Runs as the unprivileged user inside the sandbox.
CHILD = r'''
import os, sys
code_dir, data_dir = sys.argv[1], sys.argv[2]
read_only = [data_dir, os.getcwd(), os.environ["HOME"], code_dir]
''' + CHILD_PRELUDE + r'''
import csv
import numpy as np

# gt.csv read as the course's run.py does: {filename: array of 28 numbers}.
with open(os.path.join(data_dir, "gt.csv")) as handle:
    rows = list(csv.reader(handle))[1:]
train_gt = {row[0]: np.array([float(v) for v in row[1:]]) for row in rows}
img_dir = os.path.join(data_dir, "images")
''' + FAST_TRAIN + r'''
report(log=log_lines, training=model.training)
'''

# Runs as root inside ``unshare --mount``: builds the sandbox, runs the child, lists writes.
WRAPPER = r'''
import json, os, subprocess, sys

source, python, setpriv = sys.argv[1:4]
SCRATCH = [d for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock") if os.path.isdir(d)]
BOX = "/tmp/facepoints-sandbox"

tree = {}                                     # the sandbox's files, read before /tmp is replaced
for folder, dirs, files in os.walk(source):
    rel = os.path.relpath(folder, source)
    tree[rel] = None
    for name in files:
        with open(os.path.join(folder, name), "rb") as handle:
            tree[os.path.join(rel, name)] = handle.read()

def run(*command):
    return subprocess.run(command, capture_output=True, text=True)

def cannot(reason):
    print("SKIP " + reason)
    sys.exit(0)

# Everything read-only, then fresh scratch folders on top.
for point in sorted({line.split()[1] for line in open("/proc/self/mounts")}, key=len):
    run("mount", "-o", "remount,bind,ro", point.replace("\\040", " "))
# A Python environment that lives in a scratch folder (a checkout under /tmp) must stay
# visible: park it on /mnt before the fresh tmpfs hides it, then bind it back read-only.
HOLD = "/mnt"
KEEP = [p for p in (sys.prefix,) if any(p == d or p.startswith(d + "/") for d in SCRATCH)]
if KEEP:
    done = run("mount", "--bind", KEEP[0], HOLD) if os.path.isdir(HOLD) else None
    if done is None or done.returncode:
        cannot(f"the Python environment {KEEP[0]} is in a scratch folder and cannot be kept visible")
for folder in SCRATCH:
    done = run("mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", folder)
    if done.returncode:
        cannot(f"cannot mount a tmpfs on {folder}: {done.stderr.strip()}")
for path in KEEP:
    os.makedirs(path, mode=0o755, exist_ok=True)
    for step in (["--bind", HOLD, path], ["-o", "remount,bind,ro", path]):
        done = run("mount", *step)
        if done.returncode:
            cannot(f"cannot bind the Python environment back to {path}: {done.stderr.strip()}")
if run("touch", "/usr/facepoints-write-probe").returncode == 0:
    os.remove("/usr/facepoints-write-probe")
    cannot("cannot make the root file system read-only in a mount namespace")

for rel, data in sorted(tree.items()):
    path = os.path.normpath(os.path.join(BOX, rel))
    if data is None:
        os.makedirs(path, mode=0o755, exist_ok=True)
        os.chmod(path, 0o755)
    else:
        with open(path, "wb") as handle:
            handle.write(data)
        os.chmod(path, 0o644)
os.chmod("/tmp", 0o1777)
for step in (["--bind", BOX, BOX], ["-o", "remount,bind,ro", BOX]):
    done = run("mount", *step)
    if done.returncode:
        cannot(f"cannot bind-mount the sandbox read-only: {done.stderr.strip()}")

def listing():
    found = {}
    for root in SCRATCH:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if os.path.join(folder, d) not in KEEP]
            for name in dirs + files:
                path = os.path.join(folder, name)
                st = os.lstat(path)
                found[path] = (st.st_mode, st.st_size if name in files else 0, st.st_mtime_ns, st.st_uid)
    return found

env = {"HOME": BOX + "/home", "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
       "CUDA_VISIBLE_DEVICES": ""}
as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
as_capless_root = [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs"]
before = listing()              # taken before the probe: its writes count too
usable = subprocess.run(as_nobody + [python, "-I", "-c", "import torch, numpy, PIL"],
                        cwd=BOX + "/cwd", env=env, capture_output=True, text=True)
user = "nobody" if usable.returncode == 0 else "capless-root"
result = subprocess.run((as_nobody if user == "nobody" else as_capless_root)
                        + [python, "-I", BOX + "/code/child.py", BOX + "/code", BOX + "/data/train"],
                        cwd=BOX + "/cwd", env=env, capture_output=True, text=True, timeout=540)
after = listing()
written = sorted(p for p, info in after.items() if before.get(p) != info)
written += sorted(p + " (removed)" for p in before if p not in after)
empty_dirs = sorted(p for p in written if os.path.isdir(p) and not os.listdir(p))
print("WRAPPER " + json.dumps({
    "user": user, "probe": usable.stderr[-500:], "returncode": result.returncode,
    "stdout": result.stdout, "stderr": result.stderr, "written": written, "empty_dirs": empty_dirs,
}))
'''


@pytest.fixture(scope="module")
def sandbox_source(tmp_path_factory):
    """What the sandbox will hold: synthetic train data, solution.py and the child script."""
    root = tmp_path_factory.mktemp("sandbox_source")
    make_synthetic_faces(root / "data" / "train", 160, seed=7)
    copy_solution(root / "code", CHILD)
    (root / "home").mkdir()
    (root / "cwd").mkdir()
    (root.parent / "wrapper.py").write_text(WRAPPER)
    return root


def test_fast_train_in_a_read_only_sandbox(sandbox_source):
    skip_unless_private_mounts()
    env = clean_environment()
    run = subprocess.run([UNSHARE, "--mount", "--propagation", "private", sys.executable, "-I",
                          str(sandbox_source.parent / "wrapper.py"), str(sandbox_source),
                          sys.executable, SETPRIV],
                         capture_output=True, text=True, timeout=590, env=env)
    if run.returncode == 0 and run.stdout.startswith("SKIP "):
        pytest.skip(run.stdout[5:].strip())
    assert run.returncode == 0 and "WRAPPER " in run.stdout, run.stdout[-2000:] + run.stderr[-3000:]
    box = json.loads(run.stdout.split("WRAPPER ", 1)[1])
    where = f"[ran as {box['user']}] "
    assert box["returncode"] == 0, where + box["stdout"][-2000:] + box["stderr"][-3000:]
    result = child_report(box["stdout"])
    assert result is not None, where + box["stdout"][-2000:]

    assert result["uid"] == (65534 if box["user"] == "nobody" else 0), where
    assert len(result["probes"]) == 4, where                 # data, working folder, HOME, code
    assert set(result["probes"].values()) <= {"OSError", "PermissionError"}, where + str(result["probes"])
    assert result["package_loaded"] == [], where          # only the single file was used
    assert result["cuda"] is False, where
    assert any(line.endswith(", 1 thread") for line in result["log"]), where   # fast_train's one thread
    assert result["training"] is False, where
    history = validations(result["log"])                   # validation after each of the 2 epochs
    assert [h["epoch"] for h in history] == [1, 2], where
    assert all(0 < h["val_err"] < float("inf") for h in history), where
    # 160 faces, fewer than 5 x the grader's val_size of 100: a fifth of them validates
    assert "(32 for validation)" in box["stdout"] and "val err" in box["stdout"], where

    torch_scratch = [p for p in box["empty_dirs"]
                     if os.path.dirname(p) == "/tmp" and os.path.basename(p).startswith("torchinductor_")]
    written = [p for p in box["written"] if p not in torch_scratch]
    assert written == [], where + f"files written by fast_train: {written}"
