"""Figures in the docs rendered from the result files, so that none can go stale.

Every figure that ``README.md``, ``bench/README.md`` and the notebooks' prose (markdown
cells) quote from a benchmark is written with a marker that names where it comes from;
``facepoints render-docs`` rewrites the text between each marker and its end from
``bench/results/*.json``, and ``--check`` (run by the test suite) fails when the committed
text differs from what it renders. The markers are HTML comments, invisible where the
Markdown is shown:

* ``<!--=FILE:PATH:FORMAT-->3.41<!--/-->``: the value at ``PATH`` (dotted keys; an integer
  picks a list item, ``-1`` the last) of ``bench/results/FILE.json``, formatted by
  ``FORMAT`` (a ``format()`` spec such as ``.2f``; empty: as it is). ``PATH`` may end in
  ``/N`` or ``*N`` to change its unit (``train.wall_seconds/60``: minutes). ``FILE`` may
  name a subfolder (``gpu/g-cal90``) and a key may hold a ``/`` (``sets.upright/second.err``)
  unless what follows it is a number.
* ``<!--=A / B:.1f-->5.9<!--/-->``: two such values (each ``FILE:PATH``) divided,
  multiplied, added or subtracted (``/``, ``*``, ``+``, ``-``, with spaces around).

A figure no result file holds (a measurement made by hand) is no marker: the text says
how it was measured. ``render_text`` and ``render_file`` do the work; ``RENDERED`` lists
the files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from .machine import RESULTS_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
# the files whose figures are rendered, relative to the repository's root
RENDERED = ("README.md", "bench/README.md", "notebooks/01_data_exploration.ipynb",
            "notebooks/02_augmentations.ipynb", "notebooks/03_architecture_experiments.ipynb",
            "notebooks/04_error_analysis.ipynb", "notebooks/05_your_own_photos.ipynb")

MARKER = re.compile(r"<!--=(?P<spec>[^>]*?)-->(?P<shown>.*?)<!--/-->", re.DOTALL)
_REF = r"[A-Za-z0-9_.+/-]+:[A-Za-z0-9_./\-]+(?:\*[0-9.]+)?"   # a key or a file under a subfolder may hold a "/"
_EXPR = re.compile(rf"^\s*(?P<a>{_REF})\s*(?:(?P<op>[/*+-])\s+(?P<b>{_REF})\s*)?(?::(?P<fmt>[^:]*))?$")
_OPS: dict[str, Callable[[float, float], float]] = {
    "/": lambda a, b: a / b, "*": lambda a, b: a * b, "+": lambda a, b: a + b, "-": lambda a, b: a - b}


class RenderError(ValueError):
    """A marker that names no result, no value, or a value that cannot be formatted."""


class Results:
    """The result files of a folder, each read once."""

    def __init__(self, folder: Path = RESULTS_DIR):
        self.folder, self._cache = Path(folder), {}

    def value(self, ref: str) -> object:
        """The value a ``FILE:PATH[/N|*N]`` reference names."""
        name, path = ref.split(":", 1)
        scale = re.search(r"([/*])([0-9.]+)$", path)
        if scale:
            path = path[:scale.start()]
        if name not in self._cache:
            if ".." in name.split("/") or name.startswith("/"):
                raise RenderError(f"a result file lies under the results folder, got {name!r} (the marker {ref!r})")
            file = self.folder / f"{name}.json"
            if not file.is_file():
                raise RenderError(f"no result file {file.name} for the marker {ref!r}")
            self._cache[name] = json.loads(file.read_text(encoding="utf-8"))
        value = self._cache[name]
        for key in path.split("."):
            try:
                value = value[int(key)] if isinstance(value, list) else value[key]
            except (KeyError, IndexError, ValueError, TypeError):
                raise RenderError(f"{name}.json has no {path!r} (the marker {ref!r})") from None
        if scale:
            value = value / float(scale.group(2)) if scale.group(1) == "/" else value * float(scale.group(2))
        return value


def render_value(spec: str, results: Results) -> str:
    """The text one marker's ``spec`` stands for."""
    match = _EXPR.match(spec)
    if not match:
        raise RenderError(f"a figure marker must read FILE:PATH[:FORMAT] or A op B[:FORMAT], got {spec!r}")
    value = results.value(match["a"])
    if match["op"]:
        value = _OPS[match["op"]](float(value), float(results.value(match["b"])))
    try:
        return format(value, match["fmt"] or "")
    except (TypeError, ValueError) as exc:
        raise RenderError(f"cannot format {value!r} as {match['fmt']!r} (the marker {spec!r}): {exc}") from None


def render_text(text: str, results: Results) -> str:
    """``text`` with every marker's figure rendered from ``results``."""
    return MARKER.sub(lambda m: f"<!--={m['spec']}-->{render_value(m['spec'], results)}<!--/-->", text)


def _render_notebook(text: str, results: Results) -> str:
    """A notebook's markdown cells rendered (its code and outputs as they were)."""
    notebook, changed = json.loads(text), False
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "markdown":
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            rendered = render_text(source, results)
            if rendered != source:
                cell["source"], changed = rendered.splitlines(keepends=True), True
    if not changed:
        return text
    indent = 1 if text.startswith('{\n "') else 2
    return json.dumps(notebook, indent=indent, ensure_ascii=False) + "\n"


def render_file(path: Path, results: Results) -> tuple[str, str]:
    """(the file's text, its text rendered)."""
    text = path.read_text(encoding="utf-8")
    rendered = _render_notebook(text, results) if path.suffix == ".ipynb" else render_text(text, results)
    return text, rendered


def render_docs(root: Path = REPO_ROOT, check: bool = False, results_dir: Path | None = None) -> list[str]:
    """Render every file of ``RENDERED`` under ``root`` in place (``check``: write nothing);
    returns the files whose text differed from their rendering."""
    results = Results(results_dir or root / "bench" / "results")
    stale = []
    for name in RENDERED:
        path = root / name
        text, rendered = render_file(path, results)
        if rendered != text:
            stale.append(name)
            if not check:
                path.write_text(rendered, encoding="utf-8")
    return stale


def marker_count(root: Path = REPO_ROOT) -> dict[str, int]:
    """How many figures each rendered file takes from the result files."""
    return {name: len(MARKER.findall((root / name).read_text(encoding="utf-8"))) for name in RENDERED}


def _cmd_render_docs(args) -> int:
    stale = render_docs(check=args.check)
    counts = marker_count()
    if args.check:
        if stale:
            print(f"out of date: {', '.join(stale)} (run `facepoints render-docs`)")
            return 1
        print(f"{sum(counts.values())} figures in {len(RENDERED)} files match bench/results")
        return 0
    print(f"rendered {sum(counts.values())} figures from bench/results"
          + (f"; changed {', '.join(stale)}" if stale else "; nothing changed"))
    return 0


def add_docs_command(sub) -> None:
    """Register ``facepoints render-docs`` on the command line's sub-parsers."""
    p = sub.add_parser("render-docs", help="rewrite the figures README.md, bench/README.md and the notebooks "
                                           "quote from bench/results (between their markers)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file is out of date")
    p.set_defaults(func=_cmd_render_docs)
