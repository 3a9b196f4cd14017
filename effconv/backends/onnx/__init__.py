"""ONNX: torch.onnx dynamo export, run in onnxruntime; int8 with onnxruntime's static QDQ quantizer."""

from __future__ import annotations

from pathlib import Path

from effconv.backends.base import Backend, QuantizeOptions
from effconv.errors import EffconvError
from effconv.backends.onnx import export, qnn, quantize


def _quantize(artifact: Path, manifest, calib, held_out, out_path: Path, options: QuantizeOptions) -> dict:
    if options.qnn:
        return qnn.quantize_for_qnn(artifact, calib, held_out, out_path, options)
    return quantize.quantize(artifact, manifest, calib, held_out, out_path, weights_only=options.weights_only,
                             max_psnr_drop=options.max_psnr_drop, min_psnr_vs_float=options.min_psnr_vs_float,
                             progress=options.progress, threads=options.threads, activation=options.activation,
                             select_by_speed=options.select_by_speed, sensitivity=options.sensitivity,
                             kind_decisions=options.kind_decisions, target_device=options.target_device,
                             search_seconds=options.search_seconds)


def _check_quantizable(_artifact: Path, options: QuantizeOptions) -> None:
    quantize.check_activation(options.activation)
    if options.qnn and options.weights_only:
        raise EffconvError(f"--weights-only has no QNN form: {options.target_device}'s HTP runs quantized node units.",
                           "drop --weights-only, or quantize for host-cpu.")


BACKEND = Backend(name=export.NAME, suffix=export.SUFFIX, extra=None, default_atol=export.DEFAULT_ATOL, legalized=False,
                  export=export.export, load_all=export.load_all, runtime=export.RUNTIME, ops=export.op_inventory, quantize=_quantize,
                  check_quantizable=_check_quantizable, runtime_versions=export.runtime_versions)
