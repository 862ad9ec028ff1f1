"""Layers only import downward, and no two modules import each other round a circle.

Reads the source of every module of the shipped packages with ast (nothing is imported) and collects every
import, function-level and `if TYPE_CHECKING:` ones included, and `importlib.import_module("...")` calls with
a literal name. Each module belongs to the layer of its most specific pattern in LAYERS (an exact name beats a
wildcard, a longer prefix beats a shorter one). An import may stay in its layer or go down, never up; the
module graph has no cycle; shipped code imports no unshipped first-party package (fixtures, tests, benchmarks),
which a wheel does not carry.
"""

from __future__ import annotations

import ast
import fnmatch
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures.paths import REPO_ROOT


@dataclass(frozen=True)
class Layer:
    name: str
    patterns: tuple[str, ...]  # fnmatch patterns over dotted module names; "pkg" is the package's __init__.py


# Bottom to top.
LAYERS: tuple[Layer, ...] = (
    Layer("base", ("cleanse_base", "cleanse_base.*")),
    Layer("converters", ("converters", "converters.*")),
    Layer("scanner core", ("scanner.*",)),  # config, data, preprocess, model, reverse, mad, report, html_report...
    Layer(
        "orchestrators",
        ("scanner.run_scan", "scanner.audit", "scanner.audit.*", "scanner.mitigate", "scanner.mitigate.*"),
    ),
    Layer("entry points", ("scanner", "scanner.cli", "scanner.__main__")),  # scanner/__init__.py re-exports the API
)
SHIPPED = ("cleanse_base", "converters", "scanner")
UNSHIPPED = ("fixtures", "tests", "benchmarks")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    where: str  # path:line of the import statement

    def __str__(self) -> str:
        return f"{self.where}: {self.source} imports {self.target}"


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """{dotted module name: file} of every .py file under the packages."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_names(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(dotted name, line) of every import in the tree; `from a import b` gives a.b, which lands in module a.b
    when there is one and in a when b is a name defined there."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parent = _absolute(node, module, is_package)
            names += [(parent if alias.name == "*" else f"{parent}.{alias.name}", node.lineno) for alias in node.names]
        elif isinstance(node, ast.Call) and _is_import_module_call(node):
            names.append((node.args[0].value, node.lineno))
    return names


def _is_import_module_call(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    literal = bool(node.args) and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
    return name == "import_module" and literal


def _target_module(name: str, modules: dict[str, Path]) -> str | None:
    """The module that an imported dotted name lands in: the longest known prefix of it."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def import_edges(root: Path, packages: tuple[str, ...]) -> list[Edge]:
    """Every import of one of our modules by another, once per pair (at its first import statement)."""
    modules = module_files(root, packages)
    edges: dict[tuple[str, str], Edge] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, line in sorted(imported_names(tree, module, path.name == "__init__.py"), key=lambda n: n[1]):
            target = _target_module(name, modules)
            if target is not None and target != module and (module, target) not in edges:
                edges[(module, target)] = Edge(module, target, f"{path.relative_to(root)}:{line}")
    return sorted(edges.values(), key=lambda e: (e.source, e.target))


def unshipped_imports(root: Path, packages: tuple[str, ...], unshipped: tuple[str, ...]) -> list[str]:
    """path:line of each import of an unshipped first-party package from shipped code."""
    found = []
    for module, path in module_files(root, packages).items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, line in imported_names(tree, module, path.name == "__init__.py"):
            if name.split(".")[0] in unshipped:
                found.append(f"{path.relative_to(root)}:{line}: {module} imports {name}, which a wheel does not carry")
    return sorted(set(found))


def _specificity(pattern: str) -> tuple[int, int]:
    exact = not any(c in pattern for c in "*?[")
    return (int(exact), len(pattern.split("*")[0]))


def layer_of(module: str, layers: tuple[Layer, ...]) -> int | None:
    """Index (0 = bottom) of the layer whose most specific pattern matches the module."""
    matches = [
        (_specificity(pattern), index)
        for index, layer in enumerate(layers)
        for pattern in layer.patterns
        if fnmatch.fnmatchcase(module, pattern)
    ]
    return max(matches)[1] if matches else None


def unplaced_modules(modules: list[str], layers: tuple[Layer, ...]) -> list[str]:
    return [m for m in modules if layer_of(m, layers) is None]


def upward_edges(edges: list[Edge], layers: tuple[Layer, ...]) -> list[str]:
    found = []
    for edge in edges:
        low, high = layer_of(edge.source, layers), layer_of(edge.target, layers)
        if low is not None and high is not None and high > low:
            found.append(f"{edge} (layer {layers[low].name} imports up into {layers[high].name})")
    return found


