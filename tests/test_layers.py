"""The package's layers, read from its imports (ast): a module imports only from its own package or from
packages of a lower layer, function-local imports included, so no import can hide a cycle; and within a package
no module imports itself through others."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "effconv"
# Lowest first. A module may import its own package and any package of a lower layer; packages on one
# layer are independent of each other.
LAYERS = [
    {"errors", "quiet", "host", "provenance", "__init__"},
    {"spec"},
    {"artifacts"},
    {"recipe"},
    {"video"},
    {"models"},
    {"legalize"},
    {"backends"},
    {"rewrite", "convert"},
    {"distill", "quantize", "profile", "decode"},
    {"pipeline"},
    {"cli"},
    {"__main__"},
]
LAYER_OF = {name: index for index, names in enumerate(LAYERS) for name in names}


def _unit(module_path: Path) -> str:
    """The top-level package or module of effconv that a file belongs to."""
    return module_path.relative_to(PACKAGE).with_suffix("").parts[0]


def _imported_units(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "effconv":
            parts = node.module.split(".")
            targets = [parts[1]] if len(parts) > 1 else [alias.name for alias in node.names]
            found += [(node.lineno, target) for target in targets]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[1]) for alias in node.names
                      if alias.name.startswith("effconv.")]
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_package_has_a_layer():
    assert {_unit(path) for path in SOURCES} <= set(LAYER_OF)


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    unit = _unit(path)
    upward = [f"line {line}: {unit} imports {target}" for line, target in _imported_units(ast.parse(path.read_text()))
              if target != unit and target in LAYER_OF and LAYER_OF[target] >= LAYER_OF[unit]]
    assert upward == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in SOURCES}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported_modules(tree: ast.AST) -> set[str]:
    """The effconv modules a file imports at run time (`from effconv.x import y` names module x.y when there is one),
    function-local imports included, imports only a type checker reads left out."""
    found, pending = set(), [tree]
    while pending:
        node = pending.pop()
        if _is_type_checking(node):
            pending += node.orelse
            continue
        pending += list(ast.iter_child_nodes(node))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "effconv":
            found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                      for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("effconv.")}
    return found & set(MODULES)


def import_graph() -> dict[str, set[str]]:
    return {name: _imported_modules(ast.parse(path.read_text())) - {name} for name, path in MODULES.items()}


# effconv.profile's own layers, lowest first, by the same rule (README, Layout).
PROFILE_LAYERS = [{"graph", "measure"}, {"device"}, {"estimate"}, {"fit"}, {"run"}, {"plot"}]


def test_profile_modules_import_down_its_layers():
    layer_of = {name: index for index, names in enumerate(PROFILE_LAYERS) for name in names}
    profile = {name for name in MODULES if name.startswith("effconv.profile.")}
    unit = {name: name.split(".")[2] for name in profile}
    assert set(unit.values()) <= set(layer_of)
    graph = import_graph()
    upward = [f"{name} imports {target}" for name in sorted(profile) for target in sorted(graph[name] & profile)
              if unit[target] != unit[name] and layer_of[unit[target]] >= layer_of[unit[name]]]
    assert upward == []


def test_no_module_imports_itself_through_others():
    """A cycle (convert/stage.py <-> convert/streaming.py once) makes the import order matter: whichever module a
    process imports first sees the other half-initialized. graphlib names the cycle it finds."""
    try:
        graphlib.TopologicalSorter(import_graph()).prepare()
    except graphlib.CycleError as cycle:
        pytest.fail(f"import cycle: {' -> '.join(cycle.args[1])}")


def test_the_cycle_check_finds_a_cycle_through_a_function_local_import(tmp_path):
    """The check reads function-local imports and skips TYPE_CHECKING ones, as the two modules below need."""
    first = ast.parse("from effconv.convert.steps import checked\ndef f():\n    from effconv.convert import stage\n")
    typed = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from effconv.convert.stage import convert\n")
    assert _imported_modules(first) == {"effconv.convert.steps", "effconv.convert.stage"}
    assert _imported_modules(typed) == set()
    graph = import_graph() | {"effconv.convert.steps": {"effconv.convert.stage"}}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()
