"""A Core ML ML program (.mlpackage) as per-node costs (costs.py's conventions), read from the saved program's
protobuf with coremltools on any OS: no compilation, no prediction. Every op output in an ML program carries its
tensor type and dims (https://apple.github.io/coremltools/mlmodel/Format/MIL.html), so shapes and dtypes are
the program's own.

MIL ops map onto the ONNX vocabulary of kinds and categories (table below, and docs/profile.md), with the same
FLOP rules; `silu` counts 5 per element (a sigmoid, 4, and a multiply), as ONNX and LiteRT export it. MIL weights
use PyTorch's layouts: conv [C_out, C_in / groups, *kernel], conv_transpose [C_in, C_out / groups, *kernel],
linear [out, in].

Compute dtype per op: its activations' dtype (an fp16 program computes in fp16, as the Neural Engine does; an
int8 activation makes it int8). `const` ops are weights, not nodes. A `constexpr_*` op (coremltools'
compressed weights: constexpr_affine_dequantize, constexpr_blockwise_shift_scale, constexpr_lut_to_dense, ...;
https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS18.compression)
is a weight stored int8 (sub-byte palettes are counted as int8, an upper bound): the op reading it computes in
fp16 with int8 weight bytes (W8A16).

A W8A8 program carries its int8 activations as `quantize` / `dequantize` ops around them. The Neural Engine fuses
each into the op beside it (coremltools guide, quantization 'Performance': W8A8 runs the int8 x int8 compute of A17
Pro and later Neural Engines, https://apple.github.io/coremltools/docs-guides/source/opt-quantization-perf.html), so
they are not costed as ops of their own: the op whose output is quantized writes int8, and the op reading a
dequantized int8 activation reads int8 and so computes in int8.
"""

from __future__ import annotations

from pathlib import Path

from effconv.errors import EffconvError, exception_text
from effconv.profile.graph.costs import (
    TRANSCENDENTAL_OPS, GraphCost, NodeCost, TensorUse, activation_dtype, conv_flops, conv_kind, conv_transpose_flops,
    matmul_flops, numel, op_category, resize_flops, settled, simple_flops, upsample_factor,
)

FIX = "re-create it with `effconv convert SPEC --to coreml`."
FUNCTION = "main"

# MIL op -> its kind in ONNX's vocabulary, which decides its cost category (costs.op_category); convs, matmuls and
# resizes are refined below.
OPS = {
    "add": "Add", "sub": "Sub", "mul": "Mul", "real_div": "Div", "floor_div": "Div", "maximum": "Max",
    "minimum": "Min", "abs": "Abs", "square": "Square", "relu": "Relu", "relu6": "Clip", "clip": "Clip",
    "leaky_relu": "LeakyRelu", "prelu": "PRelu", "floor": "Floor", "ceil": "Ceil", "round": "Round", "sign": "Sign",
    "select": "Where", "equal": "Equal", "not_equal": "NotEqual", "less": "Less", "greater": "Greater",
    "less_equal": "LessOrEqual", "greater_equal": "GreaterOrEqual", "logical_not": "Not", "logical_and": "And",
    "logical_or": "Or", "sigmoid": "Sigmoid", "silu": "Silu", "tanh": "Tanh", "exp": "Exp", "exp2": "Exp",
    "log": "Log", "sqrt": "Sqrt", "rsqrt": "Rsqrt", "inverse": "Reciprocal", "pow": "Pow", "erf": "Erf",
    "gelu": "Gelu", "softmax": "Softmax", "softplus": "Softplus", "elu": "Elu", "sin": "Sin", "cos": "Cos",
    "layer_norm": "LayerNormalization", "instance_norm": "InstanceNormalization", "batch_norm": "BatchNormalization",
    "l2_norm": "LpNormalization", "reduce_mean": "ReduceMean", "reduce_sum": "ReduceSum", "reduce_max": "ReduceMax",
    "reduce_min": "ReduceMin", "reduce_prod": "ReduceProd", "reduce_l2_norm": "ReduceL2",
    "reduce_l1_norm": "ReduceL1", "reduce_sum_square": "ReduceSumSquare", "reduce_argmax": "ArgMax",
    "reduce_argmin": "ArgMin", "transpose": "Transpose", "concat": "Concat", "stack": "Concat",
    "slice_by_index": "Slice", "slice_by_size": "Slice", "split": "Split", "pad": "Pad", "tile": "Tile",
    "gather": "Gather", "gather_nd": "GatherND", "gather_along_axis": "GatherElements", "scatter_nd": "ScatterND",
    "reverse": "ReverseSequence", "depth_to_space": "DepthToSpace", "pixel_shuffle": "DepthToSpace",
    "space_to_depth": "SpaceToDepth", "upsample_nearest_neighbor": "Resize", "resize_nearest_neighbor": "Resize",
    "upsample_bilinear": "Resize", "resize_bilinear": "Resize", "reshape": "Reshape", "reshape_like": "Reshape",
    "squeeze": "Squeeze", "expand_dims": "Unsqueeze", "identity": "Identity", "cast": "Cast", "shape": "Shape",
    "fill": "ConstantOfShape", "fill_like": "ConstantOfShape", "quantize": "QuantizeLinear",
    "dequantize": "DequantizeLinear", "conv": "Conv", "conv_transpose": "ConvTranspose", "linear": "Gemm",
    "matmul": "MatMul",
}
NEAREST = {"upsample_nearest_neighbor", "resize_nearest_neighbor"}
BLOCK_PARAMETERS = {"depth_to_space": "block_size", "pixel_shuffle": "upscale_factor"}
# MIL DataType names -> costs.py's stored dtypes; sub-byte and fp8 weights count as int8 (an upper bound: effconv writes int8)
DATA_TYPES = {"FLOAT32": "fp32", "FLOAT16": "fp16", "BFLOAT16": "fp16", "INT8": "int8", "UINT8": "int8",
              "INT4": "int8", "UINT4": "int8", "UINT3": "int8", "UINT2": "int8", "UINT1": "int8", "UINT6": "int8",
              "FLOAT8E4M3FN": "int8", "FLOAT8E5M2": "int8"}
