"""Device profiles: the figures the latency estimate divides by, each with a source and an uncertainty.

Profiles are YAML files in `effconv/device_profiles/` (or a user's file, `--device path.yaml`),
validated like specs. Which unit can run which op is not in them: each unit names the `effconv lint` units
it is, per backend, and the lint rules decide (effconv/profile/legality.py). `host-cpu` is the exception:
its units are this machine's CPU as each runtime drives it (onnxruntime's kernels for `.onnx`, XNNPACK for
`.tflite`/`.pte`); each unit's peak throughput is measured with that runtime's own matrix multiply the first
time it is needed, the bandwidth with a copy, and both are cached, together with the per-runtime calibration
that `effconv calibrate` fits, under `$EFFCONV_CACHE_DIR` (default ~/.cache/effconv). Each cached section records
the effconv version and source digest of the code that made it (`effconv.provenance`); one made by other code is
measured again (peaks) or ignored (a fit: the estimate falls back to the uncalibrated band).
"""

from __future__ import annotations

import json
import math
import os
import time
from importlib import resources
from pathlib import Path
from typing import Callable, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from effconv.errors import EffconvError
from effconv.host import cpu_model, default_threads
from effconv.profile.cost import CATEGORIES, CONV_3D_KEYS
from effconv.profile.fusion import rule_names
from effconv.profile.legality import check_lint_units
from effconv.provenance import produced_by
from effconv.recipe import HOST_DEVICE
from effconv.spec import SAFE_NAME, StrictModel, format_validation_error, read_yaml_mapping

Dtype = Literal["fp32", "fp16", "int8"]
HOST = HOST_DEVICE
CACHE_ENV = "EFFCONV_CACHE_DIR"
CACHE_FILE = "host-cpu.json"
MATMUL_SIZE = 1024
COPY_MIB = 256
MAX_THREADS = 1024
NUMBER = (int, float)
MEASUREMENT_FIELDS = {"peak_fp32_gflops": dict, "bandwidth_gbps": NUMBER, "threads": int, "method": str, "measured_at": str,
                      "produced_by": dict}
CALIBRATION_FIELDS = {"efficiency": dict, "op_overhead_us": NUMBER, "run_overhead_ms": NUMBER, "model_uncertainty": NUMBER,
                      "int8_efficiency": dict, "validation": str, "calibrated_at": str}
# The code whose output a cached fit's numbers are parameters of: the estimator (it multiplies them into per-op
# rooflines; it imports the op costs, the ONNX reader and this module's unit schema) and the readers of the other
# artifacts' graphs. A change there changes what the fitted efficiencies mean, so the fit is redone. Left out on
# purpose: host_fit's fitting and the converters it measures (their digest spans most of effconv, so any edit would
# discard a 30-minute calibration whose parameters still mean the same; a release changes the effconv version anyway).
COST_MODEL_MODULES = ("effconv.profile.estimate", "effconv.profile.fusion", "effconv.profile.tflite_cost", "effconv.profile.mlprogram_cost")
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
EFFICIENCY_KEYS = (*CATEGORIES, *CONV_3D_KEYS)  # ComputeUnit.int8_efficiency
# Ceiling for any figure (GOP/s, GB/s, GB, us, ms): far above real hardware, far below float overflow.
MAX_FIGURE = 1e9


class Figure(StrictModel):
    value: float = Field(gt=0, le=MAX_FIGURE)
    source: str = Field(min_length=3, description="URL or document, 'derived: how', or 'measured: how'")
    uncertainty: float = Field(ge=0, le=10, description="relative: 0.2 means the true value is within +-20%")


class OnChip(StrictModel):
    """An activation buffer beside a compute unit (the Neural Engine's L2, the HTP's VTCM): a tensor no larger than
    `mb` is read and written there, at `bandwidth_gbps`, instead of through DRAM."""

    mb: Figure
    bandwidth_gbps: Figure


class HeldOutBand(StrictModel):
    """The error of this unit's estimates on public measurements the fit did not see (error = estimate / measured - 1):
    a measurement lies within [estimate / (1 + error_high), estimate / (1 + error_low)] when its error is in range."""

    error_low: float = Field(gt=-1, le=0)
    error_high: float = Field(ge=0, le=MAX_FIGURE)
    rows: int = Field(ge=1, description="held-out measurements the range rests on")
    source: str = Field(min_length=3, description="the results file and what was held out")


class RuntimeFit(StrictModel):
    """What holds for estimates of one runtime's artifacts when a unit is that runtime alone (host-cpu): it replaces
    the device's figures when an artifact runs on this unit only (`DeviceProfile.for_backend`)."""

    model_uncertainty: float = Field(gt=0, le=10, description="relative error of estimates on this runtime")
    run_overhead_ms: float = Field(0.0, ge=0, le=MAX_FIGURE, description="fixed cost per inference call in this runtime")
    validation: str = Field(description="how (and whether) estimates on this runtime were checked")


class ComputeUnit(StrictModel):
    kind: Literal["npu", "gpu", "cpu"]
    peak_gops: dict[Dtype, Figure] = Field(description="GFLOP/s for fp32/fp16, GOP/s for int8")
    bandwidth_gbps: Figure | None = Field(None, description="if lower than the device's DRAM bandwidth")
    on_chip: OnChip | None = Field(None, description="memory next to the unit that holds activations: tensors that fit move "
                                   "at its bandwidth instead of DRAM's")
    op_overhead_us: float = Field(0.0, ge=0, le=MAX_FIGURE, description="fixed dispatch cost per op")
    narrow_channels: float = Field(0.0, ge=0, le=MAX_FIGURE, description="conv/matmul output width at which compute efficiency halves (0: off)")
    int8_position_ns: dict[str, float] = Field(default_factory=dict, description="per int8 convolution key (as in "
                                               "int8_efficiency): fixed ns per output position (im2col, requantization) on "
                                               "top of the roofline")
    efficiency: dict[str, float] = Field(default_factory=dict, description="per op category: share of the roofline reached")
    int8_efficiency: dict[str, float] = Field(default_factory=dict, description="per op category: share of the int8 roofline "
                                              "int8 ops reach (a category not listed: `efficiency`); '<conv category> 3d' "
                                              "for 3-D convolutions apart")
    int8_activations: str = Field("", description="the source that this unit computes int8 x int8 (a Core ML W8A8 model "
                                  "runs at its int8 rate); empty: int8 weights only, computed at its float rate (W8A16)")
    held_out_band: HeldOutBand | None = Field(None, description="estimates on this unit alone print this band instead of "
                                              "the figures' uncertainties")
    float_weights_at_run_time: str = Field("", description="the source that this unit decompresses weight-only int8 "
                                           "weights to its float dtype before running (W8A16 moves fp16 weight bytes); "
                                           "empty: the int8 bytes are what it reads")
    runtime_fit: RuntimeFit | None = Field(None, description="host-cpu: this unit is one runtime's kernels, fitted on its own")
    lint_units: dict[str, list[str]] = Field(min_length=1, description="per backend, the units of effconv/legalize/rules/<backend>.yaml "
                                             "this unit is: it runs an op unless those rules rule out all of them")
    fusion: dict[str, str] = Field(default_factory=dict, description="per backend, the fusion rules "
                                   "(effconv/device_profiles/fusion/<name>.yaml) of the runtime that runs it on this unit; "
                                   "a backend not listed: every op is its own kernel")
    note: str = ""

    @field_validator("fusion")
    @classmethod
    def _known_rules(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value.values()) - set(rule_names()))
        if unknown:
            raise ValueError(f"unknown fusion rules {', '.join(unknown)} (use one of {', '.join(rule_names())})")
        return value

    @model_validator(mode="after")
    def _fusion_backends(self) -> ComputeUnit:
        stray = sorted(set(self.fusion) - set(self.lint_units))
        if stray:
            raise ValueError(f"fusion names backend(s) {', '.join(stray)} that lint_units does not")
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_own_legality(cls, data):
        """Profiles written before legality moved to the lint rules get told where it went, not 'unknown key'."""
        removed = sorted({"unsupported_ops", "max_rank", "max_upsample"} & set(data)) if isinstance(data, dict) else []
        if removed:
            raise ValueError(f"{', '.join(removed)}: a unit no longer lists what it cannot run; name its lint units "
                             "(lint_units: {tflite: [npu]}) and the rules in effconv/legalize/rules decide")
        return data

    @field_validator("efficiency", "int8_efficiency")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for category, factor in _known_keys(value).items():
            if not 0 < factor <= 10:
                raise ValueError(f"efficiency for '{category}' must be in (0, 10]")
        return value

    @field_validator("int8_position_ns")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for key, ns in _known_keys(value).items():
            if not 0 <= ns <= MAX_FIGURE:
                raise ValueError(f"int8_position_ns for '{key}' must be in [0, {MAX_FIGURE:g}]")
        return value


def _known_keys(value: dict[str, float]) -> dict[str, float]:
    """`value` if every key is an op category (or '<conv category> 3d'); ValueError naming the first one that is not."""
    unknown = next((key for key in value if key not in EFFICIENCY_KEYS), None)
    if unknown is not None:
        raise ValueError(f"unknown op category '{unknown}' (use one of {', '.join(EFFICIENCY_KEYS)})")
    return value


class Memory(StrictModel):
    ram_gb: Figure
    bandwidth_gbps: Figure
    app_fraction: float = Field(0.5, gt=0, le=1, description="share of RAM one app can use")


class Source(StrictModel):
    title: str
    url: str


class BackendUnits(StrictModel):
    note: str = Field(description="why this backend runs on some units only (which ones: the units whose lint_units name it)")


QNN_UNIT = "qnn"  # the onnx lint unit of onnxruntime's QNN execution provider (legalize/rules/onnx.yaml)


