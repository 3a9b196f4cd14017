"""Can the host probe's onnxruntime fit stand in for a LiteRT (XNNPACK) fit on host-cpu?

The probe (`effconv.profile.fit.probe.probe_host`) fits onnxruntime's unit only: converting its decoders to `.tflite`
takes longer than the probe. This measures what its fit would be worth on LiteRT's unit: runs the probe into a
throw-away cache, then converts every other decoder of `effconv calibrate`'s set and of estimator_error.py's fresh
set to `.tflite` (fp32 and int8, as calibrate makes them), measures each in the LiteRT Interpreter, and costs it on
the `xnnpack` unit three ways:
- uncalibrated: host-cpu.yaml's default shares (what `effconv profile X.tflite` prints today without calibrate);
- own_peak: the probe's fit as is (each category reaching the same share of XNNPACK's measured peak as of onnxruntime's);
- onnxruntime_speed: the probe's efficiencies scaled by onnxruntime's peak over XNNPACK's (each category as fast as
  in onnxruntime).
Identical networks count once. Targets as for the probe: median <= 15%, 90th percentile <= 35%.

Usage: PYTHONPATH=. python benchmarks/host_probe_litert.py [--threads 1] [--repeats 5]
Writes benchmarks/results/host_probe_litert.json (with the CPU, its int8 instructions and the load average before and
after). Takes about 25 minutes on 2 cores; run it with the machine otherwise idle.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from host_probe import TARGET_MEDIAN, TARGET_P90, arguments, host, inside_band, progress, unseen  # the sibling benchmark

RESULTS = Path(__file__).resolve().parent / "results" / "host_probe_litert.json"
BACKEND = "tflite"
SUMMARIES = {"summary": None, "summary_fp32": "fp32", "summary_int8": "int8"}  # JSON key -> the dtype it covers (None: all)


def scaled(fit: dict, factor: float) -> dict:
    """The fit with every efficiency (fp32 and int8) times `factor`."""
    return fit | {"efficiency": {k: v * factor for k, v in fit["efficiency"].items()},
                  "int8_efficiency": {k: v * factor for k, v in fit.get("int8_efficiency", {}).items()}}


def main() -> int:
    args = arguments(__doc__.splitlines()[0], RESULTS)
    from effconv.profile.device.profiles import HOST, load_device
    from effconv.profile.fit.calibrate import errors, summarize
    from effconv.profile.fit.fitting import with_fit
    from effconv.profile.fit.probe import PROBED_UNIT, probe_host

    load_before = os.getloadavg()
    host_cpu = load_device(HOST, threads=args.threads, calibrated=False)
    litert = host_cpu.for_backend(BACKEND)
    probe = probe_host(args.threads, args.repeats, progress)
    peaks = {name: unit.peak_gops["fp32"].value for name, unit in host_cpu.units.items()}
    sets = unseen(BACKEND, args.threads, args.repeats)
    (xnnpack,) = litert.units
    fits = {"uncalibrated": litert, "own_peak": with_fit(litert, probe["fit"]),
            "onnxruntime_speed": with_fit(litert, scaled(probe["fit"], peaks[PROBED_UNIT] / peaks[xnnpack]))}
    judged = {}
    for name, records in sets.items():
        rows = {fit_name: errors(records, device) for fit_name, device in fits.items()}
        judged[name] = {key: {fit_name: summarize([r for r in found if dtype in (None, r["dtype"])]) for fit_name, found in rows.items()}
                        for key, dtype in SUMMARIES.items()}
        judged[name] |= {"inside_band_uncalibrated": inside_band(records, litert), "rows": rows}
    result = {
        "probe_seconds": round(probe["seconds"], 1),
        "probe_fit": probe["fit"],
        "peaks_gflops": peaks,
        **judged,
        "targets": {"median_abs": TARGET_MEDIAN, "p90_abs": TARGET_P90},
        "threads": args.threads,
        "repeats": args.repeats,
        "host": host(load_before),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps({name: {key: found[key] for key in SUMMARIES} for name, found in judged.items()},
                     indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
