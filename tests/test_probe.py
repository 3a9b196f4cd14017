"""The host probe: `effconv profile --device host-cpu` fits onnxruntime's unit by itself the first time it costs an
ONNX model without a current fit (progress shown), caches the fit with the cost model it was made with, reuses it
after, and runs again when that cost model changed; `--no-probe`, EFFCONV_HOST_PROBE=off and the units it does not
fit (LiteRT's, a phone's) never probe."""

from __future__ import annotations

import json
import math

import pytest

from effconv.host import default_threads
from effconv.profile.device import host_cpu
from effconv.profile.device.profiles import HOST, load_device
from effconv.profile.fit import probe
from effconv.profile.fit.model_set import calibration_set

TINY_SPEC = "examples/specs/ltx-tiny.yaml"
TWO_FAST = ("ltx-tiny", "mochi-tiny")  # the two quickest decoders of the probe: one can be left out of the fit
OLDER = {"effconv": "0.0.9", "source": "0123456789abcdef"}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(host_cpu.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(probe.PROBE_ENV)


def _cached_fit(threads: int = 1) -> dict | None:
    return host_cpu.read_cache().get(host_cpu.host_key(threads), {}).get("calibration", {}).get(probe.PROBED_UNIT)


def _given_fit(produced_by: dict) -> dict:
    return {"efficiency": {"conv": 0.7}, "int8_efficiency": {}, "op_overhead_us": 3.0, "narrow_channels": 16.0,
            "run_overhead_ms": 0.4, "model_uncertainty": 0.3, "validation": "onnxruntime probed in a test",
            "calibrated_at": "now", "produced_by": produced_by}


@pytest.fixture(scope="module")
def two_records():
    """The probe's measurements of its two quickest decoders (fp32 and int8 each), made once for this module."""
    from effconv.profile.fit.measure_set import measure_set

    models = [m for m in probe.probe_set() if m.name in TWO_FAST]
    return measure_set(models, 1, 2, backends=("onnx",), progress=lambda _: None)


def test_first_profile_on_host_cpu_probes_caches_and_reuses(cli, monkeypatch, two_records):
    """The wiring, on measurements made once for the module (`two_records`; the slow test below measures for real)."""
    measured = []
    whole_set = probe.probe_set
    monkeypatch.setattr(probe, "probe_set", lambda: [m for m in whole_set() if m.name in TWO_FAST])
    monkeypatch.setattr(probe, "measure_set", lambda models, *args, **kwargs: measured.append(models) or two_records)
    code, out, err = cli("profile", TINY_SPEC, "--device", HOST, "--threads", "1")
    assert code == 0, err
    assert [m.name for m in measured[0]] == list(TWO_FAST) and not any(m.held_out for m in measured[0])
    assert "probing this CPU" in err and "probe done in" in err
    fit = _cached_fit()
    assert fit["method"] == "probe" and fit["produced_by"] == host_cpu.cost_model_version() and fit["threads"] == 1
    assert "fitted by the host probe (4 artifacts of 2 small decoders" in fit["validation"]
    assert "fitted by the host probe" in " ".join(out.split())  # the band printed is the probe's
    assert math.isfinite(fit["model_uncertainty"]) and 0.05 <= fit["model_uncertainty"] < 4.0
    device = load_device(HOST, threads=1).for_backend("onnx")
    assert device.units["cpu"].efficiency == fit["efficiency"] and device.model_uncertainty == fit["model_uncertainty"]
    assert device.run_overhead_ms == fit["run_overhead_ms"]

    def no_second_probe(*args, **kwargs):
        raise AssertionError("probed again although a current fit was cached")

    monkeypatch.setattr("effconv.profile.run.probe_host", no_second_probe)
    code, _, err = cli("profile", TINY_SPEC, "--device", HOST, "--threads", "1")
    assert code == 0 and "probing" not in err


def test_the_left_out_error_is_each_decoders_error_under_the_others_fit(two_records):
    """leave_one_out refits without each model: its rows are that model's artifacts, and its predictions are not the
    full fit's (the full fit saw the model)."""
    from effconv.profile.fit.calibrate import errors
    from effconv.profile.fit.fitting import fit_runtime, with_fit

    device = load_device(HOST, threads=1, calibrated=False).for_backend("onnx")
    rows = probe.leave_one_out(two_records, device)
    assert [(r["name"], r["dtype"]) for r in rows] == [(r["name"], r["dtype"]) for r in two_records]
    full = errors(two_records, with_fit(device, fit_runtime(two_records, device, None)))
    assert all(row["measured_ms"] == whole["measured_ms"] for row, whole in zip(rows, full))
    assert max(abs(row["predicted_ms"] - whole["predicted_ms"]) for row, whole in zip(rows, full)) > 1e-6


class Recorder:
    """Stands in for probe_host: stores a given fit (as the probe would) and counts calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, threads, progress=print, **kwargs):
        self.calls += 1
        host_cpu.store_calibration(threads, {probe.PROBED_UNIT: _given_fit(host_cpu.cost_model_version())})


@pytest.fixture
def recorder(monkeypatch):
    recorded = Recorder()
    monkeypatch.setattr("effconv.profile.run.probe_host", recorded)
    return recorded


def test_a_fit_from_another_cost_model_is_probed_again(cli, recorder):
    host_cpu.store_calibration(1, {probe.PROBED_UNIT: _given_fit(OLDER)})
    code, out, _ = cli("profile", TINY_SPEC, "--device", HOST, "--threads", "1")
    assert code == 0 and recorder.calls == 1
    assert "probed in a test" in out and host_cpu.OUTDATED_CALIBRATION not in out
    cli("profile", TINY_SPEC, "--device", HOST, "--threads", "1")
    assert recorder.calls == 1


@pytest.mark.parametrize("how", ["--no-probe", "env off", "phone", "litert unit"])
def test_no_probe_where_it_is_turned_off_or_fits_nothing(cli, recorder, monkeypatch, wide_student, how):
    args = ["profile", TINY_SPEC, "--device", HOST, "--threads", "1"]
    if how == "--no-probe":
        args.append("--no-probe")
    elif how == "env off":
        monkeypatch.setenv(probe.PROBE_ENV, "OFF")
    elif how == "phone":
        args[3] = "galaxy-s24"
        args = args[:4]
    else:
        args[1] = str(wide_student("tflite")[0])
    code, out, err = cli(*args)
    assert code == 0, err
    assert recorder.calls == 0 and "probing" not in err
    if how in ("--no-probe", "env off"):
        assert "uncalibrated" in out


def test_quick_calibrate_refuses_what_the_probe_does_not_fit(cli, recorder):
    for extra in (["--runtime", "tflite"], ["--no-int8"]):
        code, _, err = cli("calibrate", "--quick", *extra)
        assert code == 2 and "--quick probes onnxruntime only" in err and "Traceback" not in err
    assert recorder.calls == 0


def test_probe_set_is_part_of_the_calibration_set():
    names = [m.name for m in calibration_set()]
    assert set(probe.PROBE_MODELS) <= set(names) and not any(m.held_out for m in probe.probe_set())


@pytest.mark.slow
def test_full_probe_fits_within_its_left_out_band(cli):
    """The whole probe, as `effconv calibrate --quick` runs it (about a minute and a half on 2 cores)."""
    code, out, err = cli("calibrate", "--quick", "--threads", "1")
    assert code == 0, err
    fit = _cached_fit()
    assert "14 artifacts of 7 small decoders" in fit["validation"] and fit["model_uncertainty"] <= 1.0
    assert out.count("tiny") >= 12


def test_a_plan_counts_the_probe_in_host_cpus_profile_stage_until_it_ran(cli, tmp_path, monkeypatch):
    recipe = "tests/data/pipeline-tiny.yaml"

    def host_profile_seconds() -> float:
        code, out, err = cli("run", recipe, "--out", tmp_path / "never", "--dry-run", "--json")
        assert code == 0, err
        (planned,) = [p for p in json.loads(out)["plan"] if p["stage"] == "profile-host-cpu"]
        return planned["estimate_seconds"]

    unprobed = host_profile_seconds()
    monkeypatch.setenv(probe.PROBE_ENV, "off")
    assert unprobed - host_profile_seconds() == pytest.approx(probe.PROBE_SECONDS)
    monkeypatch.delenv(probe.PROBE_ENV)
    host_cpu.store_calibration(default_threads(), {probe.PROBED_UNIT: _given_fit(host_cpu.cost_model_version())})
    assert unprobed - host_profile_seconds() == pytest.approx(probe.PROBE_SECONDS)


def test_conversions_fall_back_to_this_process_when_workers_cannot_run(monkeypatch, tmp_path):
    from concurrent.futures.process import BrokenProcessPool

    from effconv.profile.fit import measure_set

    class NoWorkers:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            raise BrokenProcessPool("no workers in this test")

        def __exit__(self, *exc):
            return False

    said = []
    monkeypatch.setattr(measure_set, "ProcessPoolExecutor", NoWorkers)
    monkeypatch.setattr(measure_set.os, "cpu_count", lambda: 2)
    models = [m for m in calibration_set() if m.name in ("ltx-tiny", "mochi-tiny")]
    made = measure_set.convert_all(models, tmp_path, ("onnx",), False, said.append)
    assert said[0].startswith("cannot convert in worker processes (no workers in this test)")
    assert [[path.relative_to(tmp_path).parts[:2] for _, _, path, _ in artifacts] for artifacts in made] == [
        [(measure_set.IN_PROCESS, "ltx-tiny")], [(measure_set.IN_PROCESS, "mochi-tiny")]]
    assert all(path.is_file() for artifacts in made for _, _, path, _ in artifacts)


def test_a_model_that_cannot_be_converted_stops_the_models_not_yet_started(tmp_path):
    """Without the stop, one bad model of calibrate's 28 would surface only after every other had been converted."""
    from effconv.profile.fit import measure_set
    from effconv.profile.fit.model_set import CalibrationModel

    cheap = ("ltx-tiny", "mochi-tiny", "ltx-tiny-48x80", "mochi-tiny-48x80", "ltx-small", "mochi-small", "hunyuan-tiny",
             "cogvideox-tiny")
    models = [CalibrationModel("no-such-family", False, "no-such-family", (9, 32, 48))]
    models += [m for m in calibration_set() if m.name in cheap]
    with pytest.raises(KeyError, match="no-such-family"):
        measure_set.convert_all(models, tmp_path, ("onnx",), False, lambda _: None)
    started = {path.name for path in tmp_path.iterdir()}
    # Started at most: the bad model, the other worker's, and the calls already queued to the workers (2 + 1), which
    # cannot be taken back; without the stop, all of them
    assert len(started) <= len(models) - 2, started
