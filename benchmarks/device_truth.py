"""The phone estimates against public on-device measurements: rebuild each measured network, export it with effconv's
own exporters, cost it with the device profile of the phone that measured it, fit the phone's NPU figures on some
architecture families and report the error on the others.

Truth rows: benchmarks/device_truth/*.csv (one row per published measurement, with its source URL and commit; see the
folder's README). Networks: benchmarks/device_truth/architectures.py (written from their papers and public reference
code; weights do not change latency). Rows whose network is not rebuilt there are counted and left out.
- Apple (coremltools guide; Apple's MobileOne and FastViT repositories, measured with its ModelBench app; Core ML on
  the Neural Engine): fp16 `.mlpackage` from `effconv.backends.coreml.export`,
  W8A16 by effconv's weight quantizer (coremltools linear_quantize_weights), W8A8 by effconv's pt2e path (int8
  activations at conv/linear/add inputs and outputs).
- Qualcomm AI Hub (Snapdragon HTP through QNN, onnxruntime's QNN execution provider or LiteRT's QNN delegate): the
  ONNX export of `effconv.backends.onnx.export`, and for w8a8 and w8a16 the QNN QDQ model effconv's QNN quantizer writes
  (onnxruntime get_qnn_qdq_config: per-channel int8 weights, 8- or 16-bit activations), costed as onnxruntime's QNN
  execution provider runs it. The TFLite rows are costed on the same graph placed as a LiteRT model is (effconv's TFLite
  lint rules decide what leaves the NPU: CONV_3D runs on the CPU's reference kernel); a LiteRT export of every network
  is left out for time. "float" runs in fp16 on the HTP; the mixed-precision rows (per-layer 16-bit choices AI Hub does
  not publish) are left out.
Calibration data for the int8 models is random images: the scales do not change a program's structure or its cost.

Fit, per NPU (`Group`): the Apple Neural Engine's figures are shared by iphone12pro, iphone14pro, iphone15pro and
iphone16pro (one ANE design, four chips whose peaks and bandwidths the profiles give); each Snapdragon's HTP is fitted
on its own SoC's rows. The estimate is linear in the inverse efficiencies and overheads once the on-chip activation
buffer is fixed (`terms`): convolutions and matrix products at one share of peak, every other category at another
(int8 ops apart on the HTP, whose int8 and fp16 rates are both measured), the dispatch cost per kernel and the fixed
cost per call of each runtime on each phone; robust least squares of the log error (`ROBUST_SCALE`) within physical
bounds (an efficiency is a share of peak: at most 1), at each size and bandwidth of the on-chip buffer on the group's
grid. Held out: each architecture family in turn is left out, the rest fitted, and the left-out rows predicted; the
band the profiles print is the BAND_PERCENTILES range of those held-out errors. Identical networks (ESRGAN and
Real-ESRGAN x4plus are one RRDBNet, the latter clamped) count once: rows of one network (the same convolutions and
matrix products), device, runtime and precision are merged into one at their median latency. Two kinds of row are
predicted like every other but stay out of the fit and of the band, and are reported apart (`held_out_apart`, per
reason; `apart` in each row): rows whose AI Hub job ran layers on the CPU (the layer counts in
qualcomm_ai_hub_details.csv: onnxruntime's QNN execution provider or LiteRT leaving ops to it) measure a partition
effconv's artifact, which runs whole on the HTP, does not have; and rows whose effconv estimate runs ops off the NPU
(LiteRT's CONV_3D on the CPU) are estimates on which the profile prints not the NPU's held-out band but its figures'
uncertainty (effconv.profile.estimate.latency.held_out_band), so the band is not theirs to set.

Usage: PYTHONPATH=. python benchmarks/device_truth.py [--work DIR] [--write-profiles]
Writes benchmarks/results/device_truth.json. Needs the coreml extra (coremltools, torchao); the exports take about
ten minutes the first time (cached in --work), the fits a minute.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
TRUTH = ROOT / "device_truth"
RESULTS = ROOT / "results" / "device_truth.json"
# The profile of each measuring phone: the Galaxy S25's "8 Elite for Galaxy" is the up-clocked bin of the 8 Elite
PHONE_PROFILES = {"iPhone 12 Pro": "iphone12pro", "iPhone 14 Pro": "iphone14pro", "iPhone 15 Pro": "iphone15pro",
                  "Samsung Galaxy S23": "galaxy-s23", "Samsung Galaxy S24": "galaxy-s24", "Samsung Galaxy S25": "sd8-elite",
                  "Snapdragon 8 Elite QRD": "sd8-elite"}
# A truth row's precision -> the artifact costed for it (None: not costed, and why)
PRECISIONS = {"coreml": {"fp16": "fp16", "w8a16": "w8a16", "w8a8": "w8a8"},
              "onnx": {"float": "float", "w8a8": "w8a8", "w8a16": "w8a16"}}
NOT_COSTED_PRECISION = "mixed precision (AI Hub does not publish which layers run at 16 bits)"
CALIBRATION_IMAGES = 2
COMPUTE = ("conv", "conv_pw", "matmul")
BAND_PERCENTILES = (5, 95)  # of the held-out errors: the band the fitted profiles print
# Efficiencies are shares of peak (inverse efficiency >= 1); per-kernel and per-call costs are non-negative
MAX_INVERSE_EFFICIENCY = 1000.0
MAX_KERNEL_MS = 0.1
MAX_RUN_MS = 10.0
# The fit's loss is quadratic in the log error up to this scale and linear beyond (soft L1): a measurement the model
# cannot explain (DeepLabV3's int8 rows take 250 s, some 10,000x its float rows) must not move every figure
ROBUST_SCALE = 0.25


@dataclass(frozen=True)
class Group:
    """One NPU design, fitted on its own: its rows are those measured on `row_profiles` in `runtimes`; `profiles`
    share (and are written with) its figures."""

    name: str
    unit: str
    artifact: str  # the effconv export its rows are costed on: "coreml" or "onnx" (PRECISIONS)
    backends: dict[str, str]  # runtime -> the effconv backend its rows are placed as (lint rules, fusion rules)
    row_profiles: tuple[str, ...]
    profiles: tuple[str, ...]
    int8_apart: bool  # int8 ops get efficiencies of their own
    on_chip_grid: tuple[tuple[float, float] | None, ...]  # (MB, GB/s) of the on-chip buffer tried; None: no buffer
    guessed: dict  # the figures the profiles carried before any fit: the "before" column
    call_cost_by: tuple[str, ...]  # the row fields whose every combination gets a per-call cost of its own

    @property
    def runtimes(self) -> tuple[str, ...]:
        return tuple(self.backends)

    def call_key(self, row: dict) -> str:
        """Which per-call cost a row pays: its values of `call_cost_by`."""
        return " / ".join(row[field] for field in self.call_cost_by)

    @property
    def inverse_columns(self) -> tuple[str, ...]:
        """The fitted inverse efficiencies (the first parameters of the fit; then ms per kernel, ms per call of each
        runtime)."""
        return ("compute", "other", "int8 compute", "int8 other") if self.int8_apart else ("compute", "other")

    def column(self, category: str, dtype: str) -> str:
        """The inverse efficiency an op of this category and compute dtype is divided by."""
        column = "compute" if category in COMPUTE else "other"
        return f"int8 {column}" if self.int8_apart and dtype == "int8" else column


# The Neural Engine's buffer: reverse engineering puts the M1's L2 at 4 MB (tinygrad extra/accel/ane)
# Bandwidths: 200 GB/s to 3.2 TB/s in steps of 2^(1/4)
BANDWIDTHS = tuple(round(200.0 * 2 ** (step / 4)) for step in range(17))
ANE_GRID = tuple((mb, gbps) for mb in (1.0, 2.0, 4.0, 8.0, 16.0, 32.0) for gbps in BANDWIDTHS)
# The HTP's VTCM is 8 MB on these three Hexagon generations (ExecuTorch qc_schema.py): its size is that, not fitted (a
# free size let a fold without the one network of wide intermediates, SESR, shrink it to 2 MB); its bandwidth is fitted
HTP_VTCM_MB = 8.0
HTP_GRID = tuple((HTP_VTCM_MB, gbps) for gbps in BANDWIDTHS)
GUESSED_ANE = {"efficiency": {"conv": 0.5, "conv_pw": 0.4, "conv_dw": 0.1, "matmul": 0.5, "norm": 0.3, "elementwise": 0.5,
                              "reduce": 0.3, "resize": 0.3, "layout": 0.3},
               "op_overhead_us": 5.0, "run_overhead_ms": 1.0}
GUESSED_HTP = {"efficiency": {"conv": 0.4, "conv_pw": 0.4, "conv_dw": 0.1, "matmul": 0.5, "norm": 0.3, "elementwise": 0.4,
                              "reduce": 0.3, "resize": 0.3, "layout": 0.3},
               "op_overhead_us": 5.0, "run_overhead_ms": 1.0}
# Per-call cost: one per phone and runtime, for what a call costs beyond its kernels is its runtime's and toolchain's:
# the Apple rows come from two harnesses on phones three years apart (the coremltools guide's on the iPhone 14 Pro and
# 15 Pro, ModelBench on the iPhone 12 Pro), the 8 Elite's from two AI Hub releases (the Galaxy S25's QAIRT 2.42, the
# QRD's 2.37). A profile carries its own phone's; these carry another's: the iPhone 16 Pro, without rows, the iPhone
# 15 Pro's; the 8 Elite, with two phones, the Galaxy S25's (AI Hub's current toolchain on a retail phone)
CALL_COST_PHONE = {"iphone16pro": "iPhone 15 Pro", "sd8-elite": "Samsung Galaxy S25"}
GROUPS = (
    Group("apple_ane", "ane", "coreml", {"coreml": "coreml"}, ("iphone12pro", "iphone14pro", "iphone15pro"),
          ("iphone12pro", "iphone14pro", "iphone15pro", "iphone16pro"), False, ANE_GRID, GUESSED_ANE, ("device",)),
    *(Group(profile, "htp", "onnx", {"tflite": "tflite", "qnn": "onnx", "onnx": "onnx"}, (profile,), (profile,), True, HTP_GRID,
            GUESSED_HTP, ("runtime", "device"))
      for profile in ("galaxy-s23", "galaxy-s24", "sd8-elite")),
)


def architectures():
    """benchmarks/device_truth/architectures.py (a data folder beside this script, not an importable package)."""
    spec = importlib.util.spec_from_file_location("device_truth_architectures", TRUTH / "architectures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def off_npu_layers() -> dict[tuple[str, str, str, str], int]:
    """(model, device, runtime, precision) -> the layers AI Hub's job ran on the CPU or GPU instead of the NPU."""
    with (TRUTH / "qualcomm_ai_hub_details.csv").open() as handle:
        return {(row["model_id"], row["device"], row["runtime"], row["precision"]):
                int(row["layers_cpu"] or 0) + int(row["layers_gpu"] or 0) for row in csv.DictReader(handle)}


