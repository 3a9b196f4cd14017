"""Per-node cost of a decoder graph, whatever format it was read from: FLOPs, bytes moved, and the dtype each
node computes in. The readers (onnx.py, tflite.py, mlprogram.py) map their ops onto this one
vocabulary of kinds and categories and use the FLOP rules below, so the same model costs the same in every format.

Conventions (also in docs/profile.md):
- A multiply-add counts as 2 FLOPs. A convolution costs 2 * outputs * (C_in / groups) * prod(kernel),
  plus one FLOP per output for the bias (a transposed convolution counts per input element). A matrix
  product costs 2 * outputs * K (+ one per output for a bias).
- Elementwise ops cost 1 FLOP per output element; transcendental ones (Sigmoid, Exp, Tanh, Erf, ...)
  4; normalizations 5 per element (mean, variance, subtract, scale, shift); reductions 1 per input
  element; resizes 2 x taps per output (nearest 0, linear 2 per spatial dim, cubic 4).
- Each node computes in one dtype (fp32, fp16 or int8), read from the artifact per node.
- Bytes = weights + activations read + activations written. Reshape-like ops are views: 0 bytes.
  Activations are counted at the node's compute dtype (fp32 4 B, fp16 2 B, int8 1 B). A weight is
  counted at its stored dtype when that is narrower than the compute dtype (int8 weights of a
  weight-only int8 model: 1 B while the op computes in float), else at the compute dtype. Index and
  shape tensors keep their own size.
- Quantize/Dequantize nodes next to int8 kernels are folded into them, as int8 backends do: they cost nothing. One
  between an activation and a float op is a kernel of its own (`runtime_conversion`, category "conversion"): one
  pass over the tensor, costed in float.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
CATEGORIES = ("conv", "conv_dw", "conv_pw", "matmul", "norm", "elementwise", "reduce", "resize", "layout", "conversion", "view")
CONV_CATEGORIES = ("conv", "conv_dw", "conv_pw")
TRANSCENDENTAL_FLOPS = 4
NORM_FLOPS = 5
RESIZE_TAPS = {"nearest": 0, "linear": 2, "cubic": 4}

# Categories by kind, in ONNX's op vocabulary: every reader (ONNX, LiteRT, ML program) maps its ops to these kinds, so
# what an op costs is decided here once. Convs are refined by kernel and groups where each reader sees them.
VIEW_OPS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Constant", "Size",
            "ConstantOfShape", "Range", "QuantizeLinear", "DequantizeLinear", "Cast"}
LAYOUT_OPS = {"Transpose", "Concat", "Slice", "Split", "Pad", "Tile", "Expand", "Gather", "GatherND",
              "GatherElements", "ScatterND", "Where", "DepthToSpace", "SpaceToDepth", "Trilu", "ReverseSequence"}
NORM_OPS = {"InstanceNormalization", "GroupNormalization", "LayerNormalization", "BatchNormalization",
            "RMSNormalization", "LpNormalization", "SimplifiedLayerNormalization"}
REDUCE_OPS = {"ReduceMean", "ReduceSum", "ReduceL2", "ReduceMax", "ReduceMin", "ReduceProd",
              "ReduceSumSquare", "ReduceL1", "ReduceLogSumExp", "ArgMax", "ArgMin"}
# Rsqrt and Silu are not ONNX ops; LiteRT's RSQRT and MIL's silu map to them
TRANSCENDENTAL_OPS = {"Sigmoid", "Tanh", "Exp", "Log", "Erf", "Softmax", "LogSoftmax", "Sqrt", "Rsqrt", "Silu",
                      "Reciprocal", "Pow", "Gelu", "HardSwish", "Softplus", "Mish", "Sin", "Cos", "Elu"}
MATMUL_OPS = {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul"}
CONV_OPS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv"}
CONVERSION_KINDS = ("QuantizeLinear", "DequantizeLinear")


def conv_3d_key(category: str) -> str:
    """The efficiency key of a conv category's 3-D convolutions, fitted apart from its 2-D ones (int8_keys in
    estimate/latency.py)."""
    return f"{category} 3d"


CONV_3D_KEYS = {conv_3d_key(category): category for category in CONV_CATEGORIES}  # key -> its category


def op_category(kind: str) -> str:
    """The cost category of an op kind (a conv kind such as DepthwiseConv2d counts as conv until refined)."""
    if kind in CONV_OPS or re.fullmatch(r"(Depthwise)?Conv(Transpose)?\dd", kind):
        return "conv"
    if kind in VIEW_OPS:
        return "view"
    if kind in LAYOUT_OPS:
        return "layout"
    if kind in NORM_OPS:
        return "norm"
    if kind in REDUCE_OPS:
        return "reduce"
    if kind in MATMUL_OPS:
        return "matmul"
    if kind in ("Resize", "Upsample"):
        return "resize"
    return "elementwise"


def numel(shape: tuple[int, ...]) -> int:
    """Elements of a tensor; 0 when a dimension is unknown (costed as nothing rather than guessed)."""
    if any(d < 0 for d in shape):
        return 0
    return math.prod(shape)


@dataclass(frozen=True)
class TensorUse:
    """A tensor a node reads or writes. `stored` is its dtype in the artifact: fp32/fp16/int8 for data (counted
    at the compute dtype, a constant never above its stored size), or a numpy dtype name (int64 shapes, int32
    indices, bool masks) that keeps its own size."""

    name: str
    shape: tuple[int, ...]
    stored: str
    constant: bool

    def bytes_at(self, compute: str) -> int:
        elements = numel(self.shape)
        if self.stored not in DTYPE_BYTES:
            return elements * np.dtype(self.stored).itemsize
        if self.constant:
            return elements * min(DTYPE_BYTES[self.stored], DTYPE_BYTES[compute])
        return elements * DTYPE_BYTES[compute]

    def is_data(self) -> bool:
        return self.stored in DTYPE_BYTES

    @property
    def stored_bytes(self) -> int:
        return self.bytes_at(self.stored if self.is_data() else "fp32")


@dataclass(frozen=True)
class Precision:
    """What a node computes in, and how its weight is stored (int8 weights of a float op: weight-only int8)."""

    compute: str
    weights: str


@dataclass(frozen=True)
class NodeCost:
    name: str
    op_type: str  # the format's own op name: Conv, CONV_2D, conv
    kind: str  # op refined by rank and shape, in ONNX's vocabulary: Conv3d, DepthwiseConv2d, Sigmoid, Resize
    category: str
    dtype: str  # what the node computes in
    flops: int
    reads: tuple[TensorUse, ...]
    writes: tuple[TensorUse, ...]
    upsample: float = 1.0  # largest Resize/DepthToSpace scale factor (1 when not an upsampler)
    gemm_n: int = 0  # output channels per group (conv) or output columns (matmul): the vectorized width
    # The kernel the runtime runs this op in (estimate/fusion.py): None, its own; another op's name, fused into that op (no
    # dispatch of its own); "", none at all (a view a compiled graph folds away).
    kernel: str | None = None
    on_chip: frozenset[str] = frozenset()  # tensors it reads or writes that stay inside its kernel: no DRAM bytes

    @property
    def dispatched(self) -> bool:
        """Whether the runtime launches this op as a kernel of its own (and pays its dispatch)."""
        return self.kernel is None or self.kernel == self.name

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(tensor.name for tensor in self.reads)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(tensor.name for tensor in self.writes)

    @property
    def max_rank(self) -> int:
        return max((len(tensor.shape) for tensor in (*self.reads, *self.writes)), default=0)

    @property
    def output_elements(self) -> int:
        return sum(numel(tensor.shape) for tensor in self.writes)

    @property
    def output_byte_sizes(self) -> tuple[int, ...]:
        return tuple(tensor.bytes_at(self.dtype) for tensor in self.writes)

    @property
    def weight_bytes(self) -> int:
        if self.category == "view":
            return 0
        return sum(tensor.bytes_at(self.dtype) for tensor in self.reads if tensor.constant and tensor.name not in self.on_chip)

    def _moved_reads(self) -> list[int]:
        """Bytes of each activation it reads from memory (a view moves none; a tensor its kernel keeps on chip neither)."""
        if self.category == "view":
            return []
        return [tensor.bytes_at(self.dtype) for tensor in self.reads if not tensor.constant and tensor.name not in self.on_chip]

    def _moved_writes(self) -> list[int]:
        if self.category == "view":
            return []
        return [size for tensor, size in zip(self.writes, self.output_byte_sizes) if tensor.name not in self.on_chip]

    @property
    def input_bytes(self) -> int:
        return sum(self._moved_reads())

    def resident_bytes(self, capacity: int) -> int:
        """Bytes of the activations it moves that fit in `capacity` bytes of on-chip memory, each tensor whole (weights
        always come from DRAM: an on-chip activation buffer does not hold them)."""
        return sum(size for size in (*self._moved_reads(), *self._moved_writes()) if size <= capacity)

    @property
    def output_bytes(self) -> int:
        return sum(self._moved_writes())

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.input_bytes + self.output_bytes

    @property
    def weight(self) -> TensorUse | None:
        """The node's largest constant data tensor (a conv's or matmul's weight), if it reads one."""
        constants = [tensor for tensor in self.reads if tensor.constant and tensor.is_data()]
        return max(constants, key=lambda tensor: numel(tensor.shape), default=None)

    @property
    def precision(self) -> Precision:
        weight = self.weight
        narrower = weight is not None and DTYPE_BYTES[weight.stored] < DTYPE_BYTES[self.dtype]
        return Precision(self.dtype, weight.stored if narrower else self.dtype)

    def at(self, dtype: str) -> NodeCost:
        """This node run in another dtype (a unit without the node's own): stored int8 weights stay int8."""
        return dataclasses.replace(self, dtype=dtype)

    def forced(self, dtype: str) -> NodeCost:
        """What the node would cost if its model were `dtype` throughout, weights included (`--dtype`)."""
        def restored(tensor: TensorUse) -> TensorUse:
            return dataclasses.replace(tensor, stored=dtype) if tensor.is_data() else tensor

        return dataclasses.replace(self, dtype=dtype, reads=tuple(map(restored, self.reads)),
                                   writes=tuple(map(restored, self.writes)))

    def with_precision(self, precision: Precision) -> NodeCost:
        """The node computing as `precision` says, its weight stored in `precision.weights`."""
        weight = self.weight
        if weight is None or weight.stored == precision.weights:
            return self.at(precision.compute)
        narrowed = dataclasses.replace(weight, stored=precision.weights)
        reads = tuple(narrowed if tensor is weight else tensor for tensor in self.reads)
        return dataclasses.replace(self, dtype=precision.compute, reads=reads)


