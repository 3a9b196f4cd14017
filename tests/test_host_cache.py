"""host-cpu's cache is keyed by the code that made it: a fit from another cost model is ignored (and the CLI says so
once), measured peaks are re-measured after a code change, and a peak measured under load is not cached."""

from __future__ import annotations

import json

import pytest

from effconv.profile.device import host_cpu
from effconv.profile.device.profiles import HOST, load_device

TINY_SPEC = "examples/specs/ltx-tiny.yaml"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(host_cpu.CACHE_ENV, str(tmp_path / "cache"))


def _measurement(threads: int, cpu: float, xnnpack: float | None = None, produced_by: dict | None = None) -> dict:
    """A cache section as measure_host writes it, with given peaks (so that no test here times anything)."""
    return {"peak_fp32_gflops": {"cpu": cpu, "xnnpack": xnnpack}, "bandwidth_gbps": 10.0, "threads": threads,
            "method": "given by the test", "measured_at": f"test-{threads}", "load_average": [0.0, 0.0, 0.0],
            "produced_by": produced_by or host_cpu.measurement_version()}


def _fit(produced_by: dict | None) -> dict:
    fit = {"efficiency": {"conv": 0.7}, "int8_efficiency": {"conv": 0.2}, "op_overhead_us": 3.0, "narrow_channels": 16.0,
           "run_overhead_ms": 0.4, "model_uncertainty": 0.2, "validation": "onnxruntime calibrated in a test",
           "calibrated_at": "now"}
    return fit | ({"produced_by": produced_by} if produced_by else {})


OLDER = {"effconv": "0.0.9", "source": "0123456789abcdef"}
FITS = {"same version": (lambda: host_cpu.cost_model_version(), True),
        "another source digest": (lambda: host_cpu.cost_model_version() | {"source": OLDER["source"]}, False),
        "another effconv version": (lambda: host_cpu.cost_model_version() | {"effconv": OLDER["effconv"]}, False),
        "no version recorded": (lambda: None, False)}


@pytest.mark.parametrize("case", sorted(FITS))
def test_a_cached_fit_is_used_only_when_made_by_this_cost_model(case):
    version, used = FITS[case]
    host_cpu.write_cache_entry(host_cpu.host_key(1), "measurement", _measurement(1, 50.0, 60.0))
    host_cpu.write_cache_entry(host_cpu.host_key(1), "calibration", {"cpu": _fit(version())})
    host = load_device(HOST, threads=1)
    onnx = host.for_backend("onnx")
    if used:
        assert onnx.units["cpu"].efficiency == {"conv": 0.7} and onnx.model_uncertainty == 0.2
        assert onnx.validation == "onnxruntime calibrated in a test" and "outdated_calibration" not in host.measured
    else:
        assert onnx.units["cpu"].efficiency["conv"] == 0.3  # host-cpu.yaml's default share
        assert onnx.model_uncertainty == 4.0 and "uncalibrated" in onnx.validation
        assert host.measured["outdated_calibration"] == ["cpu"]
    assert host.units["cpu"].peak_gops["fp32"].value == 50.0  # the given peak: nothing was measured


@pytest.mark.parametrize(("version", "lines"), [(OLDER, 1), (None, 0)])
def test_profile_says_once_that_an_older_fit_was_ignored(cli, version, lines):
    host_cpu.write_cache_entry(host_cpu.host_key(1), "measurement", _measurement(1, 50.0, 60.0))
    host_cpu.write_cache_entry(host_cpu.host_key(1), "calibration",
                              {"cpu": _fit(version or host_cpu.cost_model_version())})
    code, out, _ = cli("profile", TINY_SPEC, "--device", HOST, "--threads", "1")
    assert code == 0
    assert out.count(host_cpu.OUTDATED_CALIBRATION) == lines
    assert ("uncalibrated" in out) == bool(lines) and ("calibrated in a test" in out) != bool(lines)


def test_a_measurement_by_other_code_is_measured_again():
    host_cpu.write_cache_entry(host_cpu.host_key(1), "measurement", _measurement(1, 0.001, None, produced_by=OLDER))
    measured = host_cpu.host_measurement(1)
    assert measured["produced_by"] == host_cpu.measurement_version() and measured["measured_at"] != "test-1"
    assert measured["peak_fp32_gflops"]["cpu"] > 0.1 and len(measured["load_average"]) == 3


# --- the peak rule: more threads never measure below fewer --------------------------------------------------------