def truth_rows() -> list[dict]:
    rows, off_npu = [], off_npu_layers()
    for path in sorted(TRUTH.glob("*.csv")):
        if "details" not in path.name:
            with path.open() as handle:
                rows += [row | {"file": path.name, "profile": PHONE_PROFILES.get(row["device"]),
                                "off_npu_layers": off_npu.get((row["model_id"], row["device"], row["runtime"], row["precision"]), 0)}
                         for row in csv.DictReader(handle)]
    return rows


def _network(model_id: str, shape: tuple[int, ...]) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return architectures().ARCHITECTURES[model_id]().eval(), torch.randn(shape)


def _calibration(shape: tuple[int, ...]):
    from effconv.backends.base import CalibrationSet

    return CalibrationSet([torch.randn(shape).numpy() for _ in range(CALIBRATION_IMAGES)], None, "random images")


def coreml_artifacts(model_id: str, shape: tuple[int, ...], work: Path) -> dict[str, Path]:
    """fp16, W8A16 and W8A8 packages of one network, written once into `work`."""
    from effconv.backends.coreml import quantize as w8a16, w8a8
    from effconv.backends.coreml.export import _coremltools, export

    paths = {precision: work / f"{model_id}-{precision}.mlpackage" for precision in PRECISIONS["coreml"]}
    if not all(path.exists() for path in paths.values()):
        module, example = _network(model_id, shape)
        export(module, example, paths["fp16"], "image", "output")
        w8a16._quantized_model(w8a16.load_float(_coremltools(), paths["fp16"])).save(str(paths["w8a16"]))
        export(w8a8.calibrated(module, example, _calibration(shape)), example, paths["w8a8"], "image", "output")
    return paths


