"""Latency estimate and the profile command: roofline, placement with hand-offs, budgets, --measure, plots."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from effconv.artifacts import Manifest
from effconv.errors import EffconvError
from effconv.profile.device import host_cpu
from effconv.profile.device.profiles import DeviceProfile, Figure, load_device
from effconv.profile.estimate.latency import estimate, estimate_cost, op_ms, roofline_ms
from effconv.profile.estimate.placement import place
from effconv.profile.graph.onnx import graph_cost
from effconv.profile.graph.targets import statically_quantized

from conftest import SPECS

LTX = SPECS / "ltx-tiny.yaml"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(host_cpu.CACHE_ENV, str(tmp_path / "cache"))


def _figure(value):
    return {"value": value, "source": "derived: test", "uncertainty": 0.0}


def _device(units: dict, fallback_us=100.0, backend="onnx") -> DeviceProfile:
    return DeviceProfile.model_validate({
        "name": "toy", "description": "test device", "soc": "none", "backends": [backend],
        "memory": {"ram_gb": _figure(1), "bandwidth_gbps": _figure(10)},
        "units": units, "fallback_us": _figure(fallback_us), "model_uncertainty": 0.5,
        "validation": "test", "sources": [{"title": "t", "url": "https://example.org"}],
    })


def _unit(kind="cpu", peak=100.0, lint_units=None, **figures):
    """A compute unit that is, for its device's backend, these lint units (default: onnxruntime's CPU)."""
    return {"kind": kind, "peak_gops": {"fp32": _figure(peak), "fp16": _figure(peak)},
            "lint_units": lint_units or {"onnx": ["cpu"]}, **figures}


def _chain(upsample: int = 1, flatten: bool = False, frames: int | None = 2) -> onnx.ModelProto:
    """conv -> resize(upsample) -> relu on a (1, 4, frames, 8, 8) clip (an (1, 4, 8, 8) image when frames is None),
    optionally -> reshape (a view)."""
    spatial = [8, 8] if frames is None else [frames, 8, 8]
    weight = numpy_helper.from_array(np.zeros((4, 4, *[3] * len(spatial)), np.float32), "w")
    scales = numpy_helper.from_array(np.array([1, 1, *[1] * (len(spatial) - 2), upsample, upsample], np.float32), "s")
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1] * 2 * len(spatial), kernel_shape=[3] * len(spatial), name="conv"),
             helper.make_node("Resize", ["a", "", "s"], ["b"], mode="nearest", name="up"),
             helper.make_node("Relu", ["b"], ["c" if flatten else "y"], name="act")]
    if flatten:
        nodes.append(helper.make_node("Reshape", ["c", "shape"], ["y"], name="flat"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, *spatial])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[weight, scales, shape])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_roofline_takes_the_larger_of_compute_and_memory_time():
    assert roofline_ms(2e9, 1e6, peak_gops=1000, bandwidth_gbps=10) == pytest.approx((2.0, 0.1))
    node = graph_cost(_chain()).nodes[0]
    device = _device({"cpu": _unit(peak=1.0)})
    compute, memory, ms = op_ms(node, device.units["cpu"], "fp32", device)
    assert compute == pytest.approx(node.flops / 1e6) and memory == pytest.approx(node.bytes / 1e7)
    assert ms == pytest.approx(max(compute, memory))
    fast = _device({"cpu": _unit(peak=1e6)})
    assert op_ms(node, fast.units["cpu"], "fp32", fast)[2] == pytest.approx(node.bytes / 1e7)


def test_efficiency_and_overhead_scale_the_roofline():
    node = graph_cost(_chain()).nodes[0]
    device = _device({"cpu": _unit(peak=1.0, efficiency={"conv": 0.25}, op_overhead_us=50)})
    compute, memory, ms = op_ms(node, device.units["cpu"], "fp32", device)
    assert ms == pytest.approx(max(compute, memory) / 0.25 + 0.05)


def test_ops_an_npu_rejects_fall_back_to_the_next_unit_and_pay_a_hand_off():
    """Core ML's rule ane-upsample-factor keeps a 2-D resize by more than 2 off the Neural Engine."""
    device = _device({"npu": _unit("npu", peak=1000, lint_units={"coreml": ["ane"]}),
                      "cpu": _unit(peak=10, lint_units={"coreml": ["cpu"]})}, fallback_us=100, backend="coreml")
    small, big = estimate(_chain(2, frames=None), device), estimate(_chain(4, frames=None), device)
    assert [op.unit for op in small.ops] == ["npu", "npu", "npu"]
    assert [op.unit for op in big.ops] == ["npu", "cpu", "npu"]
    assert big.fallbacks() == {"Resize": 1}
    assert big.notes == ["kept off npu by coreml lint rules: ane-upsample-factor (Resize x1; fix: none)."]
    # two unit changes (npu -> cpu -> npu), each 0.1 ms plus a write and a read of the crossing tensor
    chain = graph_cost(_chain(4, frames=None))
    crossing = [chain.nodes[0].output_bytes, chain.nodes[1].output_bytes]
    expected = sum(0.1 + 2 * b / 1e7 for b in crossing)
    assert sum(op.handoff_ms for op in big.ops) == pytest.approx(expected)


