"""The package's shape: no import circle, no private name imported across modules, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "adaptive_router"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def _top_level_imports(module: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names) at module level, outside ``if TYPE_CHECKING:``."""
    found = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            found.append((_resolve(module, path, node), [a.name for a in node.names]))
    return [(m, names) for m, names in found if m.startswith("adaptive_router")]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, names in _top_level_imports(module, path):
            for name in names:  # ``from pkg import sub`` imports the submodule
                if f"{target}.{name}" in MODULES:
                    graph[module].add(f"{target}.{name}")
            if target in MODULES:
                graph[module].add(target)
            parts = target.split(".")
            for i in range(1, len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__
                parent = ".".join(parts[:i])
                if parent in MODULES and not module.startswith(parent + ".") and module != parent:
                    graph[module].add(parent)
    return graph


def test_no_import_circle_below_the_package_face() -> None:
    graph = _graph()
    # The top-level face imports everything; modules import it only for __version__, set before
    # its own imports run. Leave it out and look for any other cycle.
    graph = {
        m: {t for t in ts if t != "adaptive_router"} for m, ts in graph.items() if m != "adaptive_router"
    }
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join([*trail[trail.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_private_name_is_imported_across_modules() -> None:
    crossing = [
        f"{module} imports {name} from {target}"
        for module, path in MODULES.items()
        for target, names in _top_level_imports(module, path)
        for name in names
        if name.startswith("_") and not name.startswith("__") and f"{target}.{name}" not in MODULES
    ]
    assert crossing == []


@pytest.mark.parametrize("module", sorted(MODULES), ids=str)
def test_no_module_is_over_600_lines(module: str) -> None:
    path = MODULES[module]
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_build_scripts_stay_out_of_the_package() -> None:
    assert not (PACKAGE / "_snapshot.py").exists()
    assert (PACKAGE.parent / "tools" / "build_snapshot.py").exists()
