"""Core ML W8A8: per-channel symmetric int8 weights and per-tensor symmetric int8 activations, the mode whose
int8-int8 compute the Neural Engine of the A17 Pro / M4 and later runs (coremltools guide, "opt-quantization-perf");
built on Linux, calibrated on the calibration latents, no training.

Which coremltools path works without a Mac, and why:
- `coremltools.optimize.coreml.experimental.linear_quantize_activations` does not: it measures activation ranges by
  adding every intermediate tensor to the model's outputs and calling `MLModel.predict`
  (`_model_debugger.ModelDebugger.predict_intermediate_outputs`, `skip_model_load=False`), and Core ML predicts
  only on macOS. Its graph passes (`insert_prefix/suffix_quantize_dequantize_pair`) are plain Python, but they
  are fed by those predictions.
- `coremltools.optimize.torch.quantization.LinearQuantizer` (FX, for QAT) cannot see the students' convs: FX
  symbolic tracing of the student module stops at its `return_features` branch, and on the legalized graph that
  torch.export gives, the convs are aten calls, not the nn.Conv modules its configs match, so prepare/finalize
  quantize nothing (measured: no quantize op, no int8 weight, 126 dB vs float).
- pt2e (`torchao.quantization.pt2e`: prepare_pt2e, calibrate, convert_pt2e), then `torch.export` and
  `ct.convert`, does: coremltools 9 turns the int8 weights into `constexpr_affine_dequantize` and each
  activation quantize/dequantize into MIL `quantize`/`dequantize` ops. ExecuTorch's `CoreMLQuantizer` annotates
  for it too, but it matches its patterns by tracing 405 small pattern graphs with torch.export on every call
  (45-90 s on 2 cores whatever the model), and it also quantizes `mul` and `mean`, which int8 per-tensor breaks in
  the students' RMS norms (mean(x*x) rounds to 0, rsqrt gives inf: NaN while calibrating). So effconv annotates
  the graph itself, in a pass over its nodes, with the patterns Apple's own activation passes quantize: the input
  and output of conv / linear / add (`insert_prefix_quantize_dequantize_pair`,
  `insert_suffix_quantize_dequantize_pair`), the output after the activation when one of theirs follows. Norms,
  SiLU, concat and the other ops compute in fp16 between the quantized tensors.

Numerics are checked on Linux: the int8 weights and the activation scales of the saved program are read back and
compared with the pt2e program that coremltools converted (`simulation_check`); that program runs in torch on the
held-out latents for quality. An int8 model that misses --min-psnr-vs-float on a validation split of the
calibration latents returns its most sensitive activation tensors to fp16 until it holds (`_float_until_gate`).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from effconv.artifacts import Manifest
from effconv.backends.base import CalibrationSet
from effconv.backends.coreml import quantize as w8a16
from effconv.backends.coreml.export import NAME, SUFFIX, _coremltools, export
from effconv.backends.files import check_artifact, size_bytes, size_report
from effconv.backends.quality import CALIBRATE_MORE, fewest_back_to_float, quality_report, torch_outputs
from effconv.errors import missing_extra
from effconv.legalize.rewrites import legalize, rewrites_for
from effconv.legalize.student_form import exported_module
from effconv.models.loader import load_model
from effconv.quiet import captured_stdout, quiet_imports

SCHEME = ("W8A8: per-channel symmetric int8 weights, per-tensor symmetric int8 activations at the inputs and outputs "
          "of conv / linear / add (Apple's activation-quantization patterns), min/max over the calibration latents "
          "(torchao pt2e prepare/convert, then coremltools ct.convert: MIL quantize/dequantize)")
WEIGHT_RANGE = (-127, 127)  # symmetric, as linear_quantize_weights: zero is exact and needs no zero point
# Activations use the whole int8 range: a MIL quantize saturates at -128..127 with no range of its own, so the
# simulation clamps where Core ML does.
ACTIVATION_RANGE = (-128, 127)
OBSERVER_EPS = 2.0**-24  # smallest scale: an all-zero tensor keeps a usable (fp16-representable) scale
# The activations Apple's suffix pass quantizes after instead of before (insert_suffix_quantize_dequantize_pair).
FUSED_ACTIVATIONS = ("relu", "relu6", "leaky_relu", "sigmoid", "hardsigmoid", "tanh")
FP16_SUFFIXES = ("_cast_fp16", "_to_fp16")  # what ct.convert appends to a torch node's name in an fp16 program
# The simulation's scales are the fp16 values the program stores (`_fp16_scales`), except that coremltools stores an
# add's output scale divided by one input's (distributive_quantized_binary_op_scale_normalization): each such
# quotient is rounded to fp16 once more, at most half an fp16 step (2^-11 relative).
SCALE_RTOL = 2.0**-11
ARITHMETIC_RTOL = 1e-6  # float32 products while multiplying a stored quotient back
WEIGHT_ATOL = 1e-6  # dequantized int8 weights: the same codes and the same fp16 scales
# MIL ops that only move, cast or (de)quantize data: not listed among the ops that compute in fp16
NO_ARITHMETIC = {"const", "quantize", "dequantize", "constexpr_affine_dequantize", "cast", "reshape", "transpose",
                 "slice_by_index", "concat", "expand_dims", "squeeze", "split", "pad", "depth_to_space", "tile"}
INT8_OPS = ("conv", "linear", "add")  # what Apple's activation passes put between int8 tensors
COMPUTED_WEIGHT = "weight computed in the graph (not a parameter): pt2e has no int8 form for it, so it stays fp16"
NOT_INT8_INPUT = "{op}: an input activation was returned to fp16 (sensitivity fallback), so it computes in fp16"
CONSTANT_OPERAND = "{op} with a constant operand: Apple's activation passes quantize only adds of two tensors"
COMPUTE_FP16 = ("{op}: Apple's activation quantization covers conv, linear and add only "
                "(insert_prefix/suffix_quantize_dequantize_pair), so it computes in fp16 between int8 tensors")
RETURNED_REASON = ("activation returned to fp16 to meet --min-psnr-vs-float: the most sensitive tensors first (alone "
                   "in fp16 it gained {gain:+.2f} dB on the validation split); the op reading it computes in fp16")
W8A16_REMEDY = "quantize with --scheme w8a16 (int8 weights, fp16 activations: smaller, not faster)"
NOTES = [
    "quality: torch running the pt2e int8 program that coremltools converted (weights and activation scales checked "
    "against the saved program: simulation_check), fp32 between the quantization points; fp16 activation error is "
    "checked separately by `effconv convert` (verify.fp16_simulation).",
    "size: model spec + weights (Data/ inside the .mlpackage), the part Xcode compiles.",
]


def quantize(artifact: Path, manifest: Manifest, calib: CalibrationSet, held_out: CalibrationSet, out_path: Path,
             min_psnr_vs_float: float | None = None, progress: Callable[[str], None] = lambda _message: None) -> dict:
    """Write the W8A8 package to `out_path`; report size, structure read back from it, simulated quality and the
    simulation check."""
    artifact, out_path = Path(artifact), Path(out_path)
    check_artifact(artifact, manifest, NAME, SUFFIX)
    w8a16.check_fp16(manifest, "W8A8")
    ct = _coremltools()
    w8a16.load_float(ct, artifact)
    module, example = float_module(manifest)
    gated = min_psnr_vs_float is not None and len(calib) >= 2
    fit, validation = calib.validation_split() if gated else (calib, None)
    progress(f"calibrating int8 activations on {len(fit)} latent(s)")
    converted, fallback = calibrated(module, example, fit), {}
    if gated:
        converted, fallback = _float_until_gate(converted, module, validation, min_psnr_vs_float, progress)
    progress("converting the int8 program with coremltools")
    export(converted, example, out_path, manifest.inputs[0].name, manifest.outputs[0].name, precision="fp16")
    program = w8a16.read_program(ct, out_path)
    simulated = _exported(converted, example)
    structure = program_structure(program)
    float_outputs, quant_outputs = torch_outputs(module, held_out), torch_outputs(simulated.module(), held_out)
    returned = {row["tensor"]: row["gain_db"] for row in fallback.get("returned_to_float", [])}
    return {
        "scheme": SCHEME,
        "size_bytes": size_report(size_bytes(artifact / w8a16.MODEL_DIR), size_bytes(out_path / w8a16.MODEL_DIR)),
        "quality": quality_report(float_outputs, quant_outputs, held_out.frames),
        "quality_method": "torch running the pt2e int8 program coremltools converted (simulation_check), fp32 "
                          "between quantization points; Core ML predicts only on macOS",
        "simulation_check": simulation_check(program, simulated),
        "latency_ms": {"not_measured": w8a16.LATENCY_NOT_MEASURED},
        "float_nodes": _float_nodes(program, structure, returned),
        "weights_quantized": structure["weights_int8"],
        "activations_quantized": structure["activations_int8"],
        "activation_dtypes": structure["activation_dtypes"],
        "int8_ops": structure["int8_ops"],
        "calibration_samples": len(fit),
        **({"sensitivity_fallback": fallback} if fallback else {}),
        "remedies": [CALIBRATE_MORE, W8A16_REMEDY],
        "notes": NOTES,
    }


def float_module(manifest: Manifest) -> tuple[torch.nn.Module, torch.Tensor]:
    """The module `effconv convert --to coreml` exported (its form, legalized), and an example input."""
    model = load_model(manifest.model_spec())
    example = model.example_input(0)
    module, _ = exported_module(model.module, NAME, example)
    return legalize(module, example, rewrites_for(NAME)).module, example


def _pt2e():
    try:
        with quiet_imports(), captured_stdout():
            from torchao.quantization.pt2e import observer
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
            from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer
    except ImportError:
        raise missing_extra("torchao", "coreml") from None
    return observer, prepare_pt2e, convert_pt2e, QuantizationAnnotation, QuantizationSpec, Quantizer


def _quantizer():
    """A pt2e quantizer that annotates, node by node, what Apple's activation passes quantize (module docstring)."""
    observer, _, _, Annotation, Spec, Quantizer = _pt2e()
    activation = Spec(dtype=torch.int8, quant_min=ACTIVATION_RANGE[0], quant_max=ACTIVATION_RANGE[1],
                      qscheme=torch.per_tensor_symmetric, observer_or_fake_quant_ctr=observer.MinMaxObserver.with_args(eps=OBSERVER_EPS))
    weight = Spec(dtype=torch.int8, quant_min=WEIGHT_RANGE[0], quant_max=WEIGHT_RANGE[1], ch_axis=0,
                  qscheme=torch.per_channel_symmetric,
                  observer_or_fake_quant_ctr=observer.PerChannelMinMaxObserver.with_args(eps=OBSERVER_EPS))
    aten = torch.ops.aten
    weighted = {aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.linear.default}
    fused = {getattr(aten, name).default for name in FUSED_ACTIVATIONS}

    constant: dict[torch.fx.Node, bool] = {}

    def is_constant(node) -> bool:
        """Computed from parameters alone: coremltools folds it into a const, which Apple's passes never quantize."""
        if node not in constant:
            constant[node] = node.op == "get_attr" or (node.op == "call_function" and all(
                is_constant(arg) for arg in node.all_input_nodes))
        return constant[node]

    def inputs(node) -> dict | None:
        if node.target in weighted and node.args[1].op == "get_attr":  # a computed weight has no int8 form
            return {node.args[0]: activation, node.args[1]: weight}
        if node.target == aten.add.Tensor and all(isinstance(arg, torch.fx.Node) and not is_constant(arg)
                                                  for arg in node.args[:2]):
            return {node.args[0]: activation, node.args[1]: activation}
        return None

    class AppleActivationQuantizer(Quantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            for node in list(model.graph.nodes):
                quantized_inputs = inputs(node) if node.op == "call_function" else None
                if quantized_inputs is None:
                    continue
                users = list(node.users)
                after = users[0] if len(users) == 1 and users[0].target in fused else None
                node.meta["quantization_annotation"] = Annotation(
                    input_qspec_map=quantized_inputs, output_qspec=None if after else activation, _annotated=True)
                if after is not None:
                    after.meta["quantization_annotation"] = Annotation(output_qspec=activation, _annotated=True)
            return model

        def validate(self, model: torch.fx.GraphModule) -> None:
            """Every annotation above is one pt2e supports."""

    return AppleActivationQuantizer()


def calibrated(module: torch.nn.Module, example: torch.Tensor, calib: CalibrationSet) -> torch.fx.GraphModule:
    """The pt2e int8 module: int8 weights, and quantize/dequantize pairs with min/max scales over `calib`."""
    _, prepare_pt2e, convert_pt2e, *_ = _pt2e()
    with torch.no_grad(), captured_stdout():
        prepared = prepare_pt2e(torch.export.export(module, (example,)).module(), _quantizer())
        for latent in calib.latents:
            prepared(torch.from_numpy(np.asarray(latent, dtype=np.float32)))
        return _fp16_scales(convert_pt2e(prepared))


def _fp16_scales(converted: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The int8 module with every scale rounded to fp16, the precision the fp16 program stores it in, so that the
    simulation dequantizes with the program's own scales (the codes were rounded with pt2e's fp32 scales, as the
    program's were)."""
    for node in converted.graph.nodes:
        if node.op != "call_function" or "quantize_per" not in str(node.target):
            continue
        if "per_tensor" in str(node.target):
            node.args = (node.args[0], float(np.float16(node.args[1])), *node.args[2:])
        else:  # per channel: the scales are a buffer
            scales = converted.get_buffer(node.args[1].target) if node.args[1].op == "get_attr" else None
            if scales is not None:
                scales.copy_(scales.half().float())
    converted.recompile()
    return converted


def _exported(converted: torch.fx.GraphModule, example: torch.Tensor):
    """The program ct.convert receives from `export` (same calls, so the same node names)."""
    with torch.no_grad(), captured_stdout():
        return torch.export.export(converted, (example,)).run_decompositions()


def _is_quantize(node) -> bool:
    return node.op == "call_function" and "quantize_per_tensor" in str(node.target) and "dequantize" not in str(node.target)


def activation_tensors(converted: torch.fx.GraphModule) -> list[str]:
    """Names of the tensors the int8 module quantizes (the node each quantize reads), in graph order."""
    return [node.args[0].name for node in converted.graph.nodes if _is_quantize(node)]


def in_fp16(converted: torch.fx.GraphModule, tensors: set[str]) -> torch.fx.GraphModule:
    """A copy of the int8 module with the quantize/dequantize pairs of `tensors` removed: those tensors (and the
    ops reading them) stay float, every other scale stays as calibrated."""
    copied = copy.deepcopy(converted)
    for node in list(copied.graph.nodes):
        if _is_quantize(node) and node.args[0].name in tensors:
            for dequantize in list(node.users):
                dequantize.replace_all_uses_with(node.args[0])
                copied.graph.erase_node(dequantize)
            copied.graph.erase_node(node)
    copied.recompile()
    return copied


@torch.no_grad()
def _float_until_gate(converted: torch.fx.GraphModule, module: torch.nn.Module, validation: CalibrationSet,
                      min_psnr: float, progress: Callable[[str], None]) -> tuple[torch.fx.GraphModule, dict]:
    """The int8 module with the fewest activation tensors returned to fp16 that meets `min_psnr` (PSNR vs the
    float module on the validation split), found by `fewest_back_to_float`. Per tensor, not per op kind as the
    TFLite and ExecuTorch quantizers do: the ranges are calibrated once, and a tensor returned to fp16 is the same
    module with one quantize/dequantize pair removed, so each score is one forward pass, not a rebuild."""
    reference = torch_outputs(module, validation)

    def build(tensors: frozenset) -> tuple[float, torch.fx.GraphModule]:
        candidate = in_fp16(converted, set(tensors)) if tensors else converted
        return quality_report(reference, torch_outputs(candidate, validation), None)["psnr_vs_float_db"], candidate

    start = build(frozenset())[0]
    if start >= min_psnr:
        return converted, {}
    tensors = activation_tensors(converted)
    fallback = fewest_back_to_float(tensors, build, start, min_psnr, progress, "int8 activations", "fp16")
    return fallback.candidate, fallback.summary(len(validation)) | {
        "evaluations": 1 + fallback.builds,
        "returned_to_float": [{"tensor": tensor, "gain_db": round(gain, 3)} for gain, tensor in fallback.returned]}


def _torch_name(var_name: str) -> str:
    """MIL var name -> the torch node it came from: ct.convert names each op after its node, plus an fp16 suffix."""
    for suffix in FP16_SUFFIXES:
        var_name = var_name.removesuffix(suffix)
    return var_name


def _scale(op) -> float:
    return float(np.asarray(op.scale.val, dtype=np.float32).reshape(-1)[0])


def activation_scales(program) -> dict[str, dict]:
    """Every activation `quantize` of the saved program: torch name of the tensor it reads -> its dtype, zero point,
    the scale of its codes in real units and the fp16 roundings that scale went through after calibration.
    coremltools stores a quantized add's output scale divided by the scale of its `y` input, whose dequantize then
    reads scale 1, so that the ANE fuses one scale (distributive_quantized_binary_op_scale_normalization): that
    factor is multiplied back, and the quotient's rounding counted, with those of the factor."""
    quantizes = {op.outputs[0].name: op for op in w8a16.operations(program) if op.op_type == "quantize"}
    real: dict[str, tuple[float, int]] = {}

    def real_scale(name: str) -> tuple[float, int]:
        if name not in real:
            normalized_by = _normalizing_input(quantizes[name])
            factor, roundings = (1.0, -1) if normalized_by is None else real_scale(normalized_by)
            real[name] = (_scale(quantizes[name]) * factor, roundings + 1)
        return real[name]

    return {_torch_name(op.input.name): {"scale": real_scale(name)[0], "roundings": real_scale(name)[1],
                                         "dtype": str(op.output_dtype.val),
                                         "zero_point": 0 if op.zero_point is None else int(np.asarray(op.zero_point.val).reshape(-1)[0])}
            for name, op in quantizes.items()}


def _normalizing_input(quantize_op) -> str | None:
    """The quantize op whose scale `quantize_op`'s scale was divided by: the one behind the scale-1 `y` dequantize of
    the add/sub (optionally through a relu) it reads; None when its scale was left as calibrated."""
    producer = quantize_op.input.op
    if producer is not None and producer.op_type == "relu":
        producer = producer.x.op
    if producer is None or producer.op_type not in ("add", "sub"):
        return None
    x, y = producer.x.op, producer.y.op
    if x is None or y is None or x.op_type != "dequantize" or y.op_type != "dequantize" or _scale(y) != 1.0:
        return None
    return y.input.name


def _simulated_scales(simulated) -> dict[str, float]:
    return {node.args[0].name: float(node.args[1]) for node in simulated.graph.nodes if _is_quantize(node)}


def _simulated_weights(simulated) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each per-channel dequantize of the simulated program: its name -> (int8 codes, scales)."""
    values = {**simulated.state_dict, **simulated.constants}
    signature = {spec.arg.name: spec.target for spec in simulated.graph_signature.input_specs if spec.target is not None}

    def value(node) -> np.ndarray:
        return np.asarray(values[signature[node.name]].detach().numpy())

    return {node.name: (value(node.args[0]), value(node.args[1])) for node in simulated.graph.nodes
            if node.op == "call_function" and "dequantize_per_channel" in str(node.target)}


def simulation_check(program, simulated) -> dict:
    """The saved program against the pt2e program the simulation runs (`weight_check`, `scale_check`)."""
    weights = weight_check(w8a16.written_weights(program), _simulated_weights(simulated))
    scales = scale_check(activation_scales(program), _simulated_scales(simulated))
    return {**weights, **scales, "unmatched": weights["unmatched"] + scales["unmatched"],
            "passed": weights["passed"] and scales["passed"]}


def weight_check(written: dict[str, dict], simulated: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """Every int8 weight of the program (`written_weights`) has the simulation's codes, and its dequantized values
    are within `WEIGHT_ATOL` of the simulation's."""
    unmatched, diff = [], 0.0
    for key, entry in written.items():
        codes, scale = simulated.get(_torch_name(key), (None, None))
        if codes is None or codes.shape != entry["codes"].shape or not np.array_equal(codes, entry["codes"]):
            unmatched.append(f"weight {key}")
            continue
        shape = [-1] + [1] * (codes.ndim - 1)
        diff = max(diff, float(np.abs(codes.astype(np.float32) * scale.astype(np.float32).reshape(shape)
                                      - w8a16.dequantized(entry)).max()))
    return {"weights_compared": len(written) - len(unmatched), "max_abs_diff": diff, "unmatched": unmatched,
            "passed": not unmatched and diff <= WEIGHT_ATOL}


def scale_check(saved: dict[str, dict], simulated: dict[str, float]) -> dict:
    """Every int8 activation of the program (`activation_scales`) is one the simulation quantizes, int8 with zero
    point 0 and the simulation's scale: equal where the program stores it as calibrated, within one fp16 step
    (`SCALE_RTOL`) per rounding where coremltools stored a quotient; tensors coremltools renamed are paired by
    `_renamed`."""
    renamed = _renamed(saved, simulated)
    pairs = [(name, name) for name in simulated if name in saved] + list(renamed.items())
    unmatched = [f"activation {name}" for name in simulated if name not in saved and name not in renamed]
    unmatched += [f"activation {name}" for name in saved if name not in simulated and name not in renamed.values()]
    diffs = {name: _relative_diff(saved[name], simulated[torch_name]) for torch_name, name in pairs}
    off = [name for name, diff in diffs.items() if diff > _scale_tolerance(saved[name])]
    return {"activations_compared": len(pairs), "max_scale_rel_diff": max(diffs.values(), default=0.0),
            "max_scale_roundings": max((row["roundings"] for row in saved.values()), default=0),
            "scales_off": sorted(off), "renamed": renamed, "unmatched": unmatched,
            "passed": not unmatched and not off
                      and all(row["dtype"] == "int8" and row["zero_point"] == 0 for row in saved.values())}


def _relative_diff(saved: dict, simulated: float) -> float:
    return abs(saved["scale"] - simulated) / simulated


def _scale_tolerance(saved: dict) -> float:
    return saved["roundings"] * SCALE_RTOL + ARITHMETIC_RTOL


def _renamed(saved: dict[str, dict], simulated: dict[str, float]) -> dict[str, str]:
    """Quantized tensors coremltools renamed, paired in graph order: when it removes an op that changes nothing (a
    norm's weight of ones and bias of zeros in a random-init student), the quantize that read its output reads its
    input instead, under that input's name. A pair counts only when the two scales agree as `scale_check` requires."""
    lost = [name for name in simulated if name not in saved]
    found = [name for name in saved if name not in simulated]
    if len(lost) != len(found):
        return {}
    return {torch_name: name for torch_name, name in zip(lost, found)
            if _relative_diff(saved[name], simulated[torch_name]) <= _scale_tolerance(saved[name])}


def program_structure(program) -> dict:
    """What the saved program quantizes: int8 weights (constexpr dequantize ops), int8 activations (`quantize` ops,
    by dtype), the ops that compute in int8 (conv / linear / add whose every tensor input is dequantized from int8)
    and the ops that compute in fp16 (everything else that does arithmetic), each with why."""
    ops = list(w8a16.operations(program))
    int8, fp16 = Counter(), []
    for op in ops:
        if op.op_type in NO_ARITHMETIC:
            continue
        operands = [op.x, op.y] if op.op_type == "add" else [op.x] if op.op_type in INT8_OPS else []
        producers = [var.op.op_type if var.op is not None else "input" for var in operands]
        reason = (COMPUTE_FP16 if not operands else CONSTANT_OPERAND if "const" in producers
                  else NOT_INT8_INPUT if set(producers) != {"dequantize"} else None)
        if reason is None:
            int8[op.op_type] += 1
        else:
            fp16.append({"op": op.op_type, "name": op.name, "reason": reason.format(op=op.op_type)})
    return {
        "weights_int8": sum(op.op_type == w8a16.DEQUANTIZE_OP for op in ops),
        "activations_int8": sum(op.op_type == "quantize" and str(op.output_dtype.val) == "int8" for op in ops),
        "activation_dtypes": dict(Counter(str(op.output_dtype.val) for op in ops if op.op_type == "quantize")),
        "int8_ops": dict(sorted(int8.items())),
        "fp16_ops": fp16,
    }


def _float_nodes(program, structure: dict, returned: dict[str, float]) -> list[dict]:
    """Weights left fp16, activations the fallback returned to fp16, and the ops that compute in fp16."""
    rows = [{**row, "reason": COMPUTED_WEIGHT} for row in w8a16.float_weights(program)]
    rows += [{"op": "activation", "name": tensor, "reason": RETURNED_REASON.format(gain=gain)} for tensor, gain in returned.items()]
    return rows + structure["fp16_ops"]
