"""The quantize quality gate on measured numbers: both bounds judged, `applied` whenever one was checked,
printed values never rounded onto the bound they missed, and old manifests still described."""

from __future__ import annotations

import pytest

from effconv.backends.quality import apart_from
from effconv.quantize.gate import NO_GROUND_TRUTH, describe, evaluate


def _report(vs_float: float, drop: float | None = None, simulation_passed: bool | None = None) -> dict:
    quality = {"psnr_vs_float_db": vs_float} | ({} if drop is None else {"psnr_drop_db": drop})
    return {"quality": quality} | ({} if simulation_passed is None else {"simulation_check": {"passed": simulation_passed}})


@pytest.mark.parametrize("value, bound, decimals, expected", [
    (29.97, 30.0, 1, "29.97"),  # regression: printed "30.0 dB ... below 30"
    (29.9996, 30.0, 1, "29.9996"),
    (30.0, 30.0, 1, "30.0"),  # on the bound: it passed, nothing to keep apart
    (61.19, 30.0, 1, "61.2"),
    (0.30004, 0.3, 2, "0.30004"),
    (0.31, 0.3, 2, "0.31"),
    (35.04, None, 1, "35.0"),
])
def test_a_printed_value_never_reads_as_its_bound(value, bound, decimals, expected):
    assert apart_from(value, bound, decimals) == expected


def test_a_psnr_just_below_the_floor_fails_with_its_own_digits():
    gate = evaluate(_report(29.97), max_psnr_drop=0.3, min_psnr_vs_float=30.0)
    assert gate["applied"] is True and gate["passed"] is False and gate["failed"] == "psnr_vs_float"
    assert gate["reason"] == "its output is 29.97 dB from the float artifact's, below --min-psnr-vs-float 30"
    assert describe(gate) == f"FAILED (PSNR vs float 29.97 dB < 30; drop bound not applied: {NO_GROUND_TRUTH})"


def test_the_floor_alone_is_an_applied_gate():
    """regression: without ground truth the gate said "not applied" while --min-psnr-vs-float was enforced."""
    gate = evaluate(_report(35.04), max_psnr_drop=0.3, min_psnr_vs_float=30.0)
    assert gate == {"applied": True, "passed": True, "min_psnr_vs_float": 30.0, "psnr_vs_float_db": 35.04,
                    "max_psnr_drop": 0.3, "psnr_drop_db": None, "drop_not_applied": NO_GROUND_TRUTH}
    assert describe(gate) == f"passed (PSNR vs float 35.0 dB >= 30; drop bound not applied: {NO_GROUND_TRUTH})"


def test_both_bounds_are_described_and_a_drop_just_past_its_bound_fails():
    passed = evaluate(_report(41.0, drop=0.12), max_psnr_drop=0.3, min_psnr_vs_float=30.0)
    assert describe(passed) == "passed (PSNR vs float 41.0 dB >= 30; drop 0.12 dB <= 0.3)"
    failed = evaluate(_report(41.0, drop=0.30004), max_psnr_drop=0.3, min_psnr_vs_float=30.0)
    assert failed["failed"] == "psnr_drop"
    assert failed["reason"] == "it loses 0.30004 dB PSNR on held-out clips, more than --max-psnr-drop 0.3"
    assert describe(failed) == "FAILED (PSNR vs float 41.0 dB >= 30; drop 0.30004 dB > 0.3)"


def test_no_bound_is_not_applied_and_says_why():
    gate = evaluate(_report(12.0), max_psnr_drop=None, min_psnr_vs_float=None)
    assert gate["applied"] is False and gate["passed"] is True
    assert describe(gate) == "not applied (--min-psnr-vs-float 0 and no --max-psnr-drop)"
    only_drop = evaluate(_report(12.0), max_psnr_drop=0.3, min_psnr_vs_float=None)
    assert describe(only_drop) == f"not applied ({NO_GROUND_TRUTH})"


def test_a_failed_simulation_fails_the_gate_whatever_the_psnr():
    gate = evaluate(_report(60.0, drop=0.0, simulation_passed=False), max_psnr_drop=0.3, min_psnr_vs_float=30.0)
    assert gate["passed"] is False and gate["failed"] == "simulation"
    assert describe(gate).startswith("FAILED: the weights in the written artifact differ")


def test_a_gate_from_an_older_manifest_is_still_described():
    """Pipeline reruns read manifests of stages they skip, written before the gate kept both bounds."""
    old = {"applied": True, "passed": True, "max_psnr_drop": 0.3, "psnr_drop_db": 0.05,
           "min_psnr_vs_float": 30.0, "psnr_vs_float_db": 44.2}
    assert describe(old) == "passed (PSNR vs float 44.2 dB >= 30; drop 0.05 dB <= 0.3)"
    assert describe({"applied": False, "passed": True, "reason": "no --max-psnr-drop given"}) == \
        "not applied (no --max-psnr-drop given)"


def _streamed(fall: float) -> dict:
    stream = {"fall_db": fall, "window_latent_frames": 12, "latent_frames": 48}
    return _report(40.0) | {"stream": stream}


def test_a_streaming_step_whose_chunk_loop_drifts_more_than_a_db_fails_the_gate():
    held = evaluate(_streamed(0.84), max_psnr_drop=None, min_psnr_vs_float=30.0)
    assert held["passed"] is True and describe(held) == "passed (PSNR vs float 40.0 dB >= 30; drift 0.84 dB <= 1)"
    drifted = evaluate(_streamed(3.63), max_psnr_drop=None, min_psnr_vs_float=30.0)
    assert drifted["passed"] is False and drifted["failed"] == "drift"
    assert "falls 3.63 dB from the first 12 latent frames of a 48-frame clip to the last" in drifted["reason"]
    assert describe(drifted).startswith("FAILED (PSNR vs float 40.0 dB >= 30; drift 3.63 dB > 1")
    # --min-psnr-vs-float 0 (None here) turns the drift bound off with the floor
    assert evaluate(_streamed(3.63), max_psnr_drop=None, min_psnr_vs_float=None)["passed"] is True
