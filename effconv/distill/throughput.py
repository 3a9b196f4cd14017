"""Where a distillation's time goes: seconds per phase (waiting for data, teacher, student forward/backward,
optimizer), steps/s and peak memory, for distill.json and the end-of-run summary."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections import defaultdict

import torch

PHASES = ("data", "teacher", "student", "optimizer")


class PhaseClock:
    """Wall time per phase. On CUDA each phase boundary synchronizes, so kernels are charged to the phase that
    launched them rather than to whichever phase next waits for the GPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name: str):
        self._sync()
        started = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - started


def peak_host_rss_mb() -> float:
    """This process's peak resident memory (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def throughput(clock: PhaseClock, wall: float, steps: int, workers: int) -> dict:
    counted = sum(clock.seconds.values())
    seconds = {name: round(clock.seconds.get(name, 0.0), 3) for name in PHASES}
    seconds["other"] = round(max(0.0, wall - counted), 3)
    report = {
        "steps_per_second": round(steps / wall, 4) if wall > 0 and steps else None,
        "phase_seconds": seconds,
        "phase_share": {name: round(value / wall, 4) for name, value in seconds.items()} if wall > 0 else {},
        "data_workers": workers,
        "peak_host_rss_mb": peak_host_rss_mb(),
    }
    if clock.device.type == "cuda":
        report["peak_device_memory_mb"] = round(torch.cuda.max_memory_allocated(clock.device) / (1 << 20), 1)
    return report
