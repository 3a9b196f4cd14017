"""`effconv quantize X.onnx --device galaxy-s24`: the QDQ form onnxruntime's QNN execution provider compiles for a
Snapdragon HTP, on a student of the shipped demo teacher calibrated with teacher latents of the bundled clip."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from effconv.backends.onnx.qnn import outside_node_units
from effconv.profile.graph.onnx import graph_cost, load_graph
from effconv.convert.stage import convert
from effconv.errors import VerificationFailed
from effconv.quantize.stage import quantize_artifact
from effconv.rewrite.stage import rewrite
from effconv.spec import load_spec
from effconv.video.clips import BUNDLED_CLIP

from conftest import SPECS

UINT8, UINT16, INT8 = onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.INT8


@pytest.fixture(scope="module")
def student_onnx(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("student")
    rewrite(load_spec(SPECS / "demo-teacher.yaml"), "demo", root)
    convert(load_spec(root / "demo-teacher-student.yaml"), "onnx", root / "onnx")
    return root / "onnx" / "demo-teacher-student.onnx"


def _zero_point_types(path: Path) -> dict[str, set[int]]:
    """The data types of the QuantizeLinear zero points (activations) and of the int weights a Conv reads through a
    DequantizeLinear (2-D or 3-D: convert's auto layout picks either by timing)."""
    model = onnx.load(str(path))
    initializers = {t.name: t for t in model.graph.initializer}
    stored = {node.output[0]: initializers[node.input[0]].data_type for node in model.graph.node
              if node.op_type == "DequantizeLinear" and node.input[0] in initializers}
    found = {"activations": set(), "weights": set()}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in initializers:
            found["activations"].add(initializers[node.input[2]].data_type)
        if node.op_type == "Conv" and node.input[1] in stored:
            found["weights"].add(stored[node.input[1]])
    return found


def test_qnn_w8a8_puts_every_op_in_a_node_unit_and_stays_close_to_float(student_onnx, tmp_path, cli):
    code, out, err = cli("quantize", student_onnx, "--device", "galaxy-s24", "--calib", BUNDLED_CLIP, "--samples", "6",
                         "--out", tmp_path, "--json")
    assert code == 0, err
    report = json.loads(out)["quantize"]
    assert report["qnn"]["scheme"] == "w8a8" and report["scheme"].startswith("QNN HTP w8a8")
    assert report["qnn"]["nodes_outside_node_units"] == [] and report["float_nodes"] == []
    assert report["quality"]["psnr_vs_float_db"] >= 30 and report["gate"]["passed"]
    assert "not_measured" in report["latency_ms"] and "speed_warning" not in report
    written = tmp_path / "demo-teacher-student-int8.onnx"
    assert outside_node_units(written) == []
    assert _zero_point_types(written) == {"activations": {UINT8}, "weights": {INT8}}
    # costed in the dtype the HTP computes: every conv in int8, the Q/DQ beside them folded (views)
    cost = graph_cost(load_graph(written))
    assert {n.dtype for n in cost.nodes if n.op_type == "Conv"} == {"int8"}
    assert {n.category for n in cost.nodes if n.op_type == "DequantizeLinear" and n.reads[0].constant} == {"view"}


def test_the_structural_check_finds_every_float_op(student_onnx):
    outside = outside_node_units(student_onnx)
    assert {node["op"] for node in outside} >= {"Conv", "Sigmoid", "Mul"}
    assert len(outside) == len(onnx.load(str(student_onnx)).graph.node)


def test_a_gate_w8a8_misses_takes_16_bit_activations_and_says_so(student_onnx, tmp_path):
    with pytest.raises(VerificationFailed, match="int8 onnx"):
        quantize_artifact(student_onnx, tmp_path, calib=[str(BUNDLED_CLIP)], samples=6, target_device="galaxy-s24",
                          qnn=True, min_psnr_vs_float=200)
    report = json.loads((tmp_path / "demo-teacher-student-int8.json").read_text())["quantize"]
    w8a8, w8a16 = report["qnn"]["tried"]
    assert (w8a8["scheme"], w8a16["scheme"]) == ("w8a8", "w8a16") and report["qnn"]["scheme"] == "w8a16"
    # 256x finer activation steps; the 8-bit weights then bound it (measured: 35.3 -> 48.8 dB)
    assert w8a16["validation_psnr_vs_float_db"] > w8a8["validation_psnr_vs_float_db"] + 10
    assert _zero_point_types(tmp_path / "demo-teacher-student-int8.onnx")["activations"] == {UINT16}
    # 16-bit activations compute at the unit's 16-bit rate (costed fp16), not int8's; their Q/DQ fold as for w8a8
    cost = graph_cost(load_graph(tmp_path / "demo-teacher-student-int8.onnx"))
    convs = [n for n in cost.nodes if n.op_type == "Conv"]
    assert {n.dtype for n in convs} == {"fp16"} and all(n.weight.stored == "int8" for n in convs)
    assert "latent_QuantizeLinear" in {n.name for n in cost.nodes if n.category == "conversion"}  # the float input's


def test_weights_only_has_no_qnn_form(student_onnx, tmp_path, cli):
    code, _, err = cli("quantize", student_onnx, "--device", "galaxy-s24", "--weights-only", "--out", tmp_path)
    assert code == 2 and "--weights-only has no QNN form" in err