def onnx_artifacts(model_id: str, shape: tuple[int, ...], work: Path) -> dict[str, Path]:
    """The float ONNX model of one network and its QNN QDQ models (w8a8, w8a16), written once into `work`."""
    from onnxruntime.quantization.execution_providers.qnn import qnn_preprocess_model

    from effconv.backends.onnx.export import export
    from effconv.backends.onnx.qnn import SCHEMES, quantize_as
    from effconv.backends.onnx.quantize import quiet_ort

    paths = {precision: work / f"{model_id}-{precision}.onnx" for precision in PRECISIONS["onnx"]}
    if not all(path.exists() for path in paths.values()):
        module, example = _network(model_id, shape)
        export(module, example, paths["float"], "image", "output")
        prepared = work / f"{model_id}-qnn-preprocessed.onnx"
        with quiet_ort():
            source = prepared if qnn_preprocess_model(str(paths["float"]), str(prepared)) else paths["float"]
        for scheme, activation in SCHEMES:
            quantize_as(source, paths[scheme], activation, _calibration(shape), ["image"])
    return paths


def _costs(backend: str, model_id: str, shape: tuple[int, ...], work: Path) -> dict:
    """Precision -> GraphCost of one network's artifacts for `backend`."""
    from effconv.profile.graph.mlprogram import mlprogram_cost
    from effconv.profile.graph.onnx import graph_cost, load_graph

    if backend == "coreml":
        return {precision: mlprogram_cost(path) for precision, path in coreml_artifacts(model_id, shape, work).items()}
    return {precision: graph_cost(load_graph(path)) for precision, path in onnx_artifacts(model_id, shape, work).items()}


