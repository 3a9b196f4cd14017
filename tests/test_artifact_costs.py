"""Each artifact is costed on its own graph with per-node dtypes: a .tflite on its flatbuffer (Conv2d taps after
effconv's conv3d rewrite), a .mlpackage on its ML program (W8A16: fp16 compute on int8 weights), an .onnx with
QDQ rules (weight-only int8 is float compute on int8 weights, static QDQ is int8 convs); damaged files are
one-line errors.

Tolerances: the .tflite and the Conv3d-layout .onnx of one student must agree on conv FLOPs within 2%. The
rewrite keeps every multiply-add (a dense Conv3d becomes one Conv2d over time-stacked frames, a depthwise one
becomes k_t depthwise Conv2d taps summed by ADDs) but gives each tap its own bias: measured +1.6% on the
depthwise convs (5 bias adds per output instead of 1 next to 2 x 125 multiply-add FLOPs), 0.01% in total."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from effconv.artifacts import read_manifest
from effconv.backends.coreml import export as coreml_backend
from effconv.backends.onnx import export as onnx_backend
from effconv.backends.onnx.quantize import store_weights_int8
from effconv.backends.tflite import quantize as tflite_quantize
from effconv.convert.stage import convert
from effconv.errors import EffconvError
from effconv.profile.device import host_cpu
from effconv.profile.graph.costs import CONV_CATEGORIES
from effconv.profile.device.profiles import load_device
from effconv.profile.estimate.latency import estimate_cost
from effconv.profile.graph.mlprogram import mlprogram_cost
from effconv.profile.graph.onnx import graph_cost, load_graph
from effconv.profile.graph import tflite as tflite_module
from effconv.profile.graph.tflite import tflite_cost
from effconv.quantize.calibration import random_latents
from effconv.spec import load_spec

from backend_cases import small_clip
from conftest import REPO

STUDENT = REPO / "tests" / "data" / "legacy-student" / "hunyuan-tiny-student.yaml"
FLOP_TOLERANCE = 0.02


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(host_cpu.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """The saved tiny student at a 5-frame 16x24 clip, as .tflite (legalized: Conv2d taps) and as .onnx in the
    Conv3d layout, plus the statically quantized int8 .tflite with a manifest beside it."""
    root = tmp_path_factory.mktemp("student")
    loaded = small_clip(load_spec(STUDENT))
    tflite_manifest = convert(loaded, "tflite", root / "tflite")
    onnx_manifest = convert(loaded, "onnx", root / "onnx", layout="conv3d")
    tflite_path = root / "tflite" / tflite_manifest.artifact
    calib, held_out = random_latents(tuple(tflite_manifest.inputs[0].shape), 3).split(1)
    int8_path = root / "tflite" / "student-int8.tflite"
    tflite_quantize.quantize(tflite_path, tflite_manifest, calib, held_out, int8_path, weights_only=False, runs=1)
    int8_manifest = tflite_manifest.model_copy(
        update={"name": "student-int8", "artifact": int8_path.name, "quantize": {"weights_only": False}})
    int8_path.with_suffix(".json").write_text(int8_manifest.to_json(), encoding="utf-8")
    return {"tflite": tflite_path, "onnx": root / "onnx" / onnx_manifest.artifact, "int8": int8_path}


def _conv_flops(cost) -> dict[str, int]:
    return {category: sum(n.flops for n in cost.nodes if n.category == category) for category in CONV_CATEGORIES}


def test_tflite_is_costed_on_its_conv2d_taps_with_the_onnx_conv_flops(student):
    tflite, onnx_graph = tflite_cost(student["tflite"]), graph_cost(load_graph(student["onnx"]))
    tflite_convs = [n for n in tflite.nodes if n.category in CONV_CATEGORIES]
    onnx_convs = [n for n in onnx_graph.nodes if n.category in CONV_CATEGORIES]
    assert {n.kind for n in onnx_convs} == {"Conv3d", "DepthwiseConv3d", "PointwiseConv3d"}
    assert {n.max_rank for n in onnx_convs} == {5}
    assert {n.kind for n in tflite_convs} == {"Conv2d", "DepthwiseConv2d", "PointwiseConv2d"}
    assert {n.max_rank for n in tflite_convs} == {4} and not any("3d" in n.kind for n in tflite.nodes)
    assert {n.op_type for n in tflite_convs} == {"CONV_2D", "DEPTHWISE_CONV_2D"}
    # 20 depthwise taps stand for 4 depthwise Conv3d with 5 temporal taps each
    assert (len([n for n in tflite_convs if n.category == "conv_dw"]), len([n for n in onnx_convs if n.category == "conv_dw"])) == (20, 4)
    ours, theirs = _conv_flops(tflite), _conv_flops(onnx_graph)
    assert ours["conv"] == theirs["conv"] and ours["conv_pw"] == theirs["conv_pw"]
    assert ours["conv_dw"] == pytest.approx(theirs["conv_dw"], rel=FLOP_TOLERANCE)
    assert sum(ours.values()) == pytest.approx(sum(theirs.values()), rel=FLOP_TOLERANCE)
    assert tflite.dtype == onnx_graph.dtype == "fp32" and tflite.notes == ()
    assert tflite.input_shapes == {next(iter(tflite.input_shapes)): (1, 4, 2, 2, 3)}
    assert list(tflite.output_shapes.values()) == [(1, 3, 5, 16, 24)]


def test_int8_tflite_costs_its_convs_in_int8_and_the_estimate_uses_int8_peaks(student, cli):
    int8, fp32 = tflite_cost(student["int8"]), tflite_cost(student["tflite"])
    convs = [n for n in int8.nodes if n.category in CONV_CATEGORIES]
    assert {n.dtype for n in convs} == {"int8"}
    # float: the RMS norms' RSQRT (kept float by the quantizer) and the conversions at its edges and the model's
    assert {n.op_type for n in int8.nodes if n.dtype == "fp32" and n.category != "view"} == {"RSQRT", "QUANTIZE", "DEQUANTIZE"}
    conversions = [n for n in int8.nodes if n.op_type in ("QUANTIZE", "DEQUANTIZE")]
    assert all(n.category == "conversion" and n.bytes == 8 * n.output_elements for n in conversions)
    assert sum(n.weight_bytes for n in convs) < 0.3 * sum(n.weight_bytes for n in fp32.nodes if n.category in CONV_CATEGORIES)
    assert _conv_flops(int8) == _conv_flops(fp32)
    device = load_device("galaxy-s24")
    ops = estimate_cost(int8, device).ops
    assert {op.dtype for op in ops if op.node.category in CONV_CATEGORIES} == {"int8"}
    code, out, _ = cli("profile", student["int8"], "--device", "galaxy-s24", "--json")
    assert code == 0, out
    result = json.loads(out)
    assert "LiteRT flatbuffer" in result["source"] and result["dtype"] == int8.dtype and result["dtype"].startswith("int8 (")
    assert result["dtypes"]["int8"]["ops"] == len([n for n in int8.nodes if n.category != "view" and n.dtype == "int8"])
    assert result["dtypes"]["int8"]["flop_share"] > 0.97


def test_weight_only_tflite_computes_in_float_on_int8_weight_bytes(student, tmp_path):
    manifest = read_manifest(student["tflite"].with_suffix(".json"))
    calib, held_out = random_latents(tuple(manifest.inputs[0].shape), 2).split(1)
    weight_only = tmp_path / "w8.tflite"
    tflite_quantize.quantize(student["tflite"], manifest, calib, held_out, weight_only, weights_only=True, runs=1)
    w8, fp32 = tflite_cost(weight_only), tflite_cost(student["tflite"])
    convs = [n for n in w8.nodes if n.category in CONV_CATEGORIES]
    assert {n.dtype for n in convs} == {"fp32"} and {n.weight.stored for n in convs} == {"int8"}
    float_convs = [n for n in fp32.nodes if n.category in CONV_CATEGORIES]
    assert sum(n.weight.stored_bytes for n in float_convs) == 4 * sum(n.weight.stored_bytes for n in convs)
    assert w8.dtype_table()["fp32"]["narrow_weight_ops"] == len(convs)


def test_int8_tflite_re_exported_at_a_new_resolution_keeps_int8_convs(student, cli):
    code, out, _ = cli("profile", student["int8"], "--device", "pixel9", "--resolution", "32x48", "--json")
    assert code == 0, out
    result = json.loads(out)
    assert "re-exported to tflite" in result["source"] and result["dtype"].startswith("int8 (")
    assert result["dtypes"]["int8"]["flop_share"] > 0.97
    as_shipped = json.loads(cli("profile", student["int8"], "--device", "pixel9", "--json")[1])
    assert result["gflops"] == pytest.approx(4 * as_shipped["gflops"], rel=0.05)  # 4x the pixels


def test_unknown_litert_op_is_costed_as_elementwise_and_named(student, monkeypatch):
    known = dict(tflite_module.OPS)
    del known["LOGISTIC"]
    monkeypatch.setattr(tflite_module, "OPS", known)
    cost = tflite_cost(student["tflite"])
    sigmoids = [n for n in cost.nodes if n.op_type == "LOGISTIC"]
    assert sigmoids and all(n.category == "elementwise" and n.flops == n.output_elements for n in sigmoids)
    assert cost.notes == ("LiteRT op LOGISTIC has no cost rule in effconv: costed as elementwise (1 FLOP per output element).",)


def test_weight_only_onnx_is_float_compute_on_a_quarter_of_the_weight_bytes(student, tmp_path):
    path = tmp_path / "w8.onnx"
    shutil.copy(student["onnx"], path)
    convs = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    store_weights_int8(path, set(convs))
    w8, fp32 = graph_cost(load_graph(path)), graph_cost(load_graph(student["onnx"]))
    w8_convs = [n for n in w8.nodes if n.op_type == "Conv"]
    assert {n.dtype for n in w8_convs} == {"fp32"} and w8.dtype == "fp32"
    weights = [sum(n.weight.stored_bytes for n in c.nodes if n.op_type == "Conv") for c in (fp32, w8)]
    assert weights[0] == 4 * weights[1]
    assert w8.weight_bytes / fp32.weight_bytes == pytest.approx(0.25, abs=0.02)  # the fp32 biases stay
    # the same precisions carried over to a float graph of the same model give the same bytes
    assert fp32.with_precisions(w8.precisions_by_kind()).bytes == w8.bytes


def test_static_qdq_onnx_computes_its_convs_in_int8(student, tmp_path):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from effconv.backends.onnx.quantize import FeedReader

    shape = tuple(graph_cost(load_graph(student["onnx"])).inputs[0].shape)
    latents = FeedReader(["latent"], [(np.random.default_rng(i).standard_normal(shape).astype(np.float32),) for i in range(2)])
    path = tmp_path / "int8.onnx"
    quantize_static(str(student["onnx"]), str(path), latents, quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    cost = graph_cost(load_graph(path))
    convs = [n for n in cost.nodes if n.op_type == "Conv"]
    others = [n for n in cost.nodes if n.category not in ("view", *CONV_CATEGORIES)]
    assert {n.dtype for n in convs} == {"int8"} and {n.dtype for n in others} == {"fp32"}
    counts = sorted([(len(others), "fp32"), (len(convs), "int8")], reverse=True)
    assert cost.dtype == " + ".join(f"{dtype} ({count} ops)" for count, dtype in counts)
    # a Q after an int8 op and a DQ read only by int8 ops (weights' DQs too) fold into onnxruntime's int8 kernels; a Q
    # of a float op's output or a DQ that a float op reads is a kernel of its own: one elementwise pass in float
    model = onnx.load(str(path))
    dtype_of = {out: n.dtype for n in cost.nodes for out in n.outputs} | {"graph output": "fp32"}
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    readers = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.output[0])
    runs = {node.output[0] for node in model.graph.node
            if (node.op_type == "QuantizeLinear" and dtype_of.get(node.input[0]) != "int8")
            or (node.op_type == "DequantizeLinear" and producer.get(node.input[0]) == "QuantizeLinear"
                and not all(dtype_of[reader] == "int8" for reader in readers.get(node.output[0], ["graph output"])))}
    conversions = [n for n in cost.nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert runs and {n.outputs[0] for n in conversions if n.category != "view"} == runs
    assert len(runs) < len(conversions) / 2  # most fold: every weight's DQ, and the convs' own Q/DQ
    assert all(n.category == "view" and n.bytes == 0 for n in conversions if n.outputs[0] not in runs)
    assert all(n.category == "conversion" and n.dtype == "fp32" and n.bytes >= 8 * n.output_elements
               for n in conversions if n.outputs[0] in runs)
    table = cost.dtype_table()
    assert table["int8"]["ops"] == len(convs) and table["int8"]["flop_share"] > 0.9
    # each op takes the peak of its own dtype: int8 convs on the NPU's int8 peak, float ops on its fp16 one
    ops = estimate_cost(cost, load_device("galaxy-s24")).ops
    assert {op.dtype for op in ops if op.node.op_type == "Conv"} == {"int8"}
    assert "int8" not in {op.dtype for op in ops if op.node in others}
    # one network however quantized: the benchmarks count it once by its convolutions, not by its node count
    fp32 = graph_cost(load_graph(student["onnx"]))
    assert len(cost.nodes) > len(fp32.nodes)
    assert cost.network_signature == fp32.network_signature == (len(convs), sum(n.flops for n in convs))


class _TinyDecoderBlock(torch.nn.Module):
    """Two Conv3d, the first with 16 x 16 x 27 = 6912 weights (above coremltools' 2048-value threshold for int8),
    the second with 16 x 3 x 27 = 1296 (kept fp16), and a SiLU."""

    def __init__(self):
        super().__init__()
        self.wide = torch.nn.Conv3d(16, 16, 3, padding=1)
        self.out = torch.nn.Conv3d(16, 3, 3, padding=1)

    def forward(self, x):
        return self.out(torch.nn.functional.silu(self.wide(x)))


@pytest.fixture(scope="module")
def mlpackages(tmp_path_factory):
    """(fp16 package, W8A16 package, ONNX of the same module), W8A16 written as effconv's Core ML quantizer does."""
    import coremltools as ct
    from coremltools.optimize import coreml as cto

    root = tmp_path_factory.mktemp("coreml")
    module, example = _TinyDecoderBlock().eval(), torch.randn(1, 16, 2, 6, 8)
    fp16 = root / "block.mlpackage"
    coreml_backend.export(module, example, fp16, "x", "y", precision="fp16")
    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=2048))
    w8 = root / "block-w8.mlpackage"
    cto.linear_quantize_weights(ct.models.MLModel(str(fp16), skip_model_load=True), config=config).save(str(w8))
    onnx_path = root / "block.onnx"
    onnx_backend.export(module, example, onnx_path, "x", "y")
    return fp16, w8, onnx_path


