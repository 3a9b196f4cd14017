"""Which node kinds of an ONNX model should compute in int8 on a device that is not this host.

This host's x86 timings say nothing about a phone's int8 kernels (ARM dot-product instructions, an NPU's int8
path), so the decision is the device profile's: each kind's nodes are estimated on the unit the profile
places them on, in int8 and in float, with the same per-op roofline as `effconv profile`. A kind stays int8
when that estimate is at least MIN_SPEEDUP faster; a unit without an int8 rate (a GPU computing in fp16)
gains nothing from int8 compute, so its kinds stay float (their weights are still stored int8).
"""

from __future__ import annotations

from pathlib import Path

from effconv.backends.onnx.quantize import node_kinds
from effconv.backends.onnx.search import MIN_SPEEDUP
from effconv.profile.graph.onnx import graph_cost, load_graph
from effconv.profile.device.profiles import load_device
from effconv.profile.estimate.latency import execution_dtype, op_ms
from effconv.profile.estimate.placement import place


def kind_decisions(onnx_path: Path, device_name: str) -> dict[str, dict]:
    """kind -> {"int8": bool, "why": str, "float_ms": .., "int8_ms": ..} for the float ONNX model at `onnx_path`."""
    device = load_device(device_name).for_backend("onnx")
    graph = load_graph(onnx_path)
    kinds = node_kinds(graph)
    float_nodes = {node.name: node for node in graph_cost(graph, "fp32").nodes}
    totals: dict[str, dict] = {}
    for name, kind in kinds.items():
        node = float_nodes[name]
        unit_name, _legal = place(node, device)
        unit = device.units[unit_name]
        float_dtype, int8_dtype = execution_dtype(unit, "fp32"), execution_dtype(unit, "int8")
        entry = totals.setdefault(kind, {"float_ms": 0.0, "int8_ms": 0.0, "units": set(), "dtypes": set()})
        entry["float_ms"] += op_ms(node, unit, float_dtype, device)[2]
        entry["int8_ms"] += op_ms(node.forced("int8") if int8_dtype == "int8" else node, unit, int8_dtype, device)[2]
        entry["units"].add(unit_name)
        entry["dtypes"].add(int8_dtype)
    return {kind: _decision(entry, device.name) for kind, entry in totals.items()}


def _decision(entry: dict, device: str) -> dict:
    speedup = entry["float_ms"] / entry["int8_ms"]
    units = ", ".join(sorted(entry["units"]))
    if "int8" not in entry["dtypes"]:
        why = f"runs on {units}, which has no int8 rate in the {device} profile"
    else:
        why = f"estimated {speedup:.2f}x faster in int8 on {units} ({entry['float_ms']:.2f} vs {entry['int8_ms']:.2f} ms)"
    return {"int8": speedup >= MIN_SPEEDUP and "int8" in entry["dtypes"], "why": why,
            "float_ms": round(entry["float_ms"], 4), "int8_ms": round(entry["int8_ms"], 4)}
