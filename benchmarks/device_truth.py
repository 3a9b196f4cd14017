"""The phone estimates against public on-device measurements: rebuild each measured network, export it with effconv's
own exporter, cost it with the device profile of the phone that measured it, fit the Neural Engine's figures on some
architecture families and report the error on the others.

Truth rows: benchmarks/device_truth/*.csv (one row per published measurement, with its source URL and commit; see the
folder's README). Networks: benchmarks/device_truth/architectures.py (written from their papers; weights do not change
latency). Core ML rows: fp16 `.mlpackage` from `effconv.backends.coreml.export.export`, W8A16 by effconv's weight
quantizer (coremltools linear_quantize_weights), W8A8 by effconv's pt2e path (int8 activations at conv/linear/add
inputs and outputs, calibrated on random images: the scales do not change the program's structure).

Fit: the Apple Neural Engine's figures shared by iphone14pro, iphone15pro and iphone16pro (one ANE design, three
chips whose peaks and bandwidths the profiles give): a compute efficiency for convolutions and matrix products, one
for the other categories, the dispatch cost per kernel, the fixed cost per call and the on-chip activation buffer
(its bandwidth fitted at each size of ON_CHIP_MB), with physical bounds (an efficiency is a share of peak: at most
1). Held out: each architecture family in turn is left out, the rest fitted, and the left-out rows predicted; the
band the profiles print is the BAND_PERCENTILES range of those held-out errors.

Usage: PYTHONPATH=. python benchmarks/device_truth.py [--work DIR]
Writes benchmarks/results/device_truth.json. Needs the coreml extra (coremltools, torchao); runs in a few minutes.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
TRUTH = ROOT / "device_truth"
RESULTS = ROOT / "results" / "device_truth.json"
APPLE_PROFILES = {"iPhone 14 Pro": "iphone14pro", "iPhone 15 Pro": "iphone15pro"}
APPLE_ANE_PROFILES = ("iphone14pro", "iphone15pro", "iphone16pro")  # one Neural Engine design: they share its fit
ANE = "ane"
W8A8_CALIBRATION_IMAGES = 2


def architectures():
    """benchmarks/device_truth/architectures.py (a data folder beside this script, not an importable package)."""
    spec = importlib.util.spec_from_file_location("device_truth_architectures", TRUTH / "architectures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def truth_rows(runtime: str) -> list[dict]:
    rows = []
    for path in sorted(TRUTH.glob("*.csv")):
        with path.open() as handle:
            rows += [row | {"file": path.name} for row in csv.DictReader(handle) if row["runtime"] == runtime]
    return rows


def coreml_artifacts(model_id: str, shape: tuple[int, ...], work: Path) -> dict[str, Path]:
    """fp16, W8A16 and W8A8 packages of one network, written once into `work`."""
    from effconv.backends.base import CalibrationSet
    from effconv.backends.coreml import quantize as w8a16, w8a8
    from effconv.backends.coreml.export import _coremltools, export

    paths = {precision: work / f"{model_id}-{precision}.mlpackage" for precision in ("fp16", "w8a16", "w8a8")}
    if all(path.exists() for path in paths.values()):
        return paths
    torch.manual_seed(0)
    module = architectures().ARCHITECTURES[model_id]().eval()
    example = torch.randn(shape)
    export(module, example, paths["fp16"], "image", "output")
    w8a16._quantized_model(w8a16.load_float(_coremltools(), paths["fp16"])).save(str(paths["w8a16"]))
    images = CalibrationSet([torch.randn(shape).numpy() for _ in range(W8A8_CALIBRATION_IMAGES)], None, "random images")
    export(w8a8.calibrated(module, example, images), example, paths["w8a8"], "image", "output")
    return paths


def costed_rows(work: Path) -> list[dict]:
    """Each Core ML truth row with its artifact's cost (GraphCost) and the profile of its phone."""
    from effconv.profile.mlprogram_cost import mlprogram_cost

    rows, costs = truth_rows("coreml"), {}
    for row in rows:
        key = (row["model_id"], row["input_shape"])
        if key not in costs:
            shape = tuple(int(d) for d in row["input_shape"].split("x"))
            print(f"exporting {row['model_id']} {row['input_shape']} (fp16, W8A16, W8A8)", flush=True)
            costs[key] = {precision: mlprogram_cost(path) for precision, path in coreml_artifacts(row["model_id"], shape, work).items()}
        row["cost"] = costs[key][row["precision"]]
        row["profile"] = APPLE_PROFILES[row["device"]]
    return rows


