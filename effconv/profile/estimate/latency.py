"""Latency estimate: a per-op roofline on the compute unit each op can run on (placement.py), in the kernels its
runtime fuses it into (fusion.py), with an error band.

time(op) = max(FLOPs / (peak[dtype] x narrow), bytes / bandwidth) / efficiency[category] + dispatch
overhead, where narrow = N / (N + narrow_channels) for convs and matmuls of output width N; int8 convolutions also
pay a fixed cost per output position (`int8_position_ns`); plus, whenever an op's input was produced on another
compute unit, a hand-off (fixed cost + the tensor over DRAM). The total carries a relative band from the profile's
model uncertainty and the uncertainty of the figures it used. It is a model, not a measurement. dtype is each op's own compute dtype
(graph/costs.py), or the unit's nearest when the unit lacks it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import onnx

from effconv.profile.device.fusion_rules import FusionRules, load_rules
from effconv.profile.device.profiles import ComputeUnit, DeviceProfile, HeldOutBand
from effconv.profile.estimate.fusion import fuse
from effconv.profile.estimate.placement import place, placement_notes
from effconv.profile.graph.costs import CONV_CATEGORIES, GraphCost, NodeCost, Precision, conv_3d_key
from effconv.profile.graph.onnx import graph_cost

DTYPE_FALLBACK = ("fp16", "fp32", "int8")


@dataclass(frozen=True)
class OpEstimate:
    node: NodeCost
    unit: str
    dtype: str
    compute_ms: float
    memory_ms: float
    handoff_ms: float
    ms: float
    legal: bool

    @property
    def bound(self) -> str:
        return "compute" if self.compute_ms >= self.memory_ms else "memory"


@dataclass
class Kernel:
    """Ops a runtime runs as one kernel: its root (the op it launches) and the ops fused into it."""

    ops: list[OpEstimate]

    @property
    def root(self) -> OpEstimate:
        return next((op for op in self.ops if op.node.dispatched), self.ops[0])

    @property
    def fused(self) -> list[OpEstimate]:
        return [op for op in self.ops if op is not self.root]

    @property
    def ms(self) -> float:
        return sum(op.ms for op in self.ops)


@dataclass
class Estimate:
    device: str
    dtype: str  # what the artifact's ops compute in: one dtype, or a mix such as "int8 (61 ops) + fp32 (12 ops)"
    dtypes: dict[str, dict]  # per compute dtype: ops, FLOP share, ops reading int8-stored weights (GraphCost.dtype_table)
    ops: list[OpEstimate]
    total_ms: float
    low_ms: float
    high_ms: float
    uncertainty: float
    frames: int
    weight_bytes: int
    peak_activation_bytes: int
    usable_ram_bytes: int
    chunk_latent_frames: int | None
    budget_ms: float | None = None
    preferred_unit: str = ""
    notes: list[str] = field(default_factory=list)
    fusion: dict[str, str] = field(default_factory=dict)  # unit -> the fusion rules applied there
    band_source: str = ""  # where low/high come from when they are a held-out error range ("": the figures' uncertainties)

    def kernels(self) -> list[Kernel]:
        """The kernels the runtimes launch, each with the ops fused into it (halo padding included), slowest first."""
        by_root: dict[str, Kernel] = {}
        for op in self.ops:
            if op.node.kernel == "":
                continue
            root = op.node.kernel or op.node.name
            by_root.setdefault(root, Kernel([]))
            by_root[root].ops.append(op)
        return sorted(by_root.values(), key=lambda kernel: -kernel.ms)

    @property
    def memory_bytes(self) -> int:
        return self.weight_bytes + self.peak_activation_bytes

    @property
    def fits(self) -> bool:
        return self.memory_bytes <= self.usable_ram_bytes

    @property
    def fps(self) -> float:
        return 1000.0 * self.frames / self.total_ms

    @property
    def flops(self) -> int:
        return sum(op.node.flops for op in self.ops)

    def by(self, key: str) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for op in self.ops:
            totals[op.node.category if key == "category" else op.unit] += op.ms
        return dict(sorted(totals.items(), key=lambda item: -item[1]))

    def fallbacks(self) -> dict[str, int]:
        """Ops that did not run on the first (preferred) unit, by kind."""
        counts: dict[str, int] = defaultdict(int)
        for op in self.ops:
            if op.node.category != "view" and op.unit != self.preferred_unit:
                counts[op.node.kind] += 1
        return dict(counts)


def execution_dtype(unit: ComputeUnit, wanted: str) -> str:
    """The node's own dtype if the unit computes in it, else the unit's nearest (ANE: fp32 -> fp16)."""
    if wanted in unit.peak_gops:
        return wanted
    return next(d for d in DTYPE_FALLBACK if d in unit.peak_gops)


def _unit_bandwidth(unit: ComputeUnit, device: DeviceProfile) -> float:
    return (unit.bandwidth_gbps or device.memory.bandwidth_gbps).value


def roofline_ms(flops: int, nbytes: int, peak_gops: float, bandwidth_gbps: float) -> tuple[float, float]:
    """(compute ms, memory ms); the op takes the larger of the two."""
    return flops / (peak_gops * 1e6), nbytes / (bandwidth_gbps * 1e6)


NARROW_CATEGORIES = ("conv", "conv_pw", "matmul")
POSITION_CATEGORIES = ("conv", "conv_pw")  # int8 convolutions pay a cost per output position (position_ms)


def narrow_factor(node: NodeCost, unit: ComputeUnit) -> float:
    """Share of peak a conv/matmul keeps at its output width: N / (N + narrow_channels). Vector units
    and GEMM kernels tile over output channels, so an 8-channel layer leaves most lanes idle."""
    narrow = unit.narrow_channels
    if narrow <= 0 or node.category not in NARROW_CATEGORIES or node.gemm_n <= 0:
        return 1.0
    return node.gemm_n / (node.gemm_n + narrow)


def output_positions(node: NodeCost) -> int:
    """Output positions of a convolution (output elements per output channel): the rows of its GEMM."""
    return node.output_elements // node.gemm_n if node.gemm_n > 0 else 0


def position_ms(node: NodeCost, unit: ComputeUnit, dtype: str) -> float:
    """An int8 convolution's fixed cost per output position (`int8_position_ns`): gathering its input patch and
    requantizing its outputs cost per row of the GEMM, whatever its width. Profiled per kernel, onnxruntime's int8
    Conv3d ran at a nearly constant time per output position from 8 to 32 channels, so its speed grew with
    channels x depth, not with the output width alone."""
    if dtype != "int8" or node.category not in POSITION_CATEGORIES:
        return 0.0
    return output_positions(node) * (int8_figure(node, unit.int8_position_ns) or 0.0) / 1e6


def op_ms(node: NodeCost, unit: ComputeUnit, dtype: str, device: DeviceProfile) -> tuple[float, float, float]:
    """(compute ms, memory ms, total ms) of one node on one unit. Activations that fit the unit's on-chip buffer move
    at its bandwidth, the rest of the bytes through DRAM."""
    peak = unit.peak_gops[dtype].value * narrow_factor(node, unit)
    resident = node.resident_bytes(int(unit.on_chip.mb.value * 1e6)) if unit.on_chip else 0
    compute, memory = roofline_ms(node.flops, node.bytes - resident, peak, _unit_bandwidth(unit, device))
    if resident:
        memory += roofline_ms(0, resident, 1.0, unit.on_chip.bandwidth_gbps.value)[1]
    dispatch = unit.op_overhead_us / 1000 if node.dispatched else 0.0
    if node.category == "view":
        return compute, memory, dispatch
    int8 = int8_figure(node, unit.int8_efficiency) if dtype == "int8" else None
    efficiency = int8 or unit.efficiency.get(node.category, 1.0)
    return compute, memory, max(compute, memory) / efficiency + position_ms(node, unit, dtype) + dispatch


def int8_figure(node: NodeCost, figures: dict[str, float]) -> float | None:
    """An int8 node's entry in a per-key table (`int8_efficiency`, `int8_position_ns`), most specific key first."""
    return next((figures[key] for key in int8_keys(node) if key in figures), None)


