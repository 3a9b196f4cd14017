"""TFLite / LiteRT backend: litert-torch conversion of the legalized graph, verified in the LiteRT
Interpreter (`ai_edge_litert`, or the older `tflite_runtime` with the same API when that is what is installed)."""

from __future__ import annotations

import collections
import importlib
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from effconv.errors import EffconvError, exception_text, missing_extra
from effconv.legalize.rewrites import Example, as_args
from effconv.quiet import captured_stdout, native_stderr_silenced, quiet_imports

RUNTIME = "LiteRT Interpreter (XNNPACK)"
NAME = "tflite"
SUFFIX = ".tflite"
DEFAULT_ATOL = 1e-3
INTERPRETER_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


def _litert_torch():
    try:
        with quiet_imports(), captured_stdout():
            import litert_torch
    except ImportError:
        raise missing_extra("litert-torch", "tflite") from None
    return litert_torch


def _interpreter_module():
    for name in INTERPRETER_MODULES:
        try:
            with quiet_imports():
                return importlib.import_module(name)
        except ImportError:
            continue
    raise missing_extra("ai-edge-litert", "tflite")


def export(module: nn.Module, example: Example, path: Path, input_name: str | list[str],
           output_name: str | list[str]) -> dict:
    """Inputs and outputs keep their order (load_all reads them back in it); LiteRT names them args_N and output_N,
    so `input_name`/`output_name` are for the manifest only."""
    litert_torch = _litert_torch()
    try:
        with torch.no_grad(), captured_stdout():
            litert_torch.convert(module, as_args(example)).export(str(path))
    except EffconvError:
        raise
    except Exception as exc:  # the MLIR converter raises ValueError/RuntimeError with the failing op; all mean "did not convert"
        reason = exception_text(exc, 400)
        raise EffconvError(
            f"TFLite conversion failed: {reason}",
            "run `effconv lint SPEC --backend tflite` to see which op blocks it; rerun with --debug for details.",
        ) from None
    return {"converter": "litert-torch", "ops": op_inventory(path)}


def interpreter(path: Path, threads: int | None = None):
    module = _interpreter_module()
    with native_stderr_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate", on every load
        runner = module.Interpreter(model_path=str(path), num_threads=threads)
        runner.allocate_tensors()
    return runner


def op_inventory(path: Path) -> dict[str, int]:
    """Builtin op counts of a .tflite file, read through the interpreter's op details."""
    runner = _interpreter_module().Interpreter(model_path=str(path))
    counts = collections.Counter(op["op_name"] for op in runner._get_ops_details())
    return dict(sorted(counts.items()))


def _in_argument_order(details: list[dict]) -> list[int]:
    """Tensor indices in the order of the converted module's arguments and outputs: litert-torch names them
    `args_N` and `output_N`, and the interpreter lists them in another order (args_10 before args_2)."""
    return [d["index"] for d in sorted(details, key=lambda d: int(re.search(r"(?:args|output)_(\d+)", d["name"])[1]))]


def load_all(path: Path, threads: int | None = None):
    runner = interpreter(path, threads)
    inputs, outputs = _in_argument_order(runner.get_input_details()), _in_argument_order(runner.get_output_details())

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        for index, array in zip(inputs, arrays):
            runner.set_tensor(index, array)
        runner.invoke()
        return [np.array(runner.get_tensor(index)) for index in outputs]

    return run


def runtime_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"torch": torch.__version__}
    for package in ("litert-torch", "ai-edge-litert", "tflite-runtime"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions
