"""The package's layers: no import cycle, and no layer importing one above it.

Read from the sources with ``ast``: the imports a module makes when it is loaded (module
level, outside ``if TYPE_CHECKING:``), and, for the layer rule, every import anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "deployer"

# Lower numbers are lower layers; a module may import its own layer and those below.
LAYERS = {
    "errors": 0, "hosts": 1, "config": 1, "commands": 1, "actions": 1, "interrupts": 0,
    "db": 2, "source": 2, "discovery": 2, "scaffold": 2, "server": 3, "proxy": 3, "swarm": 3, "steps": 4, "status": 4,
    "readiness": 4, "engine": 5, "api": 6, "cli": 7,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, load_time_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]

    def visit(nodes: list[ast.stmt], *, top: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("deployer"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                if base.startswith("deployer"):
                    for alias in node.names:
                        candidate = f"{base}.{alias.name}"
                        found.add(candidate if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists()
                                  or (PACKAGE.parent / candidate.replace(".", "/")).is_dir() else base)
            if not load_time_only or not top:
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        visit([child], top=False)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit([c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)], top=True)

    visit(tree.body, top=True)
    return found


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def test_no_import_cycle_at_load_time() -> None:
    graph = {name: {i for i in imports(path, load_time_only=True) if i in MODULES and i != name} for name, path in MODULES.items()}
    # A package's __init__ importing its own submodules is how packages work; cycles through it are not.
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)


def layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n) is not None))
def test_no_layer_imports_one_above_it(name: str) -> None:
    mine = layer(name)
    assert mine is not None
    above = sorted(i for i in imports(MODULES[name], load_time_only=False)
                   if (other := layer(i)) is not None and other > mine)
    assert not above, f"{name} (layer {mine}) imports from higher layers: {above}"