def test_w8a16_mlpackage_costs_fp16_compute_on_int8_weight_bytes(mlpackages):
    fp16_path, w8_path, onnx_path = mlpackages
    fp16, w8, reference = mlprogram_cost(fp16_path), mlprogram_cost(w8_path), graph_cost(load_graph(onnx_path))
    convs = {n.name: n for n in w8.nodes if n.category in CONV_CATEGORIES}
    assert {n.kind for n in convs.values()} == {"Conv3d"} and set(w8.dtype_ops) == {"fp16"}
    wide, narrow = sorted(convs.values(), key=lambda n: -n.weight.shape[0])
    assert wide.weight.stored == "int8" and wide.weight.bytes_at(wide.dtype) == 16 * 16 * 27
    assert narrow.weight.stored == "fp16" and narrow.weight.bytes_at(narrow.dtype) == 2 * 3 * 16 * 27
    assert fp16.dtype == w8.dtype == "fp16" and w8.dtype_table()["fp16"]["narrow_weight_ops"] == 1
    assert w8.flops == fp16.flops == reference.flops  # silu = sigmoid (4) + mul (1), as ONNX exports it
    assert _conv_flops(w8) == _conv_flops(reference)
    assert fp16.weight_bytes - w8.weight_bytes == 16 * 16 * 27


