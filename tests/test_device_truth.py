"""The phone estimates' public truth set: its rows are complete and sourced, and the Apple phones' profiles carry
exactly the Neural Engine fit and held-out band that benchmarks/device_truth.py wrote (they cannot drift apart)."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest
import torch

from effconv.profile.devices import load_device
from effconv.profile.estimate import estimate_cost
from effconv.profile.onnx_cost import graph_cost

from conftest import REPO

TRUTH = REPO / "benchmarks" / "device_truth"
RESULTS = json.loads((REPO / "benchmarks" / "results" / "device_truth.json").read_text())
APPLE = ("iphone14pro", "iphone15pro", "iphone16pro")


def _rows(name: str) -> list[dict]:
    with (TRUTH / name).open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("name", sorted(path.name for path in TRUTH.glob("*.csv") if "details" not in path.name))
def test_every_truth_row_has_a_source_a_soc_and_a_positive_latency(name):
    rows = _rows(name)
    assert rows
    for row in rows:
        assert row["source_url"].startswith("https://github.com/") and "/blob/" in row["source_url"]
        assert row["soc"] and row["family"] and float(row["latency_ms"]) > 0
        assert all(int(d) > 0 for d in row["input_shape"].split("x"))


def test_the_apple_networks_rebuild_from_their_papers():
    spec = importlib.util.spec_from_file_location("architectures", TRUTH / "architectures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sizes = {"resnet50": 25.56e6, "mobilenet_v2": 3.50e6, "mobilenet_v3_small": 2.54e6, "mobilevit_v2": 4.9e6}  # the papers' parameter counts
    for row in _rows("apple_coremltools.csv"):
        network = module.ARCHITECTURES[row["model_id"]]()
        assert sum(p.numel() for p in network.parameters()) == pytest.approx(sizes[row["model_id"]], rel=0.01)
        shape = tuple(int(d) for d in row["input_shape"].split("x"))
        assert network(torch.zeros(shape)).shape == (1, 1000)


@pytest.mark.parametrize("name", APPLE)
def test_apple_profiles_carry_the_fit_and_band_of_the_results_file(name):
    fit, held_out = RESULTS["apple_ane"]["fit"], RESULTS["apple_ane"]["held_out"]
    device = load_device(name)
    ane = device.units["ane"]
    assert ane.efficiency["conv"] == pytest.approx(fit["compute_efficiency"], abs=1e-3)
    assert ane.efficiency["elementwise"] == pytest.approx(fit["other_efficiency"], abs=1e-3)
    assert ane.op_overhead_us == pytest.approx(fit["op_overhead_us"], abs=1e-3)
    assert device.run_overhead_ms == pytest.approx(fit["run_overhead_ms"], abs=1e-4)
    assert ane.on_chip.mb.value == fit["on_chip_mb"]
    assert ane.on_chip.bandwidth_gbps.value == pytest.approx(fit["on_chip_bandwidth_gbps"], rel=1e-3)
    band = ane.held_out_band
    assert (band.error_low, band.error_high, band.rows) == (pytest.approx(held_out["band_error_low"], abs=1e-3),
                                                            pytest.approx(held_out["band_error_high"], abs=1e-3), held_out["n"])


def test_an_estimate_on_the_neural_engine_alone_prints_the_held_out_band():
    from test_fusion import CONV_RELU, _graph

    device = load_device("iphone16pro").for_backend("coreml")
    estimate = estimate_cost(graph_cost(_graph(CONV_RELU)), device)
    band = device.units["ane"].held_out_band
    assert {op.unit for op in estimate.ops} == {"ane"}
    assert estimate.low_ms == pytest.approx(estimate.total_ms / (1 + band.error_high))
    assert estimate.high_ms == pytest.approx(estimate.total_ms / (1 + band.error_low))
    assert f"{band.rows} public measurements" in estimate.band_source


def test_held_out_errors_and_band_agree_with_the_rows():
    rows = [row for row in RESULTS["rows"] if row["file"] == "apple_coremltools.csv"]
    held_out = RESULTS["apple_ane"]["held_out"]
    errors = [row["held_out_ms"] / row["latency_ms"] - 1 for row in rows]
    assert len(rows) == held_out["n"]
    inside = sum(held_out["band_error_low"] <= error <= held_out["band_error_high"] for error in errors)
    assert inside / len(errors) == pytest.approx(held_out["inside_band"])
