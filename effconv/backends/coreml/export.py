"""Core ML backend: coremltools ML program (.mlpackage) from the legalized torch.export graph.

Core ML builds on Linux but predicts only on macOS. Here `predict` returns None and verification
covers what Linux can check: the MIL program's op inventory and tensor ranks, the input/output
shapes, and fp16 numerics simulated in torch.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import io
import logging
import platform
from pathlib import Path

import numpy as np
import torch
from torch import nn

from effconv.backends.base import Progress, no_progress
from effconv.errors import EffconvError, exception_text, missing_extra
from effconv.legalize.rewrites import Example, as_args, as_names
from effconv.quiet import captured_stdout, is_debug, quiet_imports

RUNTIME = "Core ML (macOS only)"
NAME = "coreml"
SUFFIX = ".mlpackage"
DEFAULT_ATOL = 1e-3  # fp32
FP16_ATOL = 5e-2  # fp16 has an 11-bit mantissa; decoders in [-1, 1] stay well inside this
PRECISIONS = ("fp16", "fp32")
# iOS 17 / macOS 14 is the first Core ML with fp16 Conv3d in ML programs that can run on the ANE.
DEPLOYMENT_TARGET = "iOS17"
MAX_RANK = 5
NOT_RUN = "not run: Core ML prediction needs macOS"


def _coremltools():
    try:
        with quiet_imports(), captured_stdout():
            logging.getLogger("coremltools").setLevel(logging.ERROR)
            import coremltools
    except ImportError:
        raise missing_extra("coremltools", "coreml") from None
    return coremltools


def default_atol(precision: str) -> float:
    return FP16_ATOL if precision == "fp16" else DEFAULT_ATOL


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise EffconvError(f"unknown precision '{precision}'.", f"use one of: {', '.join(PRECISIONS)}.")


def program_spec(path: Path):
    """The saved .mlpackage's model spec (protobuf: its ML program with typed ops), read without compiling it."""
    return _coremltools().utils.load_spec(str(path))


def program_summary(path: Path) -> dict:
    """Op inventory, largest tensor rank and output shape, read from the saved .mlpackage (works on Linux)."""
    spec = program_spec(path)
    ops: collections.Counter = collections.Counter()
    max_rank = 0
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                ops[op.type] += 1
                for output in op.outputs:
                    if output.type.HasField("tensorType"):
                        max_rank = max(max_rank, int(output.type.tensorType.rank))
    output_shape = [int(d) for d in spec.description.output[0].type.multiArrayType.shape]
    return {"ops": dict(sorted(ops.items())), "max_rank": max_rank, "output_shape": output_shape}


def export(module: nn.Module, example: Example, path: Path, input_name: str | list[str], output_name: str | list[str],
           precision: str = "fp16", progress: Progress = no_progress) -> dict:
    """One input per tensor of `example` (a streaming step: latent, flag, caches), named in order."""
    check_precision(precision)
    ct = _coremltools()
    progress_bars = contextlib.nullcontext() if is_debug() else contextlib.redirect_stderr(io.StringIO())
    args = as_args(example)
    try:
        progress("torch.export")  # outside the redirected stderr, where the CLI shows it
        with torch.no_grad(), captured_stdout(), progress_bars:
            program = torch.export.export(module, args).run_decompositions()
        progress(f"converting to a Core ML program with coremltools ({precision}, {DEPLOYMENT_TARGET})")
        with torch.no_grad(), captured_stdout(), progress_bars:
            mlmodel = ct.convert(
                program,
                inputs=[ct.TensorType(name=name, shape=tuple(tensor.shape), dtype=np.float32)
                        for name, tensor in zip(as_names(input_name), args)],
                outputs=[ct.TensorType(name=name, dtype=np.float32) for name in as_names(output_name)],
                convert_to="mlprogram",
                minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
                compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                skip_model_load=True,
            )
            mlmodel.save(str(path))
    except EffconvError:
        raise
    except Exception as exc:  # coremltools raises NotImplementedError, ValueError, RuntimeError...; all mean "did not convert"
        reason = exception_text(exc, 400)
        raise EffconvError(
            f"Core ML conversion failed: {reason}",
            "run `effconv lint SPEC --backend coreml` to see which op blocks it; rerun with --debug for details.",
        ) from None
    summary = program_summary(path)
    return {
        "precision": precision,
        "minimum_deployment_target": DEPLOYMENT_TARGET,
        "compute_units": "ALL (ANE when every op is ANE-legal)",
        **summary,
    }


def unrun_method(simulated_precision: str | None) -> str:
    """How an artifact this host cannot run was verified, in words for the manifest's verify.method: its numerics
    simulated in torch at `simulated_precision` (None: no numerics, only the static checks)."""
    checked = (f"{simulated_precision} simulation in torch" if simulated_precision
               else "static checks only (tensor ranks, output shape)")
    return f"{checked}; not run on {platform.system()} (Core ML predicts only on macOS)"


def static_checks(export_info: dict, reference_shape) -> dict:
    """What can be verified without running Core ML: ranks and the program's output shape."""
    return {
        "max_rank": export_info["max_rank"],
        "rank_ok": export_info["max_rank"] <= MAX_RANK,
        "output_shape_ok": export_info["output_shape"] == [int(d) for d in reference_shape],
    }


def simulated(module: nn.Module, precision: str = "fp16"):
    """Core ML's numerics stood in by torch, as a `load_all`-style function (arrays in, arrays out). fp16: computed
    in fp32 with the weights, the inputs and every layer's output rounded to fp16 (where the ANE keeps tensors),
    arithmetic inside each layer in fp32; torch's own CPU fp16 kernels are a slow reference path (a 40.5
    M-parameter student at 9x128x128 ran for over 25 minutes). fp32: the module as it is."""
    rounded = _fp16_rounded if precision == "fp16" else (lambda tensor: tensor)
    simulated_module = copy.deepcopy(module)
    if precision == "fp16":
        with torch.no_grad():
            for tensor in [*simulated_module.parameters(), *simulated_module.buffers()]:
                tensor.copy_(rounded(tensor))
        for layer in simulated_module.modules():
            if next(layer.children(), None) is None:
                layer.register_forward_hook(_round_output_to_fp16)

    @torch.no_grad()
    def run(arrays: list) -> list[np.ndarray]:
        outputs = simulated_module(*[rounded(torch.as_tensor(array)) for array in arrays])
        return [rounded(output).numpy() for output in (outputs if isinstance(outputs, (tuple, list)) else [outputs])]

    return run


def simulate_fp16(module: nn.Module, example: torch.Tensor) -> np.ndarray:
    return simulated(module)([example])[0]


def _fp16_rounded(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.half().float() if tensor.is_floating_point() else tensor


def _round_output_to_fp16(_layer: nn.Module, _inputs, output):
    return _fp16_rounded(output) if isinstance(output, torch.Tensor) else output


def load_all(path: Path, _threads: int | None = None):
    """Core ML prediction (macOS only; Core ML chooses its own threads); None elsewhere."""
    if platform.system() != "Darwin":
        return None
    ct = _coremltools()
    mlmodel = ct.models.MLModel(str(path))
    description = mlmodel.get_spec().description
    inputs, outputs = [t.name for t in description.input], [t.name for t in description.output]

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        predicted = mlmodel.predict(dict(zip(inputs, arrays)))
        return [np.asarray(predicted[name], dtype=np.float32) for name in outputs]

    return run


def runtime_versions() -> dict:
    ct = _coremltools()
    return {"torch": torch.__version__, "coremltools": ct.__version__}


def op_inventory(path: Path) -> dict[str, int]:
    return program_summary(path)["ops"]
