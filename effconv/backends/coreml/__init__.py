"""Core ML: coremltools ML program (.mlpackage) of the legalized graph; W8A16 int8 weights. Builds on Linux,
predicts only on macOS (`predict` returns None elsewhere)."""

from __future__ import annotations

from pathlib import Path

from effconv.backends.base import Backend, QuantizeOptions, no_checks
from effconv.backends.coreml import export, quantize


def _quantize(artifact: Path, manifest, calib, held_out, out_path: Path, options: QuantizeOptions) -> dict:
    return quantize.quantize(artifact, manifest, calib, held_out, out_path, weights_only=options.weights_only)


BACKEND = Backend(name=export.NAME, suffix=export.SUFFIX, extra="coreml", default_atol=export.DEFAULT_ATOL,
                  legalized=True, export=export.export, load_all=export.load_all, runtime=export.RUNTIME, ops=export.op_inventory,
                  quantize=_quantize, check_quantizable=no_checks, runtime_versions=export.runtime_versions)
