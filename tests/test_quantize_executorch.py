"""ExecuTorch int8 (pt2e, XNNPACK quantizer) that misses --min-psnr-vs-float leaves its most sensitive op kinds
float32 until the gate holds, as TFLite and ONNX do. Slow: each scored kind is a pt2e calibration, and the result
is lowered to XNNPACK (about 3 minutes on 2 idle cores)."""

from __future__ import annotations

import pytest

from conftest import REPO
from effconv.convert.stage import convert
from effconv.quantize.stage import quantize_artifact
from effconv.rewrite.stage import rewrite
from effconv.spec import load_spec


@pytest.mark.slow
def test_int8_that_misses_the_gate_leaves_its_most_sensitive_op_kinds_float(tmp_path):
    rewrite(load_spec(REPO / "examples" / "specs" / "cogvideox-tiny.yaml"), "tiny", tmp_path / "student")
    manifest = convert(load_spec(tmp_path / "student" / "cogvideox-tiny-student.yaml"), "executorch", tmp_path / "float")
    # measured: 33.6 dB on the validation clip with every kind int8; 36 is out of reach without the fallback
    gated = quantize_artifact(tmp_path / "float" / manifest.artifact, tmp_path / "gated", samples=8, min_psnr_vs_float=36)
    report = gated.quantize
    fallback = report["sensitivity_fallback"]
    assert fallback["met"] and fallback["end_psnr_db"] >= 36 > fallback["start_psnr_db"]
    assert report["gate"]["passed"] and report["quality"]["psnr_vs_float_db"] >= 36
    kinds = [row["kind"] for row in fallback["returned_to_float"]]
    assert kinds and len(kinds) < len(fallback["kind_gains_db"])
    listed = [row["name"] for row in report["float_nodes"] if row["reason"].startswith("left float32 to meet")]
    assert listed == kinds