class DeviceProfile(StrictModel):
    name: str = Field(pattern=SAFE_NAME)
    description: str
    soc: str
    backends: list[str] = Field(min_length=1, description="lint backends whose artifacts run here; an artifact of another "
                                "backend (a spec's ONNX graph on an iPhone) is placed as the first")
    backend_units: dict[str, BackendUnits] = Field(default_factory=dict, description="backends that run on some units only")
    memory: Memory
    units: dict[str, ComputeUnit] = Field(min_length=1, description="in placement order: first legal unit runs the op")
    fallback_us: Figure = Field(description="fixed cost each time execution moves between compute units")
    run_overhead_ms: float = Field(0.0, ge=0, le=MAX_FIGURE, description="fixed cost per inference call")
    model_uncertainty: float = Field(gt=0, le=10, description="relative error of the estimate itself")
    validation: str = Field(description="how (and whether) estimates for this device were checked")
    sources: list[Source] = Field(min_length=1)
    measured: dict = Field(default_factory=dict, description="host-cpu only: what was measured, when, how")

    @model_validator(mode="after")
    def _units_are_lint_units(self) -> DeviceProfile:
        check_lint_units(self.name, self.backends, {name: unit.lint_units for name, unit in self.units.items()})
        for backend in self.backend_units:
            if backend not in self.backends:
                raise ValueError(f"backend_units.{backend} must name a listed backend")
        return self

    @property
    def onnx_on_qnn(self) -> bool:
        """Whether this device runs ONNX models through onnxruntime's QNN execution provider (a Snapdragon HTP),
        which compiles only QNN's own QDQ form (backends/onnx/qnn.py)."""
        return any(QNN_UNIT in unit.lint_units.get("onnx", []) for unit in self.units.values())

    @property
    def coreml_scheme(self) -> str:
        """The Core ML int8 scheme this device gains speed from: w8a8 where a unit that runs Core ML computes int8 x
        int8 (A17 Pro and later Neural Engines), else w8a16 (smaller, computed in fp16)."""
        return "w8a8" if any(unit.int8_activations and "coreml" in unit.lint_units for unit in self.units.values()) else "w8a16"

    def for_backend(self, backend: str) -> DeviceProfile:
        """This device as an artifact of `backend` sees it: the units that backend's runtime uses, in order, placed
        by its lint rules (`backends` becomes that one backend). A backend the device does not list is placed as
        the device's first: a spec's ONNX graph on an iPhone runs as the Core ML model it would be converted to."""
        placed = backend if backend in self.backends else self.backends[0]
        units = {name: unit for name, unit in self.units.items() if placed in unit.lint_units}
        update = {"backends": [placed], "units": units}
        fits = [unit.runtime_fit for unit in units.values()]
        if fits and all(fits):
            update |= {"model_uncertainty": max(fit.model_uncertainty for fit in fits),
                       "run_overhead_ms": max(fit.run_overhead_ms for fit in fits),
                       "validation": " ".join(dict.fromkeys(fit.validation for fit in fits))}
        return self.model_copy(update=update)


def profiles_dir():
    return resources.files("effconv") / "device_profiles"


def builtin_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in profiles_dir().iterdir() if p.name.endswith(".yaml"))


def _validate(data: dict, source: str) -> DeviceProfile:
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        error = format_validation_error(exc, source)
        raise EffconvError(error.message, (error.fix or "").replace("README 'Model spec'", "docs/profile.md 'Device profiles'")) from None


def load_device(name_or_path: str | Path, threads: int | None = None, remeasure: bool = False,
                calibrated: bool = True) -> DeviceProfile:
    """A built-in profile by name, or a user's YAML by path. host-cpu is measured (once) and cached,
    and carries the cached calibration unless `calibrated` is False."""
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise EffconvError(f"--threads must be between 1 and {MAX_THREADS}, got {threads}.", f"this machine has {default_threads()} cores.")
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        return _validate(read_yaml_mapping(Path(text), "device profile"), text)
    if text not in builtin_names():
        raise EffconvError(f"unknown device '{text}'.", f"use one of: {', '.join(builtin_names())}, or a path to a profile YAML.")
    path = profiles_dir() / f"{text}.yaml"
    with resources.as_file(path) as real_path:
        data = read_yaml_mapping(real_path, "device profile")
    if text == HOST:
        data = _fill_host(data, threads or default_threads(), remeasure, calibrated)
    return _validate(data, str(path))


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


def _fill_host(data: dict, threads: int, remeasure: bool, calibrated: bool) -> dict:
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
            unit["runtime_fit"] = {key: fit[key] for key in ("model_uncertainty", "run_overhead_ms", "validation")}
            data["measured"].setdefault("calibrated_at", {})[name] = fit["calibrated_at"]
        unit["peak_gops"] = {
            "fp32": {"value": peak, "source": peak_source, "uncertainty": 0.1},
            "fp16": {"value": peak, "source": "derived: these CPU kernels compute fp16 models in fp32", "uncertainty": 0.5},
            "int8": {"value": 2 * peak, "source": "derived: 2x fp32 (int8 dot-product kernels; `effconv calibrate` fits the "
                     "share each op category reaches)", "uncertainty": 0.2 if fit else 0.6},
        }
    return data
