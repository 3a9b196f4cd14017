"""Core ML: coremltools ML program (.mlpackage) of the legalized graph; int8 as W8A16 (int8 weights) or W8A8 (int8
weights and activations). Builds on Linux, predicts only on macOS (`predict` returns None elsewhere)."""

from __future__ import annotations

from pathlib import Path

from effconv.backends.base import Backend, QuantizeOptions
from effconv.backends.coreml import export, quantize, w8a8
from effconv.errors import EffconvError

SCHEMES = ("w8a16", "w8a8")


def scheme_of(options: QuantizeOptions) -> str:
    """The scheme to build: the quantize stage resolves "auto" from the target device, and one that reaches here
    unresolved gets W8A16, which every Core ML device runs."""
    scheme = "w8a16" if options.scheme == "auto" else options.scheme
    if scheme not in SCHEMES:
        raise EffconvError(f"unknown Core ML int8 scheme '{options.scheme}'.",
                           f"pass --scheme {', '.join(SCHEMES)} or auto (from the --device profile).")
    if scheme == "w8a8" and options.weights_only:
        raise EffconvError("--weights-only asks for int8 weights with float activations, which is W8A16, not W8A8.",
                           "drop --weights-only, or pass --scheme w8a16.")
    return scheme


def _check_quantizable(_artifact: Path, options: QuantizeOptions) -> None:
    scheme_of(options)  # before the teacher encodes calibration clips


def _quantize(artifact: Path, manifest, calib, held_out, out_path: Path, options: QuantizeOptions) -> dict:
    if scheme_of(options) == "w8a8":
        return w8a8.quantize(artifact, manifest, calib, held_out, out_path,
                             min_psnr_vs_float=options.min_psnr_vs_float, progress=options.progress)
    return quantize.quantize(artifact, manifest, calib, held_out, out_path, weights_only=options.weights_only)


BACKEND = Backend(name=export.NAME, suffix=export.SUFFIX, extra="coreml", default_atol=export.DEFAULT_ATOL,
                  legalized=True, export=export.export, load_all=export.load_all, runtime=export.RUNTIME, ops=export.op_inventory,
                  quantize=_quantize, check_quantizable=_check_quantizable, runtime_versions=export.runtime_versions)
