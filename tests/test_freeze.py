"""Tests of the freezer that turns the package into the single-file ``solution.py``.

Most tests build a tiny fake package (named ``fakepoints``) in ``tmp_path``; the last ones
check the real package and its generated ``solution.py`` (missing, they fail).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from facepoints_lib.tools import freeze
from facepoints_lib.tools.freeze import FreezeError, check_solution_up_to_date, freeze_package, write_solution

PKG = "fakepoints"

MOD_A = '''\
"""Module a: scaling helpers.

Second docstring line.
"""
from __future__ import annotations

import math

__all__ = ["f", "SCALE"]

SCALE = 2  # a comment that stays


def f(x: int) -> int:
    """Return x times SCALE."""
    return x * SCALE


if __name__ == "__main__":
    import matplotlib
    print("A-LIBRARY-MAIN")
'''

MOD_B = '''\
"""Module b uses a (ünïcode in a docstring)."""
from __future__ import annotations

import math
from .a import f
from .a import f as g
from fakepoints.a import SCALE
from . import a
import fakepoints.a as a_mod


def h(x: int) -> int:
    return f(x) + g(x) + SCALE + a.SCALE + a_mod.f(0)


def lazy() -> int:
    from .a import SCALE as s
    from .a import f
    return s + f(1) + int(math.sqrt(4))


def main() -> int:
    print("MAIN", h(1), lazy())
    return 0
'''


def make_package(root: Path, modules: dict[str, str], init: str | None = None) -> Path:
    """Write a fake package ``root/fakepoints`` with the given module sources."""
    pkg = root / PKG
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(init if init is not None else f"FROZEN_MODULES = {tuple(modules)!r}\n")
    for name, source in modules.items():
        (pkg / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return pkg


def exec_frozen(text: str) -> dict:
    namespace: dict = {"__name__": "frozen_under_test"}
    exec(compile(text, "solution.py", "exec"), namespace)
    return namespace


def package_imports(text: str) -> list[str]:
    """Every import statement of the frozen text that refers to the package (should be none)."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == PKG):
            found.append(ast.unparse(node))
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == PKG for a in node.names):
            found.append(ast.unparse(node))
    return found


def test_two_modules_freeze_into_working_code(tmp_path):
    pkg = make_package(tmp_path, {"b": MOD_B, "a": MOD_A})  # given order b, a: b must move after a
    text = freeze_package(pkg)
    assert package_imports(text) == []
    assert text.index(f"# ---- {PKG}/a.py ----") < text.index(f"# ---- {PKG}/b.py ----")
    assert "# Module a: scaling helpers." in text and "# Second docstring line." in text
    assert "g = f\n" in text and "__all__" not in text
    ns = exec_frozen(text)
    assert ns["f"](3) == 6
    assert ns["h"](1) == 2 + 2 + 2 + 2 + 0
    assert ns["lazy"]() == 2 + 2 + 2
    assert ns["a"].f(5) == 10 and ns["a_mod"].SCALE == 2  # module-object imports -> namespaces


def test_header_and_entry_point(tmp_path):
    pkg = make_package(tmp_path, {"a": MOD_A, "b": MOD_B})
    text = freeze_package(pkg)
    doc = ast.get_docstring(ast.parse(text))
    assert "GENERATED" in doc and "DO NOT EDIT" in doc and f"python -m {PKG} freeze" in doc
    assert "a, b" in doc
    assert text.endswith('if __name__ == "__main__":\n    raise SystemExit(main())\n')
    custom = freeze_package(pkg, entry_point='if __name__ == "__main__":\n    raise SystemExit(h(1))\n')
    assert custom.endswith("raise SystemExit(h(1))\n") and "SystemExit(main())" not in custom
    assert "SystemExit" not in freeze_package(pkg, entry_point="")
    assert "SystemExit" not in freeze_package(pkg, modules=["a"])  # last module has no main()


