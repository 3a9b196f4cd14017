"""Time and memory of `effconv quantize` on the paper-layout student of the default HunyuanVideo VAE at 17x256x256
(40.7 M parameters, random weights), calibrated on random latents: the case that once ran 17 minutes and 16 GB.

    PYTHONPATH=. python benchmarks/quantize_paper_size.py --work runs/bench-quantize-paper-size
    PYTHONPATH=. python benchmarks/quantize_paper_size.py --onnx runs/.../hunyuan-default-student.onnx  # reuse an export

Builds the student (`effconv rewrite --recipe turbo-vaed`) and its ONNX (`effconv convert`, a few minutes) unless
--onnx is given, then runs `effconv quantize STUDENT.onnx --calib random` as a child process with its log on a
pipe (so effconv prints a timestamped line per finished step) and records the wall time, the child's peak
resident memory, the steps, and the result's speed and fidelity. Writes
benchmarks/results/quantize_paper_size.json. Targets: under 5 minutes and 8 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "quantize_paper_size.json"
TARGET_SECONDS, TARGET_RSS_GB = 300, 8.0
TEACHER_SPEC = """name: hunyuan-default
model: {diffusers: AutoencoderKLHunyuanVideo, config: {}}
part: decoder
input: {frames: 17, height: 256, width: 256}
"""
STEP = re.compile(r"^\[\s*(\d+) s\] Quantizing: (.*) \(([\d.]+) s\)$")


def effconv(*args: str, stderr=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "effconv", *args], check=True, text=True, stdout=subprocess.PIPE,
                          stderr=stderr)


def build_student(work: Path) -> Path:
    spec = work / "hunyuan-default.yaml"
    spec.write_text(TEACHER_SPEC, encoding="utf-8")
    effconv("rewrite", str(spec), "--recipe", "turbo-vaed", "--out", str(work / "student"))
    effconv("convert", str(work / "student" / "hunyuan-default-student.yaml"), "--to", "onnx", "--out", str(work / "onnx"))
    return work / "onnx" / "hunyuan-default-student.onnx"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-quantize-paper-size"))
    parser.add_argument("--onnx", type=Path, help="an existing export of the student (skips rewrite + convert)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    onnx_path = args.onnx or build_student(args.work)
    from effconv.host import cpu_int8_features, cpu_model

    load_before = os.getloadavg()
    started = time.perf_counter()
    run = effconv("quantize", str(onnx_path), "--calib", "random", "--out", str(args.work / "int8"), "--json",
                  stderr=subprocess.PIPE)
    seconds = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6  # KiB on Linux: the largest child
    report = json.loads(run.stdout)["quantize"]
    steps = [{"step": m[2], "seconds": float(m[3])} for m in map(STEP.match, run.stderr.splitlines()) if m]
    result = {
        "model": "turbo-vaed (paper layout) student of AutoencoderKLHunyuanVideo's default config, 17x256x256, random weights",
        "command": f"effconv quantize {onnx_path.name} --calib random",
        "wall_seconds": round(seconds, 1), "peak_rss_gb": round(peak_gb, 2), "steps": steps,
        "latency_ms": report["latency_ms"], "psnr_vs_float_db": report["quality"]["psnr_vs_float_db"],
        "search": report.get("search"), "int8_kernels": report.get("int8_kernels"),
        "host": {"cpu": cpu_model(), "cpu_int8_features": cpu_int8_features(), "cores": os.cpu_count(),
                 "load_average_before": [round(v, 2) for v in load_before],
                 "load_average_after": [round(v, 2) for v in os.getloadavg()]},
        "targets": {"seconds": TARGET_SECONDS, "peak_rss_gb": TARGET_RSS_GB},
        "met": {"seconds": seconds <= TARGET_SECONDS, "peak_rss_gb": peak_gb <= TARGET_RSS_GB},
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("wall_seconds", "peak_rss_gb", "met")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
