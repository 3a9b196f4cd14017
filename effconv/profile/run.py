"""The profile stage: resolve the model, estimate it on a device, optionally measure it here, judge a budget."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from effconv.errors import EffconvError
from effconv.profile.graph.costs import DTYPE_BYTES
from effconv.host import default_threads
from effconv.backends import registry
from effconv.profile.device.host_cpu import HOST_UNIT_BACKENDS
from effconv.profile.device.profiles import HOST, DeviceProfile, load_device
from effconv.profile.fit.probe import PROBED_UNIT, needs_probe, probe_host
from effconv.profile.estimate.latency import Estimate, Kernel, estimate_cost
from effconv.profile.graph.targets import ProfileInput, resolve
from effconv.profile.measure import measure


class BudgetMissed(EffconvError):
    """The estimate (or measurement) is over the latency budget: exit 1, after the result is printed."""

    exit_code = 1


@dataclass
class ProfileResult:
    source: ProfileInput
    device: DeviceProfile
    estimate: Estimate
    threads: int | None
    measured: dict | None
    budget_from: str | None
    unfused: Estimate | None = None  # every op its own kernel: what fusion saved (None where no unit fuses)

    @property
    def judged_ms(self) -> float:
        """What the budget is judged on: the measurement when there is one, else the estimate."""
        return self.measured["median_ms"] if self.measured else self.estimate.total_ms

    @property
    def passed(self) -> bool | None:
        limit = self.estimate.budget_ms
        return None if limit is None else self.judged_ms <= limit

    @property
    def rel_error(self) -> float | None:
        if not self.measured:
            return None
        return (self.estimate.total_ms - self.measured["median_ms"]) / self.measured["median_ms"]

    def to_dict(self, top: int = 10) -> dict:
        est = self.estimate
        kernels = est.kernels()
        return {
            "model": self.source.name,
            "source": self.source.how,
            "device": self.device.name,
            "device_description": self.device.description,
            "dtype": est.dtype,
            "dtypes": est.dtypes,
            "latency_ms": {"estimate": est.total_ms, "low": est.low_ms, "high": est.high_ms, "uncertainty": est.uncertainty,
                           "band_source": est.band_source or "the profile's figure uncertainties"},
            "frames": est.frames,
            "fps": {"estimate": est.fps, "low": 1000 * est.frames / est.high_ms, "high": 1000 * est.frames / est.low_ms},
            "gflops": est.flops / 1e9,
            "memory": {"weights_mb": est.weight_bytes / 1e6, "peak_activations_mb": est.peak_activation_bytes / 1e6,
                       "total_mb": est.memory_bytes / 1e6, "usable_ram_mb": est.usable_ram_bytes / 1e6, "fits": est.fits,
                       "chunk_latent_frames": est.chunk_latent_frames, "chunk_frames": self.chunk_frames},
            "budget_ms": est.budget_ms,
            "budget_from": self.budget_from,
            "passed": self.passed,
            "judged_on": "measured" if self.measured else "estimate",
            "by_category_ms": est.by("category"),
            "by_unit_ms": est.by("unit"),
            "fallbacks": est.fallbacks(),
            "notes": est.notes,
            "fusion": self.fusion_summary(kernels),
            "top_kernels": [_kernel_row(kernel) for kernel in kernels[:top]],
            "measured": self.measured,
            "rel_error": self.rel_error,
            "validation": self.device.validation,
            "fitted_runtime": fitted_runtime(self.device),
        }

    def fusion_summary(self, kernels: list[Kernel]) -> dict:
        """Which rules fused what (`kernels`: the estimate's), and the estimate before fusion (every op its own kernel,
        as the graph stores it)."""
        est = self.estimate
        kernels = [kernel for kernel in kernels if kernel.root.node.category != "view"]
        summary = {"rules": est.fusion, "ops": sum(op.node.category != "view" for op in est.ops), "kernels": len(kernels),
                   "fused_ops": sum(len(kernel.fused) for kernel in kernels),
                   "in_place_ops": sum(op.node.category != "view" and op.node.kernel == "" for op in est.ops),
                   "views_dispatched": sum(op.node.category == "view" and op.node.dispatched for op in est.ops)}
        if self.unfused is not None:
            summary |= {"unfused_ms": self.unfused.total_ms, "unfused_by_category_ms": self.unfused.by("category")}
        return summary

    @property
    def chunk_frames(self) -> int | None:
        """The suggested chunk in pixel frames (a causal VAE decodes 1 + s_t * (k - 1) frames from k latents)."""
        k = self.estimate.chunk_latent_frames
        comp = self.source.compression
        if k is None or k < 1 or not comp:
            return None
        return (1 if comp["causal"] else 0) + comp["temporal"] * (k - (1 if comp["causal"] else 0))


def _kernel_row(kernel: Kernel) -> dict:
    root = kernel.root
    return {"name": root.node.name, "kind": root.node.kind, "fused": [op.node.kind for op in kernel.fused],
            "fused_ops": [op.node.name for op in kernel.fused], "unit": root.unit, "dtype": root.dtype,
            "gflops": sum(op.node.flops for op in kernel.ops) / 1e9, "mb": sum(op.node.bytes for op in kernel.ops) / 1e6,
            "ms": kernel.ms, "bound": root.bound, "handoff_ms": sum(op.handoff_ms for op in kernel.ops)}


def check_budget_args(budget_ms: float | None, fps: float | None) -> None:
    if budget_ms is not None and fps is not None:
        raise EffconvError("--budget-ms and --fps are mutually exclusive.", "give one of them.")
    for flag, value in (("--budget-ms", budget_ms), ("--fps", fps)):
        if value is not None and not 0 < value < math.inf:
            raise EffconvError(f"{flag} must be a positive finite number, got {value}.", f"pass {flag} > 0.")


def budget(budget_ms: float | None, fps: float | None, frames: int) -> tuple[float | None, str | None]:
    """The latency budget in ms for one decode call of `frames` video frames, and where it came from."""
    if fps is not None:
        return 1000.0 * frames / fps, f"{fps:g} FPS x {frames} frames"
    return budget_ms, ("--budget-ms" if budget_ms is not None else None)


def run(target: Path, device_name: str, resolution: str | None = None, frames: int | None = None,
        dtype: str | None = None, budget_ms: float | None = None, fps: float | None = None,
        do_measure: bool = False, threads: int | None = None, repeats: int = 10,
        allow_import: bool = False, probe: bool = True, progress=print) -> ProfileResult:
    """Estimate `target` on `device_name` (measuring it here too with `do_measure`). On host-cpu, an artifact costed
    on onnxruntime's unit with no current fit for it first runs the host probe (fit.probe: about a minute, cached),
    unless `probe` is False or $EFFCONV_HOST_PROBE is `off`; `progress` gets its lines."""
    check_budget_args(budget_ms, fps)
    if dtype is not None and dtype not in DTYPE_BYTES:
        raise EffconvError(f"unknown --dtype '{dtype}'.", f"use one of: {', '.join(DTYPE_BYTES)}.")
    if do_measure and device_name != HOST:
        raise EffconvError(f"--measure runs the model on this machine, not on '{device_name}'.", f"use --device {HOST}.")
    threads = default_threads() if threads is None else threads
    device = load_device(device_name, threads=threads)
    with tempfile.TemporaryDirectory(prefix="effconv-profile-") as workdir:
        source = resolve(target, Path(workdir), resolution, frames, allow_import)
        device = device.for_backend(source.backend)
        if probe and device.name == HOST and list(device.units) == [PROBED_UNIT] and needs_probe(threads):
            probe_host(threads, progress=progress)
            device = load_device(device_name, threads=threads).for_backend(source.backend)
        cost = source.cost.forced(dtype) if dtype else source.cost
        result_estimate = estimate_cost(cost, device)
        unfused = estimate_cost(cost, device, fused=False) if result_estimate.fusion else None
        measured = _measured(source, threads, repeats) if do_measure else None
    if source.backend in device.backend_units:
        result_estimate.notes.append(f"{source.backend} on {device.name}: {device.backend_units[source.backend].note}")
    fitted = fitted_runtime(device)
    if measured and measured["runtime"] != fitted:
        result_estimate.notes.append(f"host-cpu's {next(iter(device.units))} unit is fitted to {fitted}; "
                                     f"{measured['runtime']} runs other code around the same kernels, so expect the estimate to differ")
    limit, limit_from = budget(budget_ms, fps, result_estimate.frames)
    result_estimate.budget_ms = limit
    host_threads = threads if device.name == HOST else None
    return ProfileResult(source, device, result_estimate, host_threads, measured, limit_from, unfused)


def fitted_runtime(device: DeviceProfile) -> str | None:
    """On host-cpu narrowed to one artifact's backend: the runtime whose kernels its unit models (and `effconv
    calibrate` fits it on)."""
    if device.name != HOST or len(device.units) != 1:
        return None
    return registry.get(HOST_UNIT_BACKENDS[next(iter(device.units))]).runtime


def _measured(source: ProfileInput, threads: int, repeats: int) -> dict:
    if source.measured_path is None:
        raise EffconvError(f"cannot --measure: {source.not_measurable}.",
                           "drop --resolution/--frames, or convert (and quantize) the spec at that size and profile that artifact.")
    return measure(source.measured_path, source.input_shapes, threads, repeats=repeats)


def check_budget(result: ProfileResult) -> None:
    if result.passed is False:
        what = "measured" if result.measured else "estimated"
        raise BudgetMissed(
            f"{what} {result.judged_ms:.1f} ms is over the budget of {result.estimate.budget_ms:.1f} ms on {result.device.name}.",
            "shrink the model (fewer/narrower blocks), lower --resolution, quantize, or relax the budget.",
        )
