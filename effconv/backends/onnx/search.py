"""The int8 choices ONNX quantization makes before the final model is written, each inside a time budget.

Which activation type, which node kinds compute in int8, which calibration method, and which nodes return to
float when the quality gate is missed: each is decided on the validation split (calibration samples kept out
of the range statistics; never the held-out clips whose quality is reported and gated) or by timing on this
host. A choice is measured only when its cost, counted in runs of the model (timed while calibrating), fits
what is left of the budget; otherwise it is made by a stated rule, and the report says which rule and what
measuring would have cost. A small student measures everything in seconds; the paper-size HunyuanVideo student
(about 10 s per run on 2 cores) would need tens of minutes, so it is decided by rule and only checked as a
whole against float at the end.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from effconv.backends.onnx.export import session
from effconv.backends.quality import quality_report

MIN_SPEEDUP = 1.03  # a kind must save at least 3% of the float time to be worth its rounding error
LATENCY_REPEATS, MIN_REPEATS, TIMING_BUDGET_MS = 7, 3, 20_000.0
METHODS = ("MinMax", "Percentile")
# Histogram (Percentile) calibration runs the model with every activation as an output and bins them: measured
# ~2x a plain run per sample on the demo student.
CALIBRATION_RUN_COST = 2.0

Progress = Callable[[str], None]
Quantizer = Callable[[list[str], str, str], Path]  # (nodes in int8, calibration method, activation type) -> QDQ model
Runner = Callable[[Path, list[tuple[np.ndarray, ...]]], list[np.ndarray]]  # samples' inputs -> outputs


def interleaved_latency(paths: list[Path], inputs: np.ndarray | tuple[np.ndarray, ...], threads: int,
                        max_repeats: int = LATENCY_REPEATS, min_repeats: int = MIN_REPEATS,
                        budget_ms: float = TIMING_BUDGET_MS) -> list[float]:
    """Median ms per model on the same `inputs` (one array per model input), from `interleaved_times`."""
    times = interleaved_times(paths, inputs, threads, max_repeats, min_repeats, budget_ms)
    return [round(statistics.median(t), 3) for t in times]


def interleaved_times(paths: list[Path], inputs: np.ndarray | tuple[np.ndarray, ...], threads: int,
                      max_repeats: int = LATENCY_REPEATS, min_repeats: int = MIN_REPEATS,
                      budget_ms: float = TIMING_BUDGET_MS) -> list[list[float]]:
    """ms of each round per model on the same `inputs` (one array per model input), timed in interleaved rounds so
    that load from other processes hits all alike (round i of every model ran back to back). Slow models get
    fewer rounds (at least `min_repeats`): about `budget_ms` of timed runs per model."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    sessions = [session(path, threads) for path in paths]
    feeds = [{spec.name: array for spec, array in zip(s.get_inputs(), inputs)} for s in sessions]
    first = []
    for runner, feed in zip(sessions, feeds):
        started = time.perf_counter()
        runner.run(None, feed)  # warm-up: allocations and kernel selection
        first.append((time.perf_counter() - started) * 1000)
    repeats = max(min_repeats, min(max_repeats, int(budget_ms / max(first))))
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(repeats):
        for index, (runner, feed) in enumerate(zip(sessions, feeds)):
            started = time.perf_counter()
            runner.run(None, feed)
            times[index].append((time.perf_counter() - started) * 1000)
    return times


def timed_runs(models: int) -> int:
    """Float-run equivalents of timing `models` models in interleaved rounds (a warm-up and MIN_REPEATS each)."""
    return models * (1 + MIN_REPEATS)