def test_the_folder_holds_exactly_the_frozen_modules(tmp_path):
    """What is submitted is what the folder shows: a module in the folder but not in
    FROZEN_MODULES, or one listed but absent, stops the freeze; an explicit list may pick."""
    pkg = make_package(tmp_path, {"a": MOD_A, "b": MOD_B}, init='FROZEN_MODULES = ("a",)\n')
    with pytest.raises(FreezeError, match=r"disagree: in the folder only: \['b'\], listed only: \[\]"):
        freeze_package(pkg)
    assert "# ---- fakepoints/b.py ----" not in freeze_package(pkg, modules=["a"])
    (pkg / "__init__.py").write_text('FROZEN_MODULES = ("a", "b", "c")\n')
    with pytest.raises(FreezeError, match=r"listed only: \['c'\]"):
        freeze_package(pkg)


def test_a_nested_package_is_named_from_its_top_package(tmp_path):
    top = tmp_path / "toppkg"
    top.mkdir()
    (top / "__init__.py").write_text("")
    pkg = make_package(top, {"a": MOD_A})
    text = freeze_package(pkg)
    assert "# ---- toppkg/fakepoints/a.py ----" in text
    assert "python -m toppkg freeze" in ast.get_docstring(ast.parse(text))


def test_frozen_modules_read_without_importing_package(tmp_path):
    init = 'FROZEN_MODULES: tuple[str, ...] = ("a",)\nFROZEN_ENTRY_POINT = "print(f(1))"\nraise RuntimeError("imported!")\n'
    pkg = make_package(tmp_path, {"a": MOD_A}, init=init)
    assert freeze.read_package_constant(pkg) == ("a",)
    text = freeze_package(pkg)
    assert "# ---- fakepoints/a.py ----" in text and text.endswith("print(f(1))\n")


def test_rewrites_in_nested_and_inline_positions(tmp_path):
    mod_c = '''\
        from .a import f, SCALE
        x = 1; from .a import f as g2
        if True: from .a import SCALE
        try:
            from .a import f as g3
        except ImportError:
            g3 = None


        class Holder:
            from .a import f
            from . import a as ns


        def use():
            if True:
                from .a import SCALE as s
            return s
        '''
    pkg = make_package(tmp_path, {"a": MOD_A, "c": mod_c})
    text = freeze_package(pkg)
    assert package_imports(text) == []
    ns = exec_frozen(text)
    assert ns["g2"](1) == 2 and ns["g3"](2) == 4 and ns["use"]() == 2
    assert ns["Holder"].f is ns["f"] and ns["Holder"].ns.SCALE == 2


def test_name_clash_names_both_modules(tmp_path):
    pkg = make_package(tmp_path, {"a": MOD_A, "c": "_EPS = 1e-6\n", "d": "def _EPS():\n    pass\n"})
    with pytest.raises(FreezeError, match=r"'_EPS'.*'c'.*'d'"):
        freeze_package(pkg)


def test_identical_imports_in_two_modules_are_not_a_clash(tmp_path):
    source = "import numpy as np\nimport torch\nfrom PIL import Image\nfrom typing import Sequence\nimport os.path\n"
    pkg = make_package(tmp_path, {"c": source, "d": source})
    freeze_package(pkg)
    clash = make_package(tmp_path / "x", {"c": "import numpy as np\n", "d": "import math as np\n"})
    with pytest.raises(FreezeError, match="'np'"):
        freeze_package(clash)


@pytest.mark.parametrize("source", ["from os.path import *\n", "from .a import *\n"])
def test_star_import_refused(tmp_path, source):
    pkg = make_package(tmp_path, {"a": MOD_A, "c": source})
    with pytest.raises(FreezeError, match="star import"):
        freeze_package(pkg)


@pytest.mark.parametrize(
    "source, bad",
    [
        ("import matplotlib\n", "matplotlib"),
        ("def plot():\n    import matplotlib.pyplot as plt\n    return plt\n", "matplotlib.pyplot"),
        ("try:\n    import tqdm\nexcept ImportError:\n    tqdm = None\n", "tqdm"),
        ("class K:\n    def m(self):\n        from tqdm.auto import tqdm\n", "tqdm.auto"),
    ],
)
def test_disallowed_import_refused(tmp_path, source, bad):
    pkg = make_package(tmp_path, {"a": MOD_A, "plots": source})
    with pytest.raises(FreezeError, match=rf"'plots'.*{bad!r}"):
        freeze_package(pkg)