OTHER_TYPES = {"FLOAT64": "float64", "INT16": "int16", "UINT16": "uint16", "INT32": "int32", "UINT32": "uint32",
               "INT64": "int64", "UINT64": "uint64", "BOOL": "bool"}
HANDLE = "int32"  # strings: counted as one word each, they never carry activations
FUSED_QUANTIZATION = ("quantize", "dequantize")
W8A8_NOTE = ("W8A8: quantize / dequantize ops fused into the ops beside them, which read and write int8 activations and "
             "compute int8 x int8 (Neural Engines from A17 Pro on).")


def _load(path: Path):
    from effconv.backends.coreml import export as coreml_backend

    try:
        spec = coreml_backend.program_spec(path)
    except EffconvError:
        raise
    except Exception as exc:  # coremltools raises plain Exception / protobuf errors / OSError for a damaged package
        raise EffconvError(f"cannot read '{path}' as a .mlpackage: {exception_text(exc, 200)}.", FIX) from None
    if not spec.HasField("mlProgram") or FUNCTION not in spec.mlProgram.functions:
        raise EffconvError(f"'{path}' is not an ML program with a '{FUNCTION}' function.", FIX)
    return spec


class _Values:
    """Every named value of the main block: its shape and stored dtype, whether it is a weight, and the small
    integer constants (groups, dilations, block sizes) that ops take as parameters."""

    def __init__(self, function, type_names: dict[int, str], quantized: set[str] = frozenset()):
        self.type_names = type_names
        self.quantized = quantized  # values a fused `quantize` turns int8 where they are written
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.stored: dict[str, str] = {}
        self.constants: set[str] = set()
        self.integers: dict[str, list[int]] = {}
        self.fused_from: dict[str, str] = {}  # a fused quantize/dequantize's output -> the activation it came from
        for value in function.inputs:
            self._record(value.name, value.type)

    def _dtype(self, data_type: int) -> str:
        name = self.type_names.get(data_type, "")
        return DATA_TYPES.get(name) or OTHER_TYPES.get(name, HANDLE)

    def _record(self, name: str, value_type) -> None:
        tensor = value_type.tensorType
        self.shapes[name] = tuple(int(d.constant.size) if d.HasField("constant") else -1 for d in tensor.dimensions)
        self.stored[name] = "int8" if name in self.quantized else self._dtype(tensor.dataType)

    def add_outputs(self, op) -> None:
        for output in op.outputs:
            self._record(output.name, output.type)
        if op.type == "const" or op.type.startswith("constexpr_"):
            for output in op.outputs:
                self.constants.add(output.name)
        if op.type == "const" and "val" in op.attributes:
            immediate = _immediate_integers(op.attributes["val"])
            if immediate:
                self.integers[op.outputs[0].name] = immediate
        if op.type == "dequantize" and self.stored.get(_argument(op, "input") or "") == "int8":
            self.stored[op.outputs[0].name] = "int8"
        if op.type in FUSED_QUANTIZATION and _argument(op, "input"):
            self.fused_from[op.outputs[0].name] = self.origin(_argument(op, "input"))
        if op.type.startswith("constexpr_"):
            # the payload (quantized data, palette indices) is an attribute (iOS 16/17 ops) or a const input (iOS 18)
            payload = [self._dtype(a.type.tensorType.dataType) for key, a in op.attributes.items() if key != "name"]
            payload += [self.stored[b.name] for argument in op.inputs.values() for b in argument.arguments if b.name]
            if "int8" in payload:
                for output in op.outputs:
                    self.stored[output.name] = "int8"

    def origin(self, name: str) -> str:
        """The activation a value is, through fused quantize/dequantize ops: the graph stays connected without them."""
        return self.fused_from.get(name, name)

    def use(self, name: str) -> TensorUse:
        return TensorUse(name, self.shapes.get(name, ()), self.stored.get(name, "fp32"), constant=name in self.constants)

    def integer(self, op, key: str, default: list[int]) -> list[int]:
        argument = op.inputs.get(key)
        if argument is None or not argument.arguments:
            return default
        binding = argument.arguments[0]
        if binding.name:
            return self.integers.get(binding.name, default)
        return _immediate_integers(binding.value) or default