def test_an_op_no_unit_accepts_is_flagged_with_the_lint_rule_and_its_fix():
    device = _device({"npu": _unit("npu", lint_units={"tflite": ["npu"]})}, backend="tflite")
    node = graph_cost(_chain()).nodes[0]
    assert place(node, device) == ("npu", False)
    note = estimate(_chain(), device).notes[0]
    assert "not runnable on any toy unit as tflite" in note and "conv3d-dense (Conv3d x1; fix: conv3d-as-conv2d)" in note


def test_fp32_model_on_an_fp16_only_unit_runs_in_fp16_and_moves_half_the_bytes():
    device = _device({"ane": {"kind": "npu", "peak_gops": {"fp16": _figure(100)}, "lint_units": {"onnx": ["cpu"]}}})
    result = estimate(_chain(), device)
    assert {op.dtype for op in result.ops} == {"fp16"}
    assert result.ops[0].node.bytes * 2 == graph_cost(_chain(), "fp32").nodes[0].bytes


def test_band_contains_the_estimate_and_widens_with_uncertainty():
    result = estimate(_chain(), _device({"cpu": _unit()}))
    assert result.low_ms < result.total_ms < result.high_ms
    assert result.high_ms / result.total_ms == pytest.approx(1.5)


def test_memory_that_does_not_fit_suggests_a_chunk():
    device = _device({"cpu": _unit()})
    tiny_ram = device.model_copy(update={"memory": device.memory.model_copy(update={"ram_gb": Figure(**_figure(9.6e-6))})})
    result = estimate(_chain(), tiny_ram)
    # 4.8 kB usable; 1.7 kB of weights + 4 kB of activations for two latent frames do not fit, one does
    assert not result.fits
    assert result.chunk_latent_frames == 1


def test_profile_spec_on_a_phone_prints_estimate_fps_memory_and_budget(cli):
    code, out, _ = cli("profile", LTX, "--device", "iphone16pro", "--resolution", "64x96", "--fps", "24")
    assert code == 0, out
    assert "FPS" in out and "MB peak" in out and "PASS" in out and "ane" in out
    # LTX's rank-8 depth-to-space: placed as the Core ML model it converts to, named by lint's rule and fixes
    assert "rank-above-5 (Reshape x6, Transpose x3; fix: shuffle-decoupled, legalize-rank5)" in " ".join(out.split())


def test_missed_budget_exits_1_after_printing_the_result(cli):
    code, out, err = cli("profile", LTX, "--device", "rpi5", "--budget-ms", "0.001")
    assert code == 1
    assert "FAIL" in out and "over the budget" in err


def test_budget_ms_and_fps_together_exit_2(cli):
    code, _, err = cli("profile", LTX, "--device", "rpi5", "--budget-ms", "10", "--fps", "24")
    assert code == 2 and "mutually exclusive" in err