def int8_keys(node: NodeCost) -> tuple[str, ...]:
    """Where an int8 node's efficiency is looked up, most specific first: a 3-D convolution under "<category> 3d"
    (onnxruntime's int8 Conv3d kernel ran 2.7x slower than its fp32 one where its int8 Conv2d runs faster), then
    its category."""
    if node.category in CONV_CATEGORIES and node.kind.endswith("3d"):
        return conv_3d_key(node.category), node.category
    return (node.category,)


def held_out_band(device: DeviceProfile, units: set[str]) -> HeldOutBand | None:
    """The held-out error range of the units an estimate ran on, when every one has one (the widest of them)."""
    bands = [device.units[unit].held_out_band for unit in units]
    if not bands or None in bands:
        return None
    return max(bands, key=lambda band: band.error_high - band.error_low)


def _uncertainty(device: DeviceProfile, used: set[tuple[str, str]]) -> float:
    figures = [device.memory.bandwidth_gbps.uncertainty]
    figures += [device.units[unit].peak_gops[dtype].uncertainty for unit, dtype in used]
    return math.hypot(device.model_uncertainty, max(figures))


def _chunk(peak_act: int, weights: int, usable: int, latent_frames: int) -> int | None:
    if weights + peak_act <= usable or latent_frames < 1:
        return None
    per_frame = peak_act / latent_frames
    return max(0, int((usable - weights) // per_frame))


def estimate(model: onnx.ModelProto, device: DeviceProfile, dtype: str | None = None,
             budget_ms: float | None = None) -> Estimate:
    """Estimate a shape-inferred ONNX model on a device. `dtype` forces one dtype on every node."""
    return estimate_cost(graph_cost(model, dtype), device, budget_ms)


def as_run(node: NodeCost, unit: ComputeUnit, dtype: str) -> NodeCost:
    """The node as `unit` runs it in `dtype`: weight-only int8 weights read at the float width where the unit
    decompresses them before running (`float_weights_at_run_time`)."""
    if unit.float_weights_at_run_time and dtype != "int8" and node.precision.weights != node.dtype:
        return node.with_precision(Precision(dtype, dtype))
    return node.at(dtype)


def fusion_rules(device: DeviceProfile) -> dict[str, FusionRules]:
    """Unit -> the fusion rules its runtime applies to the device's (first) backend."""
    backend = device.backends[0]
    return {name: load_rules(unit.fusion[backend]) for name, unit in device.units.items() if backend in unit.fusion}


def estimate_cost(cost: GraphCost, device: DeviceProfile, budget_ms: float | None = None, fused: bool = True) -> Estimate:
    """Estimate a costed graph on a device: each node runs in its own dtype where its unit has it, in the kernels its
    unit's runtime fuses it into (`fused=False`: every op a kernel of its own, as the graph stores it)."""
    placed = [place(node, device) for node in cost.nodes]
    rules = fusion_rules(device) if fused else {}
    fusion = fuse(cost, [unit for unit, _ in placed], rules)
    producer_unit: dict[str, str] = {}
    tensor_bytes: dict[str, int] = {}
    fallback_ms = device.fallback_us.value / 1000
    ops, used = [], set()
    for node, (unit_name, legal) in zip(fusion.cost.nodes, placed):
        unit = device.units[unit_name]
        run_dtype = execution_dtype(unit, node.dtype)
        used.add((unit_name, run_dtype))
        costed = as_run(node, unit, run_dtype)
        compute, memory, ms = op_ms(costed, unit, run_dtype, device)
        handoff = 0.0
        for name in costed.inputs:
            source = producer_unit.get(name)
            if source is not None and source != unit_name:
                handoff += fallback_ms + 2 * tensor_bytes[name] / (device.memory.bandwidth_gbps.value * 1e6)
        for name, size in zip(costed.outputs, costed.output_byte_sizes):
            producer_unit[name] = unit_name
            tensor_bytes[name] = size
        ops.append(OpEstimate(costed, unit_name, run_dtype, compute, memory, handoff, ms + handoff, legal))
    total = sum(op.ms for op in ops) + device.run_overhead_ms
    uncertainty = _uncertainty(device, used)
    band = held_out_band(device, {op.unit for op in ops if op.node.category != "view"})
    low, high = (total / (1 + band.error_high), total / (1 + band.error_low)) if band else (total / (1 + uncertainty), total * (1 + uncertainty))
    first_unit = next(iter(device.units.values()))
    on_first_unit = cost.mapped(lambda node: node.at(execution_dtype(first_unit, node.dtype)))
    peak_act, weights = on_first_unit.peak_activation_bytes, on_first_unit.weight_bytes
    usable = int(device.memory.ram_gb.value * 1e9 * device.memory.app_fraction)
    input_shape = next(iter(cost.input_shapes.values()), ())
    output_shape = next(iter(cost.output_shapes.values()), ())
    frames = output_shape[2] if len(output_shape) == 5 else 1
    latent_frames = input_shape[2] if len(input_shape) == 5 else 0
    result = Estimate(
        device=device.name,
        dtype=cost.dtype,
        dtypes=cost.dtype_table(),
        ops=ops,
        total_ms=total,
        low_ms=low,
        high_ms=high,
        band_source=f"held-out error, {band.rows} public measurements, {band.source}" if band else "",
        uncertainty=uncertainty,
        frames=frames,
        weight_bytes=weights,
        peak_activation_bytes=peak_act,
        usable_ram_bytes=usable,
        chunk_latent_frames=_chunk(peak_act, weights, usable, latent_frames),
        budget_ms=budget_ms,
        preferred_unit=next(iter(device.units)),
        notes=list(cost.notes),
        fusion=fusion.rules,
    )
    result.notes += placement_notes(device, [(op.node, op.unit, op.legal) for op in ops])
    return result
