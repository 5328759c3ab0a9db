"""What the top of a frozen file holds: one import block, and an index of entry points.

Used by ``freeze``: ``read_package_constant`` reads the package's lists (parsed, never
imported), ``is_external`` tells which module-level imports are hoisted,
``import_block`` writes them once each at the top, and ``entry_index`` lists the
functions the file is for, each with its signature read from the code.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Iterable


class FreezeError(ValueError):
    """The package cannot be frozen into one file; the message says where and why."""


def read_package_constant(package_dir: Path, constant: str = "FROZEN_MODULES") -> object:
    """Return the literal value of ``constant`` assigned in ``package_dir/__init__.py`` (None if absent).

    The file is parsed, not imported, so this works before the package (or torch) can be imported.
    """
    init = Path(package_dir) / "__init__.py"
    if not init.exists():
        return None
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and any(
            isinstance(t, ast.Name) and t.id == constant for t in targets
        ):
            return ast.literal_eval(node.value)
    return None



def is_external(node: ast.stmt, pkg: str) -> bool:
    """An import of the standard library or an allowed third-party package (not of the
    package itself, not ``from __future__``)."""
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and node.module not in ("__future__", None) and node.module.split(".")[0] != pkg
    return all(a.name.split(".")[0] != pkg for a in node.names)


def import_block(nodes: Iterable[ast.stmt]) -> str:
    """One import block for the hoisted imports: the standard library, then the rest;
    ``import`` lines before ``from`` lines, each sorted, each import once."""
    plain: set[tuple[str, str | None]] = set()
    froms: dict[str, set[tuple[str, str | None]]] = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            plain.update((a.name, a.asname) for a in node.names)
        else:
            froms.setdefault(node.module, set()).update((a.name, a.asname) for a in node.names)

    def alias(name: str, asname: str | None) -> str:
        return f"{name} as {asname}" if asname else name

    groups = []
    for stdlib in (True, False):
        def mine(module: str) -> bool:
            return (module.split(".")[0] in sys.stdlib_module_names) == stdlib
        lines = [f"import {alias(*a)}" for a in sorted(plain, key=lambda a: (a[0].lower(), a[1] or "")) if mine(a[0])]
        lines += [f"from {module} import {', '.join(alias(*a) for a in sorted(froms[module]))}"
                  for module in sorted(froms, key=str.lower) if mine(module)]
        if lines:
            groups.append("\n".join(lines))
    return "\n\n".join(groups)


def signature(node: ast.FunctionDef) -> str:
    """``name(a, b, flag=True)``: the positional parameters, defaults included; ``...``
    stands for keyword-only ones."""
    args = node.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    parts = [a.arg if d is None else f"{a.arg}={ast.unparse(d)}" for a, d in zip(positional, defaults)]
    if args.vararg:
        parts.append(f"*{args.vararg.arg}")
    if args.kwonlyargs:
        parts.append("...")
    return f"{node.name}({', '.join(parts)})"


def entry_index(package_dir: Path, mods: dict) -> str:
    """The header's index of the package's ``FROZEN_ENTRY_POINTS``, ``(function name, what
    it is for)`` pairs: signature, what it is for, its module. ``mods`` maps a module's
    name to what ``freeze`` read of it (its ``tree``)."""
    functions = {node.name: (name, node) for name, mod in mods.items() for node in mod.tree.body
                 if isinstance(node, ast.FunctionDef)}
    rows = []
    for entry in read_package_constant(package_dir, "FROZEN_ENTRY_POINTS") or ():
        if not (isinstance(entry, tuple) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
            raise FreezeError(f"FROZEN_ENTRY_POINTS must hold (function name, description) pairs, got {entry!r}")
        name, what = entry
        if name not in functions:
            raise FreezeError(f"FROZEN_ENTRY_POINTS names {name!r}, which no frozen module defines at top level")
        module, node = functions[name]
        rows.append(f"    {signature(node)}\n        {what} ({module}.py)")
    return ("Entry points:\n\n" + "\n".join(rows) + "\n\n") if rows else ""
