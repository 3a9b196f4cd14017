"""`effconv calibrate`: fit the host-cpu latency model per runtime (not to be confused with quantization calibration
data, `effconv.quantize.calibration`): convert a set of decoders to each runtime's artifact (fp32 and int8) and measure
them in their own runtime (model_set.py, measure_set.py), fit each runtime's host-cpu unit on some of them
(fitting.py), report the estimator's error on the others, and store the fits in the host-cpu cache
(effconv.profile.device.host_cpu).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

from effconv.artifacts import staged_output
from effconv.backends import registry
from effconv.errors import EffconvError
from effconv.host import default_threads
from effconv.profile.device.host_cpu import cost_model_version, store_calibration
from effconv.profile.device.profiles import HOST, DeviceProfile, load_device
from effconv.profile.estimate.latency import estimate_cost
from effconv.profile.fit.fitting import fit_runtime, unit_prior, with_fit
from effconv.profile.fit.measure_set import BACKEND_UNITS, measure_set
from effconv.profile.fit.model_set import CalibrationModel, calibration_set


def errors(records: list[dict], device: DeviceProfile) -> list[dict]:
    rows = []
    for r in records:
        predicted = estimate_cost(r["cost"], device).total_ms
        measured = r["wall"]["median_ms"]
        rows.append({"name": r["name"], "held_out": r["held_out"], "backend": r["backend"], "dtype": r["dtype"],
                     "measured_ms": measured, "predicted_ms": predicted, "rel_error": (predicted - measured) / measured})
    return rows


def summarize(rows: list[dict]) -> dict:
    """abs_error_summary of the rows' relative errors."""
    return abs_error_summary([row["rel_error"] for row in rows])


def abs_error_summary(signed_errors: list[float]) -> dict:
    """Median and 90th percentile of |error| (nearest rank); with fewer than 10 errors the p90 is the max, and says so."""
    errors = sorted(abs(error) for error in signed_errors)
    if not errors:
        return {"n": 0}
    p90_index = min(len(errors) - 1, max(0, math.ceil(0.9 * len(errors)) - 1))
    return {"n": len(errors), "median_abs": statistics.median(errors), "p90_abs": errors[p90_index], "max_abs": errors[-1],
            "p90_is_max": p90_index == len(errors) - 1}


def _sets(rows: list[dict]) -> dict:
    """Held-out and fitted summaries, overall and per dtype."""
    summary = {}
    for label, held in (("held_out", True), ("fitted", False)):
        chosen = [r for r in rows if r["held_out"] == held]
        summary[label] = summarize(chosen)
        for dtype in sorted({r["dtype"] for r in chosen}):
            summary[f"{label}_{dtype}"] = summarize([r for r in chosen if r["dtype"] == dtype])
    return summary


def check_arguments(threads: int | None, repeats: int) -> None:
    if repeats < 1 or (threads is not None and threads < 1):
        raise EffconvError("--repeats and --threads must be at least 1.", "pass positive numbers.")


def check_backends(backends: tuple[str, ...]) -> None:
    unknown = [b for b in backends if b not in BACKEND_UNITS]
    if unknown or not backends:
        raise EffconvError(f"cannot calibrate runtime(s) {', '.join(unknown) or '(none)'}.",
                           f"pass --runtime one or more of: {', '.join(BACKEND_UNITS)}.")


def calibrate_host(threads: int | None = None, repeats: int = 10, remeasure: bool = False, progress=print,
                   backends: tuple[str, ...] = tuple(BACKEND_UNITS), int8: bool = True) -> dict:
    """`effconv calibrate`: check the arguments, (re-)measure the host's peaks if needed, then calibrate().

    threads None = all cores; remeasure re-measures the runtimes' peak GFLOP/s and the bandwidth first.
    """
    check_arguments(threads, repeats)
    check_backends(backends)
    threads = threads or default_threads()
    load_device(HOST, threads=threads, remeasure=remeasure)
    return calibrate(threads, repeats=repeats, progress=progress, backends=backends, int8=int8)


def write_report(result: dict, path: str | Path) -> Path:
    """Write calibrate()'s full result as JSON to path; nothing is left behind if writing fails."""
    path = Path(path)
    with staged_output(path.parent) as stage:
        (stage / path.name).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def calibrate(threads: int, repeats: int = 10, progress=print, models: list[CalibrationModel] | None = None,
              backends: tuple[str, ...] = tuple(BACKEND_UNITS), int8: bool = True) -> dict:
    """Convert, measure, fit each runtime, evaluate before/after on held-out models, and store the fits in the
    host-cpu cache."""
    check_arguments(threads, repeats)
    check_backends(backends)
    records = measure_set(models or calibration_set(), threads, repeats, backends, int8, progress)
    return fit_and_store(records, threads, repeats)


def _validation(runtime: str, held_out: dict, fitted_models: int, threads: int, repeats: int) -> str:
    p90 = "max" if held_out["p90_is_max"] else "p90"
    return (f"{runtime}: calibrated by `effconv calibrate` on {fitted_models} artifacts; held-out error on "
            f"{held_out['n']} artifacts (fp32 and int8): median {held_out['median_abs']:.0%}, {p90} {held_out['p90_abs']:.0%} "
            f"({threads} threads, medians of {repeats} runs).")


def fit_and_store(records: list[dict], threads: int, repeats: int) -> dict:
    """Fit each runtime measured in `records` (onnxruntime first: its kernel fit is LiteRT's prior), store the fits in
    the host-cpu cache, and return the fits with the estimator's error before and after."""
    host = load_device(HOST, threads=threads, calibrated=False)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    runtimes, calibration, prior = {}, {}, None
    for backend in sorted({r["backend"] for r in records}, key=list(BACKEND_UNITS).index):
        unit = BACKEND_UNITS[backend]
        chosen = [r for r in records if r["backend"] == backend]
        device = host.for_backend(backend)
        with_kernels = all("kernels" in r for r in chosen if r["dtype"] == "fp32")
        fitted = fit_runtime(chosen, device, None if with_kernels else (prior or unit_prior(device)))
        prior = prior or fitted
        before, after = errors(chosen, device), errors(chosen, with_fit(device, fitted))
        held_out = summarize([row for row in after if row["held_out"]])
        calibration[unit] = {
            **fitted,
            "model_uncertainty": max(0.1, round(held_out.get("p90_abs", 0.5) + 0.05, 2)),
            "validation": _validation(registry.get(backend).runtime, held_out, sum(not r["held_out"] for r in chosen), threads, repeats),
            "calibrated_at": stamp,
            "threads": threads,
            "method": "calibrate",
            "produced_by": cost_model_version(),  # a later cost model ignores this fit (host_cpu.host_calibration)
        }
        runtimes[backend] = {"unit": unit, "fit": calibration[unit], "before": {"rows": before, **_sets(before)},
                             "after": {"rows": after, **_sets(after)}}
    store_calibration(threads, calibration)
    return {
        "threads": threads,
        "repeats": repeats,
        "runtimes": runtimes,
        "models": [{"name": r["name"], "held_out": r["held_out"], "backend": r["backend"], "dtype": r["dtype"],
                    "gflops": r["cost"].flops / 1e9, "wall": r["wall"]} for r in records],
    }
