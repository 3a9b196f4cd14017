"""ExecuTorch int8 with PyTorch 2 export quantization (pt2e) and the XNNPACK quantizer: per-channel symmetric
int8 weights, per-tensor int8 activations calibrated on the calibration latents, lowered to XNNPACK.

pt2e quantizes a torch graph, not a `.pte`: the float module comes from the spec in the artifact's manifest,
with the same legalizing rewrites `effconv convert --to executorch` applied. Both programs run in
`executorch.runtime` on the held-out latents (quality) and are timed alternately in this process.
"""

from __future__ import annotations

from pathlib import Path

import torch

from effconv.artifacts import Manifest
from effconv.backends.base import CalibrationSet
from effconv.backends.executorch.export import NAME, SUFFIX, load_method, lower, run, write
from effconv.backends.files import alternating_latency, check_artifact, size_bytes, size_report
from effconv.backends.quality import CALIBRATE_MORE, quality_report
from effconv.errors import EffconvError, missing_extra
from effconv.legalize.rewrites import legalize, rewrites_for
from effconv.legalize.student_form import exported_module
from effconv.models.loader import load_model
from effconv.quiet import captured_stdout, quiet_imports

SCHEME = ("W8A8 static int8: per-channel symmetric int8 weights, per-tensor int8 activations (pt2e, XNNPACKQuantizer "
          "get_symmetric_quantization_config(is_per_channel=True)), lowered to XNNPACK")
TIMED_RUNS = 10
NOTES = ["latency: executorch.runtime on this CPU (XNNPACK delegate, its default thread pool), float and int8 timed "
         "alternately in one process; a phone's CPU is faster or slower in its own way."]


def check_weights_only(weights_only: bool) -> None:
    if weights_only:
        raise EffconvError("--weights-only is not offered for ExecuTorch: XNNPACK's weight-only int8 covers linear "
                           "layers, not the decoder's convolutions.", "quantize without --weights-only (static int8).")


def _pt2e():
    try:
        with quiet_imports(), captured_stdout():
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer, get_symmetric_quantization_config)
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        raise missing_extra("executorch", "executorch") from None
    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    return quantizer, prepare_pt2e, convert_pt2e


def _float_module(manifest: Manifest) -> tuple[torch.nn.Module, torch.Tensor]:
    """The exported module, legalized as `effconv convert --to executorch` did, and an example input."""
    model = load_model(manifest.model_spec())
    example = model.example_input(0)
    module, _ = exported_module(model.module, NAME, example)
    return legalize(module, example, rewrites_for(NAME)).module, example


def quantized_program(manifest: Manifest, calib: CalibrationSet, out_path: Path) -> dict:
    """Write the int8 `.pte` to `out_path`; return its op inventory."""
    quantizer, prepare_pt2e, convert_pt2e = _pt2e()
    module, example = _float_module(manifest)
    with torch.no_grad(), captured_stdout():
        prepared = prepare_pt2e(torch.export.export(module, (example,)).module(), quantizer)
        for latent in calib.latents:
            prepared(torch.from_numpy(latent))
        program = torch.export.export(convert_pt2e(prepared), (example,))
    return write(lower(program), out_path)


def quantize(artifact: Path, manifest: Manifest, calib: CalibrationSet, held_out: CalibrationSet, out_path: Path,
             weights_only: bool = False, runs: int = TIMED_RUNS) -> dict:
    artifact, out_path = Path(artifact), Path(out_path)
    check_artifact(artifact, manifest, NAME, SUFFIX)
    check_weights_only(weights_only)
    ops = quantized_program(manifest, calib, out_path)
    float_method, quant_method = load_method(artifact), load_method(out_path)
    float_outputs = [run(float_method, latent) for latent in held_out.latents]
    quant_outputs = [run(quant_method, latent) for latent in held_out.latents]
    latent = held_out.latents[0]
    return {
        "scheme": SCHEME,
        "size_bytes": size_report(size_bytes(artifact), size_bytes(out_path)),
        "quality": quality_report(float_outputs, quant_outputs, held_out.frames),
        "latency_ms": alternating_latency(lambda: run(float_method, latent), lambda: run(quant_method, latent), runs)
                      | {"threads": "runtime default"},
        "float_nodes": [{"name": op, "count": count, "reason": "left to the portable kernels (not taken by XNNPACK)"}
                        for op, count in ops.items() if not op.startswith("delegate:")],
        "ops": ops,
        "calibration_samples": len(calib),
        "remedies": [CALIBRATE_MORE],  # no weight-only mode (check_weights_only)
        "notes": NOTES,
    }