def group_rows(group: Group, rows: list[dict], work: Path, skipped: Counter) -> list[dict]:
    """The group's truth rows with their artifact's cost, rows of one network (the same convolutions and matrix products),
    device, runtime and precision merged at their median latency; what could not be costed is counted in `skipped`."""
    known, costs = architectures().ARCHITECTURES, {}
    merged: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row["profile"] not in group.row_profiles or row["runtime"] not in group.runtimes:
            continue
        precision = PRECISIONS[group.artifact].get(row["precision"])
        if row["model_id"] not in known or precision is None:
            skipped[f"{group.name}: " + ("network not rebuilt" if row["model_id"] not in known else NOT_COSTED_PRECISION)] += 1
            continue
        key = (row["model_id"], row["input_shape"])
        if key not in costs:
            print(f"{group.name}: costing {row['model_id']} {row['input_shape']}", flush=True)
            costs[key] = _costs(group.artifact, row["model_id"], tuple(int(d) for d in row["input_shape"].split("x")), work)
        cost = costs[key][precision]
        merged[(cost.network_signature, row["device"], row["runtime"], row["precision"])].append(row | {"cost": cost})
    result = []
    for same in merged.values():
        result.append(same[0] | {"latency_ms": statistics.median(float(row["latency_ms"]) for row in same),
                                 "same_network": sorted({row["model_id"] for row in same[1:]} - {same[0]["model_id"]}),
                                 "off_npu_layers": max(row["off_npu_layers"] for row in same)})
    return result


def unit_with(device, unit: str, update: dict):
    """`device` with its unit `unit` updated (pydantic copy)."""
    units = dict(device.units) | {unit: device.units[unit].model_copy(update=update)}
    return device.model_copy(update={"units": units})


