"""The package's layers: every import points down, no cycle (type-only imports included), small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "airflow_provider_firered"
#: Lowest first; a module may import its own layer's modules or lower ones, never a higher layer.
LAYERS: list[tuple[str, ...]] = [
    ("airflow_provider_firered", "exceptions", "version_compat"),
    ("utils",),
    ("gateway",),
    ("media",),
    ("hooks",),
    ("triggers",),
    ("batch",),
    ("operators", "sensors"),
    ("plugins",),
    ("get_provider_info",),
]
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target.startswith("airflow_provider_firered") and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    # A package's own __init__ is not a dependency of its modules.
    return {
        name: {t for t in _imports(name, path, modules) if not name.startswith(t + ".")}
        for name, path in modules.items()
    }


def _layer(name: str) -> int | None:
    if name == "airflow_provider_firered":
        return 0
    top = name.split(".")[1]
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    return None


def test_no_import_cycle_even_type_only() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_every_import_points_down() -> None:
    upward = []
    for name, targets in _graph().items():
        if name.startswith("airflow_provider_firered.emulator"):
            assert all(t.startswith("airflow_provider_firered.emulator") for t in targets), name
            continue
        own = _layer(name)
        assert own is not None, f"{name} is in no layer of {LAYERS}"
        for target in targets:
            assert not target.startswith("airflow_provider_firered.emulator"), f"{name} imports {target}"
            if (_layer(target) or 0) > own:
                upward.append(f"{name} -> {target}")
    assert not upward, "imports pointing up:\n" + "\n".join(sorted(upward))


def test_top_level_holds_only_the_provider_entry_points() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "exceptions.py", "get_provider_info.py", "version_compat.py"]


def test_no_module_over_the_line_limit() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_graph_sees_type_only_imports() -> None:
    # The walker must not miss an import under `if TYPE_CHECKING:` (the cycles it guards against hid there).
    graph = _graph()
    assert "airflow_provider_firered.hooks.firered" in graph["airflow_provider_firered.operators.firered"]