@pytest.mark.parametrize(
    "source, message",
    [
        ("from .nope import x\n", "not one of the frozen modules"),
        ("from . import FROZEN_MODULES\n", "not one of the frozen modules"),
        ("from .a import missing\n", "does not define"),
        ("import fakepoints.a\n", "binds the package name"),
        ("from ..other import x\n", "beyond the package"),
    ],
)
def test_bad_package_imports_refused(tmp_path, source, message):
    pkg = make_package(tmp_path, {"a": MOD_A, "c": source})
    with pytest.raises(FreezeError, match=message):
        freeze_package(pkg)


def test_cycle_refused_but_function_level_import_allowed(tmp_path):
    cyclic = make_package(tmp_path, {"p": "from .q import y\nx = 1\n", "q": "from .p import x\ny = 2\n"})
    with pytest.raises(FreezeError, match="cycle"):
        freeze_package(cyclic)
    lazy = make_package(tmp_path / "ok", {"p": "def get_y():\n    from .q import y\n    return y\n",
                                          "q": "from .p import get_y\ny = 2\n"})
    assert exec_frozen(freeze_package(lazy))["get_y"]() == 2


def test_library_main_block_dropped(tmp_path):
    pkg = make_package(tmp_path, {"a": MOD_A})
    text = freeze_package(pkg)
    assert "A-LIBRARY-MAIN" not in text and "matplotlib" not in text
    assert "__main__" not in text  # a has no main(): no entry point either


def test_future_import_hoisted_once(tmp_path):
    pkg = make_package(tmp_path, {"a": MOD_A, "b": MOD_B})
    text = freeze_package(pkg)
    assert text.count("from __future__ import annotations") == 1
    body = ast.parse(text).body
    assert isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    assert isinstance(body[1], ast.ImportFrom) and body[1].module == "__future__"


def test_freeze_is_deterministic(tmp_path):
    pkg = make_package(tmp_path, {"b": MOD_B, "a": MOD_A})
    assert freeze_package(pkg) == freeze_package(pkg)
    assert freeze_package(pkg, ["a", "b"]) == freeze_package(pkg, ["b", "a"])