def on_chip(point: tuple[float, float] | None):
    from effconv.profile.device.profiles import Figure, OnChip

    if point is None:
        return None
    return OnChip(mb=Figure(value=point[0], source="fitted", uncertainty=0), bandwidth_gbps=Figure(value=point[1], source="fitted", uncertainty=0))


def terms(cost, device, group: Group, point) -> dict[str, float]:
    """A costed graph's estimate on `device` split into the group's columns, its unit at efficiency 1 with no dispatch
    or per-call cost and the on-chip buffer `point`: roofline ms per column, kernels dispatched on the unit, and the
    fixed ms of what the fit does not touch (ops on other units, hand-offs)."""
    from effconv.profile.estimate.latency import estimate_cost

    bare = unit_with(device, group.unit, {"efficiency": {}, "int8_efficiency": {}, "op_overhead_us": 0.0, "on_chip": on_chip(point)})
    result: dict[str, float] = defaultdict(float)
    for op in estimate_cost(cost, bare.model_copy(update={"run_overhead_ms": 0.0})).ops:
        if op.unit != group.unit:
            result["fixed"] += op.ms
            continue
        result["fixed"] += op.handoff_ms
        result["kernel"] += op.node.dispatched
        if op.node.category != "view":
            result[group.column(op.node.category, op.dtype)] += op.ms - op.handoff_ms
    return result


