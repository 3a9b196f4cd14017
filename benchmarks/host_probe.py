"""Does the one-minute host probe stand in for `effconv calibrate` on host-cpu's onnxruntime unit?

Runs the probe exactly as `effconv profile --device host-cpu` runs it on first use (`effconv.profile.fit.probe.probe_host`:
seven small decoders converted to ONNX, fp32 and int8, measured, fitted, each left out in turn for the band; its seconds
are what a user waits, conversions included), into a throw-away cache. Then measures, in onnxruntime, every decoder
the probe did not see, in two sets (identical networks once: the Hunyuan and Wan 2.1 students are one network):
- held-out: the rest of `effconv calibrate`'s 28 decoders (the probe's seven were chosen while looking at these);
- fresh: benchmarks/estimator_error.py's fresh set (other widths and clip sizes, never looked at while the probe or the
  cost model were tuned), the honest test.
For each set: the error of the probe's fit and of the uncalibrated figures, and the share of artifacts inside the band `effconv profile` prints with the probe's fit. Targets for host-cpu after the probe
only: median <= 15%, 90th percentile <= 35% on both sets; probe <= 90 s.

Usage: PYTHONPATH=. python benchmarks/host_probe.py [--threads 1] [--repeats 5]
Writes benchmarks/results/host_probe.json (with the CPU, its int8 instructions and the load average before and
after). Takes about 12 minutes on 2 cores; run it with the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from estimator_error import FRESH_PREFIX, fresh_models  # the sibling benchmark (its folder is on sys.path)

RESULTS = Path(__file__).resolve().parent / "results" / "host_probe.json"
TARGET_MEDIAN, TARGET_P90, TARGET_SECONDS = 0.15, 0.35, 90


def distinct(records: list[dict]) -> list[dict]:
    """The records of distinct networks: one per network signature and dtype, the first kept."""
    seen, kept = set(), []
    for record in records:
        key = (record["cost"].network_signature, record["dtype"])
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept


def inside_band(records: list[dict], device) -> float:
    """The share of records whose measured median lies inside the band the estimate prints on `device`."""
    from effconv.profile.estimate.latency import estimate_cost

    inside = 0
    for record in records:
        estimate = estimate_cost(record["cost"], device)
        inside += estimate.low_ms <= record["wall"]["median_ms"] <= estimate.high_ms
    return inside / len(records)


def judge(records: list[dict], fits: dict, banded) -> dict:
    from effconv.profile.fit.calibrate import errors, summarize

    rows = {name: errors(records, fit) for name, fit in fits.items()}
    return {"summary": {name: summarize(found) for name, found in rows.items()}, "inside_band": inside_band(records, banded),
            "rows": rows["probe"]}


def arguments(description: str, results: Path) -> argparse.Namespace:
    """The scripts' options; the probe's fit goes to a throw-away cache unless EFFCONV_CACHE_DIR is set."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=results)
    args = parser.parse_args()
    os.environ.setdefault("EFFCONV_CACHE_DIR", tempfile.mkdtemp(prefix="effconv-host-probe-"))
    return args


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def unseen(backend: str, threads: int, repeats: int) -> dict[str, list[dict]]:
    """The decoders the probe did not see, converted to `backend` and measured in its runtime: the held-out set (the
    rest of calibrate's) and the fresh set, each with identical networks once."""
    from effconv.profile.fit.measure_set import measure_set
    from effconv.profile.fit.model_set import calibration_set
    from effconv.profile.fit.probe import PROBE_MODELS

    others = [model for model in calibration_set() if model.name not in PROBE_MODELS]
    measured = measure_set(others + fresh_models(), threads, repeats, backends=(backend,), progress=progress)
    fresh = [record["name"].startswith(FRESH_PREFIX) for record in measured]
    return {"held_out": distinct([r for r, is_fresh in zip(measured, fresh) if not is_fresh]),
            "fresh": distinct([r for r, is_fresh in zip(measured, fresh) if is_fresh])}


def host(load_before: tuple[float, ...]) -> dict:
    from effconv.host import cpu_int8_features, cpu_model

    return {"cpu": cpu_model(), "int8_features": cpu_int8_features(), "load_average_before": load_before,
            "load_average_after": os.getloadavg()}


def main() -> int:
    args = arguments(__doc__.splitlines()[0], RESULTS)
    from effconv.profile.device.profiles import HOST, load_device
    from effconv.profile.fit.probe import PROBE_BACKEND, PROBE_MODELS, probe_host

    load_before = os.getloadavg()
    uncalibrated = load_device(HOST, threads=args.threads, calibrated=False).for_backend(PROBE_BACKEND)
    probe = probe_host(args.threads, args.repeats, progress)
    probed = load_device(HOST, threads=args.threads).for_backend(PROBE_BACKEND)
    sets = unseen(PROBE_BACKEND, args.threads, args.repeats)
    fits = {"uncalibrated": uncalibrated, "probe": probed}
    judged = {name: judge(records, fits, probed) for name, records in sets.items()}
    met = {name: {"median_abs": bool(found["summary"]["probe"]["median_abs"] <= TARGET_MEDIAN),
                  "p90_abs": bool(found["summary"]["probe"]["p90_abs"] <= TARGET_P90)} for name, found in judged.items()}
    result = {
        "probe_models": list(PROBE_MODELS),
        "probe_seconds": round(probe["seconds"], 1),
        "fit": probe["fit"],
        "left_out": probe["left_out"],
        "band": {"model_uncertainty": probed.model_uncertainty, "validation": probed.validation},
        **judged,
        "targets": {"median_abs": TARGET_MEDIAN, "p90_abs": TARGET_P90, "probe_seconds": TARGET_SECONDS},
        "met": met | {"probe_seconds": probe["seconds"] <= TARGET_SECONDS},
        "threads": args.threads,
        "repeats": args.repeats,
        "host": host(load_before),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps({"probe_seconds": result["probe_seconds"], "left_out": {k: v for k, v in probe["left_out"].items() if k != "rows"},
                      **{name: {**found["summary"], "inside_band": found["inside_band"]} for name, found in judged.items()},
                      "met": result["met"]}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
