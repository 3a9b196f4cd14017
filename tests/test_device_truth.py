"""The phone estimates' public truth set: its rows are complete and sourced, its networks rebuild at the published
sizes, and every fitted profile carries exactly the NPU fit and held-out band that benchmarks/device_truth.py wrote
(they cannot drift apart)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from effconv.profile.device.profiles import load_device
from effconv.profile.estimate.latency import estimate_cost
from effconv.profile.graph.onnx import graph_cost

from conftest import REPO

TRUTH = REPO / "benchmarks" / "device_truth"
RESULTS = json.loads((REPO / "benchmarks" / "results" / "device_truth.json").read_text())
GROUPS = {"apple_ane": ("ane", "coreml"), "galaxy-s23": ("htp", "onnx"), "galaxy-s24": ("htp", "onnx"), "sd8-elite": ("htp", "onnx")}
FITTED = [(group, profile) for group in GROUPS for profile in RESULTS[group]["profiles"]]
# Parameter counts with batch norm folded into the convolutions: the papers' (Apple's networks, within 1%) and
# torchvision's documented counts less the folded batch-norm parameters, or the reference code's layer list (exact)
PAPER_SIZES = {"resnet50": 25.56e6, "mobilenet_v2": 3.50e6, "mobilenet_v3_small": 2.54e6, "mobilevit_v2": 4.9e6,
               # Apple's reference code re-parameterized (ml-mobileone, ml-fastvit inference_mode), batch norm folded
               "mobileone_s0": 2078504, "mobileone_s1": 4764840, "mobileone_s2": 7808168, "mobileone_s3": 10078312,
               "mobileone_s4": 14838352, "fastvit_t8": 3994216, "fastvit_t12": 7505896, "fastvit_s12": 9425768,
               "fastvit_sa12": 11542376, "fastvit_sa24": 21495400, "fastvit_sa36": 31448424, "fastvit_ma36": 43974144}
FOLDED_SIZES = {"resnet18": 11684712, "resnet101": 44496488, "wideresnet50": 68849128, "resnext50": 24994792,
                "resnext101": 88689896, "mobilenet_v3_large": 5470832, "squeezenet1_1": 1235496, "shufflenet_v2": 1362816,
                "mnasnet05": 2208200, "resnet_3d": 33366672, "resnet_mixed": 11690640, "resnet_2plus1d": 31492650,
                "fcn_resnet50": 32929941, "deeplabv3_resnet50": 39610517, "unet_segmentation": 31031810,
                "quicksrnetsmall": 33264, "quicksrnetmedium": 61008, "quicksrnetlarge": 435888, "xlsr": 28016,
                "sesr_m5": 343120, "real_esrgan_general_x4v3": 1213296, "esrgan": 16697987, "real_esrgan_x4plus": 16697987,
                "densenet121": 7971368, "googlenet": 6617624, "vit": 86567656}


def _rows(name: str) -> list[dict]:
    with (TRUTH / name).open() as handle:
        return list(csv.DictReader(handle))


def _architectures():
    spec = importlib.util.spec_from_file_location("architectures", TRUTH / "architectures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ARCHITECTURES


@pytest.mark.parametrize("name", sorted(path.name for path in TRUTH.glob("*.csv") if "details" not in path.name))
def test_every_truth_row_has_a_source_a_soc_and_a_positive_latency(name):
    rows = _rows(name)
    assert rows
    for row in rows:
        assert row["source_url"].startswith("https://github.com/") and "/blob/" in row["source_url"]
        assert row["soc"] and row["family"] and float(row["latency_ms"]) > 0
        assert all(int(d) > 0 for d in row["input_shape"].split("x"))


def test_the_apple_networks_rebuild_from_their_papers():
    architectures = _architectures()
    for row in _rows("apple_coremltools.csv") + _rows("apple_ml_research.csv"):
        network = architectures[row["model_id"]]()
        assert sum(p.numel() for p in network.parameters()) == pytest.approx(PAPER_SIZES[row["model_id"]], rel=0.01)
        shape = tuple(int(d) for d in row["input_shape"].split("x"))
        assert network(torch.zeros(shape)).shape == (1, 1000)


def test_the_qualcomm_networks_have_their_reference_sizes():
    architectures = _architectures()
    rebuilt = {row["model_id"] for row in _rows("qualcomm_ai_hub.csv")} & set(architectures)
    assert rebuilt - set(PAPER_SIZES) == set(FOLDED_SIZES)
    for model_id, size in FOLDED_SIZES.items():
        assert sum(p.numel() for p in architectures[model_id]().parameters()) == size, model_id


@pytest.mark.parametrize("group, name", FITTED)
def test_fitted_profiles_carry_the_fit_and_band_of_the_results_file(group, name):
    fit, held_out = RESULTS[group]["fit"], RESULTS[group]["held_out"]
    unit_name, backend = GROUPS[group]
    unit = load_device(name).units[unit_name]
    assert unit.efficiency["conv"] == pytest.approx(fit["compute_efficiency"], abs=1e-3)
    assert unit.efficiency["elementwise"] == pytest.approx(fit["other_efficiency"], abs=1e-3)
    if "int8_compute_efficiency" in fit:
        assert unit.int8_efficiency["conv"] == pytest.approx(fit["int8_compute_efficiency"], abs=1e-3)
        assert unit.int8_efficiency["elementwise"] == pytest.approx(fit["int8_other_efficiency"], abs=1e-3)
    assert unit.op_overhead_us == pytest.approx(fit["op_overhead_us"], abs=1e-3)
    assert unit.run_overhead_ms[backend] == pytest.approx(RESULTS[group]["call_costs"][name][backend], abs=1e-4)
    if fit["on_chip_mb"]:
        assert (unit.on_chip.mb.value, unit.on_chip.bandwidth_gbps.value) == (fit["on_chip_mb"], fit["on_chip_bandwidth_gbps"])
    else:
        assert unit.on_chip is None
    band = unit.held_out_band
    assert (band.error_low, band.error_high, band.rows) == (pytest.approx(held_out["band_error_low"], abs=1e-3),
                                                            pytest.approx(held_out["band_error_high"], abs=1e-3), held_out["n"])


def test_each_profile_carries_its_phones_per_call_costs():
    """A per-call cost is fitted per phone and runtime (two Apple harnesses; two AI Hub releases on the 8 Elite): a
    profile carries its own phone's, the iPhone 16 Pro (no rows) the iPhone 15 Pro's, the 8 Elite the Galaxy S25's."""
    apple, elite = RESULTS["apple_ane"], RESULTS["sd8-elite"]
    assert set(apple["fit"]["run_overhead_ms"]) == {"iPhone 12 Pro", "iPhone 14 Pro", "iPhone 15 Pro"}
    for profile, phone in (("iphone12pro", "iPhone 12 Pro"), ("iphone14pro", "iPhone 14 Pro"), ("iphone16pro", "iPhone 15 Pro")):
        assert apple["call_costs"][profile] == {"coreml": apple["fit"]["run_overhead_ms"][phone]}
    assert {key.split(" / ")[1] for key in elite["fit"]["run_overhead_ms"]} == {"Samsung Galaxy S25", "Snapdragon 8 Elite QRD"}
    assert elite["call_costs"]["sd8-elite"] == {backend: elite["fit"]["run_overhead_ms"][f"{backend} / Samsung Galaxy S25"]
                                                for backend in ("tflite", "onnx")}


