"""ExecuTorch int8 with PyTorch 2 export quantization (pt2e) and the XNNPACK quantizer: per-channel symmetric
int8 weights, per-tensor int8 activations calibrated on the calibration latents, lowered to XNNPACK.

pt2e quantizes a torch graph, not a `.pte`: the float module comes from the spec in the artifact's manifest,
with the same legalizing rewrites `effconv convert --to executorch` applied. Both programs run in
`executorch.runtime` on the held-out latents (quality) and are timed alternately in this process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from effconv.artifacts import Manifest
from effconv.backends.base import CalibrationSet
from effconv.backends.executorch.export import NAME, SUFFIX, load_method, lower, run, write
from effconv.backends.files import alternating_latency, check_artifact, size_bytes, size_report
from effconv.backends.quality import CALIBRATE_MORE, fewest_back_to_float, quality_report, torch_outputs
from effconv.errors import EffconvError, missing_extra
from effconv.legalize.rewrites import legalize, rewrites_for
from effconv.legalize.student_form import exported_module
from effconv.models.loader import load_model
from effconv.models.turbo_vaed.streaming import FIRST_INPUT, StreamingStep
from effconv.quiet import captured_stdout, quiet_imports

SCHEME = ("W8A8 static int8: per-channel symmetric int8 weights, per-tensor int8 activations (pt2e, XNNPACKQuantizer "
          "get_symmetric_quantization_config(is_per_channel=True)), lowered to XNNPACK")
TIMED_RUNS = 10
RETURNED_REASON = ("left float32 to meet --min-psnr-vs-float: every node of this op kind (its kind alone in float32 "
                   "gained {gain:+.2f} dB on the validation split)")
NOTES = ["latency: executorch.runtime on this CPU (XNNPACK delegate, its default thread pool), float and int8 timed "
         "alternately in one process; a phone's CPU is faster or slower in its own way."]


def check_weights_only(weights_only: bool) -> None:
    if weights_only:
        raise EffconvError("--weights-only is not offered for ExecuTorch: XNNPACK's weight-only int8 covers linear "
                           "layers, not the decoder's convolutions.", "quantize without --weights-only (static int8).")


def _pt2e(float_kinds: frozenset[str] = frozenset()):
    """The XNNPACK quantizer (nodes whose op is in `float_kinds` left unannotated: float32) and pt2e's steps."""
    try:
        with quiet_imports(), captured_stdout():
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer, get_symmetric_quantization_config)
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        raise missing_extra("executorch", "executorch") from None
    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    if float_kinds:
        quantizer.set_filter_function(lambda node: _kind(node) not in float_kinds)
    return quantizer, prepare_pt2e, convert_pt2e


def _kind(node) -> str:
    return str(node.target)


