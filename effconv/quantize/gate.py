"""The quantize quality gate: two bounds on the held-out samples, judged once and read the same way by the
table, the manifest and the pipeline report.

`--min-psnr-vs-float` bounds the int8 output's PSNR against the float artifact's and always applies (0 turns
it off, and with it the drift bound); `--max-psnr-drop` bounds the PSNR lost against ground-truth frames and applies
only when the calibration came with them. A streaming step's int8 chunk loop must also hold its quality over a long
clip: its PSNR against the float loop over the last latent frames may fall at most MAX_DRIFT_DB below the first
ones' (rounding that builds up through the caches would show there). A Core ML report's `simulation_check` must
pass as well: its quality was measured on a torch simulation, which counts only if it holds the weights that were
written.

Beside the gate, the speed verdict: an int8 artifact that timed slower than its float one on this host says so
wherever the gate's verdict is read, since passing a quality gate says nothing about speed.
"""

from __future__ import annotations

from effconv.backends.quality import apart_from

NO_GROUND_TRUTH = "no ground-truth frames in the calibration data"
SIMULATION_DIFFERS = "the weights in the written artifact differ from the simulated ones the quality was measured on"
MAX_DRIFT_DB = 1.0


def evaluate(report: dict, max_psnr_drop: float | None, min_psnr_vs_float: float | None) -> dict:
    """The manifest's `gate`: both bounds with what was measured, `applied` when either bound was checked,
    `passed`, and on failure `failed` (simulation, psnr_vs_float or psnr_drop) with a `reason`."""
    quality = report["quality"]
    vs_float, drop = quality["psnr_vs_float_db"], quality.get("psnr_drop_db")
    drop_checked = max_psnr_drop is not None and drop is not None
    gate = {"applied": min_psnr_vs_float is not None or drop_checked,
            "min_psnr_vs_float": min_psnr_vs_float, "psnr_vs_float_db": vs_float,
            "max_psnr_drop": max_psnr_drop, "psnr_drop_db": drop}
    if max_psnr_drop is not None and drop is None:
        gate["drop_not_applied"] = NO_GROUND_TRUTH
    simulation = report.get("simulation_check")
    if simulation is not None and not simulation["passed"]:
        return {**gate, "applied": True, "passed": False, "failed": "simulation", "reason": SIMULATION_DIFFERS}
    if min_psnr_vs_float is not None and vs_float < min_psnr_vs_float:
        return {**gate, "passed": False, "failed": "psnr_vs_float",
                "reason": f"its output is {apart_from(vs_float, min_psnr_vs_float)} dB from the float artifact's, "
                          f"below --min-psnr-vs-float {min_psnr_vs_float:g}"}
    if drop_checked and drop > max_psnr_drop:
        return {**gate, "passed": False, "failed": "psnr_drop",
                "reason": f"it loses {apart_from(drop, max_psnr_drop, 2)} dB PSNR on held-out clips, more than "
                          f"--max-psnr-drop {max_psnr_drop:g}"}
    drift = report.get("stream", {})
    if min_psnr_vs_float is not None and drift.get("fall_db") is not None:
        gate |= {"max_drift_db": MAX_DRIFT_DB, "drift_db": drift["fall_db"]}
        if drift["fall_db"] > MAX_DRIFT_DB:
            return {**gate, "passed": False, "failed": "drift",
                    "reason": f"its chunk loop's PSNR against the float loop falls {drift['fall_db']:.2f} dB from the first "
                              f"{drift['window_latent_frames']} latent frames of a {drift['latent_frames']}-frame clip to the "
                              f"last, more than {MAX_DRIFT_DB:g} dB"}
    if not gate["applied"]:
        gate["reason"] = NO_GROUND_TRUTH if max_psnr_drop is not None else "--min-psnr-vs-float 0 and no --max-psnr-drop"
    return {**gate, "passed": True}


def describe(gate: dict) -> str:
    """One line: 'passed (PSNR vs float 61.2 dB >= 30; drop bound not applied: no ground-truth frames ...)'.
    Reads manifests written before the gate recorded both bounds too (their missing keys are left out)."""
    if not gate.get("applied"):
        return f"not applied ({gate.get('reason', 'no bound given')})"
    if gate.get("failed") == "simulation":
        return f"FAILED: {gate['reason']}"
    parts = []
    floor, vs_float = gate.get("min_psnr_vs_float"), gate.get("psnr_vs_float_db")
    if floor is not None and vs_float is not None:
        parts.append(f"PSNR vs float {apart_from(vs_float, floor)} dB {'>=' if vs_float >= floor else '<'} {floor:g}")
    ceiling, drop = gate.get("max_psnr_drop"), gate.get("psnr_drop_db")
    if ceiling is not None and drop is not None:
        parts.append(f"drop {apart_from(drop, ceiling, 2)} dB {'<=' if drop <= ceiling else '>'} {ceiling:g}")
    elif ceiling is not None:
        parts.append(f"drop bound not applied: {gate.get('drop_not_applied', NO_GROUND_TRUTH)}")
    if gate.get("drift_db") is not None:
        bound = gate["max_drift_db"]
        parts.append(f"drift {gate['drift_db']:.2f} dB {'<=' if gate['drift_db'] <= bound else '>'} {bound:g}")
    return f"{'passed' if gate['passed'] else 'FAILED'} ({'; '.join(parts)})"


def speed_warning(latency: dict) -> str | None:
    """The warning an int8 artifact carries when it ran slower than its float artifact on this host, from the
    quantize stage's own alternating float/int8 timing (`latency_ms`); None when it ran at least as fast (as
    printed, to two digits) or was not timed here. The quality gate says nothing about speed, so a slower int8
    that passes it must not read as the one to ship."""
    speedup = latency.get("speedup")
    if speedup is None or round(speedup, 2) >= 1:
        return None
    return (f"int8 runs at {speedup:.2f}x the float speed here (int8 {latency['quantized']:.1f} ms, float {latency['float']:.1f} ms): "
            "ship the float artifact for speed, int8 only for size")