def _immediate_integers(value) -> list[int]:
    tensor = value.immediateValue.tensor
    return [int(v) for v in (tensor.ints.values or tensor.bools.values)]


def _argument(op, key: str) -> str | None:
    argument = op.inputs.get(key)
    return argument.arguments[0].name if argument is not None and argument.arguments else None


def _conv(op, values: _Values) -> tuple[str, str, int, int]:
    """(kind, category, flops, gemm_n) of a conv or conv_transpose, in PyTorch's weight layout."""
    x, y = values.shapes[_argument(op, "x")], values.shapes[op.outputs[0].name]
    weight = values.shapes[_argument(op, "weight")]
    groups = values.integer(op, "groups", [1])[0]
    kernel = weight[2:]
    has_bias = _argument(op, "bias") is not None
    dilated = any(d > 1 for d in values.integer(op, "dilations", []))
    transposed = op.type == "conv_transpose"
    channels = x[1] if len(x) > 1 else -1
    kind, category = conv_kind(len(weight) - 2, groups, channels, weight[1], kernel, dilated, transposed)
    if transposed:
        return kind, category, conv_transpose_flops(numel(x), weight[1], kernel, numel(y), has_bias), weight[1]
    return kind, category, conv_flops(numel(y), weight[1], kernel, has_bias), weight[0] // max(groups, 1)


def _matmul_flops(op, values: _Values, out_elements: int) -> int:
    x = values.shapes[_argument(op, "x")]
    if op.type == "linear":
        return matmul_flops(out_elements, x[-1], _argument(op, "bias") is not None)
    transposed = bool(values.integer(op, "transpose_x", [0])[0]) if "transpose_x" in op.inputs else False
    return matmul_flops(out_elements, x[-2] if transposed else x[-1], False)


def _node(op, values: _Values, notes: list[str]) -> NodeCost:
    known = OPS.get(op.type)
    if known is None:
        notes.append(f"MIL op {op.type} has no cost rule in effconv: costed as elementwise (1 FLOP per output element).")
    kind = known or op.type
    category, transcendental = op_category(kind) if known else "elementwise", kind in TRANSCENDENTAL_OPS
    reads = tuple(values.use(values.origin(b.name)) for argument in op.inputs.values() for b in argument.arguments if b.name)
    writes = tuple(values.use(output.name) for output in op.outputs)
    out_elements = sum(numel(t.shape) for t in writes)
    in_elements = sum(numel(t.shape) for t in reads if not t.constant)
    gemm_n, upsample = 0, 1.0
    if category == "conv":
        kind, category, flops, gemm_n = _conv(op, values)
    elif category == "matmul":
        flops = _matmul_flops(op, values, out_elements)
        gemm_n = writes[0].shape[-1] if writes[0].shape else 0
    elif category == "resize":
        mode = "nearest" if op.type in NEAREST else "linear"
        flops = resize_flops(out_elements, mode, len(writes[0].shape) - 2)
        upsample = upsample_factor(values.shapes[_argument(op, "x")], writes[0].shape)
    else:
        flops = simple_flops(category, out_elements, in_elements, transcendental) + (out_elements if op.type == "silu" else 0)
    if op.type in BLOCK_PARAMETERS:
        upsample = float(values.integer(op, BLOCK_PARAMETERS[op.type], [1])[0])
    return NodeCost(name=writes[0].name if writes else op.type, op_type=op.type, kind=kind, category=category,
                    dtype=activation_dtype(reads, writes), flops=int(flops), reads=reads, writes=writes,
                    upsample=upsample, gemm_n=int(gemm_n))


def mlprogram_cost(path: Path) -> GraphCost:
    """Cost every op of the ML program's main function, each in the dtype it computes in."""
    spec = _load(path)
    from coremltools.proto import MIL_pb2  # importable once _load has imported coremltools (quietly)

    function = spec.mlProgram.functions[FUNCTION]
    block = function.block_specializations.get(function.opset)
    if block is None:
        raise EffconvError(f"'{path}' has no block for its opset {function.opset}.", FIX)
    quantized = {_argument(op, "input") for op in block.operations if op.type == "quantize"} - {None}
    values = _Values(function, {value: name for name, value in MIL_pb2.DataType.items()}, quantized)
    nodes = []
    notes = [W8A8_NOTE] if any(op.type in FUSED_QUANTIZATION for op in block.operations) else []
    try:
        for op in block.operations:
            values.add_outputs(op)
            if op.type not in FUSED_QUANTIZATION and op.type != "const" and not op.type.startswith("constexpr_"):
                nodes.append(_node(op, values, notes))
    except (KeyError, IndexError) as exc:  # an op that reads a value the program never defines
        raise EffconvError(f"'{path}' is not a consistent ML program: {exception_text(exc, 200)}.", FIX) from None
    return GraphCost(nodes=settled(nodes), inputs=tuple(values.use(value.name) for value in function.inputs),
                     output_shapes={name: values.shapes[name] for name in block.outputs if name in values.shapes},
                     notes=tuple(dict.fromkeys(notes)))
