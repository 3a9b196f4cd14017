"""Which LiteRT ops are slower in int8 than in float on LiteRT's CPU runtime (XNNPACK): each op kind kept float in turn.

For a few decoders of the calibration set (effconv.profile.fit.model_set: Turbo-VAED students and tiny teachers), the
.tflite is quantized with the LiteRT quantizer's static int8 recipe, once with every op int8 and once per op kind
with that kind left float (`no_quantize`), and every variant is timed in one process in interleaved rounds. A kind
whose float variant is clearly faster than all-int8 is one whose int8 kernel is slow on this runtime: effconv's
static int8 keeps those float (`SLOW_IN_INT8` in effconv/backends/tflite/quantize.py). The "effconv" row is what
`effconv quantize` writes.

    PYTHONPATH=. python benchmarks/tflite_float_ops.py [--models hunyuan-student-w32 ltx-student-w32 cogvideox-tiny]

Writes benchmarks/results/tflite_float_ops.json (with the CPU, its int8 instructions and the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from effconv.artifacts import read_manifest
from effconv.backends.base import CalibrationSet
from effconv.backends.tflite import quantize as tflite_quantize
from effconv.backends.tflite.export import op_inventory
from effconv.convert.stage import convert
from effconv.host import cpu_int8_features, cpu_model
from effconv.profile.fit.model_set import calibration_set
from effconv.profile.measure import measure_walls
from effconv.spec import load_spec

RESULTS = Path(__file__).resolve().parent / "results" / "tflite_float_ops.json"
NOT_VARIED = {"CONV_2D", "DEPTHWISE_CONV_2D", "RESHAPE", "QUANTIZE", "DEQUANTIZE"}  # int8 convs are the point


def _variant(artifact: Path, calib: CalibrationSet, float_kinds: tuple[str, ...], out: Path) -> Path:
    out.write_bytes(tflite_quantize.quantized_bytes(artifact, calib, weights_only=False, threads=1, float_kinds=float_kinds)[0])
    return out


def measure_model(name: str, directory: Path, repeats: int) -> dict:
    entry = next(m for m in calibration_set() if m.name == name)
    manifest = convert(load_spec(entry.write_spec(directory)), "tflite", directory / "tflite")
    artifact = directory / "tflite" / manifest.artifact
    shape = tuple(read_manifest(artifact.with_suffix(".json")).inputs[0].shape)
    calib, held_out = CalibrationSet.random(shape, 3, seed=0).split(1)
    kinds = sorted(set(op_inventory(artifact)) - NOT_VARIED)
    variants = {"float": artifact, "all int8": _variant(artifact, calib, (), directory / "all.tflite")}
    for kind in kinds:
        variants[f"{kind} float"] = _variant(artifact, calib, (kind,), directory / f"{kind}.tflite")
    effconv_path = directory / "effconv.tflite"
    tflite_quantize.quantize(artifact, manifest, calib, held_out, effconv_path, weights_only=False, runs=1)
    variants["effconv"] = effconv_path
    walls = measure_walls(list(variants.values()), [(shape,)] * len(variants), threads=1, repeats=repeats)
    all_int8 = walls[1]["median_ms"]
    return {"ops": dict(Counter(op_inventory(artifact))),
            "median_ms": {label: round(wall["median_ms"], 3) for label, wall in zip(variants, walls)},
            "vs_all_int8": {label: round(wall["median_ms"] / all_int8, 3) for label, wall in zip(variants, walls)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["hunyuan-student-w32", "ltx-student-w32", "mochi-student-w32",
                                                        "cogvideox-tiny", "ltx-tiny"])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            directory = Path(tmp) / name
            directory.mkdir()
            models[name] = measure_model(name, directory, args.repeats)
            print(name, json.dumps(models[name]["vs_all_int8"]), flush=True)
    result = {"cpu": cpu_model(), "int8_features": cpu_int8_features(), "threads": 1, "repeats": args.repeats,
              "runtime": "LiteRT Interpreter (XNNPACK), ai-edge-litert", "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "seconds": round(time.perf_counter() - started, 1),
              "slow_in_int8_kept_float": list(tflite_quantize.SLOW_IN_INT8), "models": models}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
