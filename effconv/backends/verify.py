"""Numerical comparison of a backend's output with the PyTorch reference."""

from __future__ import annotations

import math

import numpy as np

MSE_FLOOR = 1e-20  # identical outputs would give infinite PSNR; this caps it near 200 dB


def psnr_db(reference: np.ndarray, candidate: np.ndarray, data_range: float | None = None) -> float:
    """PSNR of candidate against reference. data_range defaults to the reference's peak-to-peak
    (about 2.0 for video in [-1, 1])."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if data_range is None:
        data_range = float(reference.max() - reference.min()) or 1.0
    mse = max(float(np.mean((reference - candidate) ** 2)), MSE_FLOOR)
    return 10.0 * math.log10(data_range**2 / mse)


def compare(reference: np.ndarray, candidate: np.ndarray, atol: float) -> dict:
    if reference.shape != candidate.shape:
        return {
            "passed": False,
            "reason": f"shape {list(candidate.shape)} != reference {list(reference.shape)}",
            "atol": atol,
        }
    max_abs_err = float(np.max(np.abs(reference.astype(np.float64) - candidate.astype(np.float64))))
    return {
        "passed": bool(max_abs_err <= atol),
        "max_abs_err": max_abs_err,
        "psnr_db": round(psnr_db(reference, candidate), 3),
        "atol": atol,
    }
