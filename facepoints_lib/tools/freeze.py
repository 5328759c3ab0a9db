"""Freeze the package into the single ``solution.py`` that the course grader accepts.

The grader takes one file and offers only torch, numpy, Pillow and the standard
library, so ``solution.py`` is generated from the package and never edited by hand::

    python -m facepoints_lib freeze            # regenerate solution.py from facepoints_lib/core
    python -m facepoints_lib freeze --check    # exit 1 if solution.py is stale

How a package is frozen (all modules end up in ONE shared namespace):

* The modules are those named by ``FROZEN_MODULES`` in the package's ``__init__.py``
  (read with ``ast``, never imported), and the folder must hold exactly those; or an
  explicit list.  They are ordered by the imports they run at import time (stable: the
  given order wherever the imports leave a choice); a cycle is an error.  Imports inside
  function bodies are rewritten too but do not constrain the order.
* Each module's source is kept under a ``# ---- pkg/module.py ----`` comment; its
  docstring becomes a comment, ``__all__`` and top-level ``if __name__ == "__main__":``
  blocks are dropped, and every ``from __future__ import ...`` is hoisted to the top.
* Every module-level import of the standard library, torch, numpy or PIL is hoisted
  into one import block at the top (standard library first, then the others; each
  import once); imports inside functions, classes and ``try:``/``if`` blocks stay put.
* The header lists the package's ``FROZEN_ENTRY_POINTS`` (``(name, what it is for)``
  pairs in its ``__init__.py``), each with its signature read from the code.
* ``from .a import f`` (or ``from pkg.a import f``) is dropped, since ``f`` is already
  the same global; ``from .a import f as g`` becomes ``g = f``.  Module-object imports
  (``from . import a``, ``from pkg import a``, ``import pkg.a as a``) become
  ``a = types.SimpleNamespace(...)`` holding a's top-level names at that point;
  a bare ``import pkg.a`` is refused.
* Refused: star imports, imports of anything but torch, numpy, PIL and the standard
  library (anywhere in a module, ``try:`` blocks included), two modules binding the same
  top-level name differently (identical imports such as ``import numpy as np`` may be
  repeated), and imports of package modules that are not frozen.
"""

from __future__ import annotations

import argparse
import ast
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .freeze_header import FreezeError, entry_index, import_block, is_external, read_package_constant

ALLOWED_THIRD_PARTY = frozenset({"torch", "numpy", "PIL"})
DEFAULT_ENTRY_POINT = 'if __name__ == "__main__":\n    raise SystemExit(main())\n'


@dataclass
class _FreezerModule:
    name: str
    tree: ast.Module
    lines: list[bytes]                       # source lines, bytes because ast columns are UTF-8 offsets
    provides: set[str] = field(default_factory=set)  # every top-level name, re-exports included
    bindings: dict[str, set[tuple]] = field(default_factory=dict)  # name -> how it is bound (clash check)
    load_deps: set[str] = field(default_factory=set)  # modules imported when this module runs
    intra: list[tuple[ast.stmt, list[tuple[str, str, str | None]], str]] = field(default_factory=list)
    edits: list[tuple[ast.stmt, list[str]]] = field(default_factory=list)
    futures: set[str] = field(default_factory=set)
    hoisted: list[ast.stmt] = field(default_factory=list)   # module-level external imports, moved up


def _freezer_is_main_guard(node: ast.stmt) -> bool:
    if not (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1):
        return False
    sides = [node.test.left, node.test.comparators[0]]
    return isinstance(node.test.ops[0], ast.Eq) and any(
        isinstance(s, ast.Name) and s.id == "__name__" for s in sides
    ) and any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)


def _freezer_bind(mod: _FreezerModule, name: str, how: tuple) -> None:
    mod.provides.add(name)
    mod.bindings.setdefault(name, set()).add(how)


def _freezer_intra_target(pkg: str, mod: str, dotted: str, known: Sequence[str]) -> str:
    parts = dotted.split(".")
    if len(parts) != 2 or parts[0] != pkg or parts[1] not in known:
        raise FreezeError(f"module {mod!r} imports {dotted!r}, which is not one of the frozen modules {list(known)}")
    return parts[1]


def _freezer_stored_names(node: ast.AST) -> list[str]:
    """Names a statement binds in its own scope (not in its nested blocks, lambdas or comprehensions)."""
    found, stack = [], [v for k, v in ast.iter_fields(node) if k not in _FREEZER_BLOCK_FIELDS]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, ast.Name) and isinstance(item.ctx, ast.Store):
            found.append(item.id)
        elif isinstance(item, ast.AST) and not isinstance(item, _FREEZER_OWN_SCOPES):
            stack.extend(v for _, v in ast.iter_fields(item))
    return found


