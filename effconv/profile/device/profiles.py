"""Device profiles: the figures the latency estimate divides by, each with a source and an uncertainty.

Profiles are YAML files in `effconv/device_profiles/` (or a user's file, `--device path.yaml`),
validated like specs. Which unit can run which op is not in them: each unit names the `effconv lint` units
it is, per backend, and the lint rules decide (legality.py). `host-cpu` is the exception: its template's figures
are filled in with this machine's, measured and cached, with the fit of `effconv calibrate` (host_cpu.py).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from effconv.errors import EffconvError
from effconv.host import default_threads
from effconv.profile.device.fusion_rules import rule_names
from effconv.profile.device.host_cpu import fill_host
from effconv.profile.device.legality import check_lint_units
from effconv.profile.graph.costs import CATEGORIES, CONV_3D_KEYS
from effconv.recipe import HOST_DEVICE
from effconv.spec import SAFE_NAME, StrictModel, format_validation_error, read_yaml_mapping

Dtype = Literal["fp32", "fp16", "int8"]
HOST = HOST_DEVICE
MAX_THREADS = 1024
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
    the device's figures when an artifact runs on this unit only (`DeviceProfile.for_backend`); the runtime's per-call
    cost is the unit's `run_overhead_ms`, as on any unit."""

    model_uncertainty: float = Field(gt=0, le=10, description="relative error of estimates on this runtime")
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
    run_overhead_ms: dict[str, float] = Field(default_factory=dict, description="per backend: the fixed cost per inference "
                                              "call of that backend's runtime when this unit is the first it uses (replaces "
                                              "the device's run_overhead_ms)")
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
    def _backends_in_lint_units(self) -> ComputeUnit:
        for field in ("fusion", "run_overhead_ms"):
            stray = sorted(set(getattr(self, field)) - set(self.lint_units))
            if stray:
                raise ValueError(f"{field} names backend(s) {', '.join(stray)} that lint_units does not")
        if any(not 0 <= ms <= MAX_FIGURE for ms in self.run_overhead_ms.values()):
            raise ValueError(f"run_overhead_ms must be in [0, {MAX_FIGURE:g}]")
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
        the device's first: a spec's ONNX graph on an iPhone runs as the Core ML model it would be converted to. The
        per-call cost is the first unit's for that backend's runtime where it has one."""
        placed = backend if backend in self.backends else self.backends[0]
        units = {name: unit for name, unit in self.units.items() if placed in unit.lint_units}
        update = {"backends": [placed], "units": units}
        first = next(iter(units.values()), None)
        if first is not None and placed in first.run_overhead_ms:
            update["run_overhead_ms"] = first.run_overhead_ms[placed]
        fits = [unit.runtime_fit for unit in units.values()]
        if fits and all(fits):
            update |= {"model_uncertainty": max(fit.model_uncertainty for fit in fits),
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
        data = fill_host(data, threads or default_threads(), remeasure, calibrated)
    return _validate(data, str(path))
