"""host-cpu's figures, measured on this machine: its units are this machine's CPU as each runtime drives it
(onnxruntime's kernels for `.onnx`, XNNPACK for `.tflite`/`.pte`); each unit's peak throughput is measured with that
runtime's own matrix multiply the first time it is needed, the bandwidth with a copy, and both are cached, together
with the per-runtime fits that `effconv calibrate` and the host probe make (effconv.profile.fit), under `$EFFCONV_CACHE_DIR`
(default ~/.cache/effconv). Each cached section records the effconv version and source digest of the code that made
it (`effconv.provenance`); one made by other code is measured again (peaks) or ignored (a fit: the estimate falls
back to the uncalibrated band).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Callable

from effconv.errors import EffconvError
from effconv.host import cpu_model
from effconv.provenance import produced_by

CACHE_ENV = "EFFCONV_CACHE_DIR"
CACHE_FILE = "host-cpu.json"
MATMUL_SIZE = 1024
COPY_MIB = 256
NUMBER = (int, float)
MEASUREMENT_FIELDS = {"peak_fp32_gflops": dict, "bandwidth_gbps": NUMBER, "threads": int, "method": str, "measured_at": str,
                      "produced_by": dict}
CALIBRATION_FIELDS = {"efficiency": dict, "op_overhead_us": NUMBER, "run_overhead_ms": NUMBER, "model_uncertainty": NUMBER,
                      "int8_efficiency": dict, "validation": str, "calibrated_at": str}
# The code whose output a cached fit's numbers are parameters of: the estimator (it multiplies them into per-op
# rooflines; it imports the op costs, the ONNX reader and the device profiles' unit schema), the fusion of ops into
# kernels, and the readers of the other artifacts' graphs. A change there changes what the fitted efficiencies mean,
# so the fit is redone. Left out on purpose: the fit itself (effconv.profile.fit) and the converters it measures
# (their digest spans most of effconv, so any edit would discard a 30-minute calibration whose parameters still mean
# the same; a release changes the effconv version anyway).
COST_MODEL_MODULES = ("effconv.profile.estimate.latency", "effconv.profile.estimate.fusion", "effconv.profile.graph.tflite",
                      "effconv.profile.graph.mlprogram")
# The peaks are measured by this module's code (with the runtimes' own kernels, whose versions are in host_key).
MEASUREMENT_MODULES = (__name__,)
OUTDATED_CALIBRATION = "host calibration from an older cost model ignored; run `effconv calibrate` again"
PEAK_TRIES = 3
# More threads must reach at least this share of fewer threads' peak: two SMT siblings share one core's FMA units, so
# their peak can equal one thread's, and best-of-10 timings still vary by a few percent; lower means the run was
# slowed (by other load) and is not a peak.
FEWER_THREADS_SHARE = 0.95
# host-cpu's units: the backend whose runtime's kernels each one is (`effconv calibrate` fits it on that runtime).
HOST_UNIT_BACKENDS = {"cpu": "onnx", "xnnpack": "tflite"}


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "effconv")


def host_key(threads: int) -> str:
    """The cache entry of this machine at `threads`: the peaks are the runtimes' own, so their versions are part of the
    key (entries measured with other kernels, or before the peaks were the runtimes', are measured and fitted again)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = []
    for package in ("onnxruntime", "ai-edge-litert"):
        try:
            versions.append(f"{package}={version(package)}")
        except PackageNotFoundError:
            versions.append(f"{package}=none")
    return f"{cpu_model()}|cores={os.cpu_count()}|{'|'.join(versions)}|threads={threads}"


def cost_model_version() -> dict[str, str]:
    """What a cached calibration must have been made with to be used (COST_MODEL_MODULES)."""
    return produced_by(*COST_MODEL_MODULES)


def measurement_version() -> dict[str, str]:
    return produced_by(*MEASUREMENT_MODULES)


def read_cache() -> dict:
    path = cache_dir() / CACHE_FILE
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _cached_section(key: str, section: str, fields: dict[str, type | tuple[type, ...]], cache: dict | None = None) -> dict | None:
    """One section of a host's cache entry (in `cache`, default: read now), or None when it is missing or not shaped as
    effconv writes it: a damaged cache is measured again (or left uncalibrated), never trusted."""
    entry = (read_cache() if cache is None else cache).get(key)
    value = entry.get(section) if isinstance(entry, dict) else None
    if isinstance(value, dict) and all(isinstance(value.get(name), kind) for name, kind in fields.items()):
        return value
    return None


def write_cache_entry(key: str, section: str, value: dict) -> None:
    """Update one section of one host entry; written via a temp file so a crash never leaves half a cache."""
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        cache = read_cache()
        entry = cache.get(key)
        cache[key] = (entry if isinstance(entry, dict) else {}) | {section: value}
        temp = directory / f".{CACHE_FILE}.{os.getpid()}.tmp"
        temp.write_text(json.dumps(cache, indent=2), encoding="utf-8")
        os.replace(temp, directory / CACHE_FILE)
    except OSError as exc:
        raise EffconvError(f"cannot write the host-cpu cache in '{directory}': {exc.strerror}.",
                           f"set {CACHE_ENV} to a writable directory.") from None


def store_calibration(threads: int, fits: dict[str, dict]) -> None:
    """Cache the fits of some host-cpu units (by unit name) at `threads`, keeping the other units' fits."""
    key = host_key(threads)
    kept = _cached_section(key, "calibration", {}) or {}
    write_cache_entry(key, "calibration", kept | fits)


def _best_seconds(run, repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def onnxruntime_matmul_seconds(threads: int, size: int = MATMUL_SIZE, repeats: int = 10) -> float:
    """Best time of a square fp32 MatMul in onnxruntime's CPU provider: the kernels (MLAS) whose share of this peak
    host-cpu's efficiencies are. torch.mm, the peak before, ran about 1.6x below onnxruntime's own MatMul on an AMD
    EPYC (47 vs 74 GFLOP/s, 1 thread), so fitted shares of peak reached 2.6 (1.34 with this peak)."""
    import numpy as np
    from onnx import TensorProto, helper

    from effconv.backends.onnx.export import session as onnx_session

    square = [size, size]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, square) for name in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, square)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = onnx_session(model.SerializeToString(), threads)
    feed = {name: np.random.default_rng(0).standard_normal(square, dtype=np.float32) for name in "ab"}
    return _best_seconds(lambda: session.run(None, feed), repeats=repeats)