_FREEZER_BLOCK_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")
_FREEZER_OWN_SCOPES = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _freezer_visit(mod: _FreezerModule, pkg: str, known: Sequence[str], body: list, scope: str,
                   top: bool = False) -> None:
    """Record imports, top-level bindings and edits of ``body``; scope is module, class or function."""
    for node in body:
        if top and _freezer_is_main_guard(node):
            mod.edits.append((node, []))  # library demo code: dropped, its imports unchecked
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            _freezer_import(mod, pkg, known, node, scope)
            if top and is_external(node, pkg):
                mod.hoisted.append(node)
                mod.edits.append((node, []))
            continue
        if top and "__all__" in _freezer_stored_names(node) \
                and isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            mod.edits.append((node, []))  # per-module export lists make no sense in one namespace
            continue
        if isinstance(node, ast.Global):
            for name in node.names:
                _freezer_bind(mod, name, ("def", mod.name))
        elif scope == "module":
            own = [node.name] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else []
            own += [node.name] if isinstance(node, ast.ExceptHandler) and node.name else []
            for name in own + _freezer_stored_names(node):
                _freezer_bind(mod, name, ("def", mod.name))
        inner = scope
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner = "function"
        elif isinstance(node, ast.ClassDef) and scope != "function":
            inner = "class"
        for key in _FREEZER_BLOCK_FIELDS:
            child = getattr(node, key, None)
            if child:
                _freezer_visit(mod, pkg, known, child, inner)


def _freezer_import(mod: _FreezerModule, pkg: str, known: Sequence[str], node: ast.stmt, scope: str) -> None:
    here = f"module {mod.name!r} (line {node.lineno})"
    rebinds: list[tuple[str, str, str | None]] = []  # (bound name, target module, attribute or None)
    if isinstance(node, ast.ImportFrom):
        if any(a.name == "*" for a in node.names):
            raise FreezeError(f"{here}: star import 'from {'.' * node.level}{node.module or ''} import *' "
                              "is not allowed (all frozen modules share one namespace)")
        if node.level == 0 and node.module == "__future__":
            mod.futures.update(a.name for a in node.names)
            mod.edits.append((node, []))
            return
        if node.level > 1:
            raise FreezeError(f"{here}: relative import beyond the package ('from {'.' * node.level}...')")
        dotted = f"{pkg}.{node.module}" if node.level == 1 and node.module else (pkg if node.level else node.module)
        if dotted == pkg:        # from . import a / from pkg import a
            for a in node.names:
                rebinds.append((a.asname or a.name, _freezer_intra_target(pkg, mod.name, f"{pkg}.{a.name}", known), None))
        elif dotted.split(".")[0] == pkg:
            target = _freezer_intra_target(pkg, mod.name, dotted, known)
            rebinds.extend((a.asname or a.name, target, a.name) for a in node.names)
        else:
            _freezer_check_external(here, dotted)
            for a in node.names:
                if scope == "module":
                    _freezer_bind(mod, a.asname or a.name, ("import", f"{dotted}.{a.name}"))
    else:
        for a in node.names:
            if a.name.split(".")[0] != pkg:
                _freezer_check_external(here, a.name)
                bound = a.asname or a.name.split(".")[0]
                if scope == "module":
                    _freezer_bind(mod, bound, ("import", a.name if a.asname else bound))
            elif a.asname is None:
                raise FreezeError(f"{here}: 'import {a.name}' binds the package name; "
                                  f"write 'from . import {a.name.split('.')[-1]}' or 'import {a.name} as ...'")
            else:
                rebinds.append((a.asname, _freezer_intra_target(pkg, mod.name, a.name, known), None))
        if not rebinds:
            return
        if len(rebinds) != len(node.names):
            raise FreezeError(f"{here}: do not mix package and other modules in one import statement")
    if rebinds:
        mod.intra.append((node, rebinds, scope))
        if scope != "function":
            mod.load_deps.update(target for _, target, _ in rebinds)
        if scope == "module":
            for bound, target, attr in rebinds:
                if attr == bound:
                    mod.provides.add(bound)  # re-export of the very same global: no new binding
                else:
                    _freezer_bind(mod, bound, ("module", target) if attr is None else ("alias", target, attr))


def _freezer_check_external(here: str, dotted: str) -> None:
    root = dotted.split(".")[0]
    if root not in ALLOWED_THIRD_PARTY and root not in sys.stdlib_module_names:
        raise FreezeError(f"{here} imports {dotted!r}: the grader has only torch, numpy, PIL and the "
                          "standard library (imports inside functions and try: blocks count too)")


