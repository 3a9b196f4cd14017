"""The backends effconv exports to, by name and by artifact suffix. Stages ask here instead of naming backends."""

from __future__ import annotations

from pathlib import Path

from effconv.backends import coreml, executorch, onnx, tflite
from effconv.backends.base import Backend
from effconv.errors import EffconvError

BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (onnx.BACKEND, coreml.BACKEND, tflite.BACKEND, executorch.BACKEND)}


def names() -> list[str]:
    return list(BACKENDS)


def suffixes() -> list[str]:
    return [backend.suffix for backend in BACKENDS.values()]


def get(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise EffconvError(f"unknown backend '{name}'.", f"use one of: {', '.join(BACKENDS)}.") from None


def for_artifact(artifact: Path) -> Backend:
    """The backend that wrote `artifact`, by its suffix (an .mlpackage is a directory)."""
    suffix = Path(artifact).suffix.lower()
    for backend in BACKENDS.values():
        if backend.suffix == suffix:
            return backend
    raise EffconvError(f"'{artifact}' is not an {', '.join(suffixes()[:-1])} or {suffixes()[-1]} file.",
                       "pass an artifact written by `effconv convert`.")