def xnnpack_fully_connected_seconds(threads: int, size: int = MATMUL_SIZE, repeats: int = 10) -> float | None:
    """Best time of a square fp32 FULLY_CONNECTED in the LiteRT Interpreter (XNNPACK's GEMM), or None when LiteRT is
    not installed. On an AMD EPYC with AVX-512 VNNI it ran 185-214 GFLOP/s against onnxruntime's 171-186 (1 thread):
    each runtime's efficiencies are shares of its own kernels' peak."""
    import numpy as np

    from effconv.backends.tflite import export as tflite_backend

    try:
        runner = tflite_backend.interpreter(tflite_backend.fully_connected_model(size), threads)
    except EffconvError:
        return None
    runner.set_tensor(runner.get_input_details()[0]["index"],
                      np.random.default_rng(0).standard_normal((size, size), dtype=np.float32))
    return _best_seconds(runner.invoke, repeats=repeats)


def _load_average() -> list[float] | None:
    try:
        return [round(load, 2) for load in os.getloadavg()]
    except (OSError, AttributeError):  # no load average on this OS
        return None


def measure_host(threads: int) -> dict:
    """Peak fp32 GFLOP/s of each runtime's square matmul (onnxruntime, XNNPACK) and DRAM GB/s from a large copy, all
    best-of-N with `threads` threads (best, not median: a peak is what the roofline needs; noise only slows runs)."""
    import torch

    gemm_flops = 2 * MATMUL_SIZE**3
    onnxruntime_s = onnxruntime_matmul_seconds(threads)
    xnnpack_s = xnnpack_fully_connected_seconds(threads)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        elements = COPY_MIB * 2**20 // 4
        src = torch.ones(elements)
        dst = torch.empty(elements)
        copy_s = _best_seconds(lambda: dst.copy_(src), repeats=5)
    finally:
        torch.set_num_threads(previous)
    return {
        "peak_fp32_gflops": {"cpu": gemm_flops / onnxruntime_s / 1e9,
                             "xnnpack": gemm_flops / xnnpack_s / 1e9 if xnnpack_s else None},
        "bandwidth_gbps": 2 * elements * 4 / copy_s / 1e9,  # read + write
        "threads": threads,
        "method": (f"onnxruntime MatMul and LiteRT FULLY_CONNECTED (XNNPACK) {MATMUL_SIZE}^2 fp32, best of 10; "
                   f"tensor copy {COPY_MIB} MiB best of 5"),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": _load_average(),  # 1, 5, 15 min: a peak measured under load shows it here
        "produced_by": measurement_version(),
    }