@dataclass(frozen=True)
class GraphCost:
    nodes: list[NodeCost]
    inputs: tuple[TensorUse, ...]  # the graph's inputs, in the order the model takes them
    output_shapes: dict[str, tuple[int, ...]]
    notes: tuple[str, ...] = ()  # what the reader could not map exactly (an unknown op costed as elementwise)

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {tensor.name: tensor.shape for tensor in self.inputs}

    @property
    def flops(self) -> int:
        return sum(node.flops for node in self.nodes)

    @property
    def bytes(self) -> int:
        return sum(node.bytes for node in self.nodes)

    @property
    def network_signature(self) -> tuple[int, int]:
        """The count and total FLOPs of the convolutions and matrix products: equal for one network under two names
        (two model ids of one architecture, two family students with the same layers), whatever elementwise ops an
        exporter adds or folds; what benchmarks use to count a network once."""
        layers = [node for node in self.nodes if node.category in (*CONV_CATEGORIES, "matmul")]
        return len(layers), sum(node.flops for node in layers)

    @property
    def weight_bytes(self) -> int:
        """Each weight once, at the size its first (non-view) reader counts it."""
        sizes: dict[str, int] = {}
        for node in self.nodes:
            if node.category != "view":
                for tensor in node.reads:
                    if tensor.constant:
                        sizes.setdefault(tensor.name, tensor.bytes_at(node.dtype))
        return sum(sizes.values())

    @property
    def peak_activation_bytes(self) -> int:
        return peak_activation_bytes(self.nodes, self.inputs)

    @property
    def dtype_ops(self) -> dict[str, int]:
        """Compute nodes (views excluded) per dtype, most first."""
        return dict(Counter(node.dtype for node in self.nodes if node.category != "view").most_common())

    @property
    def dtype(self) -> str:
        """One dtype, or a mix such as 'int8 (61 ops) + fp32 (12 ops)'."""
        counts = self.dtype_ops
        if len(counts) <= 1:
            return next(iter(counts), "fp32")
        return " + ".join(f"{dtype} ({count} ops)" for dtype, count in counts.items())

    def dtype_table(self) -> dict[str, dict]:
        """Per compute dtype: ops, share of the FLOPs, and how many of those ops read weights stored narrower than
        they compute (weight-only int8, W8A16)."""
        total = self.flops or 1
        flops: dict[str, int] = defaultdict(int)
        narrow: dict[str, int] = defaultdict(int)
        for node in self.nodes:
            if node.category != "view":
                flops[node.dtype] += node.flops
                narrow[node.dtype] += node.precision.weights != node.dtype
        return {dtype: {"ops": count, "flop_share": flops[dtype] / total, "narrow_weight_ops": narrow[dtype]}
                for dtype, count in self.dtype_ops.items()}

    def mapped(self, change: Callable[[NodeCost], NodeCost]) -> GraphCost:
        return dataclasses.replace(self, nodes=[change(node) for node in self.nodes])

    def forced(self, dtype: str) -> GraphCost:
        inputs = tuple(dataclasses.replace(t, stored=dtype) if t.is_data() else t for t in self.inputs)
        return dataclasses.replace(self.mapped(lambda node: node.forced(dtype)), inputs=inputs)

    def precisions_by_kind(self) -> dict[str, Precision]:
        """The most common precision of each node kind (views aside): what another export of the same model at
        another shape should compute in, kind by kind."""
        seen: dict[str, Counter] = defaultdict(Counter)
        for node in self.nodes:
            if node.category != "view":
                seen[node.kind][node.precision] += 1
        return {kind: counts.most_common(1)[0][0] for kind, counts in seen.items()}

    def with_precisions(self, by_kind: dict[str, Precision]) -> GraphCost:
        """Each node as `by_kind` says for its kind; kinds it does not name keep their own precision."""
        return self.mapped(lambda node: node.with_precision(by_kind[node.kind]) if node.kind in by_kind else node)


