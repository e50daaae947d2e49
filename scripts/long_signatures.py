"""List functions with more than six parameters; exit 1 if there are any.

    python scripts/long_signatures.py [PATH ...]    (default: pruning orchestrator)

A parameter is every named one except a leading ``self``/``cls``; ``*args``
and ``**kwargs`` count as one each.  A function is exempt when a comment
containing ``long signature:`` sits on its ``def`` line or in the comment block
right above it (the comment says why it keeps the long signature).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LIMIT = 6
EXEMPT_MARK = "long signature:"
DEFAULT_PATHS = ("pruning", "orchestrator")


def count_parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = node.args
    named = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    if named and named[0].arg in ("self", "cls"):
        named = named[1:]
    return len(named) + (args.vararg is not None) + (args.kwarg is not None)


def _exempt(lines: list[str], node: ast.AST) -> bool:
    """Whether the ``def`` line, or the comment block right above the function (and its
    decorators), carries :data:`EXEMPT_MARK`."""
    if EXEMPT_MARK in lines[node.lineno - 1]:
        return True
    decorators = getattr(node, "decorator_list", [])
    index = min([node.lineno, *(d.lineno for d in decorators)]) - 2
    while index >= 0 and lines[index].lstrip().startswith("#"):
        if EXEMPT_MARK in lines[index]:
            return True
        index -= 1
    return False


def offenders(path: Path) -> list[tuple[str, int, str, int]]:
    """(file, line, qualified name, count) of each over-long signature."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                count = count_parameters(child)
                if count > LIMIT and not _exempt(lines, child):
                    found.append((str(path), child.lineno, name, count))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source, filename=str(path)), "")
    return found


def scan(paths: list[str]) -> list[tuple[str, int, str, int]]:
    found = []
    for raw in paths:
        root = Path(raw)
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for file in files:
            found.extend(offenders(file))
    return found


def main(argv: list[str]) -> int:
    found = scan(argv or list(DEFAULT_PATHS))
    for file, line, name, count in found:
        print(f"{file}:{line}: {name} takes {count} parameters")
    print(f"{len(found)} function(s) over {LIMIT} parameters", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
