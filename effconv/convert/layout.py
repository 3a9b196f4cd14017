"""Which layout an ONNX export ships in: Conv3d as PyTorch wrote it, or every Conv3d as Conv2d over time-stacked
frames (the conv3d-as-conv2d and dwconv3d-as-conv2d-taps rewrites, checked lossless before export).

Which one onnxruntime runs faster depends on the model and on the CPU. Its Conv2d has NCHWc kernels its Conv3d
lacks: on an AVX2-only x86 every Turbo-VAED student measured ran 1.2-1.6x faster as Conv2d, while on an AVX-512
VNNI x86 the demo student ran 1.13-1.26x faster as Conv3d and the Hunyuan mobile student still 1.6x faster as
Conv2d. No rule is right on both, so a student's default is measured: both layouts are exported and timed on this
host in interleaved rounds within a small time budget, and the faster ships, with both times and the host in the
manifest. An ONNX artifact's target in effconv is the host (phones get TFLite, Core ML or ExecuTorch), so the
converting host is the one to ask; `--layout` forces a layout for another machine.

Teachers keep Conv3d by rule: their wide dense convs already run near peak as Conv3d (CogVideoX's ran slower as
Conv2d), and stacking frames on channels can exceed memory at real clip sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from effconv.backends.onnx.search import interleaved_latency
from effconv.host import cpu_int8_features, cpu_model, default_threads

LAYOUTS = ("auto", "conv3d", "conv2d")
CONV2D_REWRITES = ("conv3d-as-conv2d", "dwconv3d-as-conv2d-taps")
TEACHER_WHY = ("auto: a teacher's wide dense convs already run near peak as Conv3d (CogVideoX's was slower as Conv2d), "
               "and stacking frames on channels can exceed memory at real clip sizes")
# Timed runs per layout after a warm-up: up to MAX_ROUNDS while they fit the budget, at least one (a paper-size
# student takes seconds a run; one interleaved pair then decides, for about a minute of convert time).
MAX_ROUNDS, MIN_ROUNDS, BUDGET_MS = 7, 1, 8_000.0


def candidates(requested: str, student: bool) -> tuple[str, ...]:
    """The layouts to export: the one asked for, both for a student under auto (then timed), Conv3d for a teacher."""
    if requested != "auto":
        return (requested,)
    return ("conv3d", "conv2d") if student else ("conv3d",)


def ruled(requested: str, chosen: str) -> dict:
    """The manifest's layout section when nothing was timed."""
    why = f"--layout {requested}" if requested != "auto" else TEACHER_WHY
    return {"chosen": chosen, "requested": requested, "why": why}


def fastest(artifacts: dict[str, Path], inputs: tuple[np.ndarray, ...], threads: int | None = None) -> dict:
    """Time each layout's ONNX file in onnxruntime on this host; the manifest's layout section, naming the faster."""
    threads = threads or default_threads()
    medians = dict(zip(artifacts, interleaved_latency(list(artifacts.values()), inputs, threads, max_repeats=MAX_ROUNDS,
                                                      min_repeats=MIN_ROUNDS, budget_ms=BUDGET_MS)))
    chosen = min(medians, key=medians.get)
    other = max(medians, key=medians.get)
    times = ", ".join(f"{layout} {ms:.1f} ms" for layout, ms in medians.items())
    return {
        "chosen": chosen, "requested": "auto",
        "why": (f"auto: both layouts timed in onnxruntime on this host ({times}; {threads} threads): {chosen} is "
                f"{medians[other] / medians[chosen]:.2f}x faster here; on another CPU the other can win (--layout forces one)"),
        "measured_ms": medians, "threads": threads, "host": {"cpu": cpu_model(), "int8_features": cpu_int8_features()},
    }
