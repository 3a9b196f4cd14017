"""An int8 artifact that ran slower than its float one on this host says so, loudly, wherever the quantize
gate's verdict is read: the decision on given latencies, the `effconv quantize` table, the run report; and
the demo recipe leaves the ONNX node kinds to the speed selection."""

from __future__ import annotations

import json

import pytest

from effconv.artifacts import Manifest, write_manifest
from effconv.cli.quantize import _print_quantize
from effconv.pipeline.plan import resolve
from effconv.pipeline.report import Manifests, _quantize_section, to_markdown
from effconv.quantize.gate import speed_warning
from effconv.recipe import load_recipe

# Host latencies of an int8 artifact that ran at about half its float speed (every Conv forced into int8).
SLOWER = {"float": 34.0, "quantized": 64.2, "speedup": 0.53, "threads": 2, "timed_runs": 3}
WARNING = "int8 runs at 0.53x the float speed here (int8 64.2 ms, float 34.0 ms): ship the float artifact for speed, " \
          "int8 only for size"


@pytest.mark.parametrize(("latency", "expected"), [
    (SLOWER, WARNING),
    ({"float": 30.0, "quantized": 30.4, "speedup": 0.987},
     "int8 runs at 0.99x the float speed here (int8 30.4 ms, float 30.0 ms): ship the float artifact for speed, int8 only for size"),
    ({"float": 30.0, "quantized": 30.1, "speedup": 0.996}, None),  # prints as 1.00x: not slower as shown
    ({"float": 34.0, "quantized": 27.3, "speedup": 1.245}, None),
    ({"not_measured": "Core ML runs only on Apple platforms"}, None),
])
def test_speed_warning_only_when_int8_ran_slower_than_float(latency, expected):
    assert speed_warning(latency) == expected


def _int8_manifest(latency: dict) -> Manifest:
    """A quantize manifest as `effconv quantize` writes it for the demo student's ONNX, with the given host latency."""
    return Manifest(
        name="demo-teacher-student-int8", backend="onnx", artifact="demo-teacher-student-int8.onnx",
        spec={"name": "demo-teacher-student", "part": "decoder"},
        inputs=[{"name": "latent", "shape": [1, 8, 3, 16, 16], "dtype": "float32"}],
        outputs=[{"name": "video", "shape": [1, 3, 9, 64, 64], "dtype": "float32"}], params=215423,
        verify={"passed": True},
        quantize={"scheme": "onnxruntime static QDQ: per-channel symmetric int8 weights, per-tensor uint8 activations "
                            "(MinMax calibration) on dense conv <32 ch",
                  "size_bytes": {"float": 1_400_000, "quantized": 400_000, "ratio": 3.5},
                  "quality": {"psnr_vs_float_db": 56.0, "psnr_float_db": 18.3, "psnr_quant_db": 18.3, "psnr_drop_db": -0.003,
                              "ssim_float": 0.5269, "ssim_quant": 0.527, "ssim_drop": -0.0001},
                  "latency_ms": latency, "float_nodes": [], "notes": [], "weights_only": False,
                  "gate": {"applied": True, "min_psnr_vs_float": 30.0, "psnr_vs_float_db": 56.0, "max_psnr_drop": 0.3,
                           "psnr_drop_db": -0.003, "passed": True},
                  "calibration": {"source": "video: bigbuckbunny.mp4", "samples": 12, "held_out": 4,
                                  "held_out_source": "video: bigbuckbunny.mp4"},
                  **({"speed_warning": speed_warning(latency)} if speed_warning(latency) else {})})


def test_quantize_table_warns_when_int8_is_slower_and_not_otherwise(capsys, tmp_path):
    _print_quantize(_int8_manifest(SLOWER), False, tmp_path)
    slower = capsys.readouterr()
    assert "SLOWER than float" in slower.out and "passed" in slower.out
    assert f"warning: {WARNING}" in " ".join(slower.err.split())
    _print_quantize(_int8_manifest({**SLOWER, "quantized": 27.3, "speedup": 1.245}), False, tmp_path)
    faster = capsys.readouterr()
    assert "SLOWER" not in faster.out and "warning" not in faster.err and "1.25x" in faster.out


def test_report_quantization_section_leads_with_the_warning(tmp_path):
    inputs = resolve("demo")
    stage_dir = tmp_path / "quantize-onnx"
    stage_dir.mkdir()
    write_manifest(_int8_manifest(SLOWER), stage_dir)
    assert json.loads((stage_dir / "demo-teacher-student-int8.json").read_text())["quantize"]["speed_warning"] == WARNING
    markdown = to_markdown("run", [_quantize_section(Manifests(inputs, tmp_path))])
    warning_at, table_at = markdown.index(f"WARNING (onnx): {WARNING}."), markdown.index("| backend |")
    assert warning_at < table_at  # read before the table's "passed"
    assert "34.00 / 64.20 ms (0.53x, slower than float)" in markdown
    write_manifest(_int8_manifest({**SLOWER, "quantized": 27.3, "speedup": 1.245}), stage_dir)
    markdown = to_markdown("run", [_quantize_section(Manifests(inputs, tmp_path))])
    assert "WARNING" not in markdown and "34.00 / 27.30 ms (1.25x)" in markdown


def test_demo_recipe_leaves_onnx_node_kinds_to_the_speed_selection():
    recipe, _ = load_recipe("demo")
    assert recipe.quantize.all_nodes is False