def predicted_ms(row: dict, devices: dict, ane: dict | None = None) -> float:
    """The row's estimate on its phone's profile with the Neural Engine figures `ane` (default: the guesses the
    profiles carried before any fit)."""
    from effconv.profile.estimate import estimate_cost

    device = with_ane(devices[row["profile"]], ane or GUESSED_ANE)
    return estimate_cost(row["cost"], device.for_backend("coreml")).total_ms


def with_ane(device, ane: dict):
    """`device` with the Neural Engine figures in `ane`: fitted (efficiencies for compute and other categories, or a
    full `efficiency` table), dispatch, per-call cost and the on-chip buffer (none when `on_chip_mb` is absent)."""
    from effconv.profile.devices import Figure, OnChip

    unit = device.units[ANE]
    efficiency = ane.get("efficiency") or fitted_efficiency(ane)
    on_chip = None
    if "on_chip_mb" in ane:
        on_chip = OnChip(mb=Figure(value=ane["on_chip_mb"], source="fitted", uncertainty=0),
                         bandwidth_gbps=Figure(value=ane["on_chip_bandwidth_gbps"], source="fitted", uncertainty=0))
    units = dict(device.units) | {ANE: unit.model_copy(update={"efficiency": efficiency, "op_overhead_us": ane["op_overhead_us"],
                                                               "on_chip": on_chip})}
    return device.model_copy(update={"units": units, "run_overhead_ms": ane["run_overhead_ms"]})


def fitted_efficiency(fit: dict) -> dict[str, float]:
    """A unit's per-category efficiency from the fit: convolutions and matrix products at one share of peak, every
    other category at the other."""
    from effconv.profile.cost import CATEGORIES

    return {category: fit["compute_efficiency"] if category in COMPUTE else fit["other_efficiency"]
            for category in CATEGORIES if category != "view"}


# What the iPhone profile said before this fit (typical NPU shares of peak, guessed dispatch and per-call costs, no
# on-chip buffer): the "before" column.
GUESSED_ANE = {"efficiency": {"conv": 0.5, "conv_pw": 0.4, "conv_dw": 0.1, "matmul": 0.5, "norm": 0.3, "elementwise": 0.5,
                              "reduce": 0.3, "resize": 0.3, "layout": 0.3},
               "op_overhead_us": 5.0, "run_overhead_ms": 1.0}
COMPUTE = ("conv", "conv_pw", "matmul")
PARAMETERS = ("compute_efficiency", "other_efficiency", "op_overhead_us", "run_overhead_ms", "on_chip_bandwidth_gbps")
LOWER = (0.01, 0.01, 0.0, 0.0, 51.2)
UPPER = (1.0, 1.0, 100.0, 10.0, 2000.0)
START = (0.5, 0.3, 5.0, 0.1, 200.0)
# The on-chip buffer's size moves whole tensors between DRAM and chip, a step the gradient cannot follow: it is
# searched over these sizes (MB), the rest fitted at each. Reverse engineering puts the M1 Neural Engine's at 4 MB.
ON_CHIP_MB = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def fit(rows: list[dict], devices: dict) -> dict:
    """ANE figures minimising the squared log error over `rows`, within physical bounds."""
    from scipy.optimize import least_squares

    measured = np.log([float(row["latency_ms"]) for row in rows])
    best = None
    for mb in ON_CHIP_MB:
        def residuals(theta):
            ane = dict(zip(PARAMETERS, theta)) | {"on_chip_mb": mb}
            return np.log([predicted_ms(row, devices, ane) for row in rows]) - measured

        solution = least_squares(residuals, START, bounds=(LOWER, UPPER), diff_step=1e-3)
        if best is None or solution.cost < best[0]:
            best = (solution.cost, dict(zip(PARAMETERS, (float(v) for v in solution.x))) | {"on_chip_mb": mb})
    return best[1]


BAND_PERCENTILES = (5, 95)  # of the held-out errors: the band the fitted profiles print


def summary(errors: list[float]) -> dict:
    """Error statistics (error = estimate / measured - 1) and the band they give: a measurement lies within
    [estimate / (1 + high), estimate / (1 + low)] when its error lies within [low, high]."""
    errors = np.array(errors)
    low, high = (float(np.percentile(errors, q)) for q in BAND_PERCENTILES)
    return {"n": len(errors), "median_abs": float(np.median(np.abs(errors))), "p90_abs": float(np.percentile(np.abs(errors), 90)),
            "max_abs": float(np.max(np.abs(errors))), "band_error_low": low, "band_error_high": high,
            "inside_band": float(np.mean((errors >= low) & (errors <= high)))}