def _valid_measurement(measurement: dict | None) -> bool:
    if not measurement or not 0 < measurement["bandwidth_gbps"] < math.inf:
        return False
    peaks = measurement["peak_fp32_gflops"]
    return (isinstance(peaks.get("cpu"), NUMBER) and 0 < peaks["cpu"] < math.inf
            and (peaks.get("xnnpack") is None or (isinstance(peaks["xnnpack"], NUMBER) and 0 < peaks["xnnpack"] < math.inf)))


def implausible_peaks(peaks_by_threads: dict[int, dict[str, float | None]]) -> list[int]:
    """The thread counts whose peak (of any runtime) is below FEWER_THREADS_SHARE of what fewer threads measured on the
    same host: more threads never make a matmul slower, so such a peak was measured under load."""
    def below(threads: int, unit: str, peak: float | None) -> bool:
        return peak is not None and any(fewer < threads and (other.get(unit) or 0) * FEWER_THREADS_SHARE > peak
                                        for fewer, other in peaks_by_threads.items())

    return sorted(threads for threads, peaks in peaks_by_threads.items()
                  if any(below(threads, unit, peak) for unit, peak in peaks.items()))


def best_of(measurements: list[dict]) -> dict:
    """The highest of each figure over several measurements (each already a best-of-N: noise only slows runs)."""
    peaks = {unit: max((m["peak_fp32_gflops"][unit] for m in measurements if m["peak_fp32_gflops"].get(unit) is not None), default=None)
             for unit in measurements[0]["peak_fp32_gflops"]}
    return measurements[-1] | {"peak_fp32_gflops": peaks, "bandwidth_gbps": max(m["bandwidth_gbps"] for m in measurements),
                               "tries": len(measurements)}


def _current(measurement: dict | None) -> bool:
    return _valid_measurement(measurement) and measurement["produced_by"] == measurement_version()


def _other_thread_peaks(threads: int, cache: dict) -> dict[int, dict]:
    """This host's current cached peaks at other thread counts (same CPU and runtime versions: host_key but threads)."""
    host = host_key(threads).rsplit("|threads=", 1)[0]
    peaks = {}
    for key in cache:
        measurement = _cached_section(key, "measurement", MEASUREMENT_FIELDS, cache) if key.startswith(f"{host}|threads=") else None
        if _current(measurement) and measurement["threads"] != threads:
            peaks[measurement["threads"]] = measurement["peak_fp32_gflops"]
    return peaks


def plausible_measurement(measure: Callable[[], dict], threads: int, others: dict[int, dict]) -> tuple[dict, bool]:
    """Measure up to PEAK_TRIES times until the best so far is plausible next to `others` (peaks at other thread
    counts, implausible_peaks); the best, and whether it is plausible."""
    tries = []
    while len(tries) < PEAK_TRIES:
        tries.append(measure())
        best = best_of(tries)
        if threads not in implausible_peaks(others | {threads: best["peak_fp32_gflops"]}):
            return best, True
    return best, False