@pytest.mark.parametrize("name, backend, unit", [("iphone16pro", "coreml", "ane"), ("galaxy-s24", "onnx", "htp"),
                                                 ("galaxy-s24", "tflite", "htp")])
def test_an_estimate_on_a_fitted_npu_alone_prints_its_held_out_band_and_runtime_cost(name, backend, unit):
    from test_fusion import CONV_RELU, _graph

    device = load_device(name).for_backend(backend)
    estimate = estimate_cost(graph_cost(_graph(CONV_RELU)), device)
    fitted = device.units[unit]
    band = fitted.held_out_band
    assert {op.unit for op in estimate.ops} == {unit}
    assert device.run_overhead_ms == fitted.run_overhead_ms[backend]
    assert estimate.low_ms == pytest.approx(estimate.total_ms / (1 + band.error_high))
    assert estimate.high_ms == pytest.approx(estimate.total_ms / (1 + band.error_low))
    assert f"{band.rows} public measurements" in estimate.band_source


@pytest.mark.parametrize("group", GROUPS)
def test_held_out_errors_and_band_agree_with_the_rows(group):
    """The band and its statistics come from the rows measured and estimated wholly on the NPU; the rows apart are
    summarised per reason, against that band."""
    held_out = RESULTS[group]["held_out"]
    reasons = {row["apart"] for row in RESULTS["rows"] if row["group"] == group and row["apart"]}
    assert reasons == set(RESULTS[group]["held_out_apart"])
    for reason, summary in (("", held_out), *RESULTS[group]["held_out_apart"].items()):
        errors = np.array([row["held_out_ms"] / row["latency_ms"] - 1 for row in RESULTS["rows"]
                           if row["group"] == group and row["apart"] == reason])
        assert len(errors) == summary["n"]
        assert np.median(np.abs(errors)) == pytest.approx(summary["median_abs"])
        ranked = np.sort(np.abs(errors))
        assert ranked[math.ceil(0.9 * len(ranked)) - 1] == pytest.approx(summary["p90_abs"])  # nearest rank, as the host's
        inside = (errors >= held_out["band_error_low"]) & (errors <= held_out["band_error_high"])
        assert inside.mean() == pytest.approx(summary["inside_band"])


def test_rows_apart_are_those_ai_hub_ran_partly_on_the_cpu_or_effconv_estimates_off_the_npu():
    details = {(row["model_id"], row["device"], row["runtime"], row["precision"]): row
               for row in csv.DictReader((TRUTH / "qualcomm_ai_hub_details.csv").open())}
    for row in RESULTS["rows"]:
        if row["file"] == "qualcomm_ai_hub.csv":
            job = details[(row["model_id"], row["device"], row["runtime"], row["precision"])]
            assert row["off_npu_layers"] >= int(job["layers_cpu"] or 0) + int(job["layers_gpu"] or 0)
        assert (row["apart"] == "AI Hub ran layers on the CPU") == (row["off_npu_layers"] > 0)
    # effconv's LiteRT placement puts CONV_3D on the CPU: those rows' estimates are not on the NPU alone
    assert {row["model_id"] for row in RESULTS["rows"] if row["apart"] == "effconv's estimate runs ops off the NPU"} == {
        "resnet_3d", "resnet_2plus1d", "resnet_mixed"}


def test_a_units_per_call_costs_name_only_its_backends_and_are_non_negative():
    unit = load_device("galaxy-s24").units["htp"]
    with pytest.raises(ValueError, match="run_overhead_ms names backend"):
        unit.model_validate(unit.model_dump() | {"run_overhead_ms": {"coreml": 0.1}})
    with pytest.raises(ValueError, match="run_overhead_ms must be in"):
        unit.model_validate(unit.model_dump() | {"run_overhead_ms": {"onnx": -1.0}})
    executorch = load_device("galaxy-s24").for_backend("executorch")
    assert executorch.run_overhead_ms == load_device("galaxy-s24").run_overhead_ms  # its first unit (CPU) has none
