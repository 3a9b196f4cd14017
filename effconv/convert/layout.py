"""Which layout an ONNX export ships in: Conv3d as PyTorch wrote it, or every Conv3d as Conv2d over time-stacked
frames (the conv3d-as-conv2d and dwconv3d-as-conv2d-taps rewrites, checked lossless before export).

A student ships in Conv2d unless Conv3d is clearly faster on the converting host. onnxruntime's Conv2d has NCHWc
kernels its Conv3d lacks: on an AVX2-only EPYC every Turbo-VAED student measured ran 1.2-1.6x faster as Conv2d
(`benchmarks/results/student_vs_teacher.json`), and on an AVX-512 VNNI Xeon the HunyuanVideo mobile student ran
2.04x faster as Conv2d and the demo student 1.09x (`benchmarks/results/backends.json`); only a one-off run on an
AVX-512 VNNI EPYC (no results file) had the demo student faster as Conv3d, by 1.13-1.26x. Where the two are close,
picking whichever timed faster flipped between runs, so the same inputs gave different artifacts (and different
pipeline hashes downstream). The rule (`decide`): both layouts are exported and timed in onnxruntime, interleaved,
within a small time budget, and Conv3d ships only if it ran at least SWITCH_SPEEDUP times faster than Conv2d by
median AND faster in every round AND over at least SWITCH_MIN_ROUNDS rounds; otherwise Conv2d ships. The margin
is above every Conv3d advantage measured (1.26x at most), so none of those hosts flips between runs; a host where
Conv3d wins by more than that gets Conv3d every time. The manifest records the rule, every round's times and the
host either way. `--layout` forces a layout for another machine.

Teachers keep Conv3d by rule, untimed: their wide dense convs already run near peak as Conv3d (CogVideoX's ran
slower as Conv2d), and stacking frames on channels can exceed memory at real clip sizes.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from effconv.backends.onnx.search import interleaved_times
from effconv.host import cpu_int8_features, cpu_model, default_threads

LAYOUTS = ("auto", "conv3d", "conv2d")
CONV2D_REWRITES = ("conv3d-as-conv2d", "dwconv3d-as-conv2d-taps")
STUDENT_DEFAULT, TEACHER_DEFAULT = "conv2d", "conv3d"
TEACHER_WHY = ("auto: a teacher's wide dense convs already run near peak as Conv3d (CogVideoX's was slower as Conv2d), "
               "and stacking frames on channels can exceed memory at real clip sizes")
# Above the largest Conv3d advantage measured (1.26x), in every round of several: neither that host's spread nor
# round-to-round noise on a shared host can flip the choice.
SWITCH_SPEEDUP, SWITCH_MIN_ROUNDS = 1.3, 3
RULE = (f"{STUDENT_DEFAULT} unless {TEACHER_DEFAULT} is >= {SWITCH_SPEEDUP:.2f}x faster by median, faster in every "
        f"round, over >= {SWITCH_MIN_ROUNDS} rounds")
# Timed runs per layout after a warm-up: up to MAX_ROUNDS while they fit the budget, at least one (a paper-size
# student takes seconds a run: its one or two rounds are recorded, and too few to switch from the default).
MAX_ROUNDS, MIN_ROUNDS, BUDGET_MS = 7, 1, 8_000.0


def candidates(requested: str, student: bool) -> tuple[str, ...]:
    """The layouts to export: the one asked for, both for a student under auto (then timed), Conv3d for a teacher."""
    if requested != "auto":
        return (requested,)
    return (TEACHER_DEFAULT, STUDENT_DEFAULT) if student else (TEACHER_DEFAULT,)


def ruled(requested: str, chosen: str) -> dict:
    """The manifest's layout section when nothing was timed."""
    why = f"--layout {requested}" if requested != "auto" else TEACHER_WHY
    return {"chosen": chosen, "requested": requested, "why": why}


def decide(rounds_ms: dict[str, list[float]]) -> tuple[str, str]:
    """(layout, why) by RULE from each layout's round times (round i of both layouts ran back to back)."""
    default, other = rounds_ms[STUDENT_DEFAULT], rounds_ms[TEACHER_DEFAULT]
    speedup = statistics.median(default) / statistics.median(other)
    won = sum(o < d for d, o in zip(default, other))
    measured = (f"{TEACHER_DEFAULT} ran at {speedup:.2f}x {STUDENT_DEFAULT}'s speed by median and faster in {won} "
                f"of {len(default)} rounds")
    if speedup >= SWITCH_SPEEDUP and won == len(default) >= SWITCH_MIN_ROUNDS:
        return TEACHER_DEFAULT, f"{measured}: switched from the default"
    return STUDENT_DEFAULT, f"{measured}: the default kept"


def timed_choice(artifacts: dict[str, Path], inputs: tuple[np.ndarray, ...], threads: int | None = None) -> dict:
    """Time each layout's ONNX file in onnxruntime on this host; the manifest's layout section, chosen by RULE."""
    threads = threads or default_threads()
    times = interleaved_times(list(artifacts.values()), inputs, threads, max_repeats=MAX_ROUNDS,
                              min_repeats=MIN_ROUNDS, budget_ms=BUDGET_MS)
    rounds = {layout: [round(ms, 3) for ms in layout_times] for layout, layout_times in zip(artifacts, times)}
    medians = {layout: round(statistics.median(ms), 3) for layout, ms in rounds.items()}
    chosen, verdict = decide(rounds)
    listed = ", ".join(f"{layout} {ms:.1f} ms" for layout, ms in medians.items())
    return {
        "chosen": chosen, "requested": "auto", "default": STUDENT_DEFAULT, "rule": RULE,
        "why": (f"auto: both layouts timed in onnxruntime on this host (median {listed}; {threads} threads): {verdict} "
                f"(rule: {RULE}; --layout forces one)"),
        "measured_ms": medians, "rounds_ms": rounds, "threads": threads,
        "host": {"cpu": cpu_model(), "int8_features": cpu_int8_features()},
    }