def ane_lines(fit: dict, held_out: dict, results: str) -> dict[str, str]:
    """The lines of a phone profile's `ane` unit (and its run overhead) that hold the fitted figures."""
    source = f"fitted: benchmarks/device_truth.py on {held_out['n']} Apple measurements ({results})"
    efficiency = {category: round(value, 3) for category, value in fitted_efficiency(fit).items()}
    return {
        "    op_overhead_us:": f"    op_overhead_us: {round(fit['op_overhead_us'], 3):g}  # {source}",
        "    efficiency:": "    efficiency: {" + ", ".join(f"{k}: {v}" for k, v in efficiency.items()) + f"}}  # {source}",
        "    on_chip:": (f"    on_chip: {{mb: {{value: {fit['on_chip_mb']:g}, source: \"{source}; reverse engineering puts the M1 "
                        f"Neural Engine's L2 at 4 MB (tinygrad extra/accel/ane)\", uncertainty: 1.0}}, bandwidth_gbps: "
                        f"{{value: {fit['on_chip_bandwidth_gbps']:.4g}, source: \"{source}\", uncertainty: 1.0}}}}"),
        "    held_out_band:": (f"    held_out_band: {{error_low: {held_out['band_error_low']:.3f}, error_high: "
                              f"{held_out['band_error_high']:.3f}, rows: {held_out['n']}, source: \"{results}: families left "
                              f"out in turn, {BAND_PERCENTILES[0]}th-{BAND_PERCENTILES[1]}th percentile\"}}"),
        "run_overhead_ms:": f"run_overhead_ms: {round(fit['run_overhead_ms'], 4):g}  # {source}",
    }


def write_profiles(fit: dict, held_out: dict, results: str) -> None:
    """Put the fitted figures into the Apple phones' profiles (the first `ane` unit's lines, replaced or added after
    its efficiency line)."""
    from effconv.profile.devices import profiles_dir

    lines = ane_lines(fit, held_out, results)
    for name in APPLE_ANE_PROFILES:
        path = Path(str(profiles_dir() / f"{name}.yaml"))
        text = path.read_text().splitlines()
        for prefix, line in lines.items():
            index = next((i for i, old in enumerate(text) if old.startswith(prefix)), None)
            if index is None:
                index = next(i for i, old in enumerate(text) if old.startswith("    efficiency:")) + 1
                text.insert(index, line)
            else:
                text[index] = line
        path.write_text("\n".join(text) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/effconv-device-truth"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--write-profiles", action="store_true", help="put the fit into the Apple phones' profiles")
    args = parser.parse_args()
    from effconv.profile.devices import load_device

    started = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = costed_rows(args.work)
    devices = {name: load_device(name) for name in set(APPLE_PROFILES.values())}
    for row in rows:
        row["before_ms"] = predicted_ms(row, devices)
    families = sorted({row["family"] for row in rows})
    held_out_errors, fits = [], {}
    for family in families:
        fitted = fit([row for row in rows if row["family"] != family], devices)
        fits[family] = fitted
        for row in rows:
            if row["family"] == family:
                row["held_out_ms"] = predicted_ms(row, devices, fitted)
                row["held_out_error"] = row["held_out_ms"] / float(row["latency_ms"]) - 1
                held_out_errors.append(row["held_out_error"])
    final = fit(rows, devices)
    for row in rows:
        row["fitted_ms"] = predicted_ms(row, devices, final)
    table = [{key: row[key] for key in ("model_id", "family", "device", "soc", "precision", "input_shape", "latency_ms",
                                        "source_url", "file")}
             | {"latency_ms": float(row["latency_ms"]), "before_ms": row["before_ms"], "held_out_ms": row["held_out_ms"],
                "fitted_ms": row["fitted_ms"], "held_out_error": row["held_out_error"]}
             for row in rows]
    result = {
        "rows": table,
        "apple_ane": {"fit": final, "leave_one_family_out": fits, "held_out": summary(held_out_errors),
                      "before_fit": summary([row["before_ms"] / float(row["latency_ms"]) - 1 for row in rows]),
                      "fitted_in_sample": summary([row["fitted_ms"] / float(row["latency_ms"]) - 1 for row in rows]),
                      "families": families, "profiles": sorted(set(APPLE_PROFILES.values()))},
        "seconds": round(time.time() - started, 1),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    if args.write_profiles:
        write_profiles(final, result["apple_ane"]["held_out"], f"benchmarks/results/{args.results.name}")
    for row in table:
        print(f"{row['model_id']:20s} {row['device']:14s} {row['precision']:6s} measured {row['latency_ms']:6.2f} "
              f"before {row['before_ms']:6.2f} held-out {row['held_out_ms']:6.2f} ({row['held_out_error']:+.0%})")
    print(json.dumps(result["apple_ane"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
