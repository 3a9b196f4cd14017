"""Teacher decoder vs Turbo-VAED students (recipes turbo-vaed, -lite, -mobile), all in onnxruntime fp32 on this CPU.

For each family's published default diffusers config (random weights: speed and size do not
depend on the values): export teacher and student decoders to ONNX, each as written
(Conv3d) and with `effconv convert --conv2d` (every Conv3d as Conv2d over time-stacked frames;
the teacher's Conv2d form only at the small clip: at 17x256x256 its stacked frames do not fit in
24 GiB), time them in the same process
(one warm-up run, then the median of N runs: 1 for teachers, 3 for students by default, because a
full-size Hunyuan teacher takes minutes per run on 2 shared cores), count params and FLOPs, and measure this machine's fp32
matmul peak in onnxruntime (and, for reference, torch.mm) to put the student's achieved GFLOP/s in context.

    PYTHONPATH=. python benchmarks/student_vs_teacher.py                      # hunyuan 17x256x256, others 9x128x128
    PYTHONPATH=. python benchmarks/student_vs_teacher.py --families hunyuan --teacher-runs 1

Writes benchmarks/results/student_vs_teacher.json. The machine may be shared: compare ratios
measured within one run, not absolute times across runs.
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

import torch

from effconv.backends.onnx import export as onnx_backend
from effconv.convert.layout import CONV2D_REWRITES
from effconv.backends.verify import compare as compare_outputs
from effconv.models.loader import load_model
from effconv.recipe import load_recipe
from effconv.models.turbo_vaed.compare import compare
from effconv.legalize.rewrites import legalize, resolve
from effconv.models.turbo_vaed.decoder import build_student
from effconv.profile.devices import onnxruntime_matmul_seconds
from effconv.spec import spec_from_dict

FAMILIES = {
    "hunyuan": "AutoencoderKLHunyuanVideo",
    "wan21": "AutoencoderKLWan",
    "cogvideox": "AutoencoderKLCogVideoX",
    "ltx": "AutoencoderKLLTXVideo",
}
FULL_CLIP = (17, 256, 256)
SMALL_CLIP = (9, 128, 128)
RESULTS = Path(__file__).parent / "results" / "student_vs_teacher.json"


def torch_matmul_peak_gflops(threads: int, size: int = 2048, repeats: int = 10) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def onnxruntime_matmul_peak_gflops(threads: int, size: int = 2048, repeats: int = 10) -> float:
    """fp32 MatMul in onnxruntime: the library (MLAS) the timed models run in. torch.mm can take slower
    code paths on this CPU (an AMD EPYC), so its figure is no ceiling for onnxruntime's convolutions."""
    return 2 * size**3 / onnxruntime_matmul_seconds(threads, size, repeats) / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_onnx(path: Path, example: torch.Tensor, runs: int, threads: int) -> dict:
    session = onnx_backend.session(path, threads)
    feed = {session.get_inputs()[0].name: example.numpy()}
    warmup = _timed(lambda: session.run(None, feed))
    times = [_timed(lambda: session.run(None, feed)) for _ in range(runs)]
    output = session.run(None, feed)[0]
    return {"warmup_s": warmup, "runs_s": times, "median_s": statistics.median(times), "output": output}


