"""What every quantize backend checks about its input artifact, how it counts artifact size, and how it times
the float and the int8 artifact against each other."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from effconv.artifacts import Manifest
from effconv.errors import EffconvError


def check_artifact(artifact: Path, manifest: Manifest, backend: str, suffix: str) -> None:
    """The artifact exists, has the backend's suffix, and its manifest says it was made for this backend."""
    artifact = Path(artifact)
    if artifact.suffix != suffix:
        raise EffconvError(f"'{artifact}' is not a {suffix} file.", f"pass the {suffix} that `effconv convert --to {backend}` wrote.")
    if not artifact.exists():
        raise EffconvError(f"'{artifact}' not found.", f"pass the {suffix} that `effconv convert --to {backend}` wrote.")
    if manifest.backend != backend:
        raise EffconvError(
            f"the manifest beside '{artifact}' describes a {manifest.backend} artifact, not {backend}.",
            f"re-create it with `effconv convert SPEC --to {backend}`.",
        )


def size_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a directory (an .mlpackage)."""
    path = Path(path)
    if path.is_dir():
        return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
    return path.stat().st_size


def size_report(float_bytes: int, quantized_bytes: int) -> dict:
    return {"float": float_bytes, "quantized": quantized_bytes, "ratio": round(float_bytes / quantized_bytes, 3)}


def alternating_latency(run_float: Callable[[], object], run_quantized: Callable[[], object], runs: int,
                        warmup: int = 2) -> dict:
    """Median wall-clock ms of each, `runs` runs after `warmup`, alternating so that load on a shared machine
    falls on both alike."""
    calls = (run_float, run_quantized)
    for call in calls:
        for _ in range(warmup):
            call()
    times: list[list[float]] = [[], []]
    for _ in range(runs):
        for call, measured in zip(calls, times):
            started = time.perf_counter()
            call()
            measured.append((time.perf_counter() - started) * 1000)
    float_ms, quant_ms = (statistics.median(measured) for measured in times)
    return {"float": round(float_ms, 3), "quantized": round(quant_ms, 3), "speedup": round(float_ms / quant_ms, 3),
            "runs": runs}
