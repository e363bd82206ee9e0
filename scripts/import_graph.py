"""Print the import cycles among sidecar's modules and which modules import sidecar.server.

Reads the sources with ``ast`` (nothing is imported or run). Every import counts, including those
under ``TYPE_CHECKING`` and inside functions: each is a place where one part knows another.

    python scripts/import_graph.py [REPO_ROOT]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "sidecar"


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package under ``root``."""
    names: dict[str, Path] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # ``from pkg import mod`` names a module; ``from mod import obj`` names the module
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import sidecar.x.y`` of a name inside
                target = target.rpartition(".")[0]
            if target and target != name and target != PACKAGE:
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    modules = module_names(root)
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    found = cycles(graph)
    print(f"import cycles among {len(modules)} {PACKAGE} modules: {len(found)}")
    for component in found:
        inner = sorted(f"{a} -> {b}" for a in component for b in graph[a] if b in component)
        print(f"  cycle of {len(component)}: " + ", ".join(component))
        for edge in inner:
            print(f"    {edge}")
    importers = sorted(name for name, deps in graph.items() if f"{PACKAGE}.server" in deps)
    print(f"modules importing {PACKAGE}.server: {len(importers)}")
    for name in importers:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
