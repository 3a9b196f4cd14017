"""Conversion errors of the six tiny family specs (examples/specs/*-tiny.yaml) on every backend README quotes:
ONNX and TFLite max abs error and PSNR against PyTorch, Core ML's fp16 simulation on Linux (prediction needs
macOS), the Core ML program's largest tensor rank, and whether a `.tflite` kept CONV_3D.

Nothing is timed: the figures are the same on a busy machine, so this can run beside other work.

    PYTHONPATH=. python benchmarks/tiny_conversion_errors.py

Writes benchmarks/results/tiny_conversion_errors.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from effconv.convert.stage import convert
from effconv.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "tiny_conversion_errors.json"
SPECS = sorted((REPO / "examples" / "specs").glob("*-tiny.yaml"))
BACKENDS = ("onnx", "tflite", "coreml")


def errors(verify: dict) -> dict:
    return {"max_abs_err": verify["max_abs_err"], "psnr_db": verify["psnr_db"], "passed": verify["passed"]}


def row(spec: Path, backend: str, work: Path) -> dict:
    manifest = convert(load_spec(spec), backend, work / f"{spec.stem}-{backend}")
    verify = manifest.verify
    if backend != "coreml":
        result = errors(verify)
        if backend == "tflite":
            result["keeps_conv_3d"] = "CONV_3D" in manifest.export.get("ops", {})
        return result
    return {"fp16_simulation": errors(verify["fp16_simulation"]), "max_rank": verify.get("max_rank"),
            "prediction": verify.get("prediction")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        results = {spec.stem: {backend: row(spec, backend, Path(work)) for backend in BACKENDS} for spec in SPECS}
    args.out.write_text(json.dumps({"script": "benchmarks/tiny_conversion_errors.py", "specs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
