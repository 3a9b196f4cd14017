"""A .tflite flatbuffer as per-node costs (costs.py's conventions): the ops, tensors, shapes and dtypes of the file
that ships, read with the LiteRT flatbuffer schema that `ai-edge-litert` packages (no interpreter, so no delegate
folds ops away).

LiteRT ops map onto the ONNX vocabulary of kinds and categories (table below, and docs/profile.md). Layouts are
LiteRT's (https://ai.google.dev/edge/litert/models/ops_compatibility, schema: tensorflow/compiler/mlir/lite/schema/
schema.fbs): activations NHWC / NDHWC; CONV_2D weights [O, KH, KW, I/groups]; DEPTHWISE_CONV_2D [1, KH, KW, C*M];
CONV_3D [KD, KH, KW, I/groups, O]; TRANSPOSE_CONV [O, KH, KW, I] and CONV_3D_TRANSPOSE [KD, KH, KW, O, I], both
after an output-shape input; FULLY_CONNECTED [O, I]. FLOPs follow costs.py: a conv costs 2 x outputs x (C_in /
groups) x prod(kernel) (+ outputs for a bias), so a Conv3d that effconv's rewrite turned into Conv2d taps costs the
same multiply-adds plus one bias add per tap.

Compute dtype per op: int8 when it reads or writes an int8 (or uint8) activation, fp16 when fp16, else fp32.
QUANTIZE and DEQUANTIZE of an activation are kernels LiteRT runs (its int8 ops read and write int8 themselves, so a
conversion in the file is a real pass over the tensor), costed as one elementwise pass. A DEQUANTIZE of a constant (a weight-only int8 or fp16 weight) makes
its output a constant stored in the narrower dtype, so the float op that reads it is costed in float with int8
(or fp16) weight bytes. An op this table does not know is costed as elementwise and named in a note.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from effconv.errors import EffconvError, exception_text, missing_extra
from effconv.profile.graph.costs import (
    CONVERSION_KINDS, TRANSCENDENTAL_OPS, GraphCost, NodeCost, TensorUse, activation_dtype, conv_flops, conv_kind, conv_transpose_flops,
    matmul_flops, numel, op_category, resize_flops, runtime_conversion, settled, simple_flops, upsample_factor,
)
from effconv.quiet import quiet_imports

SCHEMA_MODULE = "ai_edge_litert.schema_py_generated"
FIX = "re-create it with `effconv convert SPEC --to tflite`."

# LiteRT op -> its kind in ONNX's vocabulary, which decides its cost category (costs.op_category); convs, matmuls and
# resizes are refined below.
OPS = {
    "ADD": "Add", "SUB": "Sub", "MUL": "Mul", "DIV": "Div", "MAXIMUM": "Max", "MINIMUM": "Min",
    "SQUARED_DIFFERENCE": "SquaredDifference", "ABS": "Abs", "NEG": "Neg", "SQUARE": "Square", "RELU": "Relu",
    "RELU6": "Clip", "RELU_N1_TO_1": "Clip", "RELU_0_TO_1": "Clip", "LEAKY_RELU": "LeakyRelu", "PRELU": "PRelu",
    "FLOOR": "Floor", "CEIL": "Ceil", "ROUND": "Round", "SIGN": "Sign", "SELECT": "Where", "SELECT_V2": "Where",
    "ADD_N": "Sum", "EQUAL": "Equal", "NOT_EQUAL": "NotEqual", "LESS": "Less", "LESS_EQUAL": "LessOrEqual",
    "GREATER_EQUAL": "GreaterOrEqual", "GREATER": "Greater", "LOGICAL_NOT": "Not", "LOGICAL_AND": "And",
    "LOGICAL_OR": "Or", "LOGISTIC": "Sigmoid", "TANH": "Tanh", "EXP": "Exp", "LOG": "Log", "SQRT": "Sqrt",
    "RSQRT": "Rsqrt", "POW": "Pow", "GELU": "Gelu", "HARD_SWISH": "HardSwish", "SOFTMAX": "Softmax",
    "LOG_SOFTMAX": "LogSoftmax", "SIN": "Sin", "COS": "Cos", "ELU": "Elu", "L2_NORMALIZATION": "LpNormalization",
    "MEAN": "ReduceMean", "SUM": "ReduceSum", "REDUCE_MAX": "ReduceMax", "REDUCE_MIN": "ReduceMin",
    "REDUCE_PROD": "ReduceProd", "ARG_MAX": "ArgMax", "ARG_MIN": "ArgMin", "TRANSPOSE": "Transpose",
    "CONCATENATION": "Concat", "PACK": "Concat", "UNPACK": "Split", "SLICE": "Slice", "STRIDED_SLICE": "Slice",
    "SPLIT": "Split", "SPLIT_V": "Split", "PAD": "Pad", "PADV2": "Pad", "MIRROR_PAD": "Pad", "TILE": "Tile",
    "BROADCAST_TO": "Expand", "GATHER": "Gather", "GATHER_ND": "GatherND", "SCATTER_ND": "ScatterND",
    "REVERSE_V2": "ReverseSequence", "DEPTH_TO_SPACE": "DepthToSpace", "SPACE_TO_DEPTH": "SpaceToDepth",
    "RESIZE_NEAREST_NEIGHBOR": "Resize", "RESIZE_BILINEAR": "Resize", "RESHAPE": "Reshape", "SQUEEZE": "Squeeze",
    "EXPAND_DIMS": "Unsqueeze", "QUANTIZE": "QuantizeLinear", "DEQUANTIZE": "DequantizeLinear", "CAST": "Cast",
    "SHAPE": "Shape", "FILL": "ConstantOfShape", "ZEROS_LIKE": "ConstantOfShape", "CONV_2D": "Conv2d",
    "DEPTHWISE_CONV_2D": "DepthwiseConv2d", "CONV_3D": "Conv3d", "TRANSPOSE_CONV": "ConvTranspose2d",
    "CONV_3D_TRANSPOSE": "ConvTranspose3d", "FULLY_CONNECTED": "Gemm", "BATCH_MATMUL": "MatMul",
}
RESIZE_MODES = {"RESIZE_NEAREST_NEIGHBOR": "nearest", "RESIZE_BILINEAR": "linear"}
# LiteRT tensor types -> costs.py's stored dtypes. int4 weights are counted as int8 (an upper bound: effconv writes int8)
DATA_TYPES = {"FLOAT32": "fp32", "FLOAT16": "fp16", "BFLOAT16": "fp16", "INT8": "int8", "UINT8": "int8", "INT4": "int8"}
OTHER_TYPES = {"FLOAT64": "float64", "INT16": "int16", "UINT16": "uint16", "INT32": "int32", "UINT32": "uint32",
               "INT64": "int64", "UINT64": "uint64", "BOOL": "bool", "COMPLEX64": "complex64", "COMPLEX128": "complex128"}
HANDLE = "int32"  # string, resource and variant tensors: counted as one word each, they never carry activations


def _schema():
    try:
        with quiet_imports():
            return importlib.import_module(SCHEMA_MODULE)
    except ImportError:
        raise missing_extra("ai-edge-litert", "tflite") from None


def _names(enum_class) -> dict[int, str]:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_")}


def _read(path: Path, schema):
    buffer = Path(path).read_bytes()
    if len(buffer) < 8 or not schema.Model.ModelBufferHasIdentifier(buffer, 0):
        raise EffconvError(f"'{path}' is not a TFLite flatbuffer (no TFL3 identifier).", FIX)
    try:
        model = schema.ModelT.InitFromPackedBuf(buffer, 0)
    except Exception as exc:  # a truncated or corrupt flatbuffer fails anywhere in the generated reader
        raise EffconvError(f"cannot read '{path}' as a .tflite: {exception_text(exc, 200)}.", FIX) from None
    if not model.subgraphs:
        raise EffconvError(f"'{path}' holds no subgraph.", FIX)
    return model


class _Tensors:
    """The main subgraph's tensors as costs.py sees them. A DEQUANTIZE of a constant (weight-only int8) hands its
    reader a weight still stored in the constant's narrow dtype."""

    def __init__(self, subgraph, type_names: dict[int, str]):
        self.subgraph = subgraph
        produced = {index for op in subgraph.operators or [] for index in _indices(op.outputs)}
        self.computed = produced | set(_indices(subgraph.inputs))
        self.type_names = type_names
        self.dequantized_weights: dict[int, str] = {}

    def stored(self, index: int) -> str:
        name = self.type_names.get(self.subgraph.tensors[index].type, "")
        return DATA_TYPES.get(name) or OTHER_TYPES.get(name, HANDLE)

    def shape(self, index: int) -> tuple[int, ...]:
        shape = self.subgraph.tensors[index].shape
        return tuple(int(d) for d in shape) if shape is not None else ()

    def use(self, index: int) -> TensorUse:
        name = self.subgraph.tensors[index].name
        label = name.decode() if isinstance(name, bytes) else str(name)
        tensor_name = f"{index}:{label}"
        if index in self.dequantized_weights:
            return TensorUse(tensor_name, self.shape(index), self.dequantized_weights[index], constant=True)
        return TensorUse(tensor_name, self.shape(index), self.stored(index), constant=index not in self.computed)