def import_cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One closed path of edges through each strongly connected component with more than one module."""
    graph: dict[str, list[Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.source, []).append(edge)
        graph.setdefault(edge.target, [])
    return [_cycle_in(component, graph) for component in _strong_components(graph) if len(component) > 1]


def _strong_components(graph: dict[str, list[Edge]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on a large package)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in graph:
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, next_child = work.pop()
            if next_child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            children = graph[node]
            if next_child < len(children):
                work.append((node, next_child + 1))
                child = children[next_child].target
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return components


def _cycle_in(component: set[str], graph: dict[str, list[Edge]]) -> list[Edge]:
    """A shortest closed path from the component's first module back to itself (breadth-first)."""
    start = min(component)
    came_by: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for edge in graph[node]:
                if edge.target == start:
                    path = [edge]
                    while path[0].source != start:
                        path.insert(0, came_by[path[0].source])
                    return path
                if edge.target in component and edge.target not in came_by:
                    came_by[edge.target] = edge
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in its own strong component")


def format_cycle(cycle: list[Edge]) -> str:
    return " -> ".join([cycle[0].source] + [e.target for e in cycle]) + "\n    " + "\n    ".join(map(str, cycle))


def layer_problems(root: Path, packages: tuple[str, ...], layers: tuple[Layer, ...]) -> list[str]:
    """Every unplaced module, upward edge and cycle, one readable line (or block) each."""
    edges = import_edges(root, packages)
    problems = [
        f"{m} is in no layer: add it to LAYERS" for m in unplaced_modules(list(module_files(root, packages)), layers)
    ]
    problems += upward_edges(edges, layers)
    problems += [f"import cycle: {format_cycle(c)}" for c in import_cycles(edges)]
    return problems


# --- the shipped packages ---


def test_shipped_packages_import_only_downward_and_without_cycles():
    problems = layer_problems(Path(REPO_ROOT), SHIPPED, LAYERS)
    assert not problems, "\n" + "\n".join(problems)


def test_shipped_code_imports_nothing_a_wheel_leaves_out():
    found = unshipped_imports(Path(REPO_ROOT), SHIPPED, UNSHIPPED)
    assert not found, "\n" + "\n".join(found)


def test_the_walk_sees_the_known_downward_edges():
    """Guards the checker against passing because it found no edges at all."""
    edges = {(e.source, e.target) for e in import_edges(Path(REPO_ROOT), SHIPPED)}
    assert ("scanner.cli", "scanner.run_scan") in edges
    assert ("converters.onnx_to_torch", "cleanse_base.errors") in edges
    assert ("converters.ops", "converters.ops.global_average_pool") in edges  # function-level import


# --- the checker itself, on small planted packages ---

TOY_LAYERS = (Layer("low", ("low", "low.*")), Layer("high", ("high", "high.*")))


def _plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def toy(tmp_path) -> Path:
    return _plant(
        tmp_path,
        {
            "low/__init__.py": "",
            "low/util.py": "import os\n",
            "high/__init__.py": "from low.util import os\n",
            "high/app.py": "from low import util\nfrom . import helper\n",
            "high/helper.py": "",
        },
    )


def test_checker_passes_a_clean_downward_package(toy):
    assert layer_problems(toy, ("low", "high"), TOY_LAYERS) == []
    edges = {(e.source, e.target) for e in import_edges(toy, ("low", "high"))}
    assert edges == {("high", "low.util"), ("high.app", "low.util"), ("high.app", "high.helper")}


def test_checker_names_a_planted_upward_import_inside_a_function(toy):
    (toy / "low" / "util.py").write_text("import os\n\n\ndef late():\n    from high import helper\n")
    problems = layer_problems(toy, ("low", "high"), TOY_LAYERS)
    assert problems == ["low/util.py:5: low.util imports high.helper (layer low imports up into high)"]


def test_checker_names_a_planted_cycle_in_one_layer(toy):
    (toy / "high" / "helper.py").write_text(
        "def later():\n    import importlib\n    importlib.import_module('high.app')\n"
    )
    problems = layer_problems(toy, ("low", "high"), TOY_LAYERS)
    assert len(problems) == 1 and problems[0].startswith("import cycle: high.app -> high.helper -> high.app")
    assert "high/app.py:2: high.app imports high.helper" in problems[0]
    assert "high/helper.py:3: high.helper imports high.app" in problems[0]


def test_checker_resolves_relative_imports_and_names_unplaced_modules(toy):
    _plant(toy, {"high/sub/__init__.py": "", "high/sub/deep.py": "from ..app import util\n", "low/stray.py": ""})
    layers = (
        Layer("low", ("low", "low.util")),
        Layer("high core", ("high.helper", "high.sub", "high.sub.*")),
        Layer("high top", ("high", "high.app")),
    )
    assert layer_problems(toy, ("low", "high"), layers) == [
        "low.stray is in no layer: add it to LAYERS",
        "high/sub/deep.py:1: high.sub.deep imports high.app (layer high core imports up into high top)",
    ]


def test_checker_finds_unshipped_imports(toy):
    (toy / "high" / "helper.py").write_text("from fixtures.paths import REPO_ROOT\n")
    assert unshipped_imports(toy, ("low", "high"), ("fixtures",)) == [
        "high/helper.py:1: high.helper imports fixtures.paths.REPO_ROOT, which a wheel does not carry"
    ]


def test_most_specific_pattern_places_a_module():
    assert [
        LAYERS[layer_of(m, LAYERS)].name for m in ("scanner", "scanner.cli", "scanner.audit.jobs", "scanner.mad")
    ] == [
        "entry points",
        "entry points",
        "orchestrators",
        "scanner core",
    ]
