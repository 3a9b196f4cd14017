"""ExecuTorch backend: torch.export of the legalized graph, lowered to the XNNPACK delegate
(`to_edge_transform_and_lower` + `XnnpackPartitioner`), serialized to a `.pte` and run in `executorch.runtime`.

XNNPACK takes only 1-D/2-D convolutions and the portable kernels have no 5-D convolution, so a Conv3d lowers
but fails when the program runs (pytorch/executorch#11704): effconv exports the graph after the same
conv3d-as-conv2d rewrites as for TFLite, and refuses, before writing, a program whose non-delegated ops
include one no portable kernel runs.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import torch
from torch import nn

from effconv.backends.base import Progress, no_progress
from effconv.errors import EffconvError, exception_text, missing_extra
from effconv.legalize.rewrites import Example, as_args
from effconv.quiet import captured_stdout, native_stderr_silenced, quiet_imports

RUNTIME = "ExecuTorch runtime (XNNPACK delegate)"
NAME = "executorch"
SUFFIX = ".pte"
DEFAULT_ATOL = 1e-3
DELEGATE = "XnnpackBackend"
FIX = ("export with effconv's legalizing rewrites (conv3d-as-conv2d, dwconv3d-as-conv2d-taps, upsample-nearest); "
       "see `effconv lint SPEC --backend executorch`.")


def _lowering():
    try:
        with quiet_imports(), captured_stdout():
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise missing_extra("executorch", "executorch") from None
    return to_edge_transform_and_lower, XnnpackPartitioner


def runtime():
    try:
        with quiet_imports(), captured_stdout(), native_stderr_silenced():
            from executorch.runtime import Runtime

            return Runtime.get()
    except ImportError:
        raise missing_extra("executorch", "executorch") from None


def _kernel_less_op(node) -> str | None:
    """What no portable kernel can run among the ops left outside the delegate: a convolution over a 5-D input
    (the portable kernel takes 3-D/4-D) or a 3-D nearest resize (no portable kernel)."""
    name = str(node.target)
    if "upsample_nearest3d" in name:
        return "a 3-D nearest resize"
    value = node.args[0].meta.get("val") if "convolution" in name and node.args else None
    return "a 5-D convolution (Conv3d)" if value is not None and value.dim() > 4 else None


def _kernel_less_ops(edge) -> list[str]:
    nodes = edge.exported_program().graph_module.graph.nodes
    return sorted({problem for node in nodes if node.op == "call_function" and (problem := _kernel_less_op(node))})


PASS_THROUGH = "pass through arguments"  # XNNPACK refuses a partition that returns one value twice (or an input)


def drop_identity_clones():
    """ExecuTorch's RemoveCloneOpsTransform, run on the edge program before partitioning: every clone that keeps
    values and dim order is replaced by its input, except a returned copy of a program input.

    The edge program has such clones where decompositions copy a tensor: group_norm makes its input contiguous
    (a transposed, frame-batched tensor at ATen level, already dense after edge's permute_copy), eval-mode
    dropout is a clone, and reshaping an expand copies it. XNNPACK's preprocess runs the same transform inside
    each partition (XNNPACKRemoveCloneOpsTransform, the first of its passes); when the partition returned both X
    and clone(X), it then returns X twice and generate_node_to_external_map refuses it ("Output node ... is
    already in the inputs. This is likely due to pass through arguments", in
    executorch/backends/xnnpack/xnnpack_preprocess.py). Run before partitioning, the partition returns X once to
    all its readers (a program that then returns X twice still runs and returns it twice; tests/test_backends.py)."""
    from executorch.backends.transforms.remove_clone_ops import RemoveCloneOpsTransform

    return RemoveCloneOpsTransform(preserve_input_output_copies=True)


def lower(program: torch.export.ExportedProgram, progress: Progress = no_progress):
    """An ExportedProgram lowered to XNNPACK subgraphs (`to_edge_transform_and_lower` + `XnnpackPartitioner`),
    checked for ops no kernel runs; returns the edge program manager.
    Identity clones are dropped between edge conversion and partitioning (drop_identity_clones): with them, XNNPACK
    refused a partition of the CogVideoX, HunyuanVideo and Wan teachers as a pass-through, and effconv delegated
    them op by op instead (`per_op_mode`: one delegate call per op; the tiny HunyuanVideo teacher took 325 s to
    lower, the tiny Wan 2.2 teacher did not finish in 35 min). Every shipped spec now lowers into subgraphs (each
    tiny teacher in under two minutes on 2 busy cores), so that fallback is gone."""
    to_edge_transform_and_lower, XnnpackPartitioner = _lowering()
    progress("lowering to XNNPACK (to_edge_transform_and_lower)")
    try:
        with captured_stdout():
            edge = to_edge_transform_and_lower(program, transform_passes=[drop_identity_clones()],
                                               partitioner=[XnnpackPartitioner()])
    except Exception as exc:  # exir raises assorted types; all mean "did not lower"
        reason = exception_text(exc, 400)
        fix = ("report it as an effconv bug with the spec: XNNPACK refused a partition that returns an input or one "
               "value twice; rerun with --debug." if PASS_THROUGH in str(exc) else
               "run `effconv lint SPEC --backend executorch` to see which op blocks it; rerun with --debug.")
        raise EffconvError(f"ExecuTorch lowering failed: {reason}", fix) from None
    missing = _kernel_less_ops(edge)
    if missing:
        raise EffconvError(f"the ExecuTorch program would contain {', '.join(missing)}, which neither XNNPACK nor the "
                           "portable kernels can run.", FIX)
    return edge


def write(edge, path: Path, progress: Progress = no_progress) -> dict:
    progress("to_executorch and writing the .pte")
    with captured_stdout():
        program = edge.to_executorch()
    Path(path).write_bytes(program.buffer)
    return op_inventory(path)


def export(module: nn.Module, example: Example, path: Path, input_name: str | list[str],
           output_name: str | list[str], progress: Progress = no_progress) -> dict:
    """Inputs and outputs keep the module's order (load_all feeds and returns them in it); a `.pte` does not name
    them, so `input_name`/`output_name` are for the manifest only."""
    progress("torch.export")
    try:
        with torch.no_grad(), captured_stdout():
            program = torch.export.export(module, as_args(example))
    except Exception as exc:  # torch.export raises many types; all mean "this module did not export"
        reason = exception_text(exc, 400)
        raise EffconvError(f"torch.export failed: {reason}", "rerun with --debug for details.") from None
    ops = write(lower(program, progress), path, progress)
    return {"lowering": "to_edge_transform_and_lower (identity clones dropped, XnnpackPartitioner), to_executorch",
            "ops": ops, "delegated_calls": ops.get(f"delegate:{DELEGATE}", 0),
            "portable_ops": {op: n for op, n in ops.items() if not op.startswith("delegate:")}}


def op_inventory(path: Path) -> dict[str, int]:
    """What the `.pte` runs: `delegate:ID` per delegate call, and each operator left to the portable kernels
    (name.overload), read from the serialized program."""
    try:
        from executorch.exir._serialize._program import deserialize_pte_binary
    except ImportError:
        raise missing_extra("executorch", "executorch") from None
    try:
        plan = deserialize_pte_binary(Path(path).read_bytes()).program.execution_plan[0]
    except Exception as exc:  # flatbuffer decoding errors have no common type
        raise EffconvError(f"'{path}' is not a readable ExecuTorch program ({type(exc).__name__}).",
                           "re-create it with `effconv convert SPEC --to executorch`.") from None
    counts: collections.Counter = collections.Counter()
    operators = [f"{op.name}.{op.overload}" if op.overload else op.name for op in plan.operators]
    for chain in plan.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            if hasattr(args, "op_index"):
                counts[operators[args.op_index]] += 1
            elif hasattr(args, "delegate_index"):
                counts[f"delegate:{plan.delegates[args.delegate_index].id}"] += 1
    return dict(sorted(counts.items()))


def load_method(path: Path):
    try:
        with native_stderr_silenced():
            return runtime().load_program(Path(path)).load_method("forward")
    except (RuntimeError, ValueError) as exc:
        raise EffconvError(f"cannot load '{path}' in the ExecuTorch runtime: {exception_text(exc, 200)}.",
                           "re-create it with `effconv convert SPEC --to executorch`.") from None


def _tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    return (array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))).contiguous()


def run(method, *inputs: np.ndarray | torch.Tensor) -> np.ndarray:
    """The first output (a decoder's video) for the method's inputs in argument order."""
    return method.execute([_tensor(array) for array in inputs])[0].numpy()


def load_all(path: Path, threads: int | None = None):
    """The `.pte`'s forward. `threads` resizes the process-wide threadpool XNNPACK runs on (default: the
    runtime's, one thread per core); it must happen before the program loads, since a delegate keeps the pool
    it was loaded with and resizing frees it: programs loaded earlier in the process must not run afterwards."""
    if threads:
        _set_threads(threads)
    method = load_method(path)
    return lambda arrays: [output.numpy() for output in method.execute([_tensor(array) for array in arrays])]


def _set_threads(threads: int) -> None:
    runtime()
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count, _unsafe_reset_threadpool

    with native_stderr_silenced():  # the pool's first use logs what it reads of the CPU
        if _threadpool_get_thread_count() != threads:
            _unsafe_reset_threadpool(threads)


def runtime_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"torch": torch.__version__}
    for package in ("executorch", "torchao"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions
