"""Measure an ONNX model on this machine with onnxruntime: wall-clock median of N runs after warm-up,
and (for calibration) per-node kernel times from onnxruntime's profiler."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


OTHER = "(added by onnxruntime)"
ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _session(path: Path, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _feed(session, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    feed = {}
    for tensor in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in tensor.shape]
        feed[tensor.name] = rng.standard_normal(shape).astype(ORT_TYPES.get(tensor.type, np.float32))
    return feed


def measure(path: Path, threads: int, warmup: int = 2, repeats: int = 10) -> dict:
    """Median wall-clock ms of `repeats` runs after `warmup` runs (median: the machine may be shared)."""
    session = _session(path, threads)
    feed = _feed(session)
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "min_ms": times[0],
        "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
        "threads": threads,
        "warmup": warmup,
        "repeats": repeats,
        "provider": "CPUExecutionProvider",
    }


def _graph_node(event: dict, graph_nodes: set[str]) -> str | None:
    """The ONNX node an onnxruntime kernel event belongs to: its own name, or for a fused kernel
    ('node_silu_6/QuickGeluFusion/') the node it was fused into."""
    name = event["name"].removesuffix("_kernel_time")
    if name in graph_nodes:
        return name
    head = name.split("/", 1)[0]
    return head if head in graph_nodes else None


def node_times(path: Path, threads: int, graph_nodes: set[str], runs: int = 5) -> dict:
    """Per-node kernel ms (median over runs) from onnxruntime's profiler. Nodes fused away get no entry
    (their work is in the node they were fused into); kernels onnxruntime added are summed in `other_ms`."""
    with tempfile.TemporaryDirectory() as tmp:
        session = _session(path, threads, profile_prefix=os.path.join(tmp, "ort"))
        feed = _feed(session)
        session.run(None, feed)  # warm-up
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    first = kernels[0]["name"] if kernels else None
    runs_ms: list[dict[str, float]] = []
    for event in kernels:
        if event["name"] == first:
            runs_ms.append(defaultdict(float))
        runs_ms[-1][_graph_node(event, graph_nodes) or OTHER] += event["dur"] / 1000
    measured = runs_ms[1:] or runs_ms  # the first profiled run is a warm-up
    names = set().union(*measured) - {OTHER}
    return {
        "node_ms": {name: statistics.median(run.get(name, 0.0) for run in measured) for name in names},
        "other_ms": statistics.median(run.get(OTHER, 0.0) for run in measured),
        "kernel_ms": statistics.median(sum(run.values()) for run in measured),
    }
