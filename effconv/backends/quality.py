"""Quality of a quantized artifact against its float original: PSNR/SSIM vs ground-truth frames (when the
calibration came from real video) and fidelity to the float output."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import torch

from effconv.backends.base import CalibrationSet
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


@torch.no_grad()
def torch_outputs(module: torch.nn.Module, samples: CalibrationSet) -> list[np.ndarray]:
    """A torch module's output on each sample's inputs; of a streaming step's outputs, the first (its video)."""
    outputs = []
    for feed in samples.feeds:
        output = module(*(torch.from_numpy(array) for array in feed))
        outputs.append((output[0] if isinstance(output, (tuple, list)) else output).numpy())
    return outputs


def apart_from(value: float, bound: float | None, decimals: int = 1) -> str:
    """`value` with at least `decimals` decimals and as many more as keep it from reading as `bound`: 29.97 dB
    against a 30 dB bound reads 29.97, not 30.0, so a printed value never looks as if it met the bound it missed."""
    text = f"{value:.{decimals}f}"
    while bound is not None and value != bound and float(text) == bound and decimals < 12:
        decimals += 1
        text = f"{value:.{decimals}f}"
    return text


@dataclasses.dataclass
class Fallback:
    """The result of `fewest_back_to_float`: every item with its gain alone (best first), how many of the first
    ones went back to float, and the candidate built with them."""

    ranked: list[tuple[float, Hashable]]
    count: int
    psnr: float
    candidate: Any
    builds: int
    bound: float
    start: float

    def summary(self, validation_samples: int) -> dict:
        """The report entries every backend's fallback shares."""
        return {"validation_samples": validation_samples, "min_psnr_vs_float_db": self.bound, "start_psnr_db": self.start,
                "end_psnr_db": self.psnr, "met": self.met}

    @property
    def met(self) -> bool:
        return self.psnr >= self.bound

    @property
    def returned(self) -> list[tuple[float, Hashable]]:
        """(gain alone, item) of the items back to float."""
        return self.ranked[:self.count]


def fewest_back_to_float(items: list[Hashable], build: Callable[[frozenset], tuple[float, Any]], start: float,
                         min_psnr: float, progress: Callable[[str], None], what: str, precision: str) -> Fallback:
    """The shortest run of `items` (op kinds, ops, activation tensors) returned to float that meets `min_psnr`:
    each item alone back to float is scored (`build(items)` -> (PSNR vs float, candidate)), then the shortest
    prefix of that ranking whose candidate meets the bound is found by bisection (ONNX returns its nodes one at a
    time instead; its variants are cheap to make). When even every item misses, the candidate with all of them is
    kept and `met` is False. `what` names the items (op kinds, int8 activations) and `precision` the float they go
    back to, for `progress`."""
    progress(f"int8 reaches {start:.1f} dB vs float on the validation split, below {min_psnr:g}: scoring each of "
             f"{len(items)} {what} back to {precision} alone")
    ranked = sorted(((build(frozenset({item}))[0] - start, item) for item in items), key=lambda pair: pair[0], reverse=True)
    scored: dict[int, tuple[float, Any]] = {}

    def prefix(count: int) -> tuple[float, Any]:
        if count not in scored:
            scored[count] = build(frozenset(item for _, item in ranked[:count]))
        return scored[count]

    low, high = 0, len(ranked)  # the bound is missed with `low` items back to float; the fewest that meet it are <= high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if prefix(middle)[0] >= min_psnr else (middle, high)
    psnr, candidate = prefix(high)
    progress(f"{high} {what} back to {precision}: {psnr:.1f} dB on the validation split")
    return Fallback(ranked, high, psnr, candidate, len(ranked) + len(scored), min_psnr, start)
