"""The same students in onnxruntime, LiteRT and ExecuTorch: export time, artifact size, max abs error vs PyTorch,
and host latency, fp32 and int8, every artifact timed in one process in interleaved rounds.

Models: the demo student (`effconv run demo`'s layout, random init from the shipped demo teacher, 9x64x64) and the
`turbo-vaed-mobile` student of HunyuanVideo's default diffusers config at 9x128x128 (random weights: speed and
size do not depend on the values). Each is made with `effconv rewrite`, exported with `effconv convert` to every
backend (ONNX in the layout `convert` chose by timing both on this host, and again forced to the other layout, to
check that choice in this run's own timing), quantized with `effconv
quantize` (static int8, calibrated on teacher latents of the bundled real clip), then every artifact is loaded in
its runtime with the same thread count and timed round-robin (one call of each per round), so that load on a
shared machine falls on all alike. Compare ratios within one run, not absolute times across runs.

    PYTHONPATH=. python benchmarks/backends.py
    PYTHONPATH=. python benchmarks/backends.py --models demo --runs 10

Writes benchmarks/results/backends.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from effconv.artifacts import read_manifest
from effconv.backends import registry
from effconv.backends.files import size_bytes
from effconv.convert.stage import convert
from effconv.host import cpu_int8_features, cpu_model
from effconv.quantize.stage import quantize_artifact
from effconv.rewrite.stage import rewrite
from effconv.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "backends.json"
BACKENDS = ("onnx", "tflite", "executorch")
MODELS = {
    "demo": {"teacher": REPO / "examples" / "specs" / "demo-teacher.yaml", "recipe": "demo"},
    "hunyuan-mobile": {"teacher": {"name": "hunyuan", "model": {"diffusers": "AutoencoderKLHunyuanVideo"},
                                   "part": "decoder", "input": {"frames": 9, "height": 128, "width": 128}},
                       "recipe": "turbo-vaed-mobile"},
}


def student_spec(model: str, work: Path) -> Path:
    teacher = MODELS[model]["teacher"]
    work.mkdir(parents=True, exist_ok=True)
    if isinstance(teacher, dict):
        path = work / f"{teacher['name']}.yaml"
        path.write_text(yaml.safe_dump(teacher), encoding="utf-8")
        teacher = path
    manifest = rewrite(load_spec(teacher), MODELS[model]["recipe"], work / "student")
    return work / "student" / f"{manifest.name}.yaml"


def artifacts(spec: Path, work: Path, samples: int) -> dict[str, dict]:
    """Every variant's artifact and what its manifest says about export, size and error."""
    made: dict[str, dict] = {}
    loaded = load_spec(spec)

    def converted(backend: str, name: str, **options) -> tuple[Path, dict]:
        started = time.perf_counter()
        manifest = convert(loaded, backend, work / name, **options)
        artifact = work / name / manifest.artifact
        made[f"{name} fp32"] = {
            "artifact": artifact, "convert_s": round(time.perf_counter() - started, 1),
            "export_s": manifest.model_extra["export"]["seconds"], "size_bytes": size_bytes(artifact),
            "max_abs_err": manifest.verify["max_abs_err"],
            **({"partitioning": manifest.model_extra["export"].get("partitioning")} if backend == "executorch" else {}),
            **({"layout": manifest.model_extra["layout"]} if backend == "onnx" else {}),
        }
        print(f"  {name} fp32: convert {made[f'{name} fp32']['convert_s']} s, max abs err "
              f"{manifest.verify['max_abs_err']:.2g}", flush=True)
        return artifact, manifest.model_extra

    for backend in BACKENDS:
        artifact, extra = converted(backend, backend)
        if backend == "onnx":  # the layout convert did not choose, timed beside it below
            other = "conv3d" if extra["layout"]["chosen"] == "conv2d" else "conv2d"
            converted(backend, f"{backend}-{other}", layout=other)
        started = time.perf_counter()
        quantized = quantize_artifact(artifact, work / f"{backend}-int8", samples=samples, max_psnr_drop=None)
        report = quantized.quantize
        made[f"{backend} int8"] = {
            "artifact": work / f"{backend}-int8" / quantized.artifact, "quantize_s": round(time.perf_counter() - started, 1),
            "size_bytes": report["size_bytes"]["quantized"], "scheme": report["scheme"],
            "psnr_vs_float_db": report["gate"]["psnr_vs_float_db"], "notes": report.get("notes", []),
        }
        print(f"  {backend} int8: quantize {made[f'{backend} int8']['quantize_s']} s, "
              f"{report['gate']['psnr_vs_float_db']:.1f} dB vs float", flush=True)
    return made


