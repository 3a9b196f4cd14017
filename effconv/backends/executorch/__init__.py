"""ExecuTorch: torch.export of the legalized graph lowered to the XNNPACK delegate (`.pte`), run in
`executorch.runtime`; int8 with pt2e and the XNNPACK quantizer."""

from __future__ import annotations

from pathlib import Path

from effconv.backends.base import Backend, QuantizeOptions
from effconv.backends.executorch import export, quantize


def _quantize(artifact: Path, manifest, calib, held_out, out_path: Path, options: QuantizeOptions) -> dict:
    return quantize.quantize(artifact, manifest, calib, held_out, out_path, weights_only=options.weights_only,
                             min_psnr_vs_float=options.min_psnr_vs_float, progress=options.progress)


def _check_quantizable(_artifact: Path, options: QuantizeOptions) -> None:
    quantize.check_weights_only(options.weights_only)


BACKEND = Backend(name=export.NAME, suffix=export.SUFFIX, extra="executorch", default_atol=export.DEFAULT_ATOL,
                  legalized=True, export=export.export, load_all=export.load_all, runtime=export.RUNTIME, ops=export.op_inventory,
                  quantize=_quantize, check_quantizable=_check_quantizable, runtime_versions=export.runtime_versions)