def lowered_module(manifest: Manifest, allow_import: bool = False) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The exported module, legalized as `effconv convert --to executorch` did, and example inputs: the decoder's
    latent, or a streaming step's first call (latent chunk, flag 1, zero caches). `allow_import`: the spec's factory
    may run (`--allow-import`)."""
    model = load_model(manifest.model_spec(), allow_import=allow_import)
    if "stream" in (manifest.model_extra or {}):
        example = tuple(torch.ones(info.shape) if info.name == FIRST_INPUT else torch.zeros(info.shape)
                        for info in manifest.inputs)
        return legalize(StreamingStep(model.module).eval(), example, rewrites_for(NAME)).module, example
    example = model.example_input(0)
    module, _ = exported_module(model.module, NAME, example)
    return legalize(module, example, rewrites_for(NAME)).module, (example,)


def _converted(module: torch.nn.Module, example: tuple[torch.Tensor, ...], calib: CalibrationSet,
               float_kinds: frozenset[str] = frozenset()) -> torch.nn.Module:
    """The pt2e int8 module (quantize/dequantize ops around int8 arithmetic, runnable in torch), calibrated on `calib`."""
    quantizer, prepare_pt2e, convert_pt2e = _pt2e(float_kinds)
    with torch.no_grad(), captured_stdout():
        prepared = prepare_pt2e(torch.export.export(module, example).module(), quantizer)
        for feed in calib.feeds:
            prepared(*(torch.from_numpy(array) for array in feed))
        return convert_pt2e(prepared)


def _write(converted: torch.nn.Module, example: tuple[torch.Tensor, ...], out_path: Path) -> dict:
    with torch.no_grad(), captured_stdout():
        program = torch.export.export(converted, example)
    return write(lower(program), out_path)


def _float_until_gate(module: torch.nn.Module, example: tuple[torch.Tensor, ...], fit: CalibrationSet, validation: CalibrationSet,
                      min_psnr: float, progress: Callable[[str], None]) -> tuple[torch.nn.Module, dict]:
    """The pt2e int8 module with the fewest op kinds left float32 that meets `min_psnr` (PSNR vs the float module on
    the validation split), as the TFLite quantizer finds them: each kind of the exported graph (every
    aten.conv2d, every aten.mul, ...) alone left float is scored, then the shortest run of kinds in order of that
    gain that meets the gate is found by bisection. Scored in torch on pt2e's simulated int8 (the lowered XNNPACK
    program computes the same quantized arithmetic); only the result is lowered."""
    reference = torch_outputs(module, validation)

    def build(kinds: frozenset[str]) -> tuple[float, torch.nn.Module]:
        converted = _converted(module, example, fit, kinds)
        return quality_report(reference, torch_outputs(converted, validation), None)["psnr_vs_float_db"], converted

    start, converted = build(frozenset())
    if start >= min_psnr:
        return converted, {}
    with torch.no_grad(), captured_stdout():
        graph = torch.export.export(module, example).graph
    kinds = sorted({_kind(node) for node in graph.nodes if node.op == "call_function"})
    fallback = fewest_back_to_float(kinds, build, start, min_psnr, progress, "op kinds", "float32")
    return fallback.candidate, fallback.summary(len(validation)) | {
        "builds": 1 + fallback.builds,
        "kind_gains_db": {kind: round(gain, 3) for gain, kind in fallback.ranked},
        "returned_to_float": [{"kind": kind, "gain_db": round(gain, 3)} for gain, kind in fallback.returned]}


def quantized_program(manifest: Manifest, calib: CalibrationSet, out_path: Path, min_psnr_vs_float: float | None = None,
                      progress: Callable[[str], None] = lambda _message: None) -> tuple[dict, dict, int]:
    """Write the int8 `.pte` to `out_path`; return its op inventory, the sensitivity fallback's report (empty when
    it was not needed) and the number of calibration samples the ranges came from."""
    module, example = lowered_module(manifest)
    if min_psnr_vs_float is None or len(calib) < 2:
        return _write(_converted(module, example, calib), example, out_path), {}, len(calib)
    fit, validation = calib.validation_split()
    converted, fallback = _float_until_gate(module, example, fit, validation, min_psnr_vs_float, progress)
    return _write(converted, example, out_path), fallback, len(fit)


def quantize(artifact: Path, manifest: Manifest, calib: CalibrationSet, held_out: CalibrationSet, out_path: Path,
             weights_only: bool = False, runs: int = TIMED_RUNS, min_psnr_vs_float: float | None = None,
             progress: Callable[[str], None] = lambda _message: None) -> dict:
    """Write the int8 `.pte`; int8 that misses `min_psnr_vs_float` on a validation split of `calib` leaves its most
    sensitive op kinds float32 until it holds there (`_float_until_gate`)."""
    artifact, out_path = Path(artifact), Path(out_path)
    check_artifact(artifact, manifest, NAME, SUFFIX)
    check_weights_only(weights_only)
    ops, fallback, calibrated = quantized_program(manifest, calib, out_path, min_psnr_vs_float, progress)
    float_method, quant_method = load_method(artifact), load_method(out_path)
    float_outputs = [run(float_method, *feed) for feed in held_out.feeds]
    quant_outputs = [run(quant_method, *feed) for feed in held_out.feeds]
    feed = held_out.feeds[0]
    return {
        "scheme": SCHEME,
        "size_bytes": size_report(size_bytes(artifact), size_bytes(out_path)),
        "quality": quality_report(float_outputs, quant_outputs, held_out.frames),
        "latency_ms": alternating_latency(lambda: run(float_method, *feed), lambda: run(quant_method, *feed), runs)
                      | {"threads": "runtime default"},
        "float_nodes": [{"name": op, "count": count, "reason": "left to the portable kernels (not taken by XNNPACK)"}
                        for op, count in ops.items() if not op.startswith("delegate:")]
                       + [{"name": row["kind"], "reason": RETURNED_REASON.format(gain=row["gain_db"])}
                          for row in fallback.get("returned_to_float", [])],
        "ops": ops,
        "calibration_samples": calibrated,
        **({"sensitivity_fallback": fallback} if fallback else {}),
        "remedies": [CALIBRATE_MORE],  # no weight-only mode (check_weights_only)
        "notes": NOTES,
    }