@dataclasses.dataclass
class Budget:
    """Seconds the search may spend, and the cost of one run of the model (a calibration sample's)."""

    seconds: float
    run_seconds: float
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)

    def affords(self, runs: float) -> bool:
        return runs * self.run_seconds <= self.left()

    def over(self, runs: float, what: str) -> str:
        """Why `what` was not measured."""
        return (f"{what} not measured: about {runs * self.run_seconds:.0f} s here (one run of the model takes "
                f"{self.run_seconds:.1f} s), over the {max(self.left(), 0):.0f} s left of --search-seconds {self.seconds:g}")

    def as_dict(self) -> dict:
        return {"seconds": self.seconds, "run_seconds": round(self.run_seconds, 3),
                "spent_seconds": round(time.perf_counter() - self.started, 1)}


@dataclasses.dataclass
class Search:
    """What a choice needs: how to make a QDQ variant, run models, time them, and the validation data."""

    quantize: Quantizer
    run: Runner
    threads: int
    original: Path
    validation_feeds: list[tuple[np.ndarray, ...]]
    validation_frames: list[np.ndarray] | None
    budget: Budget
    progress: Progress
    _float_outputs: list[np.ndarray] | None = None

    @property
    def float_outputs(self) -> list[np.ndarray]:
        """The float model's outputs on the validation split, computed when a choice first needs them."""
        if self._float_outputs is None:
            self.progress("running the float model on the validation split")
            self._float_outputs = self.run(self.original, self.validation_feeds)
        return self._float_outputs

    def quality(self, path: Path) -> dict:
        return quality_report(self.float_outputs, self.run(path, self.validation_feeds), self.validation_frames)

    def validation_runs(self) -> int:
        """Runs to score one variant on the validation split (and the float outputs, if not yet made)."""
        return len(self.validation_feeds) * (1 if self._float_outputs is not None else 2)


def choose_activation(search: Search, nodes: list[str]) -> tuple[str, dict]:
    runs = timed_runs(3)
    if not search.budget.affords(runs):
        return "uint8", {"chosen": "uint8", "by": "rule: onnxruntime's default activation type (QUInt8; u8 x s8 is "
                                                   "its fused x86 path)", "not_timed": search.budget.over(runs, "uint8 vs int8 activations")}
    search.progress("timing uint8 vs int8 activations")
    variants = {activation: search.quantize(nodes, "MinMax", activation) for activation in ("uint8", "int8")}
    times = interleaved_latency([search.original, *variants.values()], search.validation_feeds[0], search.threads)
    measured = {"float": times[0], "uint8": times[1], "int8": times[2]}
    chosen = "uint8" if measured["uint8"] <= measured["int8"] else "int8"
    return chosen, {"chosen": chosen, "by": "timed here", "latency_ms_all_nodes_quantized": measured}