def design_matrix(rows: list[dict], group: Group, point, calls: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(rows x columns of `terms` and of the per-call costs `calls`, each row's fixed ms); a row's estimate is
    matrix @ parameters + fixed."""
    matrix, fixed = [], []
    for row in rows:
        split = row["terms"][point]
        matrix.append([split.get(column, 0.0) for column in (*group.inverse_columns, "kernel")]
                      + [float(group.call_key(row) == call) for call in calls])
        fixed.append(split.get("fixed", 0.0))
    return np.array(matrix), np.array(fixed)


def fit(rows: list[dict], group: Group, calls: list[str]) -> dict:
    """The group's figures minimising the squared log error over `rows` within physical bounds, at the best point of
    its on-chip grid, with a per-call cost for each of `calls` (one the rows do not pay stays at its start)."""
    from scipy.optimize import least_squares

    measured = np.log([row["latency_ms"] for row in rows])
    inverse = len(group.inverse_columns)
    lower = [1.0] * inverse + [0.0] * (1 + len(calls))
    upper = [MAX_INVERSE_EFFICIENCY] * inverse + [MAX_KERNEL_MS] + [MAX_RUN_MS] * len(calls)
    start = [2.0] * inverse + [0.005] + [0.1] * len(calls)
    best = None
    for point in group.on_chip_grid:
        matrix, fixed = design_matrix(rows, group, point, calls)
        solution = least_squares(lambda x: np.log(matrix @ x + fixed) - measured, start, bounds=(lower, upper),
                                 loss="soft_l1", f_scale=ROBUST_SCALE)
        if best is None or solution.cost < best[0]:
            best = (solution.cost, point, solution.x)
    _, point, x = best
    result = {_efficiency_key(name): 1 / float(value) for name, value in zip(group.inverse_columns, x)}
    result |= {"op_overhead_us": float(x[inverse]) * 1000,
               "run_overhead_ms": {call: float(value) for call, value in zip(calls, x[inverse + 1:])},
               "on_chip_mb": point[0] if point else 0.0, "on_chip_bandwidth_gbps": point[1] if point else 0.0}
    return result


def _point(fitted: dict) -> tuple[float, float] | None:
    return (fitted["on_chip_mb"], fitted["on_chip_bandwidth_gbps"]) if fitted["on_chip_mb"] else None


def predicted_ms(row: dict, group: Group, fitted: dict) -> float:
    """The row's estimate with the group's fitted figures, by the same linear form the fit minimised."""
    calls = list(fitted["run_overhead_ms"])
    matrix, fixed = design_matrix([row], group, _point(fitted), calls)
    parameters = [1 / fitted[_efficiency_key(name)] for name in group.inverse_columns]
    parameters += [fitted["op_overhead_us"] / 1000, *fitted["run_overhead_ms"].values()]
    return float(matrix[0] @ np.array(parameters) + fixed[0])


def _efficiency_key(column: str) -> str:
    return f"{column.replace(' ', '_')}_efficiency"


def fitted_efficiency(fitted: dict, prefix: str = "") -> dict[str, float]:
    """A unit's per-category efficiency from the fit (`prefix` "int8_": its int8 table): convolutions and matrix
    products at one share of peak, every other category at the other."""
    from effconv.profile.graph.costs import CATEGORIES

    return {category: fitted[f"{prefix}compute_efficiency"] if category in COMPUTE else fitted[f"{prefix}other_efficiency"]
            for category in CATEGORIES if category != "view"}


def fitted_device(device, group: Group, fitted: dict, row: dict):
    """`device` with the group's fitted figures on its unit and the per-call cost `row` pays."""
    int8 = fitted_efficiency(fitted, "int8_") if group.int8_apart else {}
    device = unit_with(device, group.unit, {"efficiency": fitted_efficiency(fitted), "int8_efficiency": int8,
                                            "op_overhead_us": fitted["op_overhead_us"], "on_chip": on_chip(_point(fitted))})
    return device.model_copy(update={"run_overhead_ms": fitted["run_overhead_ms"][group.call_key(row)]})


def guessed_ms(row: dict, device, group: Group) -> float:
    """The row's estimate with the figures the profile carried before any fit."""
    from effconv.profile.estimate.latency import estimate_cost

    guessed = unit_with(device, group.unit, {"efficiency": group.guessed["efficiency"], "int8_efficiency": {},
                                             "op_overhead_us": group.guessed["op_overhead_us"], "on_chip": None})
    return estimate_cost(row["cost"], guessed.model_copy(update={"run_overhead_ms": group.guessed["run_overhead_ms"]})).total_ms


def summary(errors: list[float], band: dict | None = None) -> dict:
    """Error statistics (error = estimate / measured - 1) and the band they give, or the share inside `band` (another
    summary's): a measurement lies within [estimate / (1 + high), estimate / (1 + low)] when its error lies within
    [low, high]."""
    from effconv.profile.fit.calibrate import abs_error_summary

    errors = np.array(errors)
    low, high = ((band["band_error_low"], band["band_error_high"]) if band
                 else (float(np.percentile(errors, q)) for q in BAND_PERCENTILES))
    return {**abs_error_summary(errors.tolist()), "band_error_low": low, "band_error_high": high,
            "inside_band": float(np.mean((errors >= low) & (errors <= high)))}


def held_out_by(rows: list[dict], key: str, band: dict) -> dict[str, dict]:
    """Held-out error statistics per value of `key` (soc, runtime, precision), with the group's band and the share inside it."""
    values: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        values[row[key]].append(row["held_out_error"])
    return {value: summary(errors, band) for value, errors in sorted(values.items())}


OFF_NPU_IN_JOB = "AI Hub ran layers on the CPU"
OFF_NPU_IN_ESTIMATE = "effconv's estimate runs ops off the NPU"


def apart(row: dict, group: Group) -> str:
    """Why a row stays out of the fit and the band ("": it does not): its measurement ran layers off the NPU, or its
    estimate does (the `fixed` ms of `terms`: ops on other units and their hand-offs)."""
    if row["off_npu_layers"]:
        return OFF_NPU_IN_JOB
    return OFF_NPU_IN_ESTIMATE if row["terms"][group.on_chip_grid[0]].get("fixed", 0.0) > 0 else ""


def run_group(group: Group, rows: list[dict], devices: dict) -> dict:
    """Cost every row on its profile at every on-chip point, fit with each family left out in turn, then on all rows."""
    from effconv.profile.estimate.latency import estimate_cost

    costed = {}  # rows of one artifact placed alike on one phone share its terms
    for row in rows:
        backend = group.backends[row["runtime"]]
        key = (id(row["cost"]), row["profile"], backend)
        if key not in costed:
            device = devices[row["profile"]].for_backend(backend)
            costed[key] = ({point: terms(row["cost"], device, group, point) for point in group.on_chip_grid},
                           guessed_ms(row, device, group))
        row["terms"], row["before_ms"] = costed[key]
    for row in rows:
        row["apart"] = apart(row, group)
    on_npu = [row for row in rows if not row["apart"]]
    families = sorted({row["family"] for row in rows})
    calls = sorted({group.call_key(row) for row in rows})
    folds = {}
    for family in families:
        folds[family] = fit([row for row in on_npu if row["family"] != family], group, calls)
        for row in rows:
            if row["family"] == family:
                row["held_out_ms"] = predicted_ms(row, group, folds[family])
                row["held_out_error"] = row["held_out_ms"] / row["latency_ms"] - 1
    final = fit(on_npu, group, calls)
    for row in rows:
        row["fitted_ms"] = predicted_ms(row, group, final)
    for row in rows:  # the linear form is the estimator's own arithmetic: the full estimate must agree with it
        device = devices[row["profile"]].for_backend(group.backends[row["runtime"]])
        full = estimate_cost(row["cost"], fitted_device(device, group, final, row)).total_ms
        assert abs(full - row["fitted_ms"]) <= 1e-6 * full, (row["model_id"], full, row["fitted_ms"])
    held_out = summary([row["held_out_error"] for row in on_npu])
    reasons: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row["apart"]:
            reasons[row["apart"]].append(row["held_out_error"])
    return {"fit": final, "leave_one_family_out": folds, "held_out": held_out,
            "held_out_by_soc": held_out_by(on_npu, "soc", held_out), "held_out_by_runtime": held_out_by(on_npu, "runtime", held_out),
            "held_out_by_precision": held_out_by(on_npu, "precision", held_out),
            "held_out_apart": {reason: summary(errors, held_out) for reason, errors in sorted(reasons.items())},
            "held_out_every_row": summary([row["held_out_error"] for row in rows], held_out),
            "before_fit": summary([row["before_ms"] / row["latency_ms"] - 1 for row in on_npu]),
            "fitted_in_sample": summary([row["fitted_ms"] / row["latency_ms"] - 1 for row in on_npu]),
            "families": families, "networks": sorted({row["model_id"] for row in rows}), "profiles": list(group.profiles),
            "call_costs": {profile: call_costs(group, final, profile) for profile in group.profiles}}


RUNTIME_BACKENDS = {"coreml": "coreml", "tflite": "tflite", "onnx": "onnx"}  # QNN's own runtime is no effconv backend
# What the on-chip buffer's size rests on ({fitted}: the fit's source): the ANE's is fitted, the HTP's is its VTCM
ON_CHIP_MB_SOURCES = {"ane": "{fitted}; reverse engineering puts the M1 Neural Engine's L2 at 4 MB (tinygrad extra/accel/ane)",
                      "htp": "the HTP's VTCM: 8 MB on SM8550, SM8650 and SM8750 (ExecuTorch backends/qualcomm/serialization/"
                             "qc_schema.py, HtpInfo); not fitted"}


def call_costs(group: Group, fitted: dict, profile: str) -> dict[str, float]:
    """A profile's fitted per-call cost per effconv backend: its phone's (PHONE_PROFILES, or CALL_COST_PHONE) in each
    runtime (QNN's own runtime is no effconv backend)."""
    device = CALL_COST_PHONE.get(profile) or next(phone for phone, name in PHONE_PROFILES.items() if name == profile)
    return {RUNTIME_BACKENDS[runtime]: fitted["run_overhead_ms"][group.call_key({"runtime": runtime, "device": device})]
            for runtime in group.runtimes if runtime in RUNTIME_BACKENDS}


def unit_lines(group: Group, result: dict, results: str, profile: str) -> dict[str, str | None]:
    """The lines of `profile`'s fitted unit that hold the group's figures (None: the line goes)."""
    fitted, held_out = result["fit"], result["held_out"]
    source = f"fitted: benchmarks/device_truth.py on {held_out['n']} public measurements ({results})"

    def table(prefix: str) -> str:
        return "{" + ", ".join(f"{k}: {round(v, 3)}" for k, v in fitted_efficiency(fitted, prefix).items()) + "}"

    point = _point(fitted)
    overheads = {backend: round(ms, 4) for backend, ms in call_costs(group, fitted, profile).items()}
    return {
        "    op_overhead_us:": f"    op_overhead_us: {round(fitted['op_overhead_us'], 3):g}  # {source}",
        "    efficiency:": f"    efficiency: {table('')}  # {source}",
        "    int8_efficiency:": f"    int8_efficiency: {table('int8_')}  # {source}" if group.int8_apart else None,
        "    run_overhead_ms:": "    run_overhead_ms: {" + ", ".join(f"{k}: {v:g}" for k, v in overheads.items()) + f"}}  # {source}",
        "    on_chip:": (f"    on_chip: {{mb: {{value: {point[0]:g}, source: \"{ON_CHIP_MB_SOURCES[group.unit].format(fitted=source)}\", uncertainty: "
                        f"1.0}}, bandwidth_gbps: {{value: {point[1]:g}, source: \"{source}\", uncertainty: 1.0}}}}") if point else None,
        "    held_out_band:": (f"    held_out_band: {{error_low: {held_out['band_error_low']:.3f}, error_high: "
                              f"{held_out['band_error_high']:.3f}, rows: {held_out['n']}, source: \"{results}: families left "
                              f"out in turn, {BAND_PERCENTILES[0]}th-{BAND_PERCENTILES[1]}th percentile\"}}"),
    }


def unit_block(text: list[str], unit: str) -> tuple[int, int]:
    """The [start, end) line range of a unit's fields in a profile."""
    start = text.index(f"  {unit}:") + 1
    end = next((i for i in range(start, len(text)) if not text[i].startswith("    ")), len(text))
    return start, end


def write_profiles(group: Group, result: dict, results: str) -> None:
    """Put the group's fit into its profiles: its unit's lines replaced, added after its efficiency line, or removed."""
    from effconv.profile.device.profiles import profiles_dir

    for name in group.profiles:
        path = Path(str(profiles_dir() / f"{name}.yaml"))
        text = path.read_text().splitlines()
        for prefix, line in unit_lines(group, result, results, name).items():
            start, end = unit_block(text, group.unit)
            index = next((i for i in range(start, end) if text[i].startswith(prefix)), None)
            if index is not None and line is None:
                del text[index]
            elif index is not None:
                text[index] = line
            elif line is not None:
                text.insert(next(i for i in range(start, end) if text[i].startswith("    efficiency:")) + 1, line)
        path.write_text("\n".join(text) + "\n")


ROW_FIELDS = ("model_id", "family", "device", "soc", "runtime", "precision", "input_shape", "latency_ms", "source_url", "file",
              "same_network", "off_npu_layers", "apart", "before_ms", "held_out_ms", "fitted_ms", "held_out_error")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/effconv-device-truth"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--write-profiles", action="store_true", help="put each fit into the profiles that share it")
    args = parser.parse_args()
    from effconv.profile.device.profiles import load_device

    started = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    rows, skipped = truth_rows(), Counter()
    devices = {name: load_device(name) for group in GROUPS for name in group.profiles}
    result, table = {}, []
    for group in GROUPS:
        grouped = group_rows(group, rows, args.work, skipped)
        result[group.name] = run_group(group, grouped, devices)
        table += [{key: row[key] for key in ROW_FIELDS} | {"group": group.name} for row in grouped]
        if args.write_profiles:
            write_profiles(group, result[group.name], f"benchmarks/results/{args.results.name}")
        print(group.name, json.dumps(result[group.name]["held_out"]), flush=True)
    result = {"rows": table} | result | {"not_costed": dict(sorted(skipped.items())), "seconds": round(time.time() - started, 1)}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