def test_frozen_file_runs_where_package_is_not_importable(tmp_path):
    pkg = make_package(tmp_path / "src", {"a": MOD_A, "b": MOD_B})
    out = tmp_path / "elsewhere" / "solution.py"
    out.parent.mkdir()
    write_solution(pkg, out)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    probe = subprocess.run([sys.executable, "-I", "-c", f"import {PKG}"], cwd=out.parent, env=env,
                           capture_output=True, text=True)
    assert probe.returncode != 0  # the fake package really is out of reach
    run = subprocess.run([sys.executable, "-I", str(out)], cwd=out.parent, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "MAIN 8 6"


def test_write_check_and_cli(tmp_path, capsys):
    pkg = make_package(tmp_path / "repo", {"a": MOD_A, "b": MOD_B})
    path = write_solution(pkg)
    assert path == tmp_path / "repo" / "solution.py"
    assert check_solution_up_to_date(pkg) is True
    assert freeze.main(["--check", "--package-dir", str(pkg)]) == 0
    (pkg / "a.py").write_text(MOD_A.replace("SCALE = 2", "SCALE = 3"))
    assert check_solution_up_to_date(pkg) is False
    assert freeze.main(["--check", "--package-dir", str(pkg)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert freeze.main(["--package-dir", str(pkg)]) == 0
    assert check_solution_up_to_date(pkg, path) is True
    with pytest.raises(SystemExit) as exc:
        freeze.main(["--help"])
    assert exc.value.code == 0 and "--check" in capsys.readouterr().out


# ---- the real package ---------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_PACKAGE = REPO_ROOT / "facepoints_lib" / "core"
SOLUTION = REPO_ROOT / "solution.py"


def test_the_real_package_has_a_frozen_list_and_a_solution():
    """Without these the checks below could not run: a missing file is a failure, not a skip."""
    assert freeze.read_package_constant(REAL_PACKAGE), "facepoints_lib/core/__init__.py has no FROZEN_MODULES"
    assert SOLUTION.is_file(), "solution.py is missing: run python -m facepoints_lib freeze"


BLOCKED_IMPORT_SCRIPT = """
import importlib.util, sys
BLOCKED = {"facepoints_lib", "matplotlib", "tqdm", "ipywidgets"}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked for the grader test: " + name)
        return None
sys.meta_path.insert(0, Blocker())
spec = importlib.util.spec_from_file_location("solution", sys.argv[1])
solution = importlib.util.module_from_spec(spec)
sys.modules["solution"] = solution  # as a normal import does (dataclasses need it)
spec.loader.exec_module(solution)
assert callable(solution.train_detector) and callable(solution.detect)
print("OK")
"""


def test_committed_solution_is_up_to_date():
    assert check_solution_up_to_date(), "solution.py is stale: run `python -m facepoints_lib freeze`"


def test_solution_imports_without_package_or_extras():
    run = subprocess.run([sys.executable, "-I", "-c", BLOCKED_IMPORT_SCRIPT, str(SOLUTION)],
                         cwd=REPO_ROOT.parent, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("OK")


MOD_C = '''\
"""Module c: imports of every kind."""
import os
import numpy as np
from pathlib import Path
from typing import Sequence
import torch.nn.functional as F

try:
    import json
except ImportError:
    json = None


def where(names: Sequence[str]) -> list:
    import textwrap
    return [Path(os.sep, n) for n in names] + [textwrap.dedent(" x"), np.pi, F.relu, json.dumps]
'''


def test_module_level_imports_form_one_block_at_the_top(tmp_path):
    """Each module's imports sat at its own top, so the file had 60 import lines spread
    through it; now one block, the standard library first, each import once."""
    pkg = make_package(tmp_path, {"a": MOD_A, "b": MOD_B, "c": MOD_C})
    text = freeze_package(pkg)
    first_module = text.index(f"# ---- {PKG}/")
    block = text[:first_module]
    assert ("import math\nimport os\nfrom pathlib import Path\nfrom typing import Sequence\n\n"
            "import numpy as np\nimport torch.nn.functional as F\n") in block
    body = text[first_module:]
    top_level = [n for n in ast.parse(body).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert top_level == []                                       # none left in the modules' text
    assert "    import json\n" in body and "    import textwrap\n" in body   # try: and function imports stay
    ns = exec_frozen(text)
    assert ns["where"](["a"])[0] == Path(os.sep, "a") and ns["f"](1) == 2


def test_the_header_indexes_the_entry_points(tmp_path):
    init = ("FROZEN_MODULES = ('a', 'b')\n"
            "FROZEN_ENTRY_POINTS = (('h', 'what h is for'), ('f', 'scales'))\n")
    pkg = make_package(tmp_path, {"a": MOD_A, "b": MOD_B}, init=init)
    doc = ast.get_docstring(ast.parse(freeze_package(pkg)))
    assert "Entry points:\n\n    h(x)\n        what h is for (b.py)\n    f(x)\n        scales (a.py)" in doc
    (pkg / "__init__.py").write_text("FROZEN_MODULES = ('a', 'b')\nFROZEN_ENTRY_POINTS = (('gone', 'x'),)\n")
    with pytest.raises(FreezeError, match="FROZEN_ENTRY_POINTS names 'gone', which no frozen module defines"):
        freeze_package(pkg)


def test_the_real_header_names_the_course_functions():
    doc = ast.get_docstring(ast.parse((Path(__file__).resolve().parents[1] / "solution.py").read_text()))
    for signature in ("train_detector(train_gt, train_img_dir, fast_train=True, ...)",
                      "detect(model_filename, test_img_dir, ...)", "grader_main(argv=None)"):
        assert f"    {signature}\n" in doc
