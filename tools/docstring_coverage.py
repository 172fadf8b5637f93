"""Count public definitions in ``worldsim/`` and ``envs/`` and how many carry a docstring.

Counted (issue 19): module-level functions and classes whose name does not start with ``_``,
and methods (including properties) of those public classes whose name does not start with
``_``. Dunder methods (``__init__``, ``__call__``) are private by this rule and not counted;
nested functions and methods of private classes are not counted either. A docstring is any
string literal as the first statement (``ast.get_docstring``), however short.

Usage: ``python tools/docstring_coverage.py [--missing] [paths ...]`` (default ``worldsim envs``).
Prints one line per top folder and a total; ``--missing`` also lists ``path:line name`` for each
undocumented definition. Always exits 0: it reports, it does not gate.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def public_defs(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    """Return ``(qualified_name, node)`` for each counted definition in one module."""
    out: list[tuple[str, ast.AST]] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name.startswith("_"):
                continue
            out.append((node.name, node))
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and not sub.name.startswith("_"):
                        out.append((f"{node.name}.{sub.name}", sub))
    return out


def main(argv: list[str]) -> int:
    """Print coverage per root and in total; list undocumented definitions with ``--missing``."""
    show_missing = "--missing" in argv
    roots = [a for a in argv if not a.startswith("--")] or ["worldsim", "envs"]
    total = documented = 0
    missing: list[str] = []
    for root in roots:
        n = d = 0
        for path in sorted(Path(root).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for name, node in public_defs(tree):
                n += 1
                if ast.get_docstring(node) is not None:  # type: ignore[arg-type]
                    d += 1
                else:
                    missing.append(f"{path}:{node.lineno} {name}")  # type: ignore[attr-defined]
        print(f"{root}: {d}/{n} documented ({100 * d / max(n, 1):.0f}%), {n - d} missing")
        total += n
        documented += d
    share = 100 * documented / max(total, 1)
    print(f"total: {documented}/{total} documented ({share:.0f}%), {total - documented} missing")
    if show_missing:
        print("\n".join(missing))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
