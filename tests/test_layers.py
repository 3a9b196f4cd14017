"""The package's layers, read from its imports (ast): a module imports only from its own package or from
packages of a lower layer, function-local imports included, so no import can hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "effconv"
# Lowest first. A module may import its own package and any package of a lower layer; packages on one
# layer are independent of each other.
LAYERS = [
    {"errors", "quiet", "host", "__init__"},
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