def test_resolution_that_breaks_the_spatial_compression_exits_2(cli):
    code, _, err = cli("profile", LTX, "--device", "rpi5", "--resolution", "30x30")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "spatial compression" in err


def test_artifact_is_re_exported_at_a_new_resolution_and_measured_on_host(cli, tmp_path):
    assert cli("convert", LTX, "--out", tmp_path)[0] == 0
    artifact = tmp_path / "ltx-tiny.onnx"
    code, out, _ = cli("profile", artifact, "--device", "host-cpu", "--measure", "--threads", "1", "--json")
    assert code == 0
    as_built = json.loads(out)
    assert as_built["measured"]["median_ms"] > 0 and as_built["measured"]["threads"] == 1
    assert as_built["rel_error"] == pytest.approx(
        (as_built["latency_ms"]["estimate"] - as_built["measured"]["median_ms"]) / as_built["measured"]["median_ms"])
    code, out, _ = cli("profile", artifact, "--device", "host-cpu", "--resolution", "64x96", "--threads", "1", "--json")
    bigger = json.loads(out)
    assert code == 0 and "re-exported" in bigger["source"]
    assert bigger["gflops"] == pytest.approx(4 * as_built["gflops"], rel=0.05)  # 4x the pixels (32x48 -> 64x96)


def test_int8_costing_moves_fewer_bytes_than_fp32(cli):
    _, out32, _ = cli("profile", LTX, "--device", "rpi5", "--json")
    _, out8, _ = cli("profile", LTX, "--device", "rpi5", "--dtype", "int8", "--json")
    fp32, int8 = json.loads(out32), json.loads(out8)
    assert int8["memory"]["peak_activations_mb"] == pytest.approx(fp32["memory"]["peak_activations_mb"] / 4)
    assert int8["latency_ms"]["estimate"] < fp32["latency_ms"]["estimate"]


def test_measure_on_a_phone_is_refused(cli):
    code, _, err = cli("profile", LTX, "--device", "pixel9", "--measure")
    assert code == 2 and "--device host-cpu" in err


def test_plot_writes_a_png(cli, tmp_path):
    target = tmp_path / "plots" / "ltx.png"
    code, _, _ = cli("profile", LTX, "--device", "galaxy-s24", "--plot", target)
    assert code == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kernel_fit_recovers_a_known_efficiency_and_overhead():
    """fp32 records whose node times follow roofline / 0.25 + 0.01 ms (views: the 0.01 ms alone), and int8 ones whose
    3-D convs take roofline / 0.5 + 40 ns per output position + 0.01 ms, as the estimate models them: the fit must
    give those numbers back."""
    from effconv.profile.estimate.latency import output_positions
    from effconv.profile.fit.fitting import kernel_fit

    host = load_device("host-cpu", threads=1, calibrated=False).for_backend("onnx")
    plain = host.model_copy(update={"units": {"cpu": host.units["cpu"].model_copy(update={"efficiency": {}, "op_overhead_us": 0.0})},
                                    "run_overhead_ms": 0.0})
    records = []
    for upsample in (1, 2, 4):
        cost = graph_cost(_chain(upsample, flatten=True))
        node_ms = {op.node.name: op.ms / 0.25 + 0.01 for op in estimate(_chain(upsample, flatten=True), plain).ops}
        records.append({"cost": cost, "dtype": "fp32", "kernels": {"node_ms": node_ms}})
    for channels, frames, size in [(8, 2, 16), (16, 4, 32), (32, 2, 64), (64, 4, 16)]:
        cost = graph_cost(_conv_relu(channels, frames, size)).mapped(lambda node: node.at("int8") if node.op_type == "Conv" else node)
        node_ms = {op.node.name: op.ms / 0.5 + output_positions(op.node) * 40e-6 + 0.01
                   for op in estimate_cost(cost, plain).ops if op.node.op_type == "Conv"}
        records.append({"cost": cost, "dtype": "int8", "kernels": {"node_ms": node_ms}})
    fitted = kernel_fit(records, host)
    assert fitted["efficiency"]["conv"] == pytest.approx(0.25, rel=0.02)
    assert fitted["efficiency"]["elementwise"] == pytest.approx(0.25, rel=0.02)
    assert fitted["op_overhead_us"] == pytest.approx(10.0, rel=0.05)
    assert fitted["int8_efficiency"] == {"conv 3d": pytest.approx(0.5, rel=0.02)}
    assert fitted["int8_position_ns"] == {"conv 3d": pytest.approx(40.0, rel=0.02)}


