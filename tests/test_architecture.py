"""The house rules of shared/DESIGN.md, checked by reading the source with ``ast``.

Packages form layers and imports point down only: ``chinchax`` (the error family) <
``models`` < ``scaling`` < ``training`` < ``launch``.  ``scaling`` is pure math and never
imports JAX.  No module imports itself back through others (no import circles, counting imports
inside functions and under ``TYPE_CHECKING``, which only hide a circle).  No file grows past
500 lines and no function past 60, so a reader can take each in.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"chinchax": 0, "models": 1, "scaling": 2, "training": 3, "launch": 4}
CHECKED_FOR_SIZE = (*LAYERS, "benchmarks")
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an import names (``a.b.c`` may be a name inside module ``a.b``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(path: Path) -> set[str]:
    """Every project module ``path`` imports, wherever the import statement stands."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target is not None:
                found.add(target)
    return found


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _third_party(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_imports_point_down_the_layers():
    upward = [f"{source} -> {target}"
              for source, targets in GRAPH.items() for target in targets
              if LAYERS[target.split(".")[0]] > LAYERS[source.split(".")[0]]]
    assert not upward, "imports against the layers of shared/DESIGN.md:\n" + "\n".join(upward)


def test_scaling_and_the_error_family_never_import_jax():
    offenders = [name for name, path in MODULES.items()
                 if name.split(".")[0] in ("scaling", "chinchax")
                 and _third_party(path) & {"jax", "jaxlib", "flax", "optax", "orbax"}]
    assert not offenders, f"pure-math modules importing JAX: {offenders}"


def _find_cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(GRAPH):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_no_import_circles():
    cycle = _find_cycle()
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def _sized_files() -> list[Path]:
    return [path for package in CHECKED_FOR_SIZE for path in sorted((ROOT / package).rglob("*.py"))]


@pytest.mark.parametrize("path", _sized_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_and_functions_stay_readable(path: Path):
    lines = path.read_text().count("\n")
    assert lines <= MAX_FILE_LINES, f"{path.name} has {lines} lines (at most {MAX_FILE_LINES})"
    tree = ast.parse(path.read_text(), filename=str(path))
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines in {path.name}: {long}"


def test_the_checker_sees_a_circle_and_an_upward_import():
    graph = {"models.a": {"models.b"}, "models.b": {"models.a"}}
    saved = dict(GRAPH)
    try:
        GRAPH.clear()
        GRAPH.update(graph)
        assert _find_cycle() == ["models.a", "models.b", "models.a"]
    finally:
        GRAPH.clear()
        GRAPH.update(saved)
    assert _resolve("scaling.flops.count_params") == "scaling.flops"
