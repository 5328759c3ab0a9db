"""The frozen ``solution.py`` in a capped, read-only sandbox, as a strict grader might run it.

The code under test is a copy of the repository's ``solution.py``, run with ``python -I``
in a child process that:

* runs as an unprivileged user (uid/gid 65534 through ``setpriv``) when the tests run as
  root, because root ignores file permissions. Where uid 65534 cannot reach this Python
  itself (a pyenv under a 0700 /root: plain ``setpriv`` then silently starts another
  interpreter, or none), the child gets a private mount namespace (``unshare -m``) in
  which the closed folder is reopened with bind mounts, and the sandbox folders are
  bind-mounted read-only; it stays root there only if even that fails. A non-root user
  gets read-only folders through ``chmod``. The chosen way must start this very Python
  (same ``sys.base_prefix`` and version), checked before the tests run;
* sees the data folder, its own code folder, its working directory and ``HOME`` read-only
  (a write probe in the child proves it), ``CUDA_VISIBLE_DEVICES=""``, one thread;
* has its address space capped with ``resource.setrlimit(RLIMIT_AS)`` at ``MEMORY_CAP``
  and a wall-clock budget.

Memory cap, from measurement (torch 2.13 CPU, Python 3.11, Linux x86-64, one thread,
``VmPeak``/``VmHWM`` from ``/proc/self/status``): importing torch alone reaches a VmPeak of
0.61 GB; ``fast_train`` with the grader's recipe (600 faces, 2 epochs, default network)
peaks at 1.03 GB of address space (0.62 GB resident); ``detect`` on 2000 images peaks at
0.95 GB with the default network and 0.75-0.82 GB with the small one used here. The cap is
2 GiB: about twice the largest peak. A last test checks that the cap really binds.

"Nothing written" means the data, code, working-directory and HOME trees are unchanged
and the private ``TMPDIR`` holds nothing but the empty ``torchinductor_<user>`` folder
that torch itself creates on the first optimiser step.

The detection sees a little more than one chunk of images (``DETECT_CHUNK`` + 44: two
chunks, the second partial); memory is bounded per chunk, so more images would only take
longer. fast_train runs once per session: where the whole-file-system sandbox of
``test_sandbox.py`` can be built (root, ``unshare``, ``setpriv``), that run, capped at the
same ``MEMORY_CAP``, is the one checked here; elsewhere this module's sandbox runs its own.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from facepoints_lib.core.checkpoint import save_checkpoint
from facepoints_lib.core.detect import DETECT_CHUNK
from facepoints_lib.core.model import ModelConfig, build_model
from facepoints_lib.tools.synth import make_synthetic_faces
from sandbox_harness import (CHILD_PRELUDE, FAST_TRAIN, MEMORY_CAP, REPO_ROOT, child_report, unexpected_writes,
                             validations)

SANDBOX_UID = 65534                 # "nobody"
TOO_SMALL_CAP = 256 * 1024**2       # below what importing torch needs (MEMORY_CAP: see the module docstring)
TRAIN_BUDGET_S = 120                # wall-clock budgets of the child processes
DETECT_BUDGET_S = 120
TRAIN_FACES = 164                   # fast_train keeps 100 for validation, trains on 64
DETECT_FACES = DETECT_CHUNK + 44    # two chunks of detect(), the second partial

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="needs Linux (/proc/self/status, RLIMIT_AS)")

RUNNER = r'''
import json, os, resource, sys, time, warnings
spec = json.loads(sys.argv[1])
if spec["cap"]:
    resource.setrlimit(resource.RLIMIT_AS, (spec["cap"], spec["cap"]))
start = time.monotonic()
code_dir, read_only = spec["code"], spec["read_only"]
''' + CHILD_PRELUDE + r'''
fields = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if spec["mode"] == "train":
        train_gt = solution.read_gt(os.path.join(spec["data"], "gt.csv"))
        img_dir = os.path.join(spec["data"], "images")
''' + "\n".join("        " + line for line in FAST_TRAIN.strip().splitlines()) + r'''
        fields["log"] = log_lines
    else:
        result = solution.detect(spec["model"], spec["images"])
        fields["detected"] = len(result)
        fields["all_finite"] = all(v.shape == (28,) and bool((abs(v) < 1e9).all()) for v in result.values())
fields["warnings"] = [str(w.message) for w in caught]
fields["seconds"] = time.monotonic() - start
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
fields["vmpeak_kb"] = int(status["VmPeak"].split()[0])
fields["vmhwm_kb"] = int(status["VmHWM"].split()[0])
report(**fields)
'''


PROBE = ("import importlib.util, json, os, sys; print(json.dumps([os.getuid(), sys.base_prefix, "
         "sys.version, all(importlib.util.find_spec(m) for m in ('torch', 'numpy', 'PIL'))]))")


def _snapshot(root: Path) -> dict[str, tuple]:
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            entries[str(path.relative_to(root))] = (stat.S_IFMT(info.st_mode), info.st_size, info.st_mtime_ns)
    return entries


def _closed_ancestors() -> list[tuple[Path, str]]:
    """(folder, child) pairs where "others" cannot pass a folder on the way to this Python.

    A pyenv under /root (mode 0700) is the usual case: uid 65534 can start the binary
    through the venv's symlink only while setpriv still holds root's capabilities, and
    then finds no standard library of its own (it may even pick up /usr/lib's).
    """
    pairs = []
    for target in {Path(sys.base_prefix).resolve(), Path(sys.executable).resolve()}:
        for parent in reversed(target.parents):
            if not parent.stat().st_mode & stat.S_IXOTH:
                child = target.relative_to(parent).parts[0]
                if (parent, child) not in pairs:
                    pairs.append((parent, child))
                break
    return pairs


class Sandbox:
    """Folders of one sandbox, and how its child process is kept from writing.

    ``isolation`` is "setpriv" (run as uid 65534), "namespace" (a private mount
    namespace with the folders bind-mounted read-only, then uid 65534; closed folders
    on the way to the interpreter are reopened there with bind mounts), "namespace-root"
    (the same, staying root when 65534 still cannot start this Python) or "chmod"
    (not root: permissions alone make the folders read-only).
    """

    def __init__(self, root: Path):
        self.root, self.isolation = root, "none"
        self.code, self.data = root / "code", root / "data"
        self.cwd, self.home, self.tmp = root / "cwd", root / "home", root / "tmp"
        self.reach = root / "reach"
        self.read_only = [self.code, self.data, self.cwd, self.home]

    def lock(self) -> None:
        """Files 0644 and folders 0755, owned by root; read-only folders 0555 for a non-root user."""
        for dirpath, _, filenames in os.walk(self.root):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                os.chmod(Path(dirpath) / name, 0o644)
        self.tmp.chmod(0o1777)
        if self.isolation == "chmod":
            for folder in self.read_only:
                for dirpath, _, _ in os.walk(folder):
                    os.chmod(dirpath, 0o555)

    def add(self, build) -> None:
        """Write more files into the sandbox (``build()``) and lock it again."""
        for dirpath, _, _ in os.walk(self.root):
            os.chmod(dirpath, 0o755)
        build()
        self.lock()

    def _namespace_script(self, reopen: bool) -> str:
        lines = [f'mount --bind "{p}" "{p}" && mount -o remount,bind,ro "{p}" || exit 97'
                 for p in self.read_only]
        if reopen:
            for i, (closed, child) in enumerate(_closed_ancestors()):
                stand_in = self.reach / str(i)
                stand_in.mkdir(parents=True, exist_ok=True)
                (stand_in / child).mkdir(exist_ok=True)
                os.chmod(self.reach, 0o755)
                os.chmod(stand_in, 0o755)
                lines.append(f'mount --bind "{closed / child}" "{stand_in / child}" && '
                             f'mount --rbind "{stand_in}" "{closed}" || exit 98')
        return "\n".join(lines + ['exec "$@"'])

    def command(self, python_args: list[str], isolation: str | None = None) -> list[str]:
        isolation = isolation or self.isolation
        python = [sys.executable, "-I", *python_args]
        as_nobody = [shutil.which("setpriv") or "setpriv", f"--reuid={SANDBOX_UID}",
                     f"--regid={SANDBOX_UID}", "--clear-groups"]
        if isolation == "setpriv":
            return as_nobody + python
        if isolation in ("namespace", "namespace-root"):
            reopen = isolation == "namespace"
            return [shutil.which("unshare") or "unshare", "-m", "sh", "-c", self._namespace_script(reopen),
                    "sh", *(as_nobody if reopen else []), *python]
        return python

    def choose_isolation(self) -> None:
        if os.geteuid() != 0:
            self.isolation = "chmod"
            return
        ours = [sys.base_prefix, sys.version, True]
        candidates = (["setpriv"] if shutil.which("setpriv") else []) + \
            (["namespace", "namespace-root"] if shutil.which("unshare") else [])
        for isolation in candidates:
            try:
                proc = subprocess.run(self.command(["-c", PROBE], isolation), capture_output=True,
                                      text=True, timeout=60, cwd=self.root)
                uid, *rest = json.loads(proc.stdout.strip().splitlines()[-1])
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                continue
            if rest == ours and (uid == SANDBOX_UID) == (isolation != "namespace-root"):
                self.isolation = isolation
                return
        pytest.skip("running as root, and neither setpriv (uid 65534) nor unshare -m can confine "
                    "this Python here")

    def run(self, spec: dict, timeout: float) -> tuple[subprocess.CompletedProcess, dict | None]:
        spec = {"code": str(self.code), "read_only": [str(p) for p in self.read_only], **spec}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
               "TMPDIR": str(self.tmp), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        proc = subprocess.run(self.command([str(self.code / "runner.py"), json.dumps(spec)]), cwd=self.cwd,
                              env=env, capture_output=True, text=True, timeout=timeout)
        return proc, child_report(proc.stdout)

    def snapshot(self) -> dict:
        return {name: _snapshot(self.root / name) for name in ("code", "data", "cwd", "home")}

    def check_nothing_written(self, before: dict) -> None:
        after = self.snapshot()
        for folder in before:
            assert after[folder] == before[folder], f"{folder} changed"
        left = [p for p in self.tmp.iterdir()
                if not (p.name.startswith("torchinductor_") and p.is_dir() and not any(p.iterdir()))]
        assert left == [], f"files left in TMPDIR: {left}"


@pytest.fixture(scope="module")
def sandbox():
    root = Path(tempfile.mkdtemp(prefix="facepoints-sandbox-"))
    try:
        box = Sandbox(root)
        for folder in (box.code, box.data, box.cwd, box.home, box.tmp):
            folder.mkdir()
        shutil.copy2(REPO_ROOT / "solution.py", box.code / "solution.py")
        (box.code / "runner.py").write_text(RUNNER)
        os.chmod(root, 0o755)
        box.choose_isolation()
        distinct = make_synthetic_faces(root / "faces", DETECT_FACES // 8, seed=12) / "images"
        (box.data / "test" / "images").mkdir(parents=True)
        for i in range(DETECT_FACES):          # DETECT_FACES // 8 rendered faces, each under about 8 names
            shutil.copyfile(distinct / f"{i % (DETECT_FACES // 8):05d}.jpg",
                            box.data / "test" / "images" / f"face {i:04d}.jpg")
        shutil.rmtree(root / "faces")
        small = ModelConfig(stem_width=8, widths=(8, 16, 16, 16), depths=(1, 1, 1, 1), decoder_width=8)
        save_checkpoint(build_model(small).eval(), box.data / "model.pt")
        box.lock()
        yield box
    finally:
        for dirpath, _, _ in os.walk(root):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(root, ignore_errors=True)


def _explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\nstdout tail:\n{proc.stdout[-2000:]}\nstderr tail:\n{proc.stderr[-3000:]}"


def _check_confinement(box: Sandbox, report: dict) -> None:
    assert set(report["probes"].values()) <= {"PermissionError", "OSError"}, report["probes"]
    if box.isolation in ("setpriv", "namespace"):
        assert report["uid"] == SANDBOX_UID
    assert report["cuda"] is False
    assert report["threads"] == 1
    assert report["vmpeak_kb"] * 1024 <= MEMORY_CAP


def test_fast_train_in_a_capped_read_only_sandbox(read_only_fast_train, sandbox):
    shared = read_only_fast_train
    if shared["skip"] is None:         # the session's one run, in test_sandbox.py's sandbox (capped alike)
        run, box, report = shared["run"], shared["box"], shared["result"]
        assert run.returncode == 0 and box is not None, run.stdout[-2000:] + run.stderr[-3000:]
        assert box["returncode"] == 0 and report is not None, box["stdout"][-2000:] + box["stderr"][-3000:]
        assert set(report["probes"].values()) <= {"PermissionError", "OSError"}, report["probes"]
        assert report["uid"] == (SANDBOX_UID if box["user"] == "nobody" else 0)
        assert report["cuda"] is False
        assert any(line.endswith(", 1 thread") for line in report["log"])   # torch's thread count while training
        assert report["vmpeak_kb"] * 1024 <= MEMORY_CAP
        assert unexpected_writes(box) == []
        stdout = box["stdout"]
    else:                              # no whole-file-system sandbox here: a run of this module's own
        sandbox.add(lambda: make_synthetic_faces(sandbox.data / "train", TRAIN_FACES, seed=11))
        before = sandbox.snapshot()
        proc, report = sandbox.run({"mode": "train", "cap": MEMORY_CAP, "data": str(sandbox.data / "train")},
                                   timeout=TRAIN_BUDGET_S)
        assert proc.returncode == 0 and report is not None, _explain(proc)
        _check_confinement(sandbox, report)
        sandbox.check_nothing_written(before)
        stdout = proc.stdout
    assert report["seconds"] < TRAIN_BUDGET_S
    history = validations(report["log"])              # validation ran after each of the 2 epochs of each network
    assert [h["epoch"] for h in history] == [1, 2, 1, 2]
    assert any(line.startswith("cascade: val err") for line in report["log"])   # both networks trained
    assert all(0 < h["val_err"] < 1e6 and 0 < h["val_nme"] < 1e3 for h in history)
    assert "val err" in stdout
    assert not any("could not be read" in w for w in report["warnings"])


def test_detect_more_than_a_chunk_of_images_in_a_capped_read_only_sandbox(sandbox):
    before = sandbox.snapshot()
    proc, report = sandbox.run({"mode": "detect", "cap": MEMORY_CAP, "model": str(sandbox.data / "model.pt"),
                                "images": str(sandbox.data / "test" / "images")}, timeout=DETECT_BUDGET_S)
    assert proc.returncode == 0 and report is not None, _explain(proc)
    _check_confinement(sandbox, report)
    assert report["detected"] == DETECT_FACES and report["all_finite"]
    assert report["warnings"] == []
    sandbox.check_nothing_written(before)


def test_the_memory_cap_binds(sandbox):
    """With a cap below what torch needs the same child fails: the cap is real."""
    proc, report = sandbox.run({"mode": "detect", "cap": TOO_SMALL_CAP, "model": str(sandbox.data / "model.pt"),
                                "images": str(sandbox.data / "test" / "images")}, timeout=DETECT_BUDGET_S)
    assert proc.returncode != 0 and report is None