def _freezer_load(package_dir: Path, name: str, known: Sequence[str]) -> _FreezerModule:
    path = package_dir / f"{name}.py"
    if not path.is_file():
        raise FreezeError(f"frozen module {name!r} has no file {path}")
    source = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(source, str(path))
    except SyntaxError as exc:
        raise FreezeError(f"module {name!r} does not parse: {exc}") from exc
    # bytes.splitlines breaks only at \n and \r, like the tokenizer's line numbers
    mod = _FreezerModule(name, tree, source.encode("utf-8").splitlines(keepends=True))
    body = mod.tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        doc = ast.get_docstring(mod.tree) or ""
        mod.edits.append((body[0], [("# " + line).rstrip() for line in doc.splitlines()]))
        body = body[1:]
    _freezer_visit(mod, package_dir.name, known, body, "module", top=True)
    return mod


def _freezer_order(mods: dict[str, _FreezerModule], order: Sequence[str]) -> list[str]:
    done: list[str] = []
    while len(done) < len(order):
        ready = [n for n in order if n not in done and mods[n].load_deps <= set(done) | {n}]
        if not ready:
            stuck = [n for n in order if n not in done]
            raise FreezeError(f"import cycle: none of the modules {stuck} can come next; "
                              "move one of their imports into the function that needs it")
        done.append(ready[0])
    return done


def _freezer_namespace_expr(target: _FreezerModule) -> str:
    names = tuple(sorted(n for n in target.provides if not n.startswith("__")))
    return ('__import__("types").SimpleNamespace(**{_freeze_n: globals()[_freeze_n] '
            f"for _freeze_n in {names!r} if _freeze_n in globals()}})")


def _freezer_render(mod: _FreezerModule) -> str:
    lines = list(mod.lines)
    spans = sorted(mod.edits, key=lambda e: (e[0].lineno, e[0].col_offset), reverse=True)
    for node, repl in spans:
        l0, l1 = node.lineno - 1, node.end_lineno - 1
        prefix, suffix = lines[l0][: node.col_offset], lines[l1][node.end_col_offset:]
        if not prefix.strip() and (not suffix.strip() or suffix.lstrip().startswith(b"#")):
            nested = bool(prefix)
            new = [prefix + r.encode() + b"\n" for r in (repl or (["pass"] if nested else []))]
        else:   # shares its line with other statements: splice inline
            new = [prefix + ("; ".join(repl) or "pass").encode() + suffix]
        lines[l0 : l1 + 1] = new
    return b"".join(lines).decode("utf-8").strip("\n") + "\n"


def freeze_package(package_dir: Path, modules: Sequence[str] | None = None, entry_point: str | None = None) -> str:
    """Return the text of the single file that holds ``modules`` of the package at ``package_dir``.

    ``modules`` defaults to ``FROZEN_MODULES`` from the package's ``__init__.py``.  ``entry_point``
    is source appended at the end; None means ``FROZEN_ENTRY_POINT`` from ``__init__.py`` if
    that is set, else ``if __name__ == "__main__": raise SystemExit(main())`` when the last
    module in the frozen order defines a top-level function ``main``, else nothing.  Pass ``""``
    for no entry point.  Raises ``FreezeError`` when the package cannot be frozen safely.
    """
    package_dir = Path(package_dir)
    pkg = package_dir.name
    label, command = _freezer_names(package_dir)
    listed = modules is None
    modules = modules if modules is not None else read_package_constant(package_dir) or []
    if isinstance(modules, str) or not all(isinstance(m, str) for m in modules):
        raise FreezeError(f"FROZEN_MODULES must be a tuple of module names, got {modules!r}")
    modules = list(modules)
    if not modules or len(set(modules)) != len(modules):
        raise FreezeError(f"no (or duplicate) modules to freeze in {package_dir}: set FROZEN_MODULES in __init__.py")
    present = {p.stem for p in package_dir.glob("*.py") if p.name != "__init__.py"}
    if listed and present != set(modules):  # the folder holds what is frozen, and nothing else
        raise FreezeError(f"{package_dir.name}/ and its FROZEN_MODULES disagree: in the folder only: "
                          f"{sorted(present - set(modules))}, listed only: {sorted(set(modules) - present)}")
    mods = {name: _freezer_load(package_dir, name, modules) for name in modules}
    order = _freezer_order(mods, modules)

    owners: dict[str, tuple[str, set[tuple]]] = {}
    for name in order:
        for bound, how in mods[name].bindings.items():
            first = owners.setdefault(bound, (name, how))
            if first[0] != name and (first[1] != how or any(h[0] == "def" for h in how | first[1])):
                raise FreezeError(f"top-level name {bound!r} is bound by both module {first[0]!r} and "
                                  f"module {name!r}; all frozen modules share one namespace, rename one")
    for name in order:
        for node, rebinds, scope in mods[name].intra:
            repl = []
            for bound, target, attr in rebinds:
                if attr is None:
                    repl.append(f"{bound} = {_freezer_namespace_expr(mods[target])}")
                elif attr not in mods[target].provides:
                    raise FreezeError(f"module {name!r} (line {node.lineno}) imports {attr!r} from "
                                      f"{target!r}, which does not define it at top level")
                elif attr != bound or scope == "class":  # a class body needs its attribute
                    repl.append(f"{bound} = {attr}")
            mods[name].edits.append((node, repl))

    listing = textwrap.fill(", ".join(order), 88, initial_indent="    ", subsequent_indent="    ")
    parts = [
        f'"""GENERATED FILE - DO NOT EDIT. Frozen from the package {label} by\n'
        f"`{command}`.\n\n"
        f"{entry_index(package_dir, mods)}"
        f"Edit the package and rerun that command to regenerate this file; add `--check` to\n"
        f"test whether it is up to date.  Modules, in order:\n\n{listing}\n"
        '"""\n'
    ]
    futures = sorted(set().union(*(m.futures for m in mods.values())))
    if futures:
        parts.append(f"from __future__ import {', '.join(futures)}\n")
    block = import_block(node for name in order for node in mods[name].hoisted)
    if block:
        parts.append(f"\n{block}\n")
    for name in order:
        parts.append(f"\n\n# ---- {label}/{name}.py ----\n{_freezer_render(mods[name])}")
    if entry_point is None:
        entry_point = read_package_constant(package_dir, "FROZEN_ENTRY_POINT")
    if entry_point is None and any(
        isinstance(n, ast.FunctionDef) and n.name == "main" for n in mods[order[-1]].tree.body
    ):
        entry_point = DEFAULT_ENTRY_POINT
    if entry_point:
        parts.append(f"\n\n# ---- entry point ----\n{entry_point.strip(chr(10))}\n")
    text = "".join(parts)
    try:
        compile(text, "solution.py", "exec", dont_inherit=True)
    except SyntaxError as exc:  # a freezer bug or a bad entry point
        raise FreezeError(f"frozen text does not compile: {exc}") from exc
    for node in ast.walk(ast.parse(text)):  # safety net: nothing may still import the package
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if getattr(node, "level", 0) or any(n.split(".")[0] == pkg for n in names):
            raise FreezeError(f"frozen text still imports the package at line {node.lineno}")
    return text


