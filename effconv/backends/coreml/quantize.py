"""Core ML W8A16: per-channel symmetric int8 weights written by coremltools.optimize.coreml into the fp16
ML program; activations stay fp16. Smaller, not faster: the Neural Engine computes in fp16 on int8 weights
(`--scheme w8a8`, in w8a8.py, quantizes the activations too, for the int8 compute of A17 Pro / M4 and later).

Core ML predicts only on macOS, so on Linux quality is measured on the torch model with the same int8
weights: `fake_quantize` rounds each weight tensor the way the scheme does (per output channel, in fp16,
scale = max|w| / 127), and `simulation_check` proves that this is what coremltools wrote by reading the
int8 data and scales back from the saved program.
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from effconv.artifacts import Manifest
from effconv.backends.coreml.export import NAME, SUFFIX, _coremltools
from effconv.errors import EffconvError, exception_text
from effconv.models.loader import load_model
from effconv.backends.files import check_artifact, size_bytes, size_report
from effconv.backends.base import CalibrationSet
from effconv.backends.quality import quality_report, torch_outputs
from effconv.quiet import captured_stdout, is_debug

SCHEME = "W8A16: per-channel symmetric int8 weights, fp16 activations (coremltools.optimize.coreml.linear_quantize_weights)"
# coremltools' default: smaller tensors (biases, the thin high-resolution convs) stay fp16, where int8
# would save a few hundred bytes each and add a dequantize op.
WEIGHT_THRESHOLD = 2048
SMALL_WEIGHT = f"weight of at most {WEIGHT_THRESHOLD} values (coremltools weight_threshold): kept fp16, int8 would save too little"
INT8_MAX = 127  # symmetric: int8 codes -127..127, so zero is exact and no zero point is needed
DEQUANTIZE_OP = "constexpr_affine_dequantize"  # what coremltools writes below iOS 18; effconv targets iOS 17
WEIGHTED_OPS = ("conv", "conv_transpose", "linear", "matmul")
MODEL_DIR = Path("Data") / "com.apple.CoreML"  # model spec + weights: what Xcode compiles and ships
SIMULATION_ATOL = 1e-6
LATENCY_NOT_MEASURED = "Core ML runs only on Apple devices; coremltools cannot predict on Linux"
NOTES = [
    "W8A16 stores int8 weights and computes in fp16: smaller, not faster; --scheme w8a8 quantizes the activations "
    "too, for the Neural Engine's int8 compute (A17 Pro / M4 and later); --weights-only changes nothing here.",
    "quality: torch model with the int8 weights coremltools wrote (checked: simulation_check), fp32 activations "
    "in both runs; fp16 activation error is checked separately by `effconv convert` (verify.fp16_simulation).",
    "size: model spec + weights (Data/ inside the .mlpackage), the part Xcode compiles; the export's debug-handle "
    "map at the package root is not counted.",
]


def quantize(artifact: Path, manifest: Manifest, calib: CalibrationSet, held_out: CalibrationSet, out_path: Path,
             weights_only: bool) -> dict:
    """Write the W8A16 package to `out_path`; report size, simulated quality and the simulation check.
    `calib` is unused: weight quantization needs no activation statistics."""
    artifact, out_path = Path(artifact), Path(out_path)
    check_artifact(artifact, manifest, NAME, SUFFIX)
    check_fp16(manifest, "W8A16")
    ct = _coremltools()
    float_model = load_float(ct, artifact)
    _quantized_model(float_model).save(str(out_path))
    program = read_program(ct, out_path)
    written = written_weights(program)
    module = load_model(manifest.model_spec()).module
    simulated_module, simulated, folded = fake_quantized(module, written)
    float_outputs, quant_outputs = torch_outputs(module, held_out), torch_outputs(simulated_module, held_out)
    return {
        "scheme": SCHEME,
        "size_bytes": size_report(size_bytes(artifact / MODEL_DIR), size_bytes(out_path / MODEL_DIR)),
        "quality": quality_report(float_outputs, quant_outputs, held_out.frames),
        "quality_method": "torch with the int8 weights (simulation_check), fp32 activations; Core ML predicts only on macOS",
        "simulation_check": simulation_check(written, simulated, folded),
        "latency_ms": {"not_measured": LATENCY_NOT_MEASURED},
        "float_nodes": float_weights(program),
        "weights_quantized": len(written),
        "remedies": ["ship the fp16 package (W8A16 needs no calibration and has no setting to trade size for quality)"],
        "notes": NOTES,
    }


def check_fp16(manifest: Manifest, scheme: str) -> None:
    precision = (getattr(manifest, "export", None) or {}).get("precision")
    if precision != "fp16":
        raise EffconvError(
            f"{scheme} quantizes an fp16 Core ML package; this one is {precision or 'of unknown precision'}.",
            "convert with `effconv convert SPEC --to coreml --precision fp16` (the default).",
        )


def load_float(ct, artifact: Path):
    try:
        with captured_stdout():
            model = ct.models.MLModel(str(artifact), skip_model_load=True)
            spec = model.get_spec()
    except Exception as exc:  # coremltools raises plain Exception/protobuf errors for a damaged package
        raise EffconvError(f"cannot read Core ML package '{artifact}': {exception_text(exc, 200)}.",
                           "re-create it with `effconv convert SPEC --to coreml`.") from None
    if not spec.HasField("mlProgram"):
        raise EffconvError(f"'{artifact}' is not an ML program.", "re-create it with `effconv convert SPEC --to coreml`.")
    if any(op.type.startswith("constexpr_") for op in _spec_ops(spec)):
        raise EffconvError(f"'{artifact}' already holds compressed weights.", "quantize the float package effconv convert wrote.")
    return model


def _spec_ops(spec):
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            yield from block.operations


def _quantized_model(float_model):
    from coremltools.optimize import coreml as cto

    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=WEIGHT_THRESHOLD))
    progress_bars = contextlib.nullcontext() if is_debug() else contextlib.redirect_stderr(io.StringIO())
    with captured_stdout(), progress_bars:
        return cto.linear_quantize_weights(float_model, config=config)


def read_program(ct, path: Path):
    """The saved package as a MIL program (ops with their constant values), read back from disk."""
    from coremltools.converters.mil.frontend.milproto import load as milproto

    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    return milproto.load(spec, specification_version=spec.specificationVersion, file_weights_dir=model.weights_dir)


def operations(program):
    for function in program.functions.values():
        yield from function.operations


def _parameter_key(const_name: str) -> str:
    """MIL const name -> torch parameter name with dots as underscores: `p_up_0_conv_weight_to_fp16_quantized`
    -> `up_0_conv_weight` (torch.export prefixes parameters with `p_`, coremltools adds the suffixes)."""
    name = const_name.removesuffix("_quantized").removesuffix("_to_fp16")
    return name.removeprefix("p_")


def written_weights(program) -> dict[str, dict]:
    """Every int8 weight in the saved program: parameter key -> int8 codes, per-channel scale, axis."""
    weights = {}
    for op in operations(program):
        if op.op_type == DEQUANTIZE_OP:
            weights[_parameter_key(op.name)] = {
                "codes": np.asarray(op.quantized_data.val),
                "scale": np.asarray(op.scale.val),
                "zero_point": np.asarray(op.zero_point.val),
                "axis": int(op.axis.val),
            }
    return weights


def float_weights(program) -> list[dict]:
    """Weights of conv/linear ops that coremltools left fp16, with why."""
    rows = []
    for op in operations(program):
        weight = op.inputs.get("weight") if op.op_type in WEIGHTED_OPS else None
        if weight is not None and weight.op.op_type == "const":
            size = int(np.asarray(weight.val).size)
            rows.append({"op": op.op_type, "name": _parameter_key(weight.op.name), "weights": size, "reason": SMALL_WEIGHT})
    return rows


def fake_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8 of the fp16 weight, computed in fp16 like the fp16 package:
    (int8 codes, fp16 scale of shape (C_out, 1, ...))."""
    half = weight.detach().half()
    reduce_dims = tuple(range(1, half.dim()))
    max_abs = half.abs().amax(dim=reduce_dims, keepdim=True) if reduce_dims else half.abs()
    scale = (2 * max_abs) / (2 * INT8_MAX)  # range / steps, in coremltools' fp16 order, so its rounding matches
    codes = torch.where(scale > 0, torch.round(half / scale), torch.zeros_like(half)).clamp(-INT8_MAX, INT8_MAX)
    return codes.to(torch.int8), scale


