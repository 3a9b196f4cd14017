"""ONNX backend: torch.onnx.export(dynamo=True), verified in onnxruntime."""

from __future__ import annotations

import collections
from pathlib import Path

import torch
from torch import nn

from effconv.backends.base import Progress, no_progress
from effconv.errors import EffconvError, exception_text
from effconv.legalize.rewrites import Example, as_args, as_names
from effconv.quiet import captured_stdout

RUNTIME = "onnxruntime (CPU execution provider)"
NAME = "onnx"
SUFFIX = ".onnx"
DEFAULT_OPSET = 18
MIN_OPSET = 18
DEFAULT_ATOL = 1e-3
PROTOBUF_LIMIT_BYTES = 1_800_000_000  # single-file ONNX must stay under protobuf's 2 GiB


def check_opset(opset: int) -> None:
    if opset < MIN_OPSET:
        raise EffconvError(f"opset {opset} is too old for torch's dynamo ONNX exporter.", f"use --opset {MIN_OPSET} or newer.")
    import onnx

    if opset > onnx.defs.onnx_opset_version():
        raise EffconvError(f"opset {opset} is newer than onnx {onnx.__version__} knows.", f"use --opset {DEFAULT_OPSET}.")


def export(module: nn.Module, example: Example, path: Path, input_name: str | list[str], output_name: str | list[str],
           opset: int = DEFAULT_OPSET, progress: Progress = no_progress) -> dict:
    check_opset(opset)
    progress(f"exporting with torch.onnx (dynamo, opset {opset})")
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    external = weight_bytes > PROTOBUF_LIMIT_BYTES
    try:
        with torch.no_grad(), captured_stdout():
            program = torch.onnx.export(
                module,
                as_args(example),
                dynamo=True,
                opset_version=opset,
                input_names=as_names(input_name),
                output_names=as_names(output_name),
                optimize=True,
            )
            program.save(str(path), external_data=external)
    except EffconvError:
        raise
    except Exception as exc:  # the exporter raises many unrelated types; all mean "this model did not export"
        reason = exception_text(exc, 400)
        raise EffconvError(
            f"ONNX export failed: {reason}",
            "run `effconv lint SPEC --backend onnx` to see which op is unsupported; rerun with --debug for details.",
        ) from None
    return {"opset": opset, "external_data": external}


def session(model: Path | bytes, threads: int | None = None, fused: bool = True, lean: bool = False,
            profile_prefix: str | None = None):
    """An onnxruntime CPU session on a model file (or a serialized model). `fused=False` turns graph optimizations off: a QDQ model then runs as DequantizeLinear -> float op ->
    QuantizeLinear, the exact arithmetic the model file defines, without onnxruntime's int8 kernels.
    `lean=True` orders nodes by priority and frees each tensor to the system: for a graph with many side
    branches (a calibration model's ReduceMin/ReduceMax on every conv tensor), measured on the paper-size
    HunyuanVideo student at 17x256x256: 1.9 GB and 24 s a run, against 10.3 GB and 90 s by default.
    `profile_prefix` turns onnxruntime's per-node profiler on.

    Intra-op threads do not spin between runs: effconv alternates sessions (float and int8 timed in turns), and a
    session's spinning pool took the cores from the next one's run (the demo student's float/int8 pair on 2 cores:
    61 / 56 ms alternating with spinning, 30 / 29 ms without, 27 / 25 ms run by run)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if not fused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if lean:
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        options.enable_cpu_mem_arena = False
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def load_all(path: Path, threads: int | None = None):
    ort_session = session(path, threads)
    names = [tensor.name for tensor in ort_session.get_inputs()]
    return lambda arrays: ort_session.run(None, dict(zip(names, arrays)))


def runtime_versions() -> dict:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def op_inventory(path: Path) -> dict[str, int]:
    """Op type counts of the main graph (weights are not loaded)."""
    import onnx

    counts = collections.Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)
    return dict(sorted(counts.items()))