def test_w8a8_mlpackage_costs_int8_compute_with_its_quantize_ops_fused(tmp_path):
    """A W8A8 package's quantize / dequantize ops are fused (no nodes of their own), its convolutions read and compute
    int8, and the iPhone 16 Pro (whose Neural Engine computes int8 x int8) estimates it faster than the fp16 package."""
    from effconv.quantize.stage import quantize_artifact

    manifest = convert(small_clip(load_spec(STUDENT)), "coreml", tmp_path / "fp16")
    package = tmp_path / "fp16" / manifest.artifact
    int8 = quantize_artifact(package, tmp_path / "w8a8", calib=["random"], samples=4, scheme="w8a8",
                             max_psnr_drop=None, min_psnr_vs_float=None)
    fp16, w8a8 = mlprogram_cost(package), mlprogram_cost(tmp_path / "w8a8" / int8.artifact)
    assert not {n.op_type for n in w8a8.nodes} & {"quantize", "dequantize"} and any("W8A8" in note for note in w8a8.notes)
    convs = [n for n in w8a8.nodes if n.category in CONV_CATEGORIES]
    assert convs and {n.dtype for n in convs} == {"int8"} and all(any(t.stored == "int8" for t in n.reads if not t.constant) for n in convs)
    assert w8a8.flops == fp16.flops
    # without its quantize ops the graph stays connected: each activation an op reads is an input or another op's output
    written = {name for n in w8a8.nodes for name in n.outputs} | set(w8a8.input_shapes)
    assert all(t.name in written for n in w8a8.nodes for t in n.reads if not t.constant and t.is_data())
    iphone = load_device("iphone16pro")
    assert iphone.coreml_scheme == "w8a8" and load_device("pixel9").coreml_scheme == "w8a16"
    assert estimate_cost(w8a8, iphone).total_ms < estimate_cost(fp16, iphone).total_ms


def test_damaged_artifacts_exit_2_with_one_line(student, mlpackages, tmp_path, cli):
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(student["tflite"].read_bytes()[:64])
    shutil.copy(student["tflite"].with_suffix(".json"), broken.with_suffix(".json"))
    package = tmp_path / "damaged.mlpackage"
    shutil.copytree(mlpackages[1], package)
    for model in package.rglob("model.mlmodel"):
        model.write_bytes(b"not a protobuf" * 4)
    manifest = read_manifest(student["tflite"].with_suffix(".json")).model_copy(update={"backend": "coreml"})
    package.with_suffix(".json").write_text(manifest.to_json(), encoding="utf-8")
    for artifact, reader in ((broken, tflite_cost), (package, mlprogram_cost)):
        with pytest.raises(EffconvError) as caught:
            reader(artifact)
        assert artifact.name in caught.value.one_line() and "re-create it" in caught.value.fix
        code, _, err = cli("profile", artifact, "--device", "pixel9")
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert artifact.name in err and "re-create it" in err and "Traceback" not in err