def _indices(values) -> list[int]:
    """Operator inputs/outputs; -1 marks an optional input left out."""
    return [int(v) for v in (values if values is not None else []) if int(v) >= 0]


def _conv(name: str, op, tensors: _Tensors) -> tuple[str, str, int, int]:
    """(kind, category, flops, gemm_n) of a LiteRT convolution, in its own weight layout (module docstring)."""
    inputs = [int(v) for v in op.inputs]
    transposed = name in ("TRANSPOSE_CONV", "CONV_3D_TRANSPOSE")
    x_at, w_at, b_at = (2, 1, 3) if transposed else (0, 1, 2)
    x, w = tensors.shape(inputs[x_at]), tensors.shape(inputs[w_at])
    y = tensors.shape(int(op.outputs[0]))
    has_bias = len(inputs) > b_at and inputs[b_at] >= 0
    options = op.builtinOptions
    dilations = [getattr(options, f"dilation{axis}Factor", 1) for axis in ("D", "H", "W")] if options else []
    dilated = any(d > 1 for d in dilations)
    channels = x[-1] if x else 0
    if name == "DEPTHWISE_CONV_2D":
        kernel = w[1:3]
        kind, category = conv_kind(2, channels, channels, 1, kernel, dilated, False)
        return kind, category, conv_flops(numel(y), 1, kernel, has_bias), w[-1] // max(channels, 1)
    if name == "CONV_2D":
        out_channels, kernel, in_per_group, spatial = w[0], w[1:3], w[-1], 2
    elif name == "CONV_3D":
        out_channels, kernel, in_per_group, spatial = w[4], w[:3], w[3], 3
    elif name == "TRANSPOSE_CONV":
        out_channels, kernel, in_per_group, spatial = w[0], w[1:3], w[-1], 2
    else:  # CONV_3D_TRANSPOSE
        out_channels, kernel, in_per_group, spatial = w[3], w[:3], w[4], 3
    groups = max(channels // max(in_per_group, 1), 1)
    kind, category = conv_kind(spatial, groups, channels, in_per_group, kernel, dilated, transposed)
    if transposed:
        flops = conv_transpose_flops(numel(x), out_channels // groups, kernel, numel(y), has_bias)
    else:
        flops = conv_flops(numel(y), in_per_group, kernel, has_bias)
    return kind, category, flops, out_channels // groups


def _matmul_flops(name: str, op, tensors: _Tensors) -> int:
    inputs = [int(v) for v in op.inputs]
    x, y = tensors.shape(inputs[0]), tensors.shape(int(op.outputs[0]))
    if name == "FULLY_CONNECTED":
        inner = tensors.shape(inputs[1])[-1]
        return matmul_flops(numel(y), inner, len(inputs) > 2 and inputs[2] >= 0)
    adjoint = bool(op.builtinOptions and op.builtinOptions.adjX)
    return matmul_flops(numel(y), x[-2] if adjoint else x[-1], False)


def _node(index: int, name: str, op, tensors: _Tensors, notes: list[str]) -> NodeCost:
    known = OPS.get(name)
    if known is None:
        notes.append(f"LiteRT op {name} has no cost rule in effconv: costed as elementwise (1 FLOP per output element).")
    kind = known or name
    category, transcendental = op_category(kind) if known else "elementwise", kind in TRANSCENDENTAL_OPS
    reads = [tensors.use(i) for i in _indices(op.inputs)]
    writes = [tensors.use(i) for i in _indices(op.outputs)]
    out_elements = sum(numel(t.shape) for t in writes)
    in_elements = sum(numel(t.shape) for t in reads if not t.constant)
    gemm_n, upsample = 0, 1.0
    if category in ("conv", "conv_dw"):
        kind, category, flops, gemm_n = _conv(name, op, tensors)
    elif category == "matmul":
        flops = _matmul_flops(name, op, tensors)
        gemm_n = writes[0].shape[-1] if writes and writes[0].shape else 0
    elif category == "resize":
        flops = resize_flops(out_elements, RESIZE_MODES[name], len(writes[0].shape) - 2)
        upsample = upsample_factor(reads[0].shape, writes[0].shape)
    else:
        flops = simple_flops(category, out_elements, in_elements, transcendental)
    if name == "DEPTH_TO_SPACE" and op.builtinOptions is not None:
        upsample = float(op.builtinOptions.blockSize)
    # litert-torch names tensors after torch.export's tracing wrappers, not the model's modules: the op's position
    # in the file is what finds it again (e.g. in Netron)
    reads, writes = tuple(reads), tuple(writes)
    return NodeCost(name=f"{name}_{index}", op_type=name, kind=kind, category=category,
                    dtype=activation_dtype(reads, writes), flops=int(flops), reads=reads, writes=writes,
                    upsample=upsample, gemm_n=int(gemm_n))


def tflite_cost(path: Path) -> GraphCost:
    """Cost every op of the .tflite's main subgraph, each in the dtype it computes in."""
    schema = _schema()
    model = _read(path, schema)
    op_names = _names(schema.BuiltinOperator)
    subgraph = model.subgraphs[0]
    tensors = _Tensors(subgraph, _names(schema.TensorType))
    notes: list[str] = []
    if len(model.subgraphs) > 1:
        notes.append(f"'{Path(path).name}' has {len(model.subgraphs)} subgraphs; only the main one is costed.")
    nodes = []
    try:
        for index, op in enumerate(subgraph.operators or []):
            code = model.operatorCodes[op.opcodeIndex]
            name = op_names[max(code.builtinCode, code.deprecatedBuiltinCode)]
            if name == "CUSTOM":
                custom = code.customCode
                name = f"CUSTOM {custom.decode() if isinstance(custom, bytes) else custom}"
            inputs = _indices(op.inputs)
            if name == "DEQUANTIZE" and inputs and inputs[0] not in tensors.computed:
                tensors.dequantized_weights[int(op.outputs[0])] = tensors.stored(inputs[0])
            node = _node(index, name, op, tensors, notes)
            if node.kind in CONVERSION_KINDS and inputs and inputs[0] in tensors.computed:
                node = runtime_conversion(node)
            nodes.append(node)
    except (IndexError, TypeError, KeyError) as exc:  # an op pointing at a tensor or op code the file lacks
        raise EffconvError(f"'{path}' is not a consistent TFLite model: {exception_text(exc, 200)}.", FIX) from None
    graph_inputs = _in_argument_order(tuple(tensors.use(int(i)) for i in subgraph.inputs))
    graph_outputs = _in_argument_order(tuple(tensors.use(int(i)) for i in subgraph.outputs))
    return GraphCost(nodes=settled(nodes), inputs=graph_inputs, output_shapes={t.name: t.shape for t in graph_outputs},
                     notes=tuple(dict.fromkeys(notes)))


def _in_argument_order(tensors: tuple[TensorUse, ...]) -> tuple[TensorUse, ...]:
    """litert-torch names inputs `args_N` and outputs `output_N`, and lists them in another order (args_10 before
    args_2); the model's own order puts the latent first and the video first."""
    def position(tensor: TensorUse) -> int:
        found = re.search(r"(?:args|output)_(\d+)", tensor.name)
        return int(found[1]) if found else 0

    return tuple(sorted(tensors, key=position))