def as_conv2d(module: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """What `effconv convert --to onnx --conv2d` exports, checked lossless."""
    legal = legalize(module, example, resolve(list(CONV2D_REWRITES)))
    assert legal.max_abs_err < 1e-4, f"conv2d rewrite changed the output by {legal.max_abs_err}"
    return legal.module


def bench_family(family: str, clip: tuple[int, int, int], recipes: list[str], teacher_runs: int, student_runs: int,
                 threads: int, work: Path, teacher_conv2d: bool) -> dict:
    frames, height, width = clip
    loaded = spec_from_dict({"name": family, "model": {"diffusers": FAMILIES[family]}, "part": "decoder",
                             "input": {"frames": frames, "height": height, "width": width}}, work)
    teacher = load_model(loaded)
    students = {recipe: build_student(teacher, load_recipe(recipe)[0].student).eval() for recipe in recipes}
    example = teacher.example_input(0)
    result = {"clip": list(clip), "latent": list(example.shape), "students": {}}
    variants = [(role, layout, module, runs) for role, module, runs in
                [*((r, s, student_runs) for r, s in students.items()), ("teacher", teacher.module, teacher_runs)]
                for layout in ("conv3d", "conv2d") if layout == "conv3d" or role != "teacher" or teacher_conv2d]
    timed: dict[str, dict[str, dict]] = {}
    for role, layout, module, runs in variants:
        path = work / f"{family}-{role}-{layout}.onnx"
        started = time.perf_counter()
        exported = as_conv2d(module, example) if layout == "conv2d" else module
        onnx_backend.export(exported, example, path, "latent", "video", opset=18)
        export_s = time.perf_counter() - started
        timing = time_onnx(path, example, runs, threads)
        with torch.no_grad():
            reference = module(example).numpy()
        check = compare_outputs(reference, timing.pop("output"), 1e-3)
        timed.setdefault(role, {})[layout] = timing | {"export_s": export_s, "runs": runs,
                                                       "export_max_abs_err": check["max_abs_err"]}
        print(f"{family} {role} ({layout}): median {timing['median_s']:.3f} s over {runs} runs "
              f"(export err {check['max_abs_err']:.2g})", flush=True)
        path.unlink()
        path.with_suffix(".onnx.data").unlink(missing_ok=True)
    result["teacher"] = _with_fastest(timed.pop("teacher"))
    for recipe, student in students.items():
        comparison = compare(teacher, student)
        flops = comparison["flops_per_frame"]["student"] * comparison["output_shape"]["student"][2]
        timing = _with_fastest(timed[recipe])
        result["students"][recipe] = {
            "comparison": comparison,
            "timing": timing,
            "speedup": result["teacher"]["median_s"] / timing["median_s"],
            "speedup_conv3d_both": result["teacher"]["layouts"]["conv3d"]["median_s"] / timing["layouts"]["conv3d"]["median_s"],
            "gflops_per_s": flops / timing["median_s"] / 1e9,
        }
    return result


def _with_fastest(layouts: dict[str, dict]) -> dict:
    """Each model is compared in its fastest ONNX form; every form's timing is kept."""
    fastest = min(layouts, key=lambda layout: layouts[layout]["median_s"])
    return {"layout": fastest, "median_s": layouts[fastest]["median_s"], "layouts": layouts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma list of: " + ", ".join(FAMILIES))
    parser.add_argument("--recipes", default="turbo-vaed,turbo-vaed-lite,turbo-vaed-mobile", help="student recipes (comma list)")
    parser.add_argument("--full-size", action="store_true", help="every family at 17x256x256 (slow teachers)")
    parser.add_argument("--teacher-runs", type=int, default=1)
    parser.add_argument("--student-runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch_peak = torch_matmul_peak_gflops(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        peak = onnxruntime_matmul_peak_gflops(args.threads)
    print(f"fp32 matmul peak (2048^2, {args.threads} threads): onnxruntime {peak:.1f} GFLOP/s, torch.mm "
          f"{torch_peak:.1f} GFLOP/s", flush=True)
    report = {"machine": {"cpu_count": os.cpu_count(), "threads": args.threads, "platform": platform.platform(),
                          "matmul_peak_gflops": peak, "matmul_peak_source": "onnxruntime MatMul 2048^2 fp32, best of 10",
                          "torch_mm_peak_gflops": torch_peak, "load_avg_at_start": os.getloadavg()},
              "recipes": args.recipes.split(","), "runtime": onnx_backend.runtime_versions(), "families": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            clip = FULL_CLIP if family == "hunyuan" or args.full_size else SMALL_CLIP
            result = bench_family(family, clip, args.recipes.split(","), args.teacher_runs, args.student_runs,
                                  args.threads, Path(tmp), teacher_conv2d=clip != FULL_CLIP)
            report["families"][family] = result
            for recipe, student in result["students"].items():
                student["share_of_peak"] = student["gflops_per_s"] / peak
                c = student["comparison"]
                print(f"{family} {recipe}: params {c['params']['student'] / 1e6:.1f} M / "
                      f"{c['params']['teacher'] / 1e6:.1f} M = {c['params']['ratio']:.1%}; FLOPs "
                      f"{c['flops_per_frame']['ratio']:.1%}; speedup {student['speedup']:.1f}x ({student['timing']['layout']} vs "
                      f"teacher {result['teacher']['layout']}; {student['speedup_conv3d_both']:.1f}x both Conv3d); "
                      f"{student['gflops_per_s']:.1f} GFLOP/s ({student['share_of_peak']:.0%} of peak)", flush=True)
            _write(report, args.out)  # after every family, so a long run keeps what it measured
    print(f"wrote {args.out}")


def _write(report: dict, path: Path) -> None:
    report["machine"]["load_avg_at_end"] = os.getloadavg()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
