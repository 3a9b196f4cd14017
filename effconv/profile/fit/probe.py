"""The host-cpu probe: about a minute of `effconv calibrate`'s procedure instead of its half hour, for onnxruntime's
unit (`cpu`, which costs `.onnx` and, here, `.mlpackage` files).

It converts seven of calibrate's decoders (PROBE_MODELS: the tiniest teacher of each of the six families, whose op
mixes differ, and the tiniest Turbo-VAED student) to ONNX, fp32 and static int8; times their nodes with onnxruntime's
profiler and their wall clock (medians of interleaved rounds); and fits the unit on them (fitting.fit_runtime: the
per-node kernel fit, then the wall fit pulled towards it). The band it stores is measured on this machine too: each
model is left out in turn, the unit refitted on the other six, and the left-out model's error taken; the 90th
percentile of those errors is the fit's model uncertainty. That is an error on decoders of a family the fit has not
seen, so it overstates the error on the families it has.

The fit is cached like calibrate's (host_cpu.store_calibration), recording the cost model it was made with, so an
upgrade refits it. LiteRT's unit is not probed: converting even these seven decoders to `.tflite` takes longer than
the whole probe; `effconv calibrate --runtime tflite` fits it.
"""

from __future__ import annotations

import dataclasses
import os
import time

from effconv.host import default_threads
from effconv.profile.device.host_cpu import cost_model_version, host_calibration, store_calibration
from effconv.profile.device.profiles import HOST, load_device
from effconv.profile.fit.calibrate import check_arguments, errors, summarize
from effconv.profile.fit.fitting import fit_runtime, with_fit
from effconv.profile.fit.measure_set import BACKEND_UNITS, measure_set
from effconv.profile.fit.model_set import CalibrationModel, calibration_set

PROBE_MODELS = ("hunyuan-tiny", "cogvideox-tiny", "ltx-tiny", "mochi-tiny", "wan21-tiny", "wan22-tiny", "cogvideox-student-w32")
PROBE_REPEATS = 5
PROBE_BACKEND = "onnx"
PROBED_UNIT = BACKEND_UNITS[PROBE_BACKEND]
METHOD = "probe"
PROBE_ENV = "EFFCONV_HOST_PROBE"  # `off`: never probe (host-cpu estimates keep the uncalibrated band)
# What a plan expects the probe to take: 63 s with 1 thread (conversions included, one process per core) on a 2-core
# AMD EPYC, benchmarks/results/host_probe.json; a little more with 2 threads.
PROBE_SECONDS = 70.0


def probe_enabled() -> bool:
    return os.environ.get(PROBE_ENV, "").strip().lower() != "off"


def needs_probe(threads: int) -> bool:
    """Whether costing an ONNX model on host-cpu at `threads` runs the probe first: it is on, and no fit of
    onnxruntime's unit made by this cost model is cached (calibrate's or the probe's)."""
    return probe_enabled() and PROBED_UNIT not in host_calibration(threads)[0]


def probe_set() -> list[CalibrationModel]:
    """The probe's decoders, all fitted."""
    return [dataclasses.replace(model, held_out=False) for model in calibration_set() if model.name in PROBE_MODELS]


def leave_one_out(records: list[dict], device) -> list[dict]:
    """Each model's error (its fp32 and int8 artifacts) under the fit of the other models (fitting.fit_runtime)."""
    rows = []
    for name in dict.fromkeys(record["name"] for record in records):
        fitted = fit_runtime([r | {"held_out": r["name"] == name} for r in records], device, None)
        rows += errors([r for r in records if r["name"] == name], with_fit(device, fitted))
    return rows


def probe_host(threads: int, repeats: int = PROBE_REPEATS, progress=print) -> dict:
    """Measure the probe's decoders, fit onnxruntime's host-cpu unit on them, measure the fit's leave-one-out error,
    and store the fit in the host-cpu cache. Returns the fit, the left-out rows and the seconds it took."""
    started = time.perf_counter()
    models = probe_set()
    progress(f"probing this CPU for host-cpu's onnxruntime fit: {len(models)} small decoders, about a minute, once "
             f"per machine, thread count and effconv version")
    records = measure_set(models, threads, repeats, backends=(PROBE_BACKEND,), progress=progress)
    device = load_device(HOST, threads=threads, calibrated=False).for_backend(PROBE_BACKEND)
    fitted = fit_runtime(records, device, None)
    left_out = leave_one_out(records, device)
    summary = summarize(left_out)
    seconds = time.perf_counter() - started
    fit = {
        **fitted,
        "model_uncertainty": round(summary["p90_abs"] + 0.05, 2),  # as calibrate's band: its held-out p90 + 5 points
        "validation": _validation(summary, len(records), len(models), threads, repeats, seconds),
        "calibrated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "threads": threads,
        "method": METHOD,
        "produced_by": cost_model_version(),
    }
    store_calibration(threads, {PROBED_UNIT: fit})
    progress(f"probe done in {seconds:.0f} s: {fit['validation']}")
    return {"fit": fit, "left_out": {"rows": left_out, **summary}, "seconds": seconds, "threads": threads}


def quick_calibrate(threads: int | None = None, repeats: int = PROBE_REPEATS, remeasure: bool = False,
                    progress=print) -> dict:
    """`effconv calibrate --quick`: check the arguments, (re-)measure the host's peaks if needed, then probe_host()."""
    check_arguments(threads, repeats)
    threads = threads or default_threads()
    load_device(HOST, threads=threads, remeasure=remeasure)
    return probe_host(threads, repeats, progress)


def _validation(summary: dict, artifacts: int, decoders: int, threads: int, repeats: int, seconds: float) -> str:
    p90 = "max" if summary["p90_is_max"] else "p90"
    return (f"onnxruntime: fitted by the host probe ({artifacts} artifacts of {decoders} small decoders, {seconds:.0f} s, "
            f"{threads} thread{'s' * (threads != 1)}, medians of {repeats} runs); each decoder left out in turn: median "
            f"{summary['median_abs']:.0%}, {p90} {summary['p90_abs']:.0%} error. `effconv calibrate` fits 28 decoders "
            f"and LiteRT's unit too.")
