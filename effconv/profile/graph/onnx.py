"""An ONNX graph as per-node costs (costs.py's conventions), from the shapes ONNX shape inference fills in.

Compute dtype per node, for QDQ graphs (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html#onnx-quantization-representation-format):
a DequantizeLinear whose input comes from a QuantizeLinear carries a quantized activation, one whose input is an
initializer carries a quantized weight. A Conv/ConvTranspose/MatMul/Gemm whose activation inputs all come through
quantized-activation DequantizeLinears computes in int8 (onnxruntime fuses the pattern into an int8 kernel); one
whose only DequantizeLinear is on its weight computes in float and reads int8 weights (weight-only). Any other op
computes in int8 only when all its activation inputs are quantized and all its outputs are re-quantized (a QDQ
Add/Mul/Concat); everything else is float: fp16 when its outputs are fp16, else fp32. QLinearConv, ConvInteger and
the other operator-oriented int8 ops compute in int8. A QuantizeLinear after an int8 op and a DequantizeLinear whose
readers all compute in int8 are folded into those kernels (views, zero cost); any other Q/DQ of an activation is a
kernel onnxruntime runs (a float op's input or output converted), costed as one elementwise pass.

16-bit activations (QNN's w8a16 QDQ form, onnxruntime `get_qnn_qdq_config` with QUInt16 activations): an op that
would compute in int8 from them computes at the unit's 16-bit rate instead, costed as fp16 (2-byte activations, the
profile's fp16 peak: the HTP's 16-bit path), with its int8 weights; its Q/DQ fold as for int8.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto

from effconv.errors import EffconvError, exception_text
from effconv.profile.graph.costs import (
    CONV_OPS, CONVERSION_KINDS, TRANSCENDENTAL_OPS, VIEW_OPS, GraphCost, NodeCost, TensorUse, conv_flops, conv_kind, conv_transpose_flops,
    matmul_flops, numel, op_category, resize_flops, runtime_conversion, simple_flops, upsample_factor,
)

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE}
HALF_TYPES = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
INT8_TYPES = {TensorProto.INT8, TensorProto.UINT8}
INT16_TYPES = {TensorProto.INT16, TensorProto.UINT16}

STANDARD_16_BIT_QDQ_OPSET = 21
MICROSOFT_DOMAIN = "com.microsoft"
QDQ_COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


def load_graph(path: Path) -> onnx.ModelProto:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, OSError, onnx's own errors: all mean unreadable
        reason = exception_text(exc, 200)
        raise EffconvError(f"'{path}' is not a readable ONNX model: {reason}.", "pass an .onnx written by `effconv convert`.") from None
    if not model.graph.node:
        # protobuf parses an empty (or truncated-to-nothing) file as an empty model without complaint
        raise EffconvError(f"'{path}' holds no ONNX graph (0 nodes).", "pass an .onnx written by `effconv convert`.")
    _standard_qdq(model)
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # onnx's InferenceError / ValidationError: a damaged or hand-edited graph
        reason = exception_text(exc, 200)
        raise EffconvError(f"'{path}' is not a consistent ONNX graph (shape inference failed: {reason}).",
                           "pass an .onnx written by `effconv convert`, or re-create it.") from None


def _standard_qdq(model: onnx.ModelProto) -> None:
    """onnxruntime writes 16-bit Q/DQ in its com.microsoft domain (QNN's w8a16 form), whose outputs ONNX shape
    inference cannot type; from opset 21 on the standard Q/DQ take 16-bit types, so costing reads them as those."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < STANDARD_16_BIT_QDQ_OPSET:
        return
    for node in model.graph.node:
        if node.domain == MICROSOFT_DOMAIN and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node.domain = ""


def _stored(elem_type: int) -> str:
    """fp32/fp16/int8 for data tensors, else the numpy dtype name; a tensor of unknown type counts as fp32 data."""
    if elem_type in FLOAT_TYPES or not elem_type:
        return "fp32"
    if elem_type in HALF_TYPES:
        return "fp16"
    if elem_type in INT8_TYPES:
        return "int8"
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name


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


def _attr(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


class _Graph:
    """Shapes, constants and the QDQ structure of a shape-inferred model."""

    def __init__(self, model: onnx.ModelProto):
        self.shapes = _tensor_table(model)
        self.initializers = {init.name for init in model.graph.initializer}
        producers = self.producers = {output: node for node in model.graph.node for output in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        # DequantizeLinear outputs: of an initializer (a quantized weight: its stored dtype) or of a QuantizeLinear
        self.dequantized_weights: dict[str, str] = {}
        self.dequantized_activations: set[str] = set()
        self.wide_activations: set[str] = set()  # of them, those quantized to 16 bits
        for node in model.graph.node:
            if node.op_type != "DequantizeLinear":
                continue
            source = node.input[0]
            if source in self.initializers:
                self.dequantized_weights[node.output[0]] = _stored(self.shapes[source][1])
            elif source in producers and producers[source].op_type == "QuantizeLinear":
                self.dequantized_activations.add(node.output[0])
                if self.shapes.get(source, ((), 0))[1] in INT16_TYPES:
                    self.wide_activations.add(node.output[0])

    def use(self, name: str) -> TensorUse:
        shape, elem = self.shapes.get(name, ((), 0))
        if name in self.dequantized_weights:
            return TensorUse(name, shape, self.dequantized_weights[name], constant=True)
        return TensorUse(name, shape, _stored(elem), constant=name in self.initializers)

    def is_constant(self, name: str) -> bool:
        return name in self.initializers or name in self.dequantized_weights

    def requantized(self, name: str) -> bool:
        readers = self.consumers.get(name, [])
        return bool(readers) and all(reader.op_type == "QuantizeLinear" for reader in readers)


def _runs_as_kernel(node: onnx.NodeProto, graph: _Graph, quantized: set[str]) -> bool:
    """Whether a Q/DQ of an activation stays a kernel of its own: a Q whose producer is not a quantized op, a DQ with
    a reader that is not (module docstring; `quantized`: the outputs of ops computing on quantized activations). Q/DQ
    of weights are folded."""
    source = node.input[0]
    if graph.is_constant(source):
        return False
    if node.op_type == "QuantizeLinear":
        producer = graph.producers.get(source)
        return producer is None or producer.output[0] not in quantized
    readers = graph.consumers.get(node.output[0], [])
    return any(reader.output[0] not in quantized for reader in readers) or not readers


def _float_dtype(node: onnx.NodeProto, graph: _Graph) -> str:
    elems = {graph.shapes.get(name, ((), 0))[1] for name in node.output}
    return "fp16" if elems & HALF_TYPES else "fp32"


def _activations(node: onnx.NodeProto, graph: _Graph) -> list[str]:
    return [name for name in node.input[:2 if node.op_type in QDQ_COMPUTE_OPS else None] if name and not graph.is_constant(name)]


def computes_quantized(node: onnx.NodeProto, graph: _Graph) -> bool:
    """Whether the runtime runs the node as a quantized kernel (module docstring)."""
    if node.op_type in INTEGER_OPS:
        return True
    if node.op_type in VIEW_OPS:
        return False
    activations = _activations(node, graph)
    quantized = bool(activations) and all(name in graph.dequantized_activations for name in activations)
    return quantized and (node.op_type in QDQ_COMPUTE_OPS or all(graph.requantized(name) for name in node.output))


def node_dtype(node: onnx.NodeProto, graph: _Graph) -> str:
    """The dtype a node computes in (module docstring)."""
    if not computes_quantized(node, graph):
        return _float_dtype(node, graph)
    return "fp16" if any(name in graph.wide_activations for name in _activations(node, graph)) else "int8"


def _conv(node: onnx.NodeProto, shapes) -> tuple[str, str, int, int]:
    """(kind, category, flops, gemm_n) of a Conv or ConvTranspose."""
    # operator-oriented int8 convs place their weight and bias elsewhere; ConvInteger has no bias
    weight_at, bias_at = {"QLinearConv": (3, 8), "ConvInteger": (1, len(node.input))}.get(node.op_type, (1, 2))
    weight, x, y = shapes[node.input[weight_at]][0], shapes[node.input[0]][0], shapes[node.output[0]][0]
    group = int(_attr(node, "group", 1))
    kernel = tuple(weight[2:])
    has_bias = len(node.input) > bias_at and bool(node.input[bias_at])
    transposed = node.op_type == "ConvTranspose"
    dilated = any(d > 1 for d in _attr(node, "dilations", []))
    kind, category = conv_kind(len(weight) - 2, group, x[1] if len(x) > 1 else -1, weight[1], kernel, dilated, transposed)
    if transposed:
        flops = conv_transpose_flops(numel(x), weight[1], kernel, numel(y), has_bias)
    else:
        flops = conv_flops(numel(y), weight[1], kernel, has_bias)
    return kind, category, flops, weight[0] // group


def _flops(node: onnx.NodeProto, category: str, shapes, out_elements: int, in_elements: int) -> int:
    op = node.op_type
    if category == "matmul":
        a_shape = shapes.get(node.input[0], ((), 0))[0]
        inner = a_shape[-1] if a_shape else 0
        if op == "Gemm" and int(_attr(node, "transA", 0)):
            inner = a_shape[0]
        return matmul_flops(out_elements, inner, op == "Gemm" and len(node.input) > 2 and bool(node.input[2]))
    if category == "resize":
        mode = _attr(node, "mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        return resize_flops(out_elements, mode, len(shapes.get(node.output[0], ((), 0))[0]) - 2)
    return simple_flops(category, out_elements, in_elements, op in TRANSCENDENTAL_OPS)


def _node_cost(node: onnx.NodeProto, graph: _Graph, dtype: str) -> NodeCost:
    op = node.op_type
    shapes = graph.shapes
    category, kind, gemm_n = op_category(op), op, 0
    inputs = tuple(name for name in node.input if name)
    if op in CONV_OPS or category == "matmul":
        missing = [n for n in inputs[:2] if n not in shapes]
        if missing:
            raise EffconvError(f"shape of '{missing[0]}' (input of {op} '{node.name}') is unknown.",
                               "export with fixed input shapes (effconv convert does).")
    reads = tuple(graph.use(name) for name in inputs)
    writes = tuple(graph.use(name) for name in node.output)
    out_elements = sum(numel(t.shape) for t in writes)
    in_elements = sum(numel(t.shape) for t in reads if not t.constant)
    if op in CONV_OPS:
        kind, category, flops, gemm_n = _conv(node, shapes)
    elif category == "view":
        flops = 0
    else:
        flops = _flops(node, category, shapes, out_elements, in_elements)
    if category == "matmul":
        gemm_n = max(shapes.get(node.output[0], ((0,), 0))[0][-1:] or (0,))
    upsample = 1.0
    if op in ("Resize", "Upsample") and node.input and node.output:
        upsample = upsample_factor(shapes.get(node.input[0], ((), 0))[0], shapes.get(node.output[0], ((), 0))[0])
    if op == "DepthToSpace":
        upsample = float(_attr(node, "blocksize", 1))
    return NodeCost(name=node.name or f"{op}_{node.output[0]}", op_type=op, kind=kind, category=category, dtype=dtype,
                    flops=int(flops), reads=reads, writes=writes, upsample=upsample, gemm_n=int(gemm_n))


def graph_cost(model: onnx.ModelProto, dtype: str | None = None) -> GraphCost:
    """Cost every node of a shape-inferred ONNX model in the dtype it computes in; `dtype` forces one everywhere."""
    graph = _Graph(model)
    dtypes = {node.output[0]: node_dtype(node, graph) for node in model.graph.node if node.output}
    quantized = {node.output[0] for node in model.graph.node if node.output and computes_quantized(node, graph)}
    nodes = []
    for node in model.graph.node:
        cost = _node_cost(node, graph, dtypes.get(node.output[0], "fp32") if node.output else "fp32")
        if node.op_type in CONVERSION_KINDS and _runs_as_kernel(node, graph, quantized):
            cost = runtime_conversion(cost)
        nodes.append(cost)
    inputs = tuple(graph.use(i.name) for i in model.graph.input if i.name not in graph.initializers)
    cost = GraphCost(nodes=nodes, inputs=inputs,
                     output_shapes={o.name: graph.shapes[o.name][0] for o in model.graph.output if o.name in graph.shapes})
    return cost.forced(dtype) if dtype else cost
