"""Per-node cost of an ONNX graph: FLOPs and bytes moved, from shapes that ONNX shape inference fills in.

Conventions (also in docs/profile.md):
- A multiply-add counts as 2 FLOPs. A convolution costs 2 * outputs * (C_in / groups) * prod(kernel),
  plus one FLOP per output for the bias. MatMul costs 2 * outputs * K.
- Elementwise ops cost 1 FLOP per output element; transcendental ones (Sigmoid, Exp, Tanh, Erf, ...)
  4; normalizations 5 per element (mean, variance, subtract, scale, shift).
- Bytes = weights (initializers) + activations read + activations written. Reshape-like ops are
  views: 0 bytes. Float tensors are counted at the execution dtype (fp32 4 B, fp16 2 B, int8 1 B), so
  the same graph moves half the bytes in fp16 and a quarter in int8. Integer tensors keep their size.
- Quantize/Dequantize nodes of an int8 (QDQ) artifact are folded into their neighbours, as int8
  backends do: they cost nothing and the graph is counted in int8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from effconv.errors import EffconvError, exception_text

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
INT8_TYPES = {TensorProto.INT8, TensorProto.UINT8}

VIEW_OPS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Constant", "Size",
            "ConstantOfShape", "Range", "QuantizeLinear", "DequantizeLinear", "Cast"}
LAYOUT_OPS = {"Transpose", "Concat", "Slice", "Split", "Pad", "Tile", "Expand", "Gather", "GatherND",
              "GatherElements", "ScatterND", "Where", "DepthToSpace", "SpaceToDepth", "Trilu"}
NORM_OPS = {"InstanceNormalization", "GroupNormalization", "LayerNormalization", "BatchNormalization",
            "RMSNormalization", "LpNormalization", "SimplifiedLayerNormalization"}
REDUCE_OPS = {"ReduceMean", "ReduceSum", "ReduceL2", "ReduceMax", "ReduceMin", "ReduceProd",
              "ReduceSumSquare", "ReduceL1", "ReduceLogSumExp", "ArgMax", "ArgMin"}
TRANSCENDENTAL_OPS = {"Sigmoid", "Tanh", "Exp", "Log", "Erf", "Softmax", "LogSoftmax", "Sqrt",
                      "Reciprocal", "Pow", "Gelu", "HardSwish", "Softplus", "Mish", "Sin", "Cos", "Elu"}
MATMUL_OPS = {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul"}
CONV_OPS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv"}
RESIZE_TAPS = {"nearest": 0, "linear": 2, "cubic": 4}

CATEGORIES = ("conv", "conv_dw", "conv_pw", "matmul", "norm", "elementwise", "reduce", "resize", "layout", "view")


@dataclass(frozen=True)
class NodeCost:
    name: str
    op_type: str
    kind: str  # op_type refined by rank, e.g. Conv3d, ConvTranspose3d, DepthwiseConv3d
    category: str
    flops: int
    weight_bytes: int
    input_bytes: int
    output_bytes: int
    output_elements: int
    max_rank: int
    upsample: float  # largest Resize/DepthToSpace scale factor (1 when not an upsampler)
    gemm_n: int  # output channels per group (conv) or output columns (matmul): the vectorized width
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    output_byte_sizes: tuple[int, ...]

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.input_bytes + self.output_bytes


@dataclass(frozen=True)
class GraphCost:
    nodes: list[NodeCost]
    dtype: str
    input_names: tuple[str, ...]
    input_shapes: dict[str, tuple[int, ...]]
    output_shapes: dict[str, tuple[int, ...]]
    weight_bytes: int
    peak_activation_bytes: int

    @property
    def flops(self) -> int:
        return sum(node.flops for node in self.nodes)

    @property
    def bytes(self) -> int:
        return sum(node.bytes for node in self.nodes)


def load_graph(path: Path) -> onnx.ModelProto:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, OSError, onnx's own errors: all mean unreadable
        reason = exception_text(exc, 200)
        raise EffconvError(f"'{path}' is not a readable ONNX model: {reason}.", "pass an .onnx written by `effconv convert`.") from None
    if not model.graph.node:
        # protobuf parses an empty (or truncated-to-nothing) file as an empty model without complaint
        raise EffconvError(f"'{path}' holds no ONNX graph (0 nodes).", "pass an .onnx written by `effconv convert`.")
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # onnx's InferenceError / ValidationError: a damaged or hand-edited graph
        reason = exception_text(exc, 200)
        raise EffconvError(f"'{path}' is not a consistent ONNX graph (shape inference failed: {reason}).",
                           "pass an .onnx written by `effconv convert`, or re-create it.") from None


def artifact_dtype(model: onnx.ModelProto) -> str:
    """int8 when the graph carries quantized tensors or QDQ nodes, fp16 when its weights are fp16, else fp32."""
    graph = model.graph
    ops = {node.op_type for node in graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}:
        return "int8"
    types = [init.data_type for init in graph.initializer]
    if any(t in INT8_TYPES for t in types):
        return "int8"
    if any(t == TensorProto.FLOAT16 for t in types):
        return "fp16"
    return "fp32"


def _tensor_table(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], int]]:
    table: dict[str, tuple[tuple[int, ...], int]] = {}
    graph = model.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
        table[info.name] = (dims, tensor_type.elem_type)
    for init in graph.initializer:
        table[init.name] = (tuple(init.dims), init.data_type)
    return table


def _numel(shape: tuple[int, ...]) -> int:
    if any(d < 0 for d in shape):
        return 0
    return math.prod(shape)


def _element_bytes(elem_type: int, dtype: str) -> int:
    if elem_type in FLOAT_TYPES or elem_type in INT8_TYPES:
        return DTYPE_BYTES[dtype]
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize if elem_type else 4


def _attr(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _conv_kind(node, weight_shape, input_shape) -> tuple[str, str]:
    spatial_dims = max(len(weight_shape) - 2, 1)
    suffix = f"{spatial_dims}d"
    if node.op_type == "ConvTranspose":
        return f"ConvTranspose{suffix}", "conv"
    group = int(_attr(node, "group", 1))
    in_channels = input_shape[1] if len(input_shape) > 1 else -1
    if group > 1 and group == in_channels and weight_shape[1] == 1:
        return f"DepthwiseConv{suffix}", "conv_dw"
    dilations = _attr(node, "dilations", [])
    prefix = "Dilated" if any(d > 1 for d in dilations) else ""
    if all(k == 1 for k in weight_shape[2:]):
        return f"{prefix}PointwiseConv{suffix}", "conv_pw"
    return f"{prefix}Conv{suffix}", "conv"


def _conv_flops(node, weight_shape, input_shape, output_shape, has_bias: bool) -> int:
    out_elements = _numel(output_shape)
    kernel = math.prod(weight_shape[2:])
    if node.op_type == "ConvTranspose":
        macs = _numel(input_shape) * weight_shape[1] * kernel
    else:
        macs = out_elements * weight_shape[1] * kernel
    return 2 * macs + (out_elements if has_bias else 0)


def _resize_factor(node, shapes) -> float:
    if not node.input or not node.output:
        return 1.0
    inp, out = shapes.get(node.input[0], ((), 0))[0], shapes.get(node.output[0], ((), 0))[0]
    if len(inp) != len(out) or not inp:
        return 1.0
    ratios = [o / i for i, o in zip(inp, out) if i > 0 and o > 0]
    return max(ratios, default=1.0)


def _node_flops(node, category, shapes, out_elements, in_elements) -> int:
    op = node.op_type
    if category in ("conv", "conv_dw", "conv_pw"):
        weight = shapes[node.input[1]][0]
        has_bias = len(node.input) > 2 and bool(node.input[2])
        return _conv_flops(node, weight, shapes[node.input[0]][0], shapes[node.output[0]][0], has_bias)
    if category == "matmul":
        a_shape = shapes.get(node.input[0], ((), 0))[0]
        k = a_shape[-1] if a_shape else 0
        if op == "Gemm" and int(_attr(node, "transA", 0)):
            k = a_shape[0]
        bias = out_elements if op == "Gemm" and len(node.input) > 2 and node.input[2] else 0
        return 2 * out_elements * k + bias
    if category == "norm":
        return 5 * out_elements
    if category == "reduce":
        return in_elements
    if category == "resize":
        mode = _attr(node, "mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        rank = len(shapes.get(node.output[0], ((), 0))[0])
        taps = RESIZE_TAPS.get(mode, 2) ** max(rank - 2, 0)
        return 2 * taps * out_elements
    if category == "elementwise":
        return (4 if op in TRANSCENDENTAL_OPS else 1) * out_elements
    return 0


def _category(op: str) -> str:
    if op in VIEW_OPS:
        return "view"
    if op in LAYOUT_OPS:
        return "layout"
    if op in NORM_OPS:
        return "norm"
    if op in REDUCE_OPS:
        return "reduce"
    if op in MATMUL_OPS:
        return "matmul"
    if op in ("Resize", "Upsample"):
        return "resize"
    return "elementwise"


def _node_cost(node: onnx.NodeProto, shapes, weights: set[str], dtype: str) -> NodeCost:
    op = node.op_type
    category, kind = _category(op), op
    if op in CONV_OPS:
        kind, category = _conv_kind(node, shapes[node.input[1]][0], shapes[node.input[0]][0])
    inputs = tuple(name for name in node.input if name)
    weight_bytes = input_bytes = in_elements = 0
    ranks = [0]
    for name in inputs:
        shape, elem = shapes.get(name, ((), 0))
        size = _numel(shape) * _element_bytes(elem, dtype)
        ranks.append(len(shape))
        if name in weights:
            weight_bytes += size
        else:
            input_bytes += size
            in_elements += _numel(shape)
    out_sizes, out_elements = [], 0
    for name in node.output:
        shape, elem = shapes.get(name, ((), 0))
        out_sizes.append(_numel(shape) * _element_bytes(elem, dtype))
        out_elements += _numel(shape)
        ranks.append(len(shape))
    if category == "view":
        weight_bytes = input_bytes = 0
        flops = 0
    else:
        flops = _node_flops(node, category, shapes, out_elements, in_elements)
    if len(inputs) > 1 and category != "view":
        missing = [n for n in inputs[:2] if n not in shapes]
        if missing and category in ("conv", "conv_dw", "conv_pw", "matmul"):
            raise EffconvError(f"shape of '{missing[0]}' (input of {op} '{node.name}') is unknown.",
                               "export with fixed input shapes (effconv convert does).")
    gemm_n = 0
    if category in ("conv", "conv_dw", "conv_pw"):
        gemm_n = shapes[node.input[1]][0][0] // int(_attr(node, "group", 1))
    elif category == "matmul":
        gemm_n = max(shapes.get(node.output[0], ((0,), 0))[0][-1:] or (0,))
    upsample = _resize_factor(node, shapes) if op in ("Resize", "Upsample") else 1.0
    if op == "DepthToSpace":
        upsample = float(_attr(node, "blocksize", 1))
    return NodeCost(
        name=node.name or f"{op}_{node.output[0]}",
        op_type=op,
        kind=kind,
        category=category,
        flops=int(flops),
        weight_bytes=int(weight_bytes),
        input_bytes=int(input_bytes),
        output_bytes=0 if category == "view" else int(sum(out_sizes)),
        output_elements=int(out_elements),
        max_rank=max(ranks),
        upsample=upsample,
        gemm_n=int(gemm_n),
        inputs=inputs,
        outputs=tuple(node.output),
        output_byte_sizes=tuple(int(s) for s in out_sizes),
    )


def _peak_activation_bytes(nodes: list[NodeCost], graph_inputs: dict[str, int], weights: set[str]) -> int:
    """Largest set of activations alive at once, running nodes in graph order and freeing a tensor
    after its last reader. Views alias their input, so they add nothing."""
    last_use: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node.inputs:
            last_use[name] = index
    sizes = dict(graph_inputs)
    live = sum(graph_inputs.values())
    peak = live
    for index, node in enumerate(nodes):
        if node.category != "view":
            for name, size in zip(node.outputs, node.output_byte_sizes):
                sizes[name] = size
                live += size
        peak = max(peak, live)
        for name in node.inputs:
            if last_use.get(name) == index and name in sizes and name not in weights:
                live -= sizes.pop(name)
    return peak


def graph_cost(model: onnx.ModelProto, dtype: str | None = None) -> GraphCost:
    """Cost every node of a shape-inferred ONNX model; `dtype` overrides the artifact's own dtype."""
    dtype = dtype or artifact_dtype(model)
    if dtype not in DTYPE_BYTES:
        raise EffconvError(f"unknown dtype '{dtype}'.", f"use one of: {', '.join(DTYPE_BYTES)}.")
    shapes = _tensor_table(model)
    weights = {init.name for init in model.graph.initializer}
    nodes = [_node_cost(node, shapes, weights, dtype) for node in model.graph.node]
    input_names = tuple(i.name for i in model.graph.input if i.name not in weights)
    graph_inputs = {name: _numel(shapes[name][0]) * _element_bytes(shapes[name][1], dtype) for name in input_names}
    weight_bytes = sum(_numel(shapes[name][0]) * _element_bytes(shapes[name][1], dtype) for name in weights)
    return GraphCost(
        nodes=nodes,
        dtype=dtype,
        input_names=input_names,
        input_shapes={name: shapes[name][0] for name in input_names},
        output_shapes={o.name: shapes[o.name][0] for o in model.graph.output if o.name in shapes},
        weight_bytes=weight_bytes,
        peak_activation_bytes=_peak_activation_bytes(nodes, graph_inputs, weights),
    )
