"""Estimator error on host-cpu, per runtime: calibrate on half of a set of decoders, report error on the other half.

Runs `effconv.profile.fit.calibrate.calibrate` (converts 28 small decoders -- teachers of the six families at three sizes and
Turbo-VAED students of five families at two widths -- to ONNX and TFLite, fp32 and int8 (`quantize --calib random`),
measures each in its own runtime: onnxruntime, LiteRT with XNNPACK) and writes benchmarks/results/estimator_error.json.
Targets, for each runtime on its held-out artifacts (fp32 and int8 together, at least 10): median |error| <= 10%,
90th percentile <= 25%.

Beside the calibration set's own held-out half it measures a fresh set (`fresh_models`: the six teachers at another width
and clip size and five students at another width and size, none of which the cost model or the fit were ever tuned
against; each session that changes the cost model picks a new one, the old one joining the calibration set) and
reports the committed fit's error on it: the held-out half was looked at while the cost model was developed, the fresh
set was not. The targets are checked on both.

The JSON records the CPU, its int8 instructions, the runtimes' measured peaks, the thread count and the load average
before and after (the machine may be shared: medians are used throughout).

Usage: PYTHONPATH=. python benchmarks/estimator_error.py [--threads 1] [--repeats 10] [--records FILE]
The fit goes to a throw-away cache dir unless EFFCONV_CACHE_DIR is set (`effconv calibrate` keeps it). `--records FILE`
keeps the measured timings (pickle) and the artifacts (folder FILE.artifacts); when FILE exists, the run costs those
artifacts again and refits instead of converting and measuring (for changes to the cost model or the fit; the JSON
then says so).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_MEDIAN, TARGET_P90, MIN_HELD_OUT = 0.10, 0.25, 10
# The calibration set's teachers: widths x1 at 32x48 and 48x80, x2 at 64x96; its students: widths 32 and 64 at 64x96.
# Fresh sets so far: teachers x1 at 48x80 and students w48 at 48x128 (2026-12-02, since in the calibration set).
FRESH_TEACHER_SCALE, FRESH_TEACHER_CLIP = 2, (48, 80)
FRESH_STUDENT_WIDTH, FRESH_STUDENT_SIZE = 40, (80, 80)
FRESH_PREFIX = "fresh-"


def fresh_models():
    from effconv.profile.fit.model_set import STUDENT_FAMILIES, TEACHERS, student, teacher

    teachers = [teacher(f"{FRESH_PREFIX}{family}-x{FRESH_TEACHER_SCALE}-{'x'.join(map(str, FRESH_TEACHER_CLIP))}", True,
                        family, FRESH_TEACHER_SCALE, (clip[0], *FRESH_TEACHER_CLIP)) for family, (_, _, clip) in TEACHERS.items()]
    students = [student(f"{FRESH_PREFIX}{family}-student-w{FRESH_STUDENT_WIDTH}", True, family, FRESH_STUDENT_WIDTH,
                        FRESH_STUDENT_SIZE) for family in STUDENT_FAMILIES]
    return teachers + students


def meets(summary: dict) -> bool:
    return summary.get("n", 0) >= MIN_HELD_OUT and summary["median_abs"] <= TARGET_MEDIAN and summary["p90_abs"] <= TARGET_P90


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--results", type=Path, default=RESULTS / "estimator_error.json")
    parser.add_argument("--records", type=Path, help="save the measurements here, or refit those saved in it")
    args = parser.parse_args()
    os.environ.setdefault("EFFCONV_CACHE_DIR", tempfile.mkdtemp(prefix="effconv-bench-cache-"))

    from effconv.host import cpu_int8_features, cpu_model
    from effconv.profile.device.host_cpu import host_key, measurement_version, write_cache_entry
    from effconv.profile.device.profiles import HOST, load_device
    from effconv.profile.fit.calibrate import errors, fit_and_store, summarize
    from effconv.profile.fit.fitting import with_fit
    from effconv.profile.fit.measure_set import measure_set
    from effconv.profile.fit.model_set import calibration_set
    from effconv.profile.graph.targets import OWN_GRAPH

    started, load_before = time.perf_counter(), os.getloadavg()
    refit = args.records is not None and args.records.exists()
    if refit:
        saved = pickle.loads(args.records.read_bytes())
        measured_host, records = saved["host"], saved["records"]
        for record in records:
            if Path(record.get("path", "")).is_file():
                record["cost"] = OWN_GRAPH[record["backend"]][1](Path(record["path"]))
        # the peaks the timings were taken with, not today's
        write_cache_entry(host_key(args.threads), "measurement",
                          {k: v for k, v in measured_host.items() if k != "key"} | {"produced_by": measurement_version()})
    else:
        measured_host = load_device(HOST, threads=args.threads, remeasure=True, calibrated=False).measured
        keep = args.records.with_suffix(".artifacts") if args.records is not None else None
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
        records = measure_set(calibration_set() + fresh_models(), args.threads, args.repeats, progress=lambda m: print(m, file=sys.stderr, flush=True),
                              keep=keep)
        if args.records is not None:
            args.records.write_bytes(pickle.dumps({"host": measured_host, "records": records}))
    fresh = [r for r in records if r["name"].startswith(FRESH_PREFIX)]
    result = fit_and_store([r for r in records if not r["name"].startswith(FRESH_PREFIX)], args.threads, args.repeats)
    host = load_device(HOST, threads=args.threads, calibrated=False)
    met = {}
    for backend, fitted in result["runtimes"].items():
        rows = errors([r for r in fresh if r["backend"] == backend], with_fit(host.for_backend(backend), fitted["fit"]))
        fitted["fresh"] = {"rows": rows, **{f"fresh_{dtype}": summarize([r for r in rows if r["dtype"] == dtype])
                                            for dtype in ("fp32", "int8")}, "all": summarize(rows)}
        met[backend] = {"held_out": bool(meets(fitted["after"]["held_out"])), "fresh": bool(meets(fitted["fresh"]["all"]))}
    result |= {
        "host": {"cpu": cpu_model(), "int8_features": cpu_int8_features(), **measured_host,
                 "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "refit_of_saved_measurements": refit,
        "targets": {"median_abs": TARGET_MEDIAN, "p90_abs": TARGET_P90, "min_held_out": MIN_HELD_OUT},
        "met": met,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    for backend, fitted in result["runtimes"].items():
        for label in ("before", "after"):
            h = fitted[label]["held_out"]
            print(f"{backend} held-out {label}: n={h['n']} median {h['median_abs']:.1%} p90 {h['p90_abs']:.1%} max {h['max_abs']:.1%}")
        h = fitted["fresh"]["all"]
        if h.get("n"):
            print(f"{backend} fresh: n={h['n']} median {h['median_abs']:.1%} p90 {h['p90_abs']:.1%} max {h['max_abs']:.1%}")
    print(f"targets met: {met} ({result['seconds']} s)")
    return 0 if all(all(m.values()) for m in met.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
