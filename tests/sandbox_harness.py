"""What the sandbox tests share: the frozen solution.py, loaded by path in a child
process that reports back in one tagged JSON line.

``test_sandbox.py`` (a whole read-only file system), ``test_readonly_tmp.py`` (no usable
temporary folder) and ``test_hardening_sandbox.py`` (an unprivileged user and a memory
cap) each check a confinement; the child's side is the same everywhere:
``CHILD_PRELUDE`` probes which folders refuse a write, loads ``solution.py`` as the
course's run.py would (by path, as the module ``solution``), and defines
``report(**fields)``. ``FAST_TRAIN`` runs ``train_detector(..., fast_train=True)``
exactly as the grader calls it and keeps its log lines, from which ``validations`` reads
the validation records back.

The grader's fast_train is run once per session, in the strictest sandbox there is
(``fast_train_in_read_only_sandbox``: the whole file system read-only, fresh scratch
folders, user 65534, the memory cap); ``test_sandbox.py`` and ``test_hardening_sandbox.py``
both assert on that one run (the session fixture ``read_only_fast_train`` in conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
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


NO_PRIVATE_MOUNTS = "unshare --mount is not permitted here (no private mount namespaces)"
NOT_ROOT = "needs root: as root a plain chmod could not make a folder unwritable"


def private_mounts_permitted() -> bool:
    """Whether ``unshare --mount`` works here."""
    unshare = shutil.which("unshare")
    return unshare is not None and subprocess.run([unshare, "--mount", "true"], capture_output=True).returncode == 0


def skip_unless_private_mounts() -> None:
    """Skip the calling test where ``unshare --mount`` is not permitted."""
    if not private_mounts_permitted():
        pytest.skip(NO_PRIVATE_MOUNTS)


def clean_environment() -> dict[str, str]:
    """This process's environment without the variables that steer Python itself."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


needs_root = pytest.mark.skipif(not is_root(), reason=NOT_ROOT)


# ---- the grader's fast_train in a whole read-only file system (one run per session) --------------

MEMORY_CAP = 2 * 1024**3            # bytes of address space (RLIMIT_AS); test_hardening_sandbox.py says why
READ_ONLY_FACES = 160               # fewer than 5 x the grader's val_size of 100: a fifth (32) validates

# Runs as the unprivileged user inside the sandbox, its address space capped from the start.
READ_ONLY_CHILD = r'''
import os, resource, sys, time, warnings
code_dir, data_dir, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
start = time.monotonic()
read_only = [data_dir, os.getcwd(), os.environ["HOME"], code_dir]
''' + CHILD_PRELUDE + r'''
import csv
import numpy as np

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    # gt.csv read as the course's run.py does: {filename: array of 28 numbers}.
    with open(os.path.join(data_dir, "gt.csv")) as handle:
        rows = list(csv.reader(handle))[1:]
    train_gt = {row[0]: np.array([float(v) for v in row[1:]]) for row in rows}
    img_dir = os.path.join(data_dir, "images")
''' + "\n".join("    " + line for line in FAST_TRAIN.strip().splitlines()) + r'''

status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
report(log=log_lines, training=model.training, warnings=[str(w.message) for w in caught],
       seconds=time.monotonic() - start, vmpeak_kb=int(status["VmPeak"].split()[0]),
       vmhwm_kb=int(status["VmHWM"].split()[0]))
'''

# Runs as root inside ``unshare --mount``: builds the sandbox, runs the child, lists writes.
READ_ONLY_WRAPPER = r'''
import json, os, subprocess, sys

source, python, setpriv, cap = sys.argv[1:5]
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
                        + [python, "-I", BOX + "/code/child.py", BOX + "/code", BOX + "/data/train", cap],
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


def fast_train_in_read_only_sandbox(root: Path) -> dict:
    """Run the grader's fast_train once in the read-only sandbox that ``test_sandbox.py``
    describes, with the address space capped at ``MEMORY_CAP``; ``root`` is an empty folder.

    Returns ``{"skip": reason}`` where that sandbox cannot be built here, else ``{"skip":
    None, "run": the wrapper's CompletedProcess, "box": the wrapper's report (user,
    returncode, stdout, stderr, written, empty_dirs) or None, "result": the child's report
    or None}``.
    """
    from facepoints_lib.tools.synth import make_synthetic_faces

    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    if not is_root():
        return {"skip": NOT_ROOT}
    if unshare is None or setpriv is None:
        return {"skip": "needs util-linux's unshare and setpriv"}
    if not SOLUTION.is_file():
        return {"skip": "solution.py has not been generated"}
    if not private_mounts_permitted():
        return {"skip": NO_PRIVATE_MOUNTS}
    source = root / "source"          # what the sandbox will hold: data, solution.py and the child
    make_synthetic_faces(source / "data" / "train", READ_ONLY_FACES, seed=7)
    copy_solution(source / "code", READ_ONLY_CHILD)
    (source / "home").mkdir()
    (source / "cwd").mkdir()
    (root / "wrapper.py").write_text(READ_ONLY_WRAPPER)
    run = subprocess.run([unshare, "--mount", "--propagation", "private", sys.executable, "-I",
                          str(root / "wrapper.py"), str(source), sys.executable, setpriv, str(MEMORY_CAP)],
                         capture_output=True, text=True, timeout=590, env=clean_environment())
    if run.returncode == 0 and run.stdout.startswith("SKIP "):
        return {"skip": run.stdout[5:].strip()}
    box = json.loads(run.stdout.split("WRAPPER ", 1)[1]) if "WRAPPER " in run.stdout else None
    result = child_report(box["stdout"]) if box is not None else None
    return {"skip": None, "run": run, "box": box, "result": result}


def unexpected_writes(box: dict) -> list[str]:
    """What the read-only sandbox's run left in the scratch folders, less the empty
    ``/tmp/torchinductor_<user>`` folder that torch itself creates on the first optimiser step."""
    torch_scratch = [p for p in box["empty_dirs"]
                     if os.path.dirname(p) == "/tmp" and os.path.basename(p).startswith("torchinductor_")]
    return [p for p in box["written"] if p not in torch_scratch]
