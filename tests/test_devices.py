"""Device profiles: every shipped figure is sourced, bad profiles are one-line errors, host-cpu is cached."""

from __future__ import annotations

import json

import pytest
import yaml

from effconv.errors import EffconvError
from effconv.profile.device import host_cpu
from effconv.profile.device.profiles import HOST, DeviceProfile, builtin_names, load_device, profiles_dir

PHONES = ["iphone12pro", "iphone14pro", "iphone15pro", "iphone16pro", "pixel9", "galaxy-s23", "galaxy-s24", "sd8-elite"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(host_cpu.CACHE_ENV, str(tmp_path / "cache"))


def _figures(profile):
    yield profile.memory.ram_gb
    yield profile.memory.bandwidth_gbps
    yield profile.fallback_us
    for unit in profile.units.values():
        yield from unit.peak_gops.values()


def test_builtin_profiles_are_the_nine_devices():
    assert set(builtin_names()) == {*PHONES, "rpi5", HOST}


@pytest.mark.parametrize("name", [*PHONES, "rpi5"])
def test_every_figure_has_a_source_and_an_uncertainty(name):
    profile = load_device(name)
    for figure in _figures(profile):
        assert "https://" in figure.source or figure.source.startswith("derived: ")
        assert 0 <= figure.uncertainty <= 10
    assert any(source.url.startswith("https://") for source in profile.sources)
    assert "Not measured on a" in profile.validation


def test_galaxy_s24_names_its_soc_variant():
    profile = load_device("galaxy-s24")
    assert "Snapdragon 8 Gen 3" in profile.soc and "Exynos" in profile.description


def test_unknown_device_name_is_a_one_line_error():
    with pytest.raises(EffconvError, match="unknown device 'nokia3310'"):
        load_device("nokia3310")


def test_user_profile_with_an_unknown_key_is_rejected(tmp_path):
    text = (profiles_dir() / "rpi5.yaml").read_text()
    bad = tmp_path / "mine.yaml"
    bad.write_text(text.replace("soc:", "turbo: true\nsoc:"))
    with pytest.raises(EffconvError, match="unknown key 'turbo'"):
        load_device(str(bad))


def test_user_profile_loads_from_a_path(tmp_path):
    text = (profiles_dir() / "rpi5.yaml").read_text().replace("name: rpi5", "name: rpi5-4gb")
    path = tmp_path / "rpi5-4gb.yaml"
    path.write_text(text.replace("ram_gb: {value: 8", "ram_gb: {value: 4"))
    profile = load_device(str(path))
    assert profile.name == "rpi5-4gb" and profile.memory.ram_gb.value == 4


def test_bad_device_yaml_exits_2_with_one_line(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nunits: [1, 2\n")
    code, out, err = cli("profile", "whatever.onnx", "--device", str(bad))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "malformed YAML" in err


def test_host_measurement_is_cached_and_not_repeated(tmp_path):
    first = load_device(HOST, threads=1)
    cache_file = tmp_path / "cache" / host_cpu.CACHE_FILE
    stamp = cache_file.stat().st_mtime_ns
    second = load_device(HOST, threads=1)
    assert cache_file.stat().st_mtime_ns == stamp
    assert second.measured == first.measured
    assert first.units["cpu"].peak_gops["fp32"].value > 0.1
    assert first.memory.bandwidth_gbps.value > 0.1
    entry = json.loads(cache_file.read_text())[host_cpu.host_key(1)]
    assert entry["measurement"]["peak_fp32_gflops"]["cpu"] == first.units["cpu"].peak_gops["fp32"].value


def test_each_runtime_has_its_own_measured_peak_and_cached_calibration():
    """onnxruntime's and XNNPACK's matmuls are measured apart; a cached fit of one runtime changes that runtime's unit
    (and, for its artifacts, the band and run overhead) and leaves the other uncalibrated."""
    first = load_device(HOST, threads=1)
    peaks = first.measured["peak_fp32_gflops"]
    assert peaks["cpu"] > 0.1 and peaks["xnnpack"] > 0.1 and peaks["cpu"] != peaks["xnnpack"]
    assert first.units["xnnpack"].peak_gops["fp32"].value == peaks["xnnpack"]
    fit = {"efficiency": {"conv": 0.7}, "int8_efficiency": {"conv": 0.2}, "op_overhead_us": 3.0, "narrow_channels": 16.0,
           "run_overhead_ms": 0.4, "model_uncertainty": 0.2, "validation": "LiteRT calibrated in a test", "calibrated_at": "now",
           "produced_by": host_cpu.cost_model_version()}
    host_cpu.write_cache_entry(host_cpu.host_key(1), "calibration", {"xnnpack": fit})
    calibrated = load_device(HOST, threads=1)
    lite = calibrated.for_backend("tflite")
    assert lite.units["xnnpack"].efficiency == {"conv": 0.7} and lite.units["xnnpack"].int8_efficiency == {"conv": 0.2}
    assert lite.units["xnnpack"].narrow_channels == 16.0 and lite.units["xnnpack"].op_overhead_us == 3.0
    assert lite.model_uncertainty == 0.2 and lite.run_overhead_ms == 0.4 and lite.validation == "LiteRT calibrated in a test"
    assert calibrated.for_backend("executorch").units.keys() == {"xnnpack"}
    onnx = calibrated.for_backend("onnx")
    assert onnx.units.keys() == {"cpu"} and onnx.model_uncertainty == 4.0 and "uncalibrated" in onnx.validation
    assert load_device(HOST, threads=1, calibrated=False).units["xnnpack"].efficiency != {"conv": 0.7}


def test_devices_command_lists_every_profile(cli):
    code, out, _ = cli("devices", "--json")
    assert code == 0
    assert {p["name"] for p in json.loads(out)} == set(builtin_names())


def _shipped(name: str) -> DeviceProfile:
    """host-cpu as written (not measured): which unit runs what does not depend on its figures."""
    if name == HOST:
        return DeviceProfile.model_validate(yaml.safe_load((profiles_dir() / f"{HOST}.yaml").read_text()))
    return load_device(name)


def test_every_shipped_device_says_how_it_runs_executorch():
    """ExecuTorch artifacts are lowered to XNNPACK only: each profile runs them on its CPU (host-cpu: its XNNPACK
    unit), with a note saying so."""
    for name in builtin_names():
        profile = _shipped(name)
        assert "executorch" in profile.backends and "XNNPACK" in profile.backend_units["executorch"].note
        assert list(profile.for_backend("executorch").units) == (["xnnpack"] if name == HOST else ["cpu"])


def test_a_backend_limited_to_some_units_sees_only_those():
    phone = load_device("iphone16pro")
    assert list(phone.units) == ["ane", "gpu", "cpu"]
    assert list(phone.for_backend("executorch").units) == ["cpu"]
    assert list(phone.for_backend("coreml").units) == ["ane", "gpu", "cpu"] and phone.for_backend("coreml").backends == ["coreml"]
    # a spec's ONNX graph on an iPhone is placed as the Core ML model it converts to
    assert phone.for_backend("onnx").backends == ["coreml"]
    assert list(load_device("galaxy-s24").for_backend("onnx").units) == ["htp", "cpu"]


@pytest.mark.parametrize(("old", "new", "message"), [
    ("lint_units: {onnx: [cpu], tflite", "lint_units: {onnx: [npu0], tflite", r"unknown onnx lint unit\(s\) \['npu0'\] \(use: npu, qnn, cpu\)"),
    ("backends: [onnx, tflite, executorch]", "backends: [onnx-qnn, tflite, executorch]", "backend 'onnx-qnn' has no lint rules"),
    ("tflite: [xnnpack, builtin]", "tflite: [xnnpack]", "rules/tflite.yaml gives rpi5 \\['builtin', 'xnnpack'\\]"),
    ("    lint_units:", "    max_rank: 4\n    lint_units:", "max_rank: a unit no longer lists what it cannot run"),
])
def test_a_unit_that_is_not_lint_units_is_a_one_line_error(tmp_path, old, new, message):
    text = (profiles_dir() / "rpi5.yaml").read_text()
    assert old in text
    path = tmp_path / "mine.yaml"
    path.write_text(text.replace(old, new))
    with pytest.raises(EffconvError, match=message) as caught:
        load_device(str(path))
    assert len(caught.value.one_line().splitlines()) == 1