def interleaved_ms(made: dict[str, dict], input_shape: list[int], threads: int, runs: int) -> dict[str, float]:
    """Median ms of each artifact in its own runtime, one call of each per round after two warm-up calls."""
    latent = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    calls = {key: registry.for_artifact(entry["artifact"]).load(entry["artifact"], threads) for key, entry in made.items()}
    for call in calls.values():
        call(latent)
        call(latent)
    times: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(runs):
        for key, call in calls.items():
            started = time.perf_counter()
            call(latent)
            times[key].append((time.perf_counter() - started) * 1000)
    return {key: round(statistics.median(values), 2) for key, values in times.items()}


def targets(rows: dict[str, dict]) -> dict:
    """The goals: ExecuTorch fp32 within 1.2x of the faster of the other two runtimes (each in its
    fastest layout), ExecuTorch int8 faster than its fp32, and ONNX's default layout the faster one."""
    ms = {key: row["host_ms"] for key, row in rows.items()}
    other_layout = next(key for key in ms if key.startswith("onnx-"))
    others = min(ms["onnx fp32"], ms[other_layout], ms["tflite fp32"])
    return {
        "executorch_fp32_over_fastest_other": round(ms["executorch fp32"] / others, 3),
        "executorch_fp32_within_1.2x": ms["executorch fp32"] <= 1.2 * others,
        "executorch_int8_speedup": round(ms["executorch fp32"] / ms["executorch int8"], 3),
        "onnx_default_layout": rows["onnx fp32"]["layout"]["chosen"],
        "onnx_default_layout_is_faster": ms["onnx fp32"] <= ms[other_layout],
        "onnx_other_layout_over_default": round(ms[other_layout] / ms["onnx fp32"], 3),
    }


def _earlier_models(path: Path) -> dict:
    """Models measured by an earlier run with other --models, kept (each entry records its own machine load)."""
    return json.loads(path.read_text())["models"] if path.is_file() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma list of: " + ", ".join(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20, help="timed rounds (median)")
    parser.add_argument("--samples", type=int, default=8, help="calibration samples for int8 (2 held out)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    report = {"script": "benchmarks/backends.py", "machine": {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "cpu_int8_features": cpu_int8_features(),
        "platform": platform.platform(), "threads": args.threads, "load_avg_at_start": os.getloadavg()},
        "runs": args.runs, "versions": {name: registry.get(name).runtime_versions() for name in BACKENDS},
        "runtimes": {name: registry.get(name).runtime for name in BACKENDS}, "models": _earlier_models(args.out)}
    with tempfile.TemporaryDirectory(prefix="effconv-backends-") as tmp:
        for model in args.models.split(","):
            work = Path(tmp) / model
            print(f"{model}:", flush=True)
            load_at_start = os.getloadavg()
            spec = student_spec(model, work)
            made = artifacts(spec, work, args.samples)
            input_shape = read_manifest(made["onnx fp32"]["artifact"].with_suffix(".json")).inputs[0].shape
            host_ms = interleaved_ms(made, input_shape, args.threads, args.runs)
            rows = {key: {k: v for k, v in entry.items() if k != "artifact"} | {"host_ms": host_ms[key]}
                    for key, entry in made.items()}
            for key, row in rows.items():
                print(f"  {key:>20}: {row['host_ms']:9.2f} ms  {row['size_bytes'] / 1e6:7.2f} MB", flush=True)
            report["models"][model] = {"input_shape": input_shape, "rows": rows, "targets": targets(rows),
                                       "load_avg": {"start": load_at_start, "end": os.getloadavg()}}
            print(f"  targets: {report['models'][model]['targets']}", flush=True)
            report["machine"]["load_avg_at_end"] = os.getloadavg()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
