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

The sandbox and its child live in ``sandbox_harness.py`` (``READ_ONLY_WRAPPER``,
``READ_ONLY_CHILD``); the run happens once per session (the fixture
``read_only_fast_train``), with the memory cap of ``test_hardening_sandbox.py``, which
checks its own points on the same run.
"""

from __future__ import annotations

import shutil

import pytest

from sandbox_harness import SOLUTION, needs_root, unexpected_writes, validations

pytestmark = [
    needs_root,
    pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("setpriv") is None,
                       reason="needs util-linux's unshare and setpriv"),
    pytest.mark.skipif(not SOLUTION.is_file(), reason="solution.py has not been generated"),
]


def test_fast_train_in_a_read_only_sandbox(read_only_fast_train):
    if read_only_fast_train["skip"]:
        pytest.skip(read_only_fast_train["skip"])
    run, box, result = read_only_fast_train["run"], read_only_fast_train["box"], read_only_fast_train["result"]
    assert run.returncode == 0 and box is not None, run.stdout[-2000:] + run.stderr[-3000:]
    where = f"[ran as {box['user']}] "
    assert box["returncode"] == 0, where + box["stdout"][-2000:] + box["stderr"][-3000:]
    assert result is not None, where + box["stdout"][-2000:]

    assert result["uid"] == (65534 if box["user"] == "nobody" else 0), where
    assert len(result["probes"]) == 4, where                 # data, working folder, HOME, code
    assert set(result["probes"].values()) <= {"OSError", "PermissionError"}, where + str(result["probes"])
    assert result["package_loaded"] == [], where          # only the single file was used
    assert result["cuda"] is False, where
    assert any(line.endswith(", 1 thread") for line in result["log"]), where   # fast_train's one thread
    assert result["training"] is False, where
    history = validations(result["log"])                   # validation after each of the 2 epochs of each network
    assert [h["epoch"] for h in history] == [1, 2, 1, 2], where
    assert all(0 < h["val_err"] < float("inf") for h in history), where
    # 160 faces, fewer than 5 x the grader's val_size of 100: a fifth of them validates
    assert "(32 for validation)" in box["stdout"] and "val err" in box["stdout"], where

    written = unexpected_writes(box)
    assert written == [], where + f"files written by fast_train: {written}"