def _freezer_names(package_dir: Path) -> tuple[str, str]:
    """The package's path from its top package (``facepoints_lib/core``), and the command that freezes it."""
    parts, parent = [package_dir.name], package_dir.resolve().parent
    while (parent / "__init__.py").is_file():
        parts, parent = [parent.name, *parts], parent.parent
    return "/".join(parts), f"python -m {parts[0]} freeze"


def _freezer_default_dir(package_dir: Path | None) -> Path:
    """The package to freeze: the given one, or this project's submitted core."""
    return Path(package_dir) if package_dir is not None else Path(__file__).resolve().parents[1] / "core"


def _freezer_default_out(package_dir: Path | None) -> Path:
    """``solution.py`` in the repository root (beside the top package), or beside a given package."""
    if package_dir is None:
        return Path(__file__).resolve().parents[2] / "solution.py"
    return Path(package_dir).parent / "solution.py"


def write_solution(package_dir: Path | None = None, out_path: Path | None = None) -> Path:
    """Freeze the package (default: ``facepoints_lib/core``) into ``out_path`` (default: ``<repo root>/solution.py``)."""
    out_path = Path(out_path) if out_path is not None else _freezer_default_out(package_dir)
    out_path.write_text(freeze_package(_freezer_default_dir(package_dir)), encoding="utf-8", newline="\n")
    return out_path


def check_solution_up_to_date(package_dir: Path | None = None, path: Path | None = None) -> bool:
    """True if ``path`` (default: ``<repo root>/solution.py``) equals a fresh freeze of the package."""
    path = Path(path) if path is not None else _freezer_default_out(package_dir)
    return path.is_file() and path.read_text(encoding="utf-8") == freeze_package(_freezer_default_dir(package_dir))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write ``solution.py``, or with ``--check`` exit 1 if it is stale."""
    parser = argparse.ArgumentParser(prog="facepoints freeze", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output file (default: <repo root>/solution.py)")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the file is out of date")
    parser.add_argument("--package-dir", type=Path, default=None, help="package to freeze (default: facepoints_lib/core)")
    args = parser.parse_args(argv)
    try:
        if args.check:
            if not check_solution_up_to_date(args.package_dir, args.out):
                target = args.out or _freezer_default_out(args.package_dir)
                state = "out of date" if target.is_file() else "missing"
                print(f"{target} is {state}: run `python -m facepoints_lib freeze`", file=sys.stderr)
                return 1
            print("solution.py is up to date")
            return 0
        print(f"wrote {write_solution(args.package_dir, args.out)}")
        return 0
    except FreezeError as exc:
        print(f"freeze failed: {exc}", file=sys.stderr)
        return 2
