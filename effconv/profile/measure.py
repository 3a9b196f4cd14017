"""Measure artifacts on this machine in their own runtime (onnxruntime, LiteRT, ExecuTorch): wall-clock median
of N runs after warm-up; and, for calibration, several artifacts' wall clock and ONNX models' per-node kernel times
(onnxruntime's profiler), in interleaved rounds."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from effconv.backends import registry
from effconv.backends.onnx.export import session as onnx_session
from effconv.errors import EffconvError


OTHER = "(added by onnxruntime)"
MIN_ROUND_MS, MAX_RUNS_PER_ROUND = 30.0, 10
ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _feed(session, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    feed = {}
    for tensor in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in tensor.shape]
        feed[tensor.name] = rng.standard_normal(shape).astype(ORT_TYPES.get(tensor.type, np.float32))
    return feed


def _summary(times: list[float], threads: int, warmup: int, runtime: str) -> dict:
    times = sorted(times)
    return {
        "median_ms": statistics.median(times),
        "min_ms": times[0],
        "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
        "threads": threads,
        "warmup": warmup,
        "repeats": len(times),
        "runtime": runtime,
    }


def _runner(artifact: Path, input_shapes: tuple[tuple[int, ...], ...], threads: int):
    """(a no-argument call that runs the artifact once in its own runtime, that runtime's name). The first input is
    a random latent; any others (a streaming step's flag and caches) are zeros: a later call of the stream, its
    steady state."""
    backend = registry.for_artifact(artifact)
    run_all = backend.load_all(artifact, threads)
    if run_all is None:
        raise EffconvError(f"{backend.runtime} cannot run '{Path(artifact).name}' on this machine.",
                           "drop --measure (the estimate is still printed), or measure the .onnx/.tflite/.pte export.")
    inputs = [np.random.default_rng(0).standard_normal(input_shapes[0]).astype(np.float32)]
    inputs += [np.zeros(shape, np.float32) for shape in input_shapes[1:]]
    return (lambda: run_all(inputs)), backend.runtime


def _timed(run) -> float:
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) * 1000


def measure(artifact: Path, input_shapes: tuple[tuple[int, ...], ...], threads: int, warmup: int = 2,
            repeats: int = 10) -> dict:
    """Median wall-clock ms of `repeats` runs of the artifact in its own runtime after `warmup` runs (median:
    the machine may be shared)."""
    run, runtime = _runner(artifact, input_shapes, threads)
    for _ in range(warmup):
        run()
    return _summary([_timed(run) for _ in range(repeats)], threads, warmup, runtime)


def _runs_per_round(first_ms: float) -> int:
    """Short models get several timed runs per round (up to MIN_ROUND_MS of runs), so their medians rest on enough
    samples to see through load that comes and goes."""
    return max(1, min(MAX_RUNS_PER_ROUND, math.ceil(MIN_ROUND_MS / max(first_ms, 1e-3))))


def measure_walls(artifacts: list[Path], input_shapes: list[tuple[tuple[int, ...], ...]], threads: int, warmup: int = 2,
                  repeats: int = 10) -> list[dict]:
    """Wall-clock summaries of several artifacts, each in its own runtime, measured in interleaved rounds (a burst
    of load from other processes is spread over all of them instead of inflating whichever ran at the time)."""
    runners = [_runner(artifact, shapes, threads) for artifact, shapes in zip(artifacts, input_shapes)]
    per_round = []
    for run, _ in runners:
        for _ in range(warmup):
            run()
        per_round.append(_runs_per_round(_timed(run)))
    walls: list[list[float]] = [[] for _ in runners]
    for _ in range(repeats):
        for index, (run, _) in enumerate(runners):
            walls[index].extend(_timed(run) for _ in range(per_round[index]))
    return [_summary(w, threads, warmup, runtime) for w, (_, runtime) in zip(walls, runners)]


def measure_kernels(paths: list[Path], graph_nodes: list[set[str]], threads: int, repeats: int = 10) -> list[dict]:
    """Per-node kernel times of several ONNX models from onnxruntime's profiler, one profiled run of each model per
    round (interleaved, so that a burst of load from other processes is spread over all models instead of
    inflating whichever model was running at the time); the first run of each is a warm-up, dropped when parsing."""
    with tempfile.TemporaryDirectory() as tmp:
        sessions = [onnx_session(path, threads, profile_prefix=os.path.join(tmp, f"ort{i}")) for i, path in enumerate(paths)]
        feeds = [_feed(session) for session in sessions]
        for _ in range(1 + repeats):
            for session, feed in zip(sessions, feeds):
                session.run(None, feed)
        profiles = [json.loads(Path(session.end_profiling()).read_text()) for session in sessions]
    return [_parse_profile(events, nodes) for events, nodes in zip(profiles, graph_nodes)]


FUSED_SUFFIX = re.compile(r"_token_\d+$")  # onnxruntime's QDQ fusion names the int8 kernel it makes of a node so


def _graph_node(event: dict, graph_nodes: set[str]) -> str | None:
    """The ONNX node an onnxruntime kernel event belongs to: its own name, for a fused kernel
    ('node_silu_6/QuickGeluFusion/') the node it was fused into, for an int8 kernel made from a Q/DQ group
    ('node_conv3d_token_128': a QLinearConv) the node at its centre."""
    name = event["name"].removesuffix("_kernel_time")
    for candidate in (name, name.split("/", 1)[0], FUSED_SUFFIX.sub("", name)):
        if candidate in graph_nodes:
            return candidate
    return None


def _parse_profile(events: list[dict], graph_nodes: set[str]) -> dict:
    """Per-node kernel ms (median over runs, the first run dropped as warm-up). Nodes fused away get no
    entry (their work is in the node they were fused into); kernels onnxruntime added go to `other_ms`."""
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    first = kernels[0]["name"] if kernels else None
    runs_ms: list[dict[str, float]] = []
    for event in kernels:
        if event["name"] == first:
            runs_ms.append(defaultdict(float))
        runs_ms[-1][_graph_node(event, graph_nodes) or OTHER] += event["dur"] / 1000
    measured = runs_ms[1:] or runs_ms
    names = set().union(*measured) - {OTHER}
    return {
        "node_ms": {name: statistics.median(run.get(name, 0.0) for run in measured) for name in names},
        "other_ms": statistics.median(run.get(OTHER, 0.0) for run in measured),
        "kernel_ms": statistics.median(sum(run.values()) for run in measured),
    }
