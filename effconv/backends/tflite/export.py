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

from effconv.backends.base import Progress, no_progress
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
           output_name: str | list[str], progress: Progress = no_progress) -> dict:
    """Inputs and outputs keep their order (load_all reads them back in it); LiteRT names them args_N and output_N,
    so `input_name`/`output_name` are for the manifest only."""
    progress("converting with litert-torch (torch.export, then LiteRT's converter)")
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


def interpreter(path: Path | bytes, threads: int | None = None):
    """A LiteRT Interpreter (XNNPACK delegate) of a .tflite file, or of a serialized model."""
    module = _interpreter_module()
    source = {"model_content": path} if isinstance(path, bytes) else {"model_path": str(path)}
    with native_stderr_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate", on every load
        runner = module.Interpreter(**source, num_threads=threads)
        runner.allocate_tensors()
    return runner


def schema():
    """LiteRT's flatbuffer schema (object API), as ai-edge-litert packages it."""
    try:
        with quiet_imports():
            return importlib.import_module("ai_edge_litert.schema_py_generated")
    except ImportError:
        raise missing_extra("ai-edge-litert", "tflite") from None


def fully_connected_model(size: int) -> bytes:
    """A one-op LiteRT model, `output = input @ weight.T` with `input` [size, size] and a constant fp32 weight
    [size, size] (FULLY_CONNECTED, the op XNNPACK runs as its fp32 GEMM), built with the flatbuffer schema that
    ai-edge-litert packages: no converter run, so measuring the host's XNNPACK peak takes a second."""
    import flatbuffers

    fb = schema()
    weight = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    buffers = [fb.BufferT(), fb.BufferT()]
    buffers[1].data = np.frombuffer(weight.tobytes(), dtype=np.uint8)
    tensors = []
    for name, buffer in (("input", 0), ("weight", 1), ("output", 0)):
        tensor = fb.TensorT()
        tensor.name, tensor.shape, tensor.type, tensor.buffer = name.encode(), [size, size], fb.TensorType.FLOAT32, buffer
        tensors.append(tensor)
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.FULLY_CONNECTED
    code.version = 1
    operator = fb.OperatorT()
    operator.opcodeIndex, operator.inputs, operator.outputs = 0, [0, 1, -1], [2]
    operator.builtinOptionsType = fb.BuiltinOptions.FullyConnectedOptions
    operator.builtinOptions = fb.FullyConnectedOptionsT()
    graph = fb.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = tensors, [0], [2], [operator]
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], buffers
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def op_inventory(path: Path) -> dict[str, int]:
    """Builtin op counts of a .tflite file, read through the interpreter's op details."""
    runner = _interpreter_module().Interpreter(model_path=str(path))
    counts = collections.Counter(op["op_name"] for op in runner._get_ops_details())
    return dict(sorted(counts.items()))


def in_argument_order(names: list[str]) -> list[str]:
    """Input or output names in the order of the converted module's arguments and outputs: litert-torch names them
    `args_N` and `output_N`, and the interpreter lists them in another order (args_10 before args_2)."""
    return sorted(names, key=lambda name: int(re.search(r"(?:args|output)_(\d+)", name)[1]))


def _indices_in_argument_order(details: list[dict]) -> list[int]:
    index_of = {d["name"]: d["index"] for d in details}
    return [index_of[name] for name in in_argument_order(list(index_of))]


def load_all(path: Path, threads: int | None = None):
    runner = interpreter(path, threads)
    inputs, outputs = _indices_in_argument_order(runner.get_input_details()), _indices_in_argument_order(runner.get_output_details())

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