def test_kernel_times_of_a_static_int8_model_reach_its_conv_node(tmp_path):
    """onnxruntime fuses a QDQ-wrapped Conv into a QLinearConv kernel named after the node (`<node>_token_<n>`): its
    profiled time must land on that Conv node, not among the kernels onnxruntime added."""
    from onnxruntime.quantization import QuantType, quantize_static

    from effconv.backends.onnx.quantize import FeedReader
    from effconv.profile.measure import measure_kernels

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4, name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 32, 32])], initializer=[weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "float.onnx")

    latents = FeedReader(["x"], [(rng.standard_normal((1, 16, 32, 32)).astype(np.float32),) for _ in range(2)])
    quantize_static(tmp_path / "float.onnx", tmp_path / "int8.onnx", latents, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    nodes = {node.name for node in onnx.load(tmp_path / "int8.onnx").graph.node}
    (kernels,) = measure_kernels([tmp_path / "int8.onnx"], [nodes], threads=1, repeats=2)
    assert "conv" in nodes and kernels["node_ms"].get("conv", 0.0) > 0
    assert kernels["node_ms"]["conv"] > kernels["other_ms"]


def _conv_relu(channels: int, frames: int, size: int) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.zeros((channels, channels, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1] * 6, kernel_shape=[3] * 3, name="conv"),
             helper.make_node("Relu", ["a"], ["y"], name="act")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, frames, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[weight])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_wall_fit_recovers_fp32_and_int8_efficiencies_from_wall_clock_times():
    """Wall times made by the estimate itself from known efficiencies (fp32 conv 0.3, int8 3-D conv 0.1 of the int8
    peak, int8 3-D convs paying 50 ns per output position, 20 us per node, 0.5 ms per run): the wall fit, starting
    from a prior 2x off, lands within 10% of each efficiency and 20% of the per-position cost."""
    from effconv.profile.fit.fitting import wall_fit, with_fit

    measured = load_device("host-cpu", threads=1, calibrated=False).for_backend("onnx")
    # fixed peaks and bandwidth: this machine's measured ones change how FLOP time and per-position time share a wall
    peaks = {"fp32": Figure(**_figure(100.0)), "int8": Figure(**_figure(200.0))}
    host = measured.model_copy(update={"units": {"cpu": measured.units["cpu"].model_copy(update={"peak_gops": peaks})},
                                       "memory": measured.memory.model_copy(update={"bandwidth_gbps": Figure(**_figure(10.0))})})
    truth = {"efficiency": {"conv": 0.3, "elementwise": 0.5}, "int8_efficiency": {"conv 3d": 0.1},
             "int8_position_ns": {"conv 3d": 50.0}, "op_overhead_us": 20.0, "narrow_channels": 0.0, "run_overhead_ms": 0.5}
    records = []
    for channels, frames, size in [(16, 2, 16), (32, 4, 32), (32, 2, 64), (64, 4, 16), (8, 8, 64), (64, 2, 32)]:
        for dtype in ("fp32", "int8"):
            cost = graph_cost(_conv_relu(channels, frames, size))
            if dtype == "int8":
                cost = cost.mapped(lambda node: node.at("int8") if node.op_type == "Conv" else node)
            records.append({"cost": cost, "dtype": dtype, "wall": {"median_ms": estimate_cost(cost, with_fit(host, truth)).total_ms}})
    prior = {"efficiency": {c: 2 * e for c, e in truth["efficiency"].items()}}
    fitted = wall_fit(records, host, prior, narrow_grid=(0.0,))
    assert fitted["efficiency"]["conv"] == pytest.approx(0.3, rel=0.1)
    assert fitted["int8_efficiency"] == {"conv 3d": pytest.approx(0.1, rel=0.1)}  # the synthetic convs are Conv3d
    assert fitted["int8_position_ns"] == {"conv 3d": pytest.approx(50.0, rel=0.2)}  # the ridge rows bias it towards the prior
    errors = [estimate_cost(r["cost"], with_fit(host, fitted)).total_ms / r["wall"]["median_ms"] - 1 for r in records]
    assert max(map(abs, errors)) < 0.05


