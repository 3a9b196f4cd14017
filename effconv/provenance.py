"""What produced a file kept on disk for reuse: the effconv version and a digest of the source of the modules whose
code made it, so that neither an upgrade nor an edit to an editable install reuses what older code wrote."""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

import effconv

PACKAGE_DIR = Path(effconv.__file__).resolve().parent
DIGEST_CHARS = 16


def _source_file(module: str) -> Path | None:
    """The source file of an effconv module (`effconv.a.b` -> a/b.py or a/b/__init__.py); None for a name that is
    not a module (a class or function imported from one)."""
    parts = module.split(".")[1:]
    candidates = [PACKAGE_DIR.joinpath(*parts).with_suffix(".py"), PACKAGE_DIR.joinpath(*parts, "__init__.py")]
    return next((path for path in candidates if parts and path.is_file()), None)


@functools.cache
def _imported_modules(path: Path) -> frozenset[str]:
    """Every effconv module a source file imports, function-local imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "effconv":
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from effconv.video import clips`
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("effconv.")}
    return frozenset(found)


def _with_parents(module: str) -> list[str]:
    """A module and the packages above it, whose __init__ files run when it is imported."""
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(2, len(parts) + 1)]


@functools.cache
def source_digest(*modules: str) -> str:
    """sha256 (first 16 hex digits) of the source of `modules` and of every effconv module they import, transitively.
    Computed once per process, so one run sees one value even while the files change under it."""
    files: dict[str, Path] = {}
    pending = [name for module in modules for name in _with_parents(module)]
    while pending:
        module = pending.pop()
        path = _source_file(module)
        if module in files or path is None:
            continue
        files[module] = path
        pending += [name for imported in _imported_modules(path) for name in _with_parents(imported)]
    digest = hashlib.sha256()
    for module in sorted(files):
        digest.update(module.encode() + b"\0" + files[module].read_bytes() + b"\0")
    return digest.hexdigest()[:DIGEST_CHARS]


def produced_by(*modules: str) -> dict[str, str]:
    """The effconv version and the source digest of `modules`, for a cache key or a stage's hashed inputs."""
    return {"effconv": effconv.__version__, "source": source_digest(*modules)}
