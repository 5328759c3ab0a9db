"""What every benchmark records beside its figures: the machine, the command, and a fresh
process to time in.

A results file names the CPU (model, the flags that decide torch's kernels, any cap set
on them: see docs/cpu-notes.md), the torch version and the git commit, and the command
that made it, with no machine's folders in it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import torch

from ..core.inference import cpu_flags, cpu_has_bf16

RESULTS_DIR = Path("bench") / "results"


def shown_command(argv: Sequence[str] | None = None, program: str = "facepoints") -> str:
    """The command line as a results file records it: an absolute path becomes relative to
    the working directory when it lies inside it, else its last two parts (a results file
    names no machine's folders)."""
    here = Path.cwd().resolve()
    shown = [program]
    for arg in (sys.argv[1:] if argv is None else argv):
        if arg.startswith(os.sep):
            path = Path(arg)
            try:
                arg = str(path.resolve().relative_to(here))
            except ValueError:
                arg = str(Path(*path.parts[-2:]))
        shown.append(arg)
    return " ".join(shown)


def machine_info() -> dict:
    """Cores, CPU model and flags, the kernels torch picked (and any variable that capped
    them, see docs/cpu-notes.md), torch version and the git commit, for the results file."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, check=False).stdout.strip())
    except OSError:
        commit, dirty = None, None
    overrides = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ}
    return {"cores": os.cpu_count(), "cpu": cpu, "cpu_flags": cpu_flags(),
            "bf16_native": cpu_has_bf16(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "isa_overrides": overrides, "torch": torch.__version__,
            "python": platform.python_version(), "commit": commit, "dirty": dirty}


def describe_cpu(info: dict | None = None) -> str:
    """One line naming the CPU, the flags that decide the kernels and any ISA cap."""
    info = info or machine_info()
    flags = " ".join(k for k, v in info["cpu_flags"].items() if v) or "none of " + "/".join(info["cpu_flags"])
    caps = "".join(f", {k}={v}" for k, v in info["isa_overrides"].items())
    return (f"{info['cpu']}, {info['cores']} cores; flags: {flags}; "
            f"ATen kernels {info['cpu_capability']}{caps}")


def run_script(script: str, *args: str) -> dict:
    """Run ``script`` in a fresh Python process on one thread, without a GPU; return the JSON
    object its last printed line holds (timings then include imports and warm-up, as a
    grader's would)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])




def write_result(result: dict, results_dir: str | os.PathLike, name: str) -> Path:
    """Write ``result`` as ``<results_dir>/<name>.json`` (one key a line) and return the path."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"{name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    return out