def _groups(kinds: dict[str, str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for node, kind in kinds.items():
        groups.setdefault(kind, []).append(node)
    return groups


def fast_kinds(search: Search, kinds: dict[str, str], activation: str) -> tuple[list[str], list[dict], list[dict]]:
    """Drop one kind at a time: time float, everything in int8, and everything but one kind in int8, in the
    same interleaved rounds; a kind computes in float when taking it out of int8 makes the model at least
    MIN_SPEEDUP faster. Dropping (rather than adding) one kind at a time measures each kind with its int8
    neighbours, whose Q/DQ pairs onnxruntime fuses away; alone in int8, a kind pays conversions on both
    sides (measured on the paper-size Hunyuan student: pointwise convs 0.91x alone, yet all-int8 2.3x).
    Over budget, every kind goes int8 and the whole model is checked against float at the end.
    Returns (nodes to quantize, per-kind table, float nodes)."""
    groups = _groups(kinds)
    runs = timed_runs(2 + len(groups))
    if not search.budget.affords(runs):
        reason = search.budget.over(runs, f"int8 speed of each node kind ({len(groups)} kinds)")
        table = [{"kind": kind, "nodes": len(nodes), "quantized": True, "by": "rule: every kind int8; the whole model "
                  "is timed against float below and falls back to float compute if slower", "not_timed": reason}
                 for kind, nodes in groups.items()]
        return list(kinds), table, []
    search.progress(f"timing int8 without each node kind ({', '.join(groups)})")
    everything = search.quantize(list(kinds), "MinMax", activation)
    variants = [search.quantize([n for n in kinds if kinds[n] != kind], "MinMax", activation) for kind in groups]
    times = interleaved_latency([search.original, everything, *variants], search.validation_feeds[0], search.threads)
    float_ms, all_int8_ms, table, keep, left_float = times[0], times[1], [], [], []
    for (kind, nodes), without_ms in zip(groups.items(), times[2:]):
        int8 = all_int8_ms / without_ms < MIN_SPEEDUP
        table.append({"kind": kind, "nodes": len(nodes), "float_ms": float_ms, "all_int8_ms": all_int8_ms,
                      "kind_in_float_ms": without_ms, "quantized": int8, "by": "timed here"})
        if int8:
            keep += nodes
        else:
            reason = (f"int8 {kind} slows the model here ({all_int8_ms:.1f} ms all int8, {without_ms:.1f} ms with "
                      f"this kind in float; float model {float_ms:.1f} ms)")
            left_float += [{"name": node, "kind": kind, "reason": reason} for node in nodes]
    return keep, table, left_float


def device_kinds(kinds: dict[str, str], decisions: dict[str, dict], device: str) -> tuple[list[str], list[dict], list[dict]]:
    """Kinds decided for another device by its profile (`decisions`: kind -> {int8, why}), not by this host."""
    table, keep, left_float = [], [], []
    for kind, nodes in _groups(kinds).items():
        decision = decisions[kind]
        table.append({"kind": kind, "nodes": len(nodes), "quantized": decision["int8"], "by": f"device profile {device}",
                      "why": decision["why"]})
        if decision["int8"]:
            keep += nodes
        else:
            left_float += [{"name": node, "kind": kind, "reason": f"{device}: {decision['why']}"} for node in nodes]
    return keep, table, left_float


def choose_method(search: Search, nodes: list[str], activation: str, calibration_samples: int) -> tuple[str, dict]:
    runs = calibration_samples * CALIBRATION_RUN_COST + 2 * search.validation_runs()
    if not search.budget.affords(runs):
        return "MinMax", {"chosen": "MinMax", "by": "rule: MinMax keeps every calibrated value in range",
                          "not_compared": search.budget.over(runs, "MinMax vs Percentile")}
    search.progress("comparing MinMax and Percentile calibration on the validation split")
    scores = {method: search.quality(search.quantize(nodes, method, activation)) for method in METHODS}
    key = "psnr_quant_db" if search.validation_frames is not None else "psnr_vs_float_db"
    chosen = max(METHODS, key=lambda method: scores[method][key])
    return chosen, {"chosen": chosen, "by": f"validation {key}", "scores": {method: scores[method][key] for method in METHODS}}


def sensitivity_table(search: Search, nodes: list[str], kinds: dict[str, str], method: str, activation: str,
                      forced: bool) -> tuple[list[dict], str]:
    """PSNR vs float with one node at a time in int8 (lower = more sensitive), on the first validation sample;
    (table, '' or why it was not computed). `forced` (--sensitivity) ignores the budget."""
    runs = len(nodes) * 1.5 + 1  # a run per node, its quantization, and the float reference
    if not forced and not search.budget.affords(runs):
        return [], search.budget.over(runs, f"per-node sensitivity ({len(nodes)} nodes)")
    sample, reference = search.validation_feeds[:1], search.float_outputs[:1]
    table = []
    for index, node in enumerate(nodes, 1):
        search.progress(f"sensitivity {index}/{len(nodes)}: {node}")
        path = search.quantize([node], method, activation)
        single = quality_report(reference, search.run(path, sample), None)["psnr_vs_float_db"]
        table.append({"name": node, "kind": kinds[node], "psnr_vs_float_db": single})
        path.unlink()
    return sorted(table, key=lambda row: row["psnr_vs_float_db"]), ""