def _laid_out(codes: torch.Tensor, scale: torch.Tensor, entry: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A parameter's (codes, scale) in the layout of the written const `entry`: its output-channel rows, each
    repeated to fill the const's other axes, along the const's quantization axis (None when they cannot fill it).
    For a const written under its parameter's name this is the parameter's own layout."""
    shape, axis = entry["codes"].shape, entry["axis"]
    channels, size = shape[axis], int(np.prod(shape))
    if codes.shape[0] != channels or size % codes.numel():
        return None
    repeats = size // codes.numel()
    rows = codes.reshape(channels, 1, -1).expand(channels, repeats, -1)
    laid = torch.movedim(rows.reshape(channels, *shape[:axis], *shape[axis + 1:]), 0, axis)
    scale_shape = [1] * len(shape)
    scale_shape[axis] = -1
    return laid, scale.reshape(scale_shape)


def _max_diff(entry: dict, simulated: tuple[torch.Tensor, torch.Tensor]) -> float:
    codes, scale = simulated
    return float(np.abs((codes.float() * scale.float()).numpy() - dequantized(entry)).max())


def _folded_source(entry: dict, rounded: dict[str, tuple]) -> str | None:
    """The parameter a const named after a view op holds. torch.export lowers an nn.Linear applied to a 5-D
    tensor (Mochi's up-block projections) to a bmm whose weight is the parameter permuted, expanded over the
    batch and viewed (`view_9 = view(expand(permute(p_..._proj_weight)))`), and coremltools folds that chain into
    one const named after its last op, so the name no longer says which parameter it is. Its values do: it is
    the parameter whose int8 rows, repeated, reproduce the written const."""
    for name, (codes, scale) in rounded.items():
        laid = _laid_out(codes, scale, entry)
        if laid is not None and _max_diff(entry, laid) <= SIMULATION_ATOL:
            return name
    return None


def fake_quantized(module: nn.Module, written: dict[str, dict]) -> tuple[nn.Module, dict[str, tuple], dict[str, str]]:
    """A copy of the module whose weights behind `written` hold their int8 rounding (as float32); the (codes,
    scale) of each written const in its own layout (None: no parameter reproduces it); and, for consts not named
    after their parameter, which parameter each holds."""
    parameters = {name.replace(".", "_"): parameter for name, parameter in module.named_parameters()}
    rounded = {name: fake_quantize(parameter) for name, parameter in parameters.items()}
    sources = {key: key if key in parameters else _folded_source(entry, rounded) for key, entry in written.items()}
    simulated = {key: None if source is None else _laid_out(*rounded[source], written[key])
                 for key, source in sources.items()}
    copied = copy.deepcopy(module)
    copied_parameters = {name.replace(".", "_"): parameter for name, parameter in copied.named_parameters()}
    with torch.no_grad():
        for source in set(sources.values()) - {None}:
            codes, scale = rounded[source]
            copied_parameters[source].copy_(codes.float() * scale.float())
    folded = {key: source for key, source in sources.items() if source is not None and source != key}
    return copied, simulated, folded


def dequantized(entry: dict) -> np.ndarray:
    shape = [1] * entry["codes"].ndim
    shape[entry["axis"]] = -1
    offset = entry["zero_point"].astype(np.float32).reshape(shape)
    return (entry["codes"].astype(np.float32) - offset) * entry["scale"].astype(np.float32).reshape(shape)


def simulation_check(written: dict[str, dict], simulated: dict[str, tuple], folded: dict[str, str] | None = None) -> dict:
    """Max abs difference between the weights coremltools wrote (dequantized) and the torch simulation;
    `unmatched` lists program weights the simulation could not reproduce (no such parameter, other shape);
    `folded` says which parameter each const named after a view op holds."""
    unmatched, max_diff = [], 0.0
    for key, entry in written.items():
        if simulated[key] is None or tuple(simulated[key][0].shape) != entry["codes"].shape:
            unmatched.append(key)
            continue
        max_diff = max(max_diff, _max_diff(entry, simulated[key]))
    return {
        "weights_compared": len(written) - len(unmatched),
        "max_abs_diff": max_diff,
        "unmatched": sorted(unmatched),
        "folded": dict(sorted((folded or {}).items())),
        "passed": not unmatched and max_diff <= SIMULATION_ATOL,
    }


