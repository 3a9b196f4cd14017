"""Cost model: FLOPs equal the analytic counts, bytes scale with dtype, op kinds and peak memory are right."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from effconv.profile.graph.onnx import graph_cost


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return onnx.shape_inference.infer_shapes(model)


def _weight(name, shape, dtype=np.float32):
    return numpy_helper.from_array(np.zeros(shape, dtype=dtype), name)


def _value(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _conv3d(c_in, c_out, kernel, group=1, size=(5, 6, 7), dilation=1):
    pad = dilation * (kernel // 2)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=group, pads=[pad] * 6,
                            kernel_shape=[kernel] * 3, dilations=[dilation] * 3, name="conv")
    weights = [_weight("w", (c_out, c_in // group, kernel, kernel, kernel)), _weight("b", (c_out,))]
    return _model([node], [_value("x", [1, c_in, *size])], [_value("y", None)], weights)


def test_dense_conv3d_flops_equal_two_per_multiply_add_plus_bias():
    cost = graph_cost(_conv3d(4, 8, 3)).nodes[0]
    outputs = 1 * 8 * 5 * 6 * 7
    assert cost.kind == "Conv3d" and cost.category == "conv"
    assert cost.flops == 2 * outputs * 4 * 27 + outputs


def test_depthwise_conv3d_flops_count_one_input_channel_per_output():
    cost = graph_cost(_conv3d(16, 16, 5, group=16)).nodes[0]
    outputs = 16 * 5 * 6 * 7
    assert cost.kind == "DepthwiseConv3d" and cost.category == "conv_dw"
    assert cost.flops == 2 * outputs * 125 + outputs


def test_pointwise_and_dilated_convs_get_their_own_kinds():
    assert graph_cost(_conv3d(8, 4, 1)).nodes[0].kind == "PointwiseConv3d"
    assert graph_cost(_conv3d(4, 4, 3, dilation=2)).nodes[0].kind == "DilatedConv3d"


def test_matmul_flops_are_two_times_outputs_times_inner_dimension():
    node = helper.make_node("MatMul", ["a", "b"], ["c"], name="mm")
    model = _model([node], [_value("a", [2, 3, 4])], [_value("c", None)], [_weight("b", (4, 5))])
    cost = graph_cost(model).nodes[0]
    assert cost.category == "matmul"
    assert cost.flops == 2 * (2 * 3 * 5) * 4


def test_bytes_are_weights_plus_activations_in_and_out():
    cost = graph_cost(_conv3d(4, 8, 3), "fp32").nodes[0]
    assert cost.weight_bytes == 4 * (8 * 4 * 27 + 8)
    assert cost.input_bytes == 4 * (4 * 5 * 6 * 7)
    assert cost.output_bytes == 4 * (8 * 5 * 6 * 7)


@pytest.mark.parametrize("dtype, ratio", [("fp16", 2), ("int8", 4)])
def test_bytes_halve_for_fp16_and_quarter_for_int8(dtype, ratio):
    model = _conv3d(4, 8, 3)
    full, reduced = graph_cost(model, "fp32"), graph_cost(model, dtype)
    assert full.bytes == ratio * reduced.bytes
    assert full.flops == reduced.flops


def test_node_dtype_follows_weights_and_qdq_nodes():
    assert graph_cost(_conv3d(4, 4, 3)).dtype == "fp32"
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1, 1], name="c")
    half = _model([node], [_value("x", [1, 4, 2, 2, 2], TensorProto.FLOAT16)], [_value("y", None, TensorProto.FLOAT16)],
                  [_weight("w", (4, 4, 1, 1, 1), np.float16)])
    assert graph_cost(half).dtype == "fp16"
    # a DequantizeLinear on the weight only is weight-only int8: float compute on int8 weight bytes
    dq = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], name="dq")
    weight_only = _model([dq, node], [_value("x", [1, 4, 2, 2, 2])], [_value("y", None)],
                         [_weight("q", (4, 4, 1, 1, 1), np.int8), _weight("s", (), np.float32), _weight("z", (), np.int8)])
    conv = graph_cost(weight_only).nodes[1]
    assert graph_cost(weight_only).dtype == "fp32" and conv.dtype == "fp32"
    assert conv.weight_bytes == 16 and conv.input_bytes == 4 * 32


def test_resize_records_its_upsample_factor_and_views_move_no_bytes():
    scales = numpy_helper.from_array(np.array([1, 1, 1, 2, 4], dtype=np.float32), "scales")
    resize = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest", name="up")
    reshape_shape = numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape")
    reshape = helper.make_node("Reshape", ["y", "shape"], ["z"], name="flat")
    model = _model([resize, reshape], [_value("x", [1, 2, 3, 4, 4])], [_value("z", None)], [scales, reshape_shape])
    up, flat = graph_cost(model).nodes
    assert up.upsample == 4 and up.category == "resize" and up.flops == 0
    assert flat.category == "view" and flat.bytes == 0


def test_peak_activation_frees_tensors_after_their_last_reader():
    relu1 = helper.make_node("Relu", ["x"], ["a"], name="r1")
    relu2 = helper.make_node("Relu", ["a"], ["b"], name="r2")
    relu3 = helper.make_node("Relu", ["b"], ["c"], name="r3")
    model = _model([relu1, relu2, relu3], [_value("x", [1, 1000])], [_value("c", None)], [])
    # at most two 1000-float tensors are alive at once: the input of a node and its output
    assert graph_cost(model, "fp32").peak_activation_bytes == 2 * 4000


def test_conv_flops_of_an_exported_decoder_match_its_torch_modules(tmp_path):
    from effconv.backends.onnx.export import export
    from effconv.models.turbo_vaed.decoder import TurboVAEDDecoder
    from effconv.profile.graph.onnx import load_graph

    module = TurboVAEDDecoder(latent_channels=8, widths=(16, 16, 8), layers=(1, 1, 1), separable=(True, True, False),
                              upsample_factors=((2, 2, 2), (1, 2, 2))).eval()
    example = torch.randn(1, 8, 2, 4, 4)
    expected = []

    def count(conv, _, output):
        macs = output.numel() * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size)
        expected.append(2 * macs + output.numel())

    for conv in [m for m in module.modules() if isinstance(m, torch.nn.Conv3d)]:
        conv.register_forward_hook(count)
    with torch.no_grad():
        module(example)
    analytic = sorted(expected)
    path = tmp_path / "student.onnx"
    export(module, example, path, "latent", "video")
    convs = [n for n in graph_cost(load_graph(path)).nodes if n.op_type == "Conv"]
    assert len(analytic) >= 10 and sorted(n.flops for n in convs) == analytic
