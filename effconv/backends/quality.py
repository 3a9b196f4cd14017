"""Quality of a quantized artifact against its float original: PSNR/SSIM vs ground-truth frames (when the
calibration came from real video) and fidelity to the float output."""

from __future__ import annotations

import numpy as np
import torch

from effconv.video.metrics import psnr, ssim

# A quantize report's `remedies`: what its scheme lets a user change when int8 quality misses a bound
CALIBRATE_MORE = "calibrate on more, or more varied, video (--calib)"
WEIGHTS_ONLY = "pass --weights-only (int8 weights, float compute)"


def _mean(values: list[float]) -> float:
    return round(float(np.mean(values)), 4)


def quality_report(float_outputs: list[np.ndarray], quant_outputs: list[np.ndarray],
                   frames: list[np.ndarray] | None) -> dict:
    """Mean over held-out samples. `psnr_drop_db` (float minus quantized, vs ground truth) exists only with
    ground-truth frames; `psnr_vs_float_db` always does."""
    floats = [torch.from_numpy(np.asarray(o, dtype=np.float32)) for o in float_outputs]
    quants = [torch.from_numpy(np.asarray(o, dtype=np.float32)) for o in quant_outputs]
    report = {"samples": len(floats), "psnr_vs_float_db": _mean([psnr(q, f.clamp(-1, 1)) for q, f in zip(quants, floats)])}
    if frames is None:
        return report
    truths = [torch.from_numpy(np.asarray(t, dtype=np.float32)) for t in frames]
    report |= {
        "psnr_float_db": _mean([psnr(f, t) for f, t in zip(floats, truths)]),
        "psnr_quant_db": _mean([psnr(q, t) for q, t in zip(quants, truths)]),
        "ssim_float": _mean([float(ssim(f, t)) for f, t in zip(floats, truths)]),
        "ssim_quant": _mean([float(ssim(q, t)) for q, t in zip(quants, truths)]),
    }
    report["psnr_drop_db"] = round(report["psnr_float_db"] - report["psnr_quant_db"], 4)
    report["ssim_drop"] = round(report["ssim_float"] - report["ssim_quant"], 4)
    return report


def apart_from(value: float, bound: float | None, decimals: int = 1) -> str:
    """`value` with at least `decimals` decimals and as many more as keep it from reading as `bound`: 29.97 dB
    against a 30 dB bound reads 29.97, not 30.0, so a printed value never looks as if it met the bound it missed."""
    text = f"{value:.{decimals}f}"
    while bound is not None and value != bound and float(text) == bound and decimals < 12:
        decimals += 1
        text = f"{value:.{decimals}f}"
    return text
