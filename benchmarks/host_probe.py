"""Can a one-minute probe stand in for `effconv calibrate` on host-cpu's onnxruntime unit?

The probe is the calibration procedure on seven of its 28 decoders (PROBE: the tiniest teacher of each of the six
families, whose op mixes differ, and the tiniest Turbo-VAED student): convert them to ONNX, fp32 and int8, as `effconv calibrate`
does; time their nodes with onnxruntime's profiler and their wall clock; fit onnxruntime's unit on them alone
(`fit.fitting.fit_runtime`: the per-node kernel fit, then the wall fit pulled towards it). Its error is then measured on
every other calibration decoder (identical networks once: the Hunyuan and Wan 2.1 students are one network), against
the uncalibrated figures and against the kernel fit alone. The probe's seconds are what a user would wait (conversion
included); the targets for host-cpu after the probe only are: median <= 15%, 90th percentile <=
35%, probe <= 90 s. LiteRT is not probed: its conversions alone take longer than the budget.

Usage: PYTHONPATH=. python benchmarks/host_probe.py [--threads 1] [--repeats 5]
Writes benchmarks/results/host_probe.json (with the CPU, its int8 instructions and the load average before and
after). Takes about 8 minutes on 2 cores; run it with the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "host_probe.json"
PROBE = ("hunyuan-tiny", "cogvideox-tiny", "ltx-tiny", "mochi-tiny", "wan21-tiny", "wan22-tiny", "cogvideox-student-w32")
TARGET_MEDIAN, TARGET_P90, TARGET_SECONDS = 0.15, 0.35, 90


def distinct(records: list[dict]) -> list[dict]:
    """The records of distinct networks: one per cost (node count, FLOPs) and dtype, the first kept."""
    seen, kept = set(), []
    for record in records:
        key = (len(record["cost"].nodes), sum(node.flops for node in record["cost"].nodes), record["dtype"])
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from effconv.host import cpu_int8_features, cpu_model
    from effconv.profile.device.profiles import HOST, load_device
    from effconv.profile.fit.calibrate import errors, summarize
    from effconv.profile.fit.fitting import fit_runtime, kernel_fit, with_fit
    from effconv.profile.fit.measure_set import measure_set
    from effconv.profile.fit.model_set import calibration_set

    load_before = os.getloadavg()
    device = load_device(HOST, threads=args.threads, calibrated=False).for_backend("onnx")
    models = calibration_set()
    probe_models = [dataclasses.replace(model, held_out=False) for model in models if model.name in PROBE]
    others = [dataclasses.replace(model, held_out=True) for model in models if model.name not in PROBE]
    started = time.perf_counter()
    probe = measure_set(probe_models, args.threads, args.repeats, backends=("onnx",))
    fitted = fit_runtime(probe, device, None)
    probe_seconds = time.perf_counter() - started
    held_out = distinct(measure_set(others, args.threads, args.repeats, backends=("onnx",)))
    fits = {"uncalibrated": device, "kernel_fit_only": with_fit(device, kernel_fit(probe, device)), "probe": with_fit(device, fitted)}
    rows = {name: errors(held_out, fit) for name, fit in fits.items()}
    summaries = {name: summarize(found) for name, found in rows.items()}
    probe_summary = summaries["probe"]
    result = {
        "probe_models": list(PROBE),
        "probe_seconds": round(probe_seconds, 1),
        "fit": fitted,
        "held_out": summaries,
        "rows": rows,
        "targets": {"median_abs": TARGET_MEDIAN, "p90_abs": TARGET_P90, "probe_seconds": TARGET_SECONDS},
        "met": {"median_abs": bool(probe_summary["median_abs"] <= TARGET_MEDIAN),
                "p90_abs": bool(probe_summary["p90_abs"] <= TARGET_P90), "probe_seconds": probe_seconds <= TARGET_SECONDS},
        "threads": args.threads,
        "repeats": args.repeats,
        "host": {"cpu": cpu_model(), "int8_features": cpu_int8_features(), "load_average_before": load_before,
                 "load_average_after": os.getloadavg()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps({"probe_seconds": result["probe_seconds"], "held_out": summaries, "met": result["met"]}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
