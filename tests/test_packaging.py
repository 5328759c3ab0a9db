"""Tests that the project's install files, README and CI agree with each other."""

import re
import tomllib
from pathlib import Path

import facepoints_lib

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _environment_pip_entries() -> list[str]:
    """The entries under ``- pip:`` of environment.yml (a tiny parser: no YAML library needed)."""
    entries, in_pip, pip_indent = [], False, 0
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if not stripped:
            continue
        indent = len(stripped) - len(stripped.lstrip())
        if stripped.strip() == "- pip:":
            in_pip, pip_indent = True, indent
            continue
        if in_pip:
            if indent <= pip_indent:
                in_pip = False
            elif stripped.strip().startswith("- "):
                entries.append(stripped.strip()[2:].strip())
    return entries


def _torch_pin(requirements) -> str:
    pins = [r for r in requirements if re.match(r"torch\s*==", r)]
    assert len(pins) == 1, requirements
    return pins[0].replace(" ", "")


def _extras(text: str) -> set[str]:
    """The extras of the project installed from ``.`` in ``text``: ``.[a,b]`` -> {a, b}."""
    found = re.search(r"(?<![\w/])\.\[([^\]]*)\]", text)
    assert found, text
    return {x.strip() for x in found.group(1).split(",")}


def test_environment_yml_pip_entries_agree_with_pyproject():
    project = _pyproject()["project"]
    entries = _environment_pip_entries()
    assert entries, "environment.yml has no pip: entries"
    assert _torch_pin(entries) == _torch_pin(project["dependencies"])
    installs = [e for e in entries if re.match(r"(-e\s+)?\.(\[|$)", e)]
    assert len(installs) == 1, entries                     # the project itself, from this folder
    # Nothing else: pyproject.toml is the single source of truth for the Python packages.
    assert len(entries) == 2, entries
    named = _extras(installs[0])
    assert named <= set(project["optional-dependencies"]), (named, project["optional-dependencies"])
    assert {"test", "notebooks"} <= named


def test_readme_ci_and_environment_install_the_same_extras():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    readme_installs = [line for line in readme.splitlines() if "pip install -e" in line]
    ci_installs = [line for line in ci.splitlines()
                   if "pip install" in line and not line.strip().startswith("#") and ".[" in line]
    assert readme_installs and len(ci_installs) == 1
    env_install = [e for e in _environment_pip_entries() if re.match(r"(-e\s+)?\.\[", e)][0]
    assert _extras(readme_installs[0]) == _extras(ci_installs[0]) == _extras(env_install)


def test_environment_yml_python_satisfies_requires_python():
    text = (ROOT / "environment.yml").read_text()
    version = re.search(r"^\s*-\s*python\s*=\s*(\d+)\.(\d+)", text, re.M)
    assert version, "environment.yml pins no python version"
    minimum = re.search(r">=\s*(\d+)\.(\d+)", _pyproject()["project"]["requires-python"])
    assert tuple(map(int, version.groups())) >= tuple(map(int, minimum.groups()))


def test_pyproject_basics():
    data = _pyproject()
    project = data["project"]
    assert project["version"] == facepoints_lib.__version__
    assert project["scripts"]["facepoints"] == "facepoints_lib.tools.cli:main"
    deps = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert deps == {"torch", "numpy", "pillow"}          # what solution.py may import
    test_extra = " ".join(project["optional-dependencies"]["test"])
    assert "pytest" in test_extra and "hypothesis" in test_extra
    markers = " ".join(data["tool"]["pytest"]["ini_options"]["markers"])
    assert "slow:" in markers


def test_readme_names_the_test_command_and_the_same_torch():
    readme = (ROOT / "README.md").read_text()
    assert "python -m pytest" in readme
    pin = _torch_pin(_pyproject()["project"]["dependencies"])
    assert f"pip install {pin}" in readme


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert any(re.match(r"python -m pytest(\s|$)", c) for c in commands), commands
    assert ci.startswith("#!") and "set -e" in ci
    pin = _torch_pin(_pyproject()["project"]["dependencies"])
    assert any(pin in c and "pip install" in c for c in commands)
