"""The package's layout: three folders by role, and the arrows between them.

``core/`` is what solution.py holds (the freezer checks that the folder and
``core.FROZEN_MODULES`` agree, and that the core imports nothing outside it);
``notebook/`` and ``tools/`` build on it. These tests check what the folders promise.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from facepoints_lib.tools.freeze import read_package_constant

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "facepoints_lib"
MAX_MODULE_LINES = 400          # the house rule: one idea per module


def _loaded_after(statement: str) -> list[str]:
    """The package's modules a fresh interpreter has loaded after ``statement``."""
    code = (f"import json, sys\n{statement}\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('facepoints_lib'))))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_every_module_sits_in_one_of_the_three_folders():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert loose == [], f"modules outside core/, notebook/ and tools/: {loose}"
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()) == \
        ["core", "notebook", "tools"]


def test_the_core_folder_is_exactly_what_is_frozen():
    frozen = set(read_package_constant(PACKAGE / "core"))
    present = {p.stem for p in (PACKAGE / "core").glob("*.py") if p.name != "__init__.py"}
    assert present == frozen


def test_importing_the_package_loads_nothing_until_asked():
    assert _loaded_after("import facepoints_lib") == ["facepoints_lib"]
    loaded = _loaded_after("from facepoints_lib import detect")
    assert "facepoints_lib.core.detect" in loaded


def test_detection_does_not_import_training():
    loaded = _loaded_after("from facepoints_lib.core.detect import detect")
    training = {"train", "fit", "config", "losses"}
    assert not [m for m in loaded if m.rsplit(".", 1)[-1] in training], loaded
    assert not [m for m in loaded if m.startswith(("facepoints_lib.notebook", "facepoints_lib.tools"))], loaded


@pytest.mark.parametrize("folder", ["core", "notebook", "tools"])
def test_no_module_is_longer_than_the_house_rule(folder):
    long = {p.name: n for p in (PACKAGE / folder).glob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}, f"split these modules (at most {MAX_MODULE_LINES} lines): {long}"


def test_the_core_imports_neither_notebook_helpers_nor_tools():
    """The freezer refuses a core module importing outside the core; this says so for the
    imports inside functions too, with the module named."""
    for path in sorted((PACKAGE / "core").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                assert not target.startswith(".."), f"{path.name} imports {target}"
                assert not target.startswith("facepoints_lib"), f"{path.name} imports {target}"