def host_measurement(threads: int, remeasure: bool = False) -> dict:
    """The cached peaks at `threads`, unless they were measured by other code or are implausible next to this host's
    other thread counts: then measured again (plausible_measurement). A result still implausible is used but not
    cached, so the next run measures again."""
    key, cache = host_key(threads), read_cache()
    cached = _cached_section(key, "measurement", MEASUREMENT_FIELDS, cache)
    others = _other_thread_peaks(threads, cache)
    if not remeasure and _current(cached) and threads not in implausible_peaks(others | {threads: cached["peak_fp32_gflops"]}):
        return cached
    measurement, plausible = plausible_measurement(lambda: measure_host(threads), threads, others)
    if plausible:
        write_cache_entry(key, "measurement", measurement)
    return measurement


def host_calibration(threads: int) -> tuple[dict[str, dict], list[str]]:
    """`effconv calibrate`'s cached fit of each host-cpu unit (runtime) it calibrated, and the units whose cached fit
    was made with another cost model (or effconv version) and is therefore not used; a damaged one is left out."""
    section = _cached_section(host_key(threads), "calibration", {}) or {}
    fits = {unit: fit for unit, fit in section.items()
            if unit in HOST_UNIT_BACKENDS and isinstance(fit, dict) and all(isinstance(fit.get(n), k) for n, k in CALIBRATION_FIELDS.items())}
    # a fit written before fits recorded their version (no produced_by) was made with an older cost model too
    current = {unit: fit for unit, fit in fits.items() if fit.get("produced_by") == cost_model_version()}
    return current, sorted(fits.keys() - current.keys())


def _ram_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 8.0


def fill_host(data: dict, threads: int, remeasure: bool, calibrated: bool) -> dict:
    """Put this machine's measured figures (and each runtime's calibration, if any) into the host-cpu template."""
    measurement = host_measurement(threads, remeasure)
    load = measurement.get("load_average")
    source = (f"measured: {measurement['method']}, {measurement['threads']} threads, {measurement['measured_at']}"
              + (f", load average {load[0]:g}" if load else ""))
    data["memory"]["bandwidth_gbps"] = {"value": measurement["bandwidth_gbps"], "source": source, "uncertainty": 0.1}
    data["memory"]["ram_gb"] = {"value": _ram_gb(), "source": "measured: os.sysconf physical pages", "uncertainty": 0.0}
    data["soc"] = f"{cpu_model()}, {os.cpu_count()} logical cores ({threads} threads used)"
    data["measured"] = {"key": host_key(threads), **measurement}
    calibration, outdated = host_calibration(threads) if calibrated else ({}, [])
    if outdated:
        data["measured"]["outdated_calibration"] = outdated
    for name, unit in data["units"].items():
        peak, peak_source = measurement["peak_fp32_gflops"].get(name), source
        if peak is None:  # LiteRT not installed: nothing runs on this unit here, its artifacts are still costed
            peak, peak_source = measurement["peak_fp32_gflops"]["cpu"], "derived: onnxruntime's peak (LiteRT is not installed)"
        fit = calibration.get(name)
        if fit:
            unit["efficiency"] = fit["efficiency"]
            unit["int8_efficiency"] = fit["int8_efficiency"]
            unit["op_overhead_us"] = fit["op_overhead_us"]
            unit["narrow_channels"] = fit.get("narrow_channels", 0.0)
            unit["int8_position_ns"] = fit.get("int8_position_ns", {})
            unit["runtime_fit"] = {key: fit[key] for key in ("model_uncertainty", "validation")}
            unit["run_overhead_ms"] = {backend: fit["run_overhead_ms"] for backend in unit["lint_units"]}
            data["measured"].setdefault("calibrated_at", {})[name] = fit["calibrated_at"]
        unit["peak_gops"] = {
            "fp32": {"value": peak, "source": peak_source, "uncertainty": 0.1},
            "fp16": {"value": peak, "source": "derived: these CPU kernels compute fp16 models in fp32", "uncertainty": 0.5},
            "int8": {"value": 2 * peak, "source": "derived: 2x fp32 (int8 dot-product kernels; `effconv calibrate` fits the "
                     "share each op category reaches)", "uncertainty": 0.2 if fit else 0.6},
        }
    return data
