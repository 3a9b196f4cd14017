"""Fit one runtime's host-cpu unit (onnxruntime -> unit `cpu`, LiteRT -> unit `xnnpack`) on the models measured in
that runtime (measure_set.py) that are not held out:
1. a prior for the per-op-category efficiencies: for onnxruntime, per-node kernel times from its profiler (fused
   kernels mapped back to the node they absorbed): efficiency = roofline ms / measured ms of each category, net of
   the per-node overhead (the median time of reshape-like nodes), with the width below which convs and matmuls lose
   efficiency (`narrow_channels`) picked from a grid; LiteRT has no per-op times under XNNPACK, so its prior is
   onnxruntime's fit;
2. the models' wall-clock medians: non-negative least squares of their relative error in the inverse
   efficiencies, a per-node overhead and a per-run overhead, pulled towards the prior (ridge rows) so that
   categories few models exercise keep the prior;
   int8 nodes get efficiencies of their own (of the int8 peak, nominally twice fp32's) and int8 convolutions a cost
   per output position, fitted the same way on the int8 models; their prior is onnxruntime's int8 kernel times
   where there are some, else the fp32 efficiency (and no cost per position).
Medians throughout, because the machine may be shared and noisy.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from effconv.errors import EffconvError
from effconv.profile.device.profiles import DeviceProfile
from effconv.profile.estimate.latency import NARROW_CATEGORIES, POSITION_CATEGORIES, estimate_cost, int8_keys, op_ms, output_positions
from effconv.profile.graph.costs import CATEGORIES, CONV_3D_KEYS, GraphCost

MIN_EFFICIENCY, MAX_EFFICIENCY = 0.005, 5.0
NARROW_GRID = (0.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0)
PRIOR_WEIGHT = 0.05  # ridge rows: how strongly a category's efficiency stays at its prior (1 = as much as one model)
INT8_PREFIX = "int8 "
POSITION_PREFIX = "int8 positions "  # a wall-fit column: an int8 key's output positions, coefficient ns per position


def with_fit(device: DeviceProfile, fitted: dict) -> DeviceProfile:
    """The device (narrowed to one runtime's unit) with a fit applied to that unit."""
    (name, unit), = device.units.items()
    unit = unit.model_copy(update={"efficiency": fitted["efficiency"], "int8_efficiency": fitted.get("int8_efficiency", {}),
                                   "op_overhead_us": fitted["op_overhead_us"], "narrow_channels": fitted["narrow_channels"],
                                   "int8_position_ns": fitted.get("int8_position_ns", {})})
    return device.model_copy(update={"units": {name: unit}, "run_overhead_ms": fitted["run_overhead_ms"]})


def _bare(device: DeviceProfile, narrow: float) -> DeviceProfile:
    return with_fit(device, {"efficiency": {}, "op_overhead_us": 0.0, "narrow_channels": narrow, "run_overhead_ms": 0.0})


def _node_pairs(records: list[dict], device: DeviceProfile, narrow: float) -> list[tuple[str, float, float]]:
    """(category, roofline ms at efficiency 1, measured ms) for every profiled, non-view node."""
    trial = _bare(device, narrow)
    (unit,) = trial.units.values()
    pairs = []
    for record in records:
        for node in record["cost"].nodes:
            measured = record["kernels"]["node_ms"].get(node.name)
            if node.category != "view" and measured is not None:
                pairs.append((node.category, op_ms(node, unit, "fp32", trial)[2], measured))
    return pairs


def _fit_efficiencies(pairs, overhead_ms: float) -> dict[str, float]:
    """Per category: total roofline ms / total measured ms net of the per-node overhead (time-weighted,
    so the efficiency reproduces the category's share of the latency)."""
    efficiency = {}
    for category in CATEGORIES:
        roofline = sum(r for c, r, _ in pairs if c == category)
        measured = sum(max(0.0, m - overhead_ms) for c, _, m in pairs if c == category)
        if roofline > 0 and measured > 0:
            efficiency[category] = _clamped(roofline / measured)
    return efficiency


def _clamped(efficiency: float) -> float:
    return min(MAX_EFFICIENCY, max(MIN_EFFICIENCY, efficiency))


def _narrow_error(pairs, efficiency: dict[str, float], overhead_ms: float) -> float:
    """Time-weighted squared log error of conv/matmul nodes: how well a narrow-layer width explains them."""
    total = weight = 0.0
    for category, roofline, measured in pairs:
        if category in NARROW_CATEGORIES and roofline > 0 and measured > 0:
            predicted = roofline / efficiency[category] + overhead_ms
            total += measured * math.log(predicted / measured) ** 2
            weight += measured
    return total / max(weight, 1e-12)


def _int8_kernel_fit(records: list[dict], device: DeviceProfile, narrow: float, overhead_ms: float) -> dict:
    """Per int8 key: the efficiency and (convs) the cost per output position that best explain its nodes' kernel
    times (least squares of the relative error, both non-negative)."""
    from scipy.optimize import lsq_linear

    trial = _bare(device, narrow)
    (unit,) = trial.units.values()
    nodes: dict[str, list[tuple[float, float, float]]] = {}
    for record in records:
        for node in record["cost"].nodes:
            measured = record["kernels"]["node_ms"].get(node.name)
            if node.dtype == "int8" and node.category != "view" and measured:
                positions = output_positions(node) / 1e6 if node.category in POSITION_CATEGORIES else 0.0
                nodes.setdefault(int8_keys(node)[0], []).append(
                    (op_ms(node, unit, "int8", trial)[2], positions, max(measured - overhead_ms, 1e-6)))
    fitted = {"int8_efficiency": {}, "int8_position_ns": {}}
    for key, rows in nodes.items():
        a = np.array([row[:2] for row in rows]) / np.array([row[2] for row in rows])[:, None]
        columns = 2 if a[:, 1].any() else 1  # a key whose nodes have no positions fits its efficiency alone
        solution = lsq_linear(a[:, :columns], np.ones(len(rows)), bounds=([1 / MAX_EFFICIENCY, 0.0][:columns],
                                                                          [1 / MIN_EFFICIENCY, np.inf][:columns])).x
        fitted["int8_efficiency"][key] = _clamped(1 / solution[0])
        if columns == 2:
            fitted["int8_position_ns"][key] = float(solution[1])
    return fitted


def kernel_fit(records: list[dict], device: DeviceProfile) -> dict:
    """onnxruntime's per-node fit (the prior of its wall fit). The per-node overhead is the median time of view nodes
    (pure dispatch); the narrow-layer width is the one that best explains the fp32 conv/matmul node times; the int8
    models' nodes give int8 efficiencies and costs per output position (`_int8_kernel_fit`)."""
    fp32 = [r for r in records if r["dtype"] == "fp32"]
    view_times = [r["kernels"]["node_ms"][n.name] for r in fp32 for n in r["cost"].nodes
                  if n.category == "view" and n.name in r["kernels"]["node_ms"]]
    overhead_ms = statistics.median(view_times) if view_times else 0.0
    best = None
    for narrow in NARROW_GRID:
        pairs = _node_pairs(fp32, device, narrow)
        efficiency = _fit_efficiencies(pairs, overhead_ms)
        error = _narrow_error(pairs, efficiency, overhead_ms)
        if best is None or error < best[0]:
            best = (error, {"efficiency": efficiency, "op_overhead_us": overhead_ms * 1000, "narrow_channels": narrow,
                            "run_overhead_ms": 0.0})
    fitted = best[1]
    return fitted | _int8_kernel_fit([r for r in records if r["dtype"] == "int8"], device, fitted["narrow_channels"],
                                     overhead_ms)


def _terms(cost: GraphCost, device: DeviceProfile, narrow: float) -> tuple[dict[str, float], int]:
    """A graph's roofline ms at efficiency 1 per category, int8 nodes apart ("int8 conv"), the output positions of its
    int8 convolutions in millions per key ("int8 positions conv": ms per ns of fixed cost per position), and its
    node count."""
    terms: dict[str, float] = {}
    estimate = estimate_cost(cost, _bare(device, narrow))
    for op in estimate.ops:
        if op.node.category == "view":
            continue
        key = f"{INT8_PREFIX}{int8_keys(op.node)[0]}" if op.dtype == "int8" else op.node.category
        terms[key] = terms.get(key, 0.0) + op.ms
        if op.dtype == "int8" and op.node.category in POSITION_CATEGORIES:
            key = f"{POSITION_PREFIX}{int8_keys(op.node)[0]}"
            terms[key] = terms.get(key, 0.0) + output_positions(op.node) / 1e6
    return terms, len(estimate.ops)


def _ridge(keys: list[str], a: np.ndarray, prior: dict) -> tuple[np.ndarray, np.ndarray]:
    """One row per column pulling it to the prior: an inverse efficiency to the prior's (an int8 category's prior: its
    own kernel-fitted one, else its fp32 efficiency, i.e. int8 at twice the fp32 speed), a cost per position to the
    prior's (none: 0), each as strongly as PRIOR_WEIGHT of a typical model's relative error."""
    rows, targets = np.zeros((len(keys), a.shape[1])), np.zeros(len(keys))
    for index, key in enumerate(keys):
        if key.startswith(POSITION_PREFIX):
            scale = PRIOR_WEIGHT * float(np.median(a[a[:, index] > 0, index]))
            rows[index, index] = scale
            targets[index] = scale * prior.get("int8_position_ns", {}).get(key.removeprefix(POSITION_PREFIX), 0.0)
        else:
            category = key.removeprefix(INT8_PREFIX)
            own = prior.get("int8_efficiency", {}).get(category) if key.startswith(INT8_PREFIX) else None
            rows[index, index] = PRIOR_WEIGHT * (own or prior["efficiency"].get(CONV_3D_KEYS.get(category, category), 1.0))
            targets[index] = PRIOR_WEIGHT
    return rows, targets


def wall_fit(records: list[dict], device: DeviceProfile, prior: dict, narrow_grid=NARROW_GRID) -> dict:
    """Inverse efficiencies (fp32 and int8 nodes apart), int8 convolutions' cost per output position, per-node and
    per-run overhead from wall-clock medians: least squares of the relative error within the efficiency bounds
    (costs and overheads non-negative), with a ridge row per column pulling it to the prior (`_ridge`)."""
    from scipy.optimize import lsq_linear

    best = None
    walls = np.array([r["wall"]["median_ms"] for r in records])
    for narrow in narrow_grid:
        terms = [_terms(r["cost"], device, narrow) for r in records]
        keys = sorted({key for t, _ in terms for key in t})
        a = np.array([[t.get(key, 0.0) for key in keys] + [n, 1.0] for t, n in terms]) / walls[:, None]
        ridge, targets = _ridge(keys, a, prior)
        positions = [key.startswith(POSITION_PREFIX) for key in keys]
        lower = [0.0 if p else 1 / MAX_EFFICIENCY for p in positions] + [0.0, 0.0]
        upper = [np.inf if p else 1 / MIN_EFFICIENCY for p in positions] + [np.inf, np.inf]
        solution = lsq_linear(np.vstack([a, ridge]), np.concatenate([np.ones(len(records)), targets]), bounds=(lower, upper)).x
        error = float(np.sum(np.log(np.maximum(a @ solution, 1e-6)) ** 2))
        if best is None or error < best[0]:
            fitted = {key: x if key.startswith(POSITION_PREFIX) else _clamped(1 / x) for key, x in zip(keys, solution)}
            int8 = {c: e for c, e in fitted.items() if c.startswith(INT8_PREFIX) and not c.startswith(POSITION_PREFIX)}
            best = (error, {
                "efficiency": {c: fitted.get(c, e) for c, e in prior["efficiency"].items()} | {
                    c: e for c, e in fitted.items() if not c.startswith(INT8_PREFIX)},
                "int8_efficiency": {c.removeprefix(INT8_PREFIX): e for c, e in int8.items()},
                "int8_position_ns": {c.removeprefix(POSITION_PREFIX): float(ns) for c, ns in fitted.items()
                                     if c.startswith(POSITION_PREFIX)},
                "op_overhead_us": float(solution[-2]) * 1000, "narrow_channels": narrow,
                "run_overhead_ms": float(solution[-1])})
    return best[1]


def fit_runtime(records: list[dict], device: DeviceProfile, prior: dict | None) -> dict:
    """One runtime's fit on its records not held out, refined from `prior` on their walls (with onnxruntime's kernel
    times, `prior` None, its own kernel fit of the fp32 models is the prior)."""
    fitted = [r for r in records if not r["held_out"]]
    fitted_fp32 = [r for r in fitted if r["dtype"] == "fp32"]
    if not fitted_fp32:
        raise EffconvError("no fp32 model to fit on: every calibration model is held out.",
                           "calibrate on the default set (leave out `models`), or mark some models as fitted.")
    if prior is None:
        prior = kernel_fit([r for r in fitted if "kernels" in r], device)
        return wall_fit(fitted, device, prior, (prior["narrow_channels"],))
    return wall_fit(fitted, device, prior)


def unit_prior(device: DeviceProfile) -> dict:
    """The profile's own (uncalibrated) figures of the device's one unit: the prior when no other runtime was fitted."""
    (unit,) = device.units.values()
    return {"efficiency": unit.efficiency, "op_overhead_us": unit.op_overhead_us, "narrow_channels": unit.narrow_channels,
            "run_overhead_ms": device.run_overhead_ms}