def test_calibrate_measures_fits_and_the_host_profile_uses_the_fit(capsys):
    """Two real Turbo-VAED students, converted to ONNX and measured in onnxruntime: the fit is cached, and host-cpu's
    onnxruntime unit (not its XNNPACK one) carries it, with its held-out error as the band."""
    from effconv.cli.profile import render_calibration
    from effconv.profile.fit.calibrate import calibrate
    from effconv.profile.fit.model_set import calibration_set

    students = [m for m in calibration_set() if m.name in ("hunyuan-student-w32", "hunyuan-student-w64")]
    result = calibrate(threads=1, repeats=3, progress=lambda _: None, models=students, backends=("onnx",), int8=False)
    after = result["runtimes"]["onnx"]["after"]
    assert [row["name"] for row in after["rows"]] == ["hunyuan-student-w32", "hunyuan-student-w64"]
    assert after["held_out"]["n"] == 1 and after["held_out"]["p90_is_max"]
    host = load_device("host-cpu", threads=1)
    assert host.units["cpu"].efficiency == result["runtimes"]["onnx"]["fit"]["efficiency"]
    assert result["runtimes"]["onnx"]["fit"]["produced_by"] == host_cpu.cost_model_version()  # else the fit is ignored
    assert host.units["xnnpack"].efficiency != host.units["cpu"].efficiency and host.units["xnnpack"].runtime_fit.model_uncertainty == 3.5
    onnx_host = host.for_backend("onnx")
    assert "held-out error on 1 artifacts" in onnx_host.validation
    assert onnx_host.model_uncertainty == result["runtimes"]["onnx"]["fit"]["model_uncertainty"]
    render_calibration(result)
    printed = capsys.readouterr().out
    assert "onnx held-out (1 artifacts) after" in printed and "Stored in the host-cpu cache" in printed


def test_calibrate_checks_its_arguments_and_writes_its_report(tmp_path):
    from effconv.profile.fit.calibrate import calibrate_host, write_report

    for threads, repeats in [(0, 10), (None, 0)]:
        with pytest.raises(EffconvError, match="at least 1"):
            calibrate_host(threads, repeats=repeats)
    with pytest.raises(EffconvError, match="coreml") as refused:
        calibrate_host(1, backends=("onnx", "coreml"))
    assert "onnx, tflite" in refused.value.fix
    path = write_report({"threads": 1, "at": tmp_path}, tmp_path / "new" / "calibration.json")
    assert json.loads(path.read_text()) == {"threads": 1, "at": str(tmp_path)}
    assert [p.name for p in path.parent.iterdir()] == ["calibration.json"]  # no staging folder left


@pytest.mark.parametrize(("sections", "int8"), [
    ({}, False),
    ({"quantize": {"weights_only": False}}, True),
])
def test_a_pte_is_costed_int8_when_statically_quantized(sections, int8):
    """A .pte is costed on the ONNX graph of the module it was lowered from, so its dtype comes from its manifest; .tflite and .mlpackage
    files are costed on their own graphs (tests/test_artifact_costs.py)."""
    manifest = Manifest(name="m", backend="executorch", artifact="m", spec={}, inputs=[], outputs=[], params=0,
                        verify={}, **sections)
    assert statically_quantized(manifest) == int8


def test_a_non_onnx_artifact_without_its_manifest_exits_2(cli, tmp_path):
    artifact = tmp_path / "student.tflite"
    artifact.write_bytes(b"TFL3")
    code, _, err = cli("profile", artifact, "--device", "pixel9")
    assert code == 2 and "no manifest" in err and len(err.strip().splitlines()) == 1