@pytest.mark.parametrize(("peaks", "implausible"), [
    ({1: {"cpu": 100.0, "xnnpack": 120.0}, 2: {"cpu": 80.0, "xnnpack": 230.0}}, [2]),  # 2 threads below 1 (cpu)
    ({1: {"cpu": 100.0, "xnnpack": 120.0}, 2: {"cpu": 190.0, "xnnpack": 110.0}}, [2]),  # ... for XNNPACK only
    ({1: {"cpu": 100.0}, 2: {"cpu": 96.0}}, []),  # SMT siblings: about one core's peak, within 5%
    ({1: {"cpu": 100.0}, 2: {"cpu": 94.0}}, [2]),
    ({1: {"cpu": 100.0}, 2: {"cpu": 180.0}, 4: {"cpu": 150.0}}, [4]),  # 4 below 2, above 1
    ({1: {"cpu": 300.0}, 2: {"cpu": 180.0}, 4: {"cpu": 350.0}}, [2]),  # the low one, not the one after it
    ({1: {"cpu": 100.0, "xnnpack": None}, 2: {"cpu": 150.0, "xnnpack": None}}, []),  # LiteRT not installed
    ({2: {"cpu": 10.0}}, []),
])
def test_implausible_peaks(peaks, implausible):
    assert host_cpu.implausible_peaks(peaks) == implausible


def test_best_of_takes_each_figures_highest():
    best = host_cpu.best_of([_measurement(2, 80.0, 200.0), _measurement(2, 90.0, 150.0) | {"bandwidth_gbps": 12.0}])
    assert best["peak_fp32_gflops"] == {"cpu": 90.0, "xnnpack": 200.0} and best["bandwidth_gbps"] == 12.0
    assert best["tries"] == 2


def test_a_peak_below_fewer_threads_is_measured_again_and_the_best_kept():
    one_thread = {1: {"cpu": 100.0, "xnnpack": 120.0}}
    given = iter([_measurement(2, 60.0, 200.0), _measurement(2, 150.0, 110.0), _measurement(2, 70.0, 230.0)])
    best, plausible = host_cpu.plausible_measurement(lambda: next(given), 2, one_thread)
    assert plausible and best["tries"] == 2 and best["peak_fp32_gflops"] == {"cpu": 150.0, "xnnpack": 200.0}


def test_a_peak_still_implausible_after_every_try_is_reported_so():
    given = iter([_measurement(2, 60.0), _measurement(2, 70.0), _measurement(2, 65.0), _measurement(2, 500.0)])
    best, plausible = host_cpu.plausible_measurement(lambda: next(given), 2, {1: {"cpu": 100.0}})
    assert not plausible and best["tries"] == host_cpu.PEAK_TRIES == 3 and best["peak_fp32_gflops"]["cpu"] == 70.0


def test_an_implausible_peak_is_not_cached_and_a_cached_one_is_checked_again(tmp_path):
    """2 threads cached far below 1 thread: loading 2 threads measures again (really: the real peak is far above
    the 1-thread figure given here), and caches the new, plausible peak."""
    host_cpu.write_cache_entry(host_cpu.host_key(1), "measurement", _measurement(1, 0.01))
    host_cpu.write_cache_entry(host_cpu.host_key(2), "measurement", _measurement(2, 0.001))
    measured = host_cpu.host_measurement(2)
    assert measured["measured_at"] != "test-2" and measured["peak_fp32_gflops"]["cpu"] > 0.01
    cache = json.loads((host_cpu.cache_dir() / host_cpu.CACHE_FILE).read_text())
    assert cache[host_cpu.host_key(2)]["measurement"]["peak_fp32_gflops"]["cpu"] == measured["peak_fp32_gflops"]["cpu"]
    assert cache[host_cpu.host_key(1)]["measurement"]["peak_fp32_gflops"]["cpu"] == 0.01
    # a peak that stays below 1 thread's (here: 1 thread given as 1e6 GFLOP/s) is used for this run, not cached
    host_cpu.write_cache_entry(host_cpu.host_key(1), "measurement", _measurement(1, 1e6))
    again = host_cpu.host_measurement(2)
    assert again["tries"] == host_cpu.PEAK_TRIES
    cached = json.loads((host_cpu.cache_dir() / host_cpu.CACHE_FILE).read_text())[host_cpu.host_key(2)]["measurement"]
    assert cached["measured_at"] == measured["measured_at"]