def peak_activation_bytes(nodes: list[NodeCost], inputs: tuple[TensorUse, ...]) -> int:
    """Largest set of activations alive at once, running nodes in graph order and freeing a tensor
    after its last reader. Views alias their input, so they add nothing, and a tensor lives as long as its
    views are read. Graph inputs count as stored."""
    source: dict[str, str] = {}  # a view's output -> the tensor it aliases
    for node in nodes:
        if node.category == "view":
            data = [t.name for t in node.reads if not t.constant]
            for name in node.outputs[:1] if data else ():
                source[name] = source.get(data[0], data[0])
    last_use: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node.inputs:
            last_use[source.get(name, name)] = index
    sizes = {tensor.name: tensor.stored_bytes for tensor in inputs}
    live = sum(sizes.values())
    peak = live
    for index, node in enumerate(nodes):
        if node.category != "view":
            for name, size in zip(node.outputs, node.output_byte_sizes):
                sizes[name] = size
                live += size
        peak = max(peak, live)
        for name in {source.get(name, name) for name in node.inputs}:
            if last_use.get(name) == index and name in sizes:
                live -= sizes.pop(name)
    return peak


def conv_kind(spatial_dims: int, groups: int, in_channels: int, in_channels_per_group: int, kernel: tuple[int, ...],
              dilated: bool, transposed: bool) -> tuple[str, str]:
    """(kind, category) of a convolution: Conv3d, DepthwiseConv2d, PointwiseConv3d, DilatedConv2d, ConvTranspose3d."""
    suffix = f"{max(spatial_dims, 1)}d"
    if transposed:
        return f"ConvTranspose{suffix}", "conv"
    if groups > 1 and groups == in_channels and in_channels_per_group == 1:
        return f"DepthwiseConv{suffix}", "conv_dw"
    prefix = "Dilated" if dilated else ""
    if all(k == 1 for k in kernel):
        return f"{prefix}PointwiseConv{suffix}", "conv_pw"
    return f"{prefix}Conv{suffix}", "conv"


