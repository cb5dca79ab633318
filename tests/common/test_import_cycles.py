"""No import cycle among edge_sdk's modules, and tasks/ stays below device/ and host/ (docs/architecture.md).

Only module-level imports count: a function that imports lazily (a host library, a backend chosen at run
time) runs after every module has loaded, so it cannot deadlock an import."""

from __future__ import annotations

import ast
from pathlib import Path

import edge_sdk

PACKAGE = Path(edge_sdk.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _module_level_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """edge_sdk modules imported at module level (``from pkg import module`` counts as the module)."""
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in modules:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(modules)
            found |= submodules or {node.module}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _module_level_imports(path, modules) - {name} for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk meets, each as the path that closes it."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_edge_sdk_has_no_import_cycle() -> None:
    graph = _graph()
    assert len(graph) > 50 and graph["edge_sdk.device.runtime"]  # the graph was read, imports included
    assert find_cycles(graph) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_tasks_import_nothing_from_device_or_host() -> None:
    graph = _graph()
    offenders = {name: sorted(t for t in targets if t.startswith(("edge_sdk.device", "edge_sdk.host")))
                 for name, targets in graph.items() if name.startswith("edge_sdk.tasks")}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_packages_form_layers() -> None:
    """Collapsed to edge_sdk's subpackages (tasks, device, bundle, host, …), imports go one way only."""
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    layers: dict[str, set[str]] = {}
    for name, targets in _graph().items():
        layers.setdefault(package(name), set()).update(package(t) for t in targets if package(t) != package(name))
    assert find_cycles(layers) == []
