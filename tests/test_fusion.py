"""Fusion-aware costing: each runtime's rules (effconv/device_profiles/fusion/) group ops into the kernels it runs, a
fused op moves no bytes for the tensors its kernel keeps on chip and pays no dispatch, and the estimate never grows."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from effconv.errors import EffconvError
from effconv.profile.device.fusion_rules import FusionRules, load_rules, rule_names
from effconv.profile.device.profiles import DeviceProfile, load_device
from effconv.profile.estimate.fusion import fuse
from effconv.profile.estimate.latency import estimate_cost
from effconv.profile.graph.targets import resolve
from effconv.profile.graph.onnx import graph_cost

from conftest import SPECS


def _figure(value):
    return {"value": value, "source": "derived: test", "uncertainty": 0.0}


def _device(fusion: dict | None = None, backend: str = "onnx", lint: str = "cpu") -> DeviceProfile:
    unit = {"kind": "cpu", "peak_gops": {"fp32": _figure(100.0)}, "op_overhead_us": 10.0,
            "lint_units": {backend: [lint]}, **({"fusion": fusion} if fusion else {})}
    return DeviceProfile.model_validate({
        "name": "toy", "description": "test device", "soc": "none", "backends": [backend],
        "memory": {"ram_gb": _figure(1), "bandwidth_gbps": _figure(10)}, "units": {"cpu": unit},
        "fallback_us": _figure(100.0), "model_uncertainty": 0.5, "validation": "test",
        "sources": [{"title": "t", "url": "https://example.org"}]})


def _graph(nodes, outputs=("y",), channels=8, size=16) -> onnx.ModelProto:
    """A (1, C, H, W) image graph with 3x3 conv weights w1, w2 and a zero pad constant."""
    inits = [numpy_helper.from_array(np.zeros((channels, channels, 3, 3), np.float32), name) for name in ("w1", "w2")]
    inits.append(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"))
    shape = [1, channels, size, size]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)]))


def _conv(x, y, weight="w1", pads=(1, 1, 1, 1)):
    return helper.make_node("Conv", [x, weight], [y], pads=list(pads), kernel_shape=[3, 3], name=y)


def _by_name(estimate):
    return {op.node.name: op for op in estimate.ops}


CONV_RELU = [_conv("x", "a"), helper.make_node("Relu", ["a"], ["y"], name="y")]


def test_every_rules_file_loads_and_names_its_sources():
    assert {"coreml-ane", "qnn-htp", "xnnpack", "onnxruntime-cpu"} <= set(rule_names())
    for name in rule_names():
        rules = load_rules(name)
        assert rules.name == name and rules.not_fused
        assert all(len(rule.source) > 20 for rule in rules.epilogues)


@pytest.mark.parametrize("rules", ["xnnpack", "onnxruntime-cpu", "qnn-htp", "coreml-ane"])
def test_a_relu_after_a_conv_runs_in_the_conv_kernel_in_every_runtime(rules):
    cost = graph_cost(_graph(CONV_RELU))
    fused = _by_name(estimate_cost(cost, _device({"onnx": rules})))
    unfused = _by_name(estimate_cost(cost, _device()))
    assert fused["y"].node.kernel == "a" and not fused["y"].node.dispatched
    # the conv no longer writes `a`, the relu no longer reads it: both sides of the round trip are gone
    activation = 8 * 16 * 16 * 4
    assert unfused["a"].node.bytes - fused["a"].node.bytes == activation
    assert unfused["y"].node.bytes - fused["y"].node.bytes == activation
    assert fused["y"].ms < unfused["y"].ms and fused["y"].node.flops == unfused["y"].node.flops


def test_a_conv_output_read_twice_is_not_fused_where_the_rule_needs_a_lone_consumer():
    """SiLU after a conv: onnxruntime fuses no activation into the conv (its output feeds Sigmoid and Mul) but runs
    Sigmoid and Mul as one QuickGelu kernel that reads the conv output once."""
    nodes = [_conv("x", "a"), helper.make_node("Sigmoid", ["a"], ["s"], name="s"),
             helper.make_node("Mul", ["a", "s"], ["y"], name="y")]
    ops = _by_name(estimate_cost(graph_cost(_graph(nodes)), _device({"onnx": "onnxruntime-cpu"})))
    assert ops["s"].node.dispatched and ops["s"].node.kernel == "s"
    assert ops["y"].node.kernel == "s"
    activation = 8 * 16 * 16 * 4
    assert ops["y"].node.bytes == activation  # writes y; reads `a` (already read by the kernel) and `s` on chip
    assert ops["a"].node.output_bytes == activation  # the conv output is still written: two kernels read it


def test_a_pad_in_front_of_a_conv_is_its_halo_read_in_xnnpack_and_a_copy_in_core_ml():
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="p"), _conv("p", "y", pads=(0, 0, 0, 0))]
    cost = graph_cost(_graph(nodes))
    halo = _by_name(estimate_cost(cost, _device({"onnx": "xnnpack"})))
    assert halo["p"].node.bytes == 0 and halo["p"].ms == 0 and halo["p"].node.kernel == "y"
    copied = _by_name(estimate_cost(cost, _device({"onnx": "coreml-ane"})))
    assert copied["p"].node.bytes > 0 and copied["p"].node.dispatched


def test_a_concat_of_kernel_outputs_is_written_in_place_on_the_htp_and_copied_in_xnnpack():
    """The convolutions write into the slices of the Concat's output on the HTP: the Concat launches nothing and moves
    no bytes, while its readers still read its output. A Concat of a graph input has no producer to write in place."""
    concat = [_conv("x", "a"), _conv("x", "b", weight="w2"), helper.make_node("Concat", ["a", "b"], ["y"], axis=1, name="y")]
    cost = graph_cost(_graph(concat))
    in_place = _by_name(estimate_cost(cost, _device({"onnx": "qnn-htp"}, lint="qnn")))
    assert in_place["y"].ms == 0 and in_place["y"].node.bytes == 0 and not in_place["y"].node.dispatched
    assert in_place["a"].node.output_bytes == 8 * 16 * 16 * 4  # the producers still write their slice
    copied = _by_name(estimate_cost(cost, _device({"onnx": "xnnpack"})))
    assert copied["y"].node.bytes == 2 * 2 * 8 * 16 * 16 * 4 and copied["y"].node.dispatched
    of_input = [_conv("x", "a"), helper.make_node("Concat", ["x", "a"], ["y"], axis=1, name="y")]
    assert _by_name(estimate_cost(graph_cost(_graph(of_input)), _device({"onnx": "qnn-htp"}, lint="qnn")))["y"].ms > 0


def test_profile_counts_the_concats_written_in_place(tmp_path):
    from effconv.profile.run import run as profile

    concat = [_conv("x", "a"), _conv("x", "b", weight="w2"), helper.make_node("Concat", ["a", "b"], ["y"], axis=1, name="y")]
    onnx.save(_graph(concat), tmp_path / "concat.onnx")
    result = profile(tmp_path / "concat.onnx", "galaxy-s24")
    fusion = result.to_dict()["fusion"]
    assert fusion["in_place_ops"] == 1 and fusion["kernels"] == 2
    assert result.estimate.total_ms < fusion["unfused_ms"]


def test_an_op_never_joins_a_kernel_that_would_wait_on_it():
    """`y = a + b` where b comes from a conv that reads a: fusing the add into a's kernel would make that kernel
    wait for b, which waits for a. It stays a kernel of its own (or joins b's)."""
    nodes = [_conv("x", "a"), _conv("a", "b", weight="w2"), helper.make_node("Add", ["a", "b"], ["y"], name="y")]
    ops = _by_name(estimate_cost(graph_cost(_graph(nodes)), _device({"onnx": "coreml-ane"})))
    assert ops["y"].node.kernel in ("y", "b")


def test_quantize_dequantize_pairs_cost_no_dispatch_on_the_htp():
    scale, zero = numpy_helper.from_array(np.array(0.1, np.float32), "sc"), numpy_helper.from_array(np.array(0, np.int8), "zp")
    nodes = [helper.make_node("QuantizeLinear", ["x", "sc", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["dq"], name="dq"), _conv("dq", "y")]
    model = _graph(nodes)
    model.graph.initializer.extend([scale, zero])
    cost = graph_cost(onnx.shape_inference.infer_shapes(model))
    free = _by_name(estimate_cost(cost, _device({"onnx": "qnn-htp"}, lint="qnn")))
    paid = _by_name(estimate_cost(cost, _device(lint="qnn")))
    assert free["dq"].ms == 0 and paid["dq"].ms > 0


def test_fusion_only_lowers_an_estimate_and_keeps_every_flop(tmp_path):
    cost = resolve(SPECS / "wan21-tiny.yaml", tmp_path).cost
    device = load_device("galaxy-s24").for_backend("onnx")
    fused, unfused = estimate_cost(cost, device), estimate_cost(cost, device, fused=False)
    assert fused.total_ms <= unfused.total_ms
    assert fused.flops == unfused.flops
    assert len(fused.kernels()) <= len(unfused.kernels())


def test_rules_are_validated_like_any_profile():
    with pytest.raises(ValueError, match="unknown op category"):
        FusionRules.model_validate({"name": "x", "runtime": "r", "not_fused": "nothing",
                                    "epilogues": [{"into": ["convs"], "fuse": ["Relu"], "source": "a source"}]})
    with pytest.raises(EffconvError, match="unknown fusion rules"):
        load_rules("no-such-runtime")
    with pytest.raises(Exception, match="unknown fusion rules"):
        _device({"onnx": "no-such-runtime"})
    with pytest.raises(Exception, match="that lint_units does not"):
        _device({"tflite": "xnnpack"})


def test_fuse_without_rules_changes_nothing():
    cost = graph_cost(_graph(CONV_RELU))
    assert fuse(cost, ["cpu"] * len(cost.nodes), {}).cost.nodes == cost.nodes