def conv_flops(output_elements: int, in_channels_per_group: int, kernel: tuple[int, ...], has_bias: bool) -> int:
    return 2 * output_elements * in_channels_per_group * math.prod(kernel) + (output_elements if has_bias else 0)


def conv_transpose_flops(input_elements: int, out_channels_per_group: int, kernel: tuple[int, ...],
                         output_elements: int, has_bias: bool) -> int:
    """Counted per input element: each one is scattered through the kernel into the output."""
    return 2 * input_elements * out_channels_per_group * math.prod(kernel) + (output_elements if has_bias else 0)


def matmul_flops(output_elements: int, inner: int, has_bias: bool) -> int:
    return 2 * output_elements * inner + (output_elements if has_bias else 0)


def resize_flops(output_elements: int, mode: str, spatial_dims: int) -> int:
    return 2 * RESIZE_TAPS.get(mode, 2) ** max(spatial_dims, 0) * output_elements


def upsample_factor(input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> float:
    if len(input_shape) != len(output_shape) or not input_shape:
        return 1.0
    ratios = [o / i for i, o in zip(input_shape, output_shape) if i > 0 and o > 0]
    return max(ratios, default=1.0)


def activation_dtype(reads: tuple[TensorUse, ...], writes: tuple[TensorUse, ...]) -> str:
    """What an op of a typed graph (LiteRT, ML program) computes in, from its activations: int8 when any is int8,
    fp16 when all are fp16, fp32 otherwise; "" for an op on masks and indices alone (see `settled`)."""
    activations = {t.stored for t in (*reads, *writes) if not t.constant and t.is_data()}
    if not activations:
        return ""
    if "int8" in activations:
        return "int8"
    return "fp16" if activations == {"fp16"} else "fp32"


def settled(nodes: list[NodeCost]) -> list[NodeCost]:
    """Ops on masks and indices alone (bool, int32: an attention mask's comparisons) have no data dtype of their
    own: they take the graph's most common one, so an fp16 program does not report them as fp32."""
    common = Counter(node.dtype for node in nodes if node.dtype).most_common(1)
    default = common[0][0] if common else "fp32"
    return [node if node.dtype else node.at(default) for node in nodes]


def runtime_conversion(node: NodeCost) -> NodeCost:
    """A Quantize/Dequantize of an activation that the runtime runs as a kernel (its float side is a float op or the
    graph's edge): one pass over the tensor, reading one dtype and writing the other, in a category of its own
    (a fitted host gives it its own efficiency), computed in float (both sides at float width: an upper bound on
    its bytes)."""
    return dataclasses.replace(node, category="conversion", dtype="fp32", flops=node.output_elements)


def simple_flops(category: str, output_elements: int, input_elements: int, transcendental: bool = False) -> int:
    """FLOPs of the categories with a per-element rule: norms, reductions, elementwise ops; none for layout and views."""
    if category == "norm":
        return NORM_FLOPS * output_elements
    if category == "reduce":
        return input_elements
    if category == "elementwise":
        return (TRANSCENDENTAL_FLOPS if transcendental else 1) * output_elements
    return 0
