"""Print sidecar's functions longer than a limit (80 lines unless given), longest first.

Reads the sources with ``ast`` (nothing is imported or run). A function's length is its lines
from ``def`` (decorators excluded) to its last line, docstring and comments included; a
function nested in another counts in both.

    python scripts/long_functions.py [LIMIT] [REPO_ROOT]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "sidecar"


def long_functions(root: Path, limit: int) -> list[tuple[int, str, int, str]]:
    """(lines, file, first line, qualified name) of every function over ``limit`` lines."""
    found = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        rel = str(path.relative_to(root))

        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = prefix + child.name
                    lines = child.end_lineno - child.lineno + 1
                    if lines > limit:
                        found.append((lines, rel, child.lineno, name))
                    visit(child, name + ".")
                elif isinstance(child, ast.ClassDef):
                    visit(child, prefix + child.name + ".")
                else:
                    visit(child, prefix)

        visit(ast.parse(path.read_text(), rel), "")
    return sorted(found, key=lambda f: (-f[0], f[1], f[2]))


def main() -> int:
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 80
    root = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent.parent
    found = long_functions(root, limit)
    print(f"{PACKAGE} functions over {limit} lines: {len(found)}")
    for lines, rel, lineno, name in found:
        print(f"  {lines:4d}  {rel}:{lineno}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
