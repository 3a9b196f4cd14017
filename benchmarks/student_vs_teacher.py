"""Every family's teacher decoder vs its Turbo-VAED students, all in onnxruntime fp32 on this CPU.

One run covers every family at its family recipe's clip (17x256x256; Mochi 19x256x256, its frames are 1 + 6k):
HunyuanVideo, CogVideoX, Wan 2.1, Wan 2.2 TI2V-5B, LTX-Video and Mochi. For each family the teacher is the family
recipe's teacher spec (`turbo-vaed-<family>`; Wan 2.2's architecture is inline in `turbo-vaed-wan22`) with random
weights (speed and size do not depend on the values; `requires_pretrained` does not matter here), and two students:
the family recipe's own and the default recipe's (`turbo-vaed-mobile`, what `effconv rewrite` builds), each ending
with its output patch (the recipe's, else the teacher's own: LTX-Video 4, Wan 2.2 2, others 1).

Layouts, as `effconv convert --to onnx` ships them by default (effconv/convert/layout.py, `--layout auto`):
- a teacher keeps Conv3d, untimed, by rule. The teacher is timed as Conv3d only; `--teacher-conv2d` also times its
  Conv2d form (every Conv3d as Conv2d over time-stacked frames), which at 17x256x256 may not fit in memory.
- a student is exported both as Conv3d and as Conv2d (checked lossless) and both are timed, in interleaved rounds
  (round i of both back to back) after one warm-up each. Convert ships Conv2d unless Conv3d is >= 1.3x faster by
  median, faster in every round, over >= 3 rounds, and it times as many rounds as fit in ~8 s (<= 7, >= 1). The
  `convert_layout` recorded is that rule applied to the rounds convert would have had time for (the first
  int(8000 ms / slower warm-up) of this run's rounds); at 17x256x256 a student's run takes seconds, so convert times
  one or two rounds and ships Conv2d.
The headline `speedup` is teacher (Conv3d) median / student median in its `convert_layout`; `speedup_fastest` uses
each student's faster layout and `speedup_conv3d_both` the student's Conv3d. Medians are over `--teacher-runs`
(1 by default: a full-size teacher takes minutes a run on 2 shared cores) and `--student-runs` (3) runs after one
warm-up. Each ONNX output is checked against PyTorch (max abs error recorded).

Params and FLOPs come from `effconv.models.turbo_vaed.compare` (FlopCounterMode on meta tensors, 2 FLOPs per
multiply-add): `gflop_per_frame` per output frame of each model's own output, `gflop_share` = student / teacher
total (the same per frame when both decode the same frames). `gflops_per_s` = the model's FLOPs / its median; the
fp32 MatMul peak measured in onnxruntime in the same run puts it in context (`share_of_peak`). The default
recipe's student is also profiled (`--profile`, one run after a warm-up, onnxruntime's per-node profiler): ms per
op type and the slowest nodes.

Each family's teacher and its students run in child processes, so a teacher that runs out of memory is recorded
in the JSON (`teacher.error`) and the run goes on; a memory guard stops a child when the host's available memory
falls below `--min-available-gib` (the machine is shared). The load average is recorded before and after each
family; compare ratios measured within one family, not absolute times across runs.

    PYTHONPATH=. python benchmarks/student_vs_teacher.py                       # all families, full clips
    PYTHONPATH=. python benchmarks/student_vs_teacher.py --families ltx,wan22 --clip 9x64x64 --out /tmp/small.json

`--update` re-measures the families named and keeps the others in `--out` (a family measured while the host was
busy can be run again); each family's `run` indexes `runs`, which record each run's start, host (CPU, matmul
peak, load average at start and end), versions and settings. `--clip FxHxW` replaces every family's clip (a family whose frame rule rejects F gets the nearest lower count
it accepts, e.g. Mochi 7 for 9). Writes benchmarks/results/student_vs_teacher_families.json (rewritten after every
family, so a long run keeps what it measured). `cpu_share` per timed layout: the process's CPU seconds over wall
seconds x threads during its timed runs (below 1 where other processes took cores, or the graph left one idle).
This replaces the script's earlier mode (diffusers' default configs against turbo-vaed, -lite and -mobile); its
files, student_vs_teacher.json and student_vs_teacher_cogvideox_ltx.json, stay as they were measured.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from effconv.backends.onnx import export as onnx_backend
from effconv.backends.verify import compare as compare_outputs
from effconv.convert import layout as convert_layout
from effconv.convert.steps import checked_rewrites
from effconv.errors import EffconvError, VerificationFailed
from effconv.host import cpu_model
from effconv.legalize.rewrites import legalize, resolve
from effconv.models.loader import load_model
from effconv.models.turbo_vaed.compare import compare
from effconv.models.turbo_vaed.decoder import build_student
from effconv.profile.device.host_cpu import onnxruntime_matmul_seconds
from effconv.recipe import load_recipe
from effconv.spec import load_spec, spec_from_dict

# family -> its recipe (the authors' released layouts for hunyuan, cogvideox, ltx; effconv's for the others)
FAMILIES = {
    "hunyuan": "turbo-vaed-hunyuan",
    "cogvideox": "turbo-vaed-cogvideox",
    "wan21": "turbo-vaed-wan",
    "wan22": "turbo-vaed-wan22",
    "ltx": "turbo-vaed-ltx",
    "mochi": "turbo-vaed-mochi",
}
DEFAULT_RECIPE = "turbo-vaed-mobile"  # `effconv rewrite`'s default
RESULTS = Path(__file__).parent / "results" / "student_vs_teacher_families.json"
GIB = 1024**3


# --- measurements (run in the child processes) -------------------------------------------------------------------


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


def _run_s(session, feed: dict, cpu: list[float] | None = None) -> float:
    """Wall seconds of one onnxruntime run; appends the process's CPU seconds over it to `cpu` (all threads: on a
    host nobody else loads, about wall x threads; less when other processes took cores)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    session.run(None, feed)
    if cpu is not None:
        cpu.append(time.process_time() - cpu_start)
    return time.perf_counter() - start


def teacher_spec(family: str, clip: tuple[int, int, int] | None):
    """The family recipe's teacher spec (inline or a path beside the recipe), at `clip` if given."""
    recipe, source = load_recipe(FAMILIES[family])
    base = Path(source).parent
    loaded = (spec_from_dict(recipe.teacher, base, f"{source}: teacher") if isinstance(recipe.teacher, dict)
              else load_spec(base / recipe.teacher))
    return loaded if clip is None else loaded.with_input(*clip)


def load_teacher(family: str, clip: tuple[int, int, int] | None):
    """The random-weights teacher; a clip whose frames the family's rule rejects gets the lower suggested count."""
    loaded = teacher_spec(family, clip)
    try:
        return load_model(loaded)
    except EffconvError as error:
        suggested = re.match(r"use frames (\d+)", error.fix or "")
        if clip is None or not suggested:
            raise
        return load_model(loaded.with_input(int(suggested.group(1)), clip[1], clip[2]))


def export(module: torch.nn.Module, example: torch.Tensor, layout: str, path: Path) -> dict:
    """What `effconv convert --to onnx --layout <layout>` exports (Conv2d: the rewrites checked lossless by
    convert's own check, `legalize`'s equivalence verdict)."""
    started = time.perf_counter()
    info = {}
    if layout == "conv2d":
        rewrites = resolve(list(convert_layout.CONV2D_REWRITES))
        try:
            legal = checked_rewrites(module, example, rewrites)
        except VerificationFailed as failed:  # convert would stop here; timed anyway, the failure recorded
            legal = legalize(module, example, rewrites)
            info["rewrite_check_failed"] = failed.one_line()
        module, info["rewrite_max_abs_err"] = legal.module, legal.max_abs_err
    onnx_backend.export(module, example, path, "latent", "video", opset=onnx_backend.DEFAULT_OPSET)
    return info | {"export_s": time.perf_counter() - started}


def export_error(module: torch.nn.Module, example: torch.Tensor, path: Path, threads: int) -> float:
    """Max abs difference of the ONNX file's output (onnxruntime) from PyTorch's."""
    session = onnx_backend.session(path, threads)
    output = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
    del session
    with torch.no_grad():
        reference = module(example).numpy()
    return float(compare_outputs(reference, output, 1e-3)["max_abs_err"])


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_suffix(".onnx.data").unlink(missing_ok=True)


def op_profile(path: Path, example: torch.Tensor, threads: int, work: Path, top: int = 8) -> dict:
    """One profiled run after a warm-up: kernel ms per op type and the slowest nodes (onnxruntime's profiler)."""
    session = onnx_backend.session(path, threads, profile_prefix=str(work / "ort-profile"))
    feed = {session.get_inputs()[0].name: example.numpy()}
    session.run(None, feed)
    wall = _run_s(session, feed)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    last = kernels[len(kernels) // 2:]  # the warm-up's kernels come first, as many as the timed run's
    by_op: dict[str, dict] = collections.defaultdict(lambda: {"ms": 0.0, "nodes": 0})
    for event in last:
        by_op[event["args"]["op_name"]]["ms"] += event["dur"] / 1000
        by_op[event["args"]["op_name"]]["nodes"] += 1
    kernel_ms = sum(op["ms"] for op in by_op.values())
    ops = {op: {"ms": round(v["ms"], 1), "share": round(v["ms"] / kernel_ms, 3), "nodes": v["nodes"]}
           for op, v in sorted(by_op.items(), key=lambda item: -item[1]["ms"])}
    slowest = sorted(last, key=lambda e: -e["dur"])[:top]
    nodes = [{"node": e["name"].removesuffix("_kernel_time"), "op": e["args"]["op_name"], "ms": round(e["dur"] / 1000, 1),
              "output": [next(iter(shape.values())) for shape in e["args"].get("output_type_shape", [])]} for e in slowest]
    return {"wall_s": wall, "kernel_ms": round(kernel_ms, 1), "op_types": ops, "slowest_nodes": nodes}


def students_task(task: dict) -> dict:
    """Params/FLOPs of each student against the teacher, both ONNX layouts timed in interleaved rounds."""
    family, threads, runs, work = task["family"], task["threads"], task["runs"], Path(task["work"])
    teacher = load_teacher(family, tuple(task["clip"]) if task["clip"] else None)
    example = teacher.example_input(0)
    clip = teacher.spec.spec.input
    result = {"clip": [clip.frames, clip.height, clip.width], "latent": list(example.shape),
              "teacher_spec": teacher.spec.resolved(), "students": {}}
    for recipe in task["recipes"]:
        student = build_student(teacher, load_recipe(recipe)[0].student).eval()
        comparison = compare(teacher, student)
        paths = {layout: work / f"{family}-{recipe}-{layout}.onnx" for layout in ("conv3d", "conv2d")}
        layouts = {}
        for layout, path in paths.items():
            layouts[layout] = export(student, example, layout, path)
            layouts[layout]["export_max_abs_err"] = export_error(student, example, path, threads)
        warmups_ms, rounds_ms, cpu_s = interleaved(list(paths.values()), example.numpy(), threads, runs)
        for (layout, info), warmup, times, cpu in zip(layouts.items(), warmups_ms, rounds_ms, cpu_s):
            info |= {"warmup_s": warmup / 1000, "runs": runs, "runs_s": [ms / 1000 for ms in times],
                     "median_s": statistics.median(times) / 1000,
                     "cpu_share": sum(cpu) / (sum(times) / 1000 * threads)}
        chosen, convert_rounds, why = convert_choice(dict(zip(paths, rounds_ms)), warmups_ms)
        fastest = min(layouts, key=lambda layout: layouts[layout]["median_s"])
        entry = {
            "recipe": recipe,
            "output_patch": int(student.config.output_patch),
            "comparison": comparison,
            "timing": {"convert_layout": chosen, "convert_rounds": convert_rounds, "convert_why": why,
                       "fastest_layout": fastest, "median_s": layouts[chosen]["median_s"],
                       "layouts": layouts},
        }
        if recipe in task["profile"]:
            entry["profile"] = {"layout": chosen} | op_profile(paths[chosen], example, threads, work)
        for path in paths.values():
            remove(path)
        result["students"][recipe] = entry
        print(f"{family} {recipe}: conv3d {layouts['conv3d']['median_s']:.3f} s, conv2d "
              f"{layouts['conv2d']['median_s']:.3f} s over {runs} rounds; convert ships {chosen}", flush=True)
    return result


def interleaved(paths: list[Path], example, threads: int, runs: int) -> tuple[list, list, list]:
    """As convert times layouts (`interleaved_times`): one warm-up each, then `runs` rounds, round i of every model
    back to back; (warm-up ms, rounds ms, rounds' CPU s) per model."""
    sessions = [onnx_backend.session(path, threads) for path in paths]
    feeds = [{s.get_inputs()[0].name: example} for s in sessions]
    warmups = [_run_s(s, feed) * 1000 for s, feed in zip(sessions, feeds)]
    rounds: list[list[float]] = [[] for _ in paths]
    cpu: list[list[float]] = [[] for _ in paths]
    for _ in range(runs):
        for times, used, s, feed in zip(rounds, cpu, sessions, feeds):
            times.append(_run_s(s, feed, used) * 1000)
    return warmups, rounds, cpu


def convert_choice(rounds_ms: dict[str, list[float]], warmups_ms: list[float]) -> tuple[str, int, str]:
    """convert/layout.py's decision on the rounds convert would have timed within its budget (as many as
    `interleaved_times` fits: budget / the slower warm-up, clamped to [MIN_ROUNDS, MAX_ROUNDS])."""
    fit = max(convert_layout.MIN_ROUNDS, min(convert_layout.MAX_ROUNDS, int(convert_layout.BUDGET_MS / max(warmups_ms))))
    used = min(fit, *(len(times) for times in rounds_ms.values()))
    chosen, why = convert_layout.decide({layout: times[:used] for layout, times in rounds_ms.items()})
    return chosen, fit, why


def teacher_task(task: dict) -> dict:
    """The teacher in onnxruntime: one warm-up, then `runs` timed runs, per layout."""
    family, threads, runs, work = task["family"], task["threads"], task["runs"], Path(task["work"])
    teacher = load_teacher(family, tuple(task["clip"]) if task["clip"] else None)
    example = teacher.example_input(0)
    layouts = {}
    for layout in task["layouts"]:
        path = work / f"{family}-teacher-{layout}.onnx"
        info = export(teacher.module, example, layout, path)
        session = onnx_backend.session(path, threads)
        feed = {session.get_inputs()[0].name: example.numpy()}
        info["warmup_s"] = _run_s(session, feed)
        cpu: list[float] = []
        info["runs_s"] = [_run_s(session, feed, cpu) for _ in range(runs)]
        info |= {"runs": runs, "median_s": statistics.median(info["runs_s"]),
                 "cpu_share": sum(cpu) / (sum(info["runs_s"]) * threads)}
        del session, feed
        print(f"{family} teacher ({layout}): median {info['median_s']:.2f} s over {runs} runs", flush=True)
        if task["check"]:
            info["export_max_abs_err"] = export_error(teacher.module, example, path, threads)
        remove(path)
        layouts[layout] = info
    return {"layout": convert_layout.TEACHER_DEFAULT, "median_s": layouts[convert_layout.TEACHER_DEFAULT]["median_s"],
            "layouts": layouts}


def worker(task: dict) -> None:
    torch.set_num_threads(task["threads"])
    try:
        result = {"students": students_task, "teacher": teacher_task}[task["kind"]](task)
    except Exception as error:  # noqa: BLE001 - recorded in the JSON; the parent goes on with the next family
        traceback.print_exc()
        result = {"error": f"{type(error).__name__}: {error}"}
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    Path(task["out"]).write_text(json.dumps(result, default=float))


# --- the parent: children, memory guard, the report ----------------------------------------------------------------


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GIB
    return float("inf")


def rss_gib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return 0.0


def run_child(task: dict, min_available_gib: float) -> dict:
    """Run one task in a child process, stopping it if the host runs low on memory; its result or an error."""
    out = Path(task["work"]) / f"{task['family']}-{task['kind']}.json"
    task = task | {"out": str(out)}
    child = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(task)])
    peak, lowest, guarded = 0.0, float("inf"), None
    while child.poll() is None:
        peak, available = max(peak, rss_gib(child.pid)), mem_available_gib()
        lowest = min(lowest, available)
        if available < min_available_gib and guarded is None:
            guarded = (f"stopped by the benchmark's memory guard: the host's available memory fell to {available:.1f} "
                       f"GiB (< {min_available_gib} GiB) with the child at {rss_gib(child.pid):.1f} GiB resident")
            os.kill(child.pid, signal.SIGKILL)
        time.sleep(0.5)
    memory = {"child_peak_rss_gib_sampled": round(peak, 2), "host_min_available_gib": round(lowest, 2)}
    if guarded or child.returncode != 0 or not out.exists():
        why = guarded or (f"the child was killed by signal {-child.returncode} (SIGKILL: out of memory?)"
                          if child.returncode < 0 else f"the child exited with status {child.returncode}")
        print(f"{task['family']} {task['kind']}: {why}", flush=True)
        return {"error": why, "memory": memory}
    result = json.loads(out.read_text())
    out.unlink()
    return result | {"memory": memory | {"child_peak_rss_gib": round(result.pop("peak_rss_gib"), 2)}}


def summarize(family: str, students: dict, teacher: dict, peak: float) -> dict:
    """The family's regular record: families/<family>/students/<recipe>/{params_share, gflop_share, speedup, ...}."""
    result = {k: students[k] for k in ("clip", "latent", "teacher_spec") if k in students}
    teacher_s = teacher.get("median_s")
    first = next(iter(students.get("students", {}).values()), None)
    if first:
        c = first["comparison"]
        teacher_flops = c["flops_per_frame"]["teacher"] * c["output_shape"]["teacher"][2]
        result["teacher_params"] = c["params"]["teacher"]
        result["teacher_gflop_per_frame"] = c["flops_per_frame"]["teacher"] / 1e9
        if teacher_s:
            teacher["gflops_per_s"] = teacher_flops / teacher_s / 1e9
            teacher["share_of_peak"] = teacher["gflops_per_s"] / peak
    result["teacher"] = teacher
    result["students"] = {}
    for recipe, entry in students.get("students", {}).items():
        c, timing = entry["comparison"], entry["timing"]
        out_frames = c["output_shape"]["student"][2]
        flops = c["flops_per_frame"]["student"] * c["output_shape"]["teacher"][2]  # compare() divides by the teacher's frames
        layouts = timing["layouts"]
        record = {
            "params": {"teacher": c["params"]["teacher"], "student": c["params"]["student"]},
            "params_share": c["params"]["ratio"],
            "gflop_per_frame": {"teacher": c["flops_per_frame"]["teacher"] / 1e9, "student": flops / out_frames / 1e9},
            "gflop_share": c["flops_per_frame"]["ratio"],
            "output_patch": entry["output_patch"],
            "same_output_shape": c["output_shape"]["equal"],
            "student_s": timing["median_s"],
            "teacher_s": teacher_s,
            "export_max_abs_err": {layout: info.get("export_max_abs_err") for layout, info in layouts.items()},
            "rewrite_check_failed": layouts["conv2d"].get("rewrite_check_failed"),
            "speedup": teacher_s / timing["median_s"] if teacher_s else None,
            "speedup_fastest": teacher_s / layouts[timing["fastest_layout"]]["median_s"] if teacher_s else None,
            "speedup_conv3d_both": (teacher["layouts"]["conv3d"]["median_s"] / layouts["conv3d"]["median_s"]
                                    if teacher_s else None),
            "gflops_per_s": flops / timing["median_s"] / 1e9,
            "share_of_peak": flops / timing["median_s"] / 1e9 / peak,
            "timing": timing,
            "comparison": c,
        }
        if "profile" in entry:
            record["profile"] = entry["profile"]
        result["students"][recipe] = record
        speed = f"{record['speedup']:.1f}x" if record["speedup"] else "n/a (teacher failed)"
        print(f"{family} {recipe}: params {c['params']['student'] / 1e6:.1f} M / {c['params']['teacher'] / 1e6:.1f} M = "
              f"{record['params_share']:.1%}; GFLOP share {record['gflop_share']:.1%}; output patch "
              f"{record['output_patch']}; student {record['student_s']:.2f} s ({timing['convert_layout']}), teacher "
              f"{teacher_s if teacher_s is None else round(teacher_s, 1)} s: speed-up {speed}; "
              f"{record['gflops_per_s']:.0f} GFLOP/s ({record['share_of_peak']:.0%} of peak)", flush=True)
    if "error" in students:
        result["students_error"] = students["error"]
    result["students_memory"] = students.get("memory")
    return result


def parse_clip(text: str | None) -> list[int] | None:
    if text is None:
        return None
    frames, height, width = (int(part) for part in text.lower().split("x"))
    return [frames, height, width]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma list of: " + ", ".join(FAMILIES))
    parser.add_argument("--recipes", default=DEFAULT_RECIPE,
                        help="student recipes timed besides each family's own (comma list; '' for none)")
    parser.add_argument("--clip", help="FxHxW for every family (default: each family recipe's clip)")
    parser.add_argument("--teacher-runs", type=int, default=1)
    parser.add_argument("--student-runs", type=int, default=3)
    parser.add_argument("--teacher-conv2d", action="store_true", help="also time the teacher's Conv2d form")
    parser.add_argument("--no-teacher-check", action="store_true",
                        help="skip the teacher's ONNX-vs-PyTorch check (a full-size PyTorch decode)")
    parser.add_argument("--profile", default=DEFAULT_RECIPE, help="recipes whose students get a per-op profile")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--min-available-gib", type=float, default=1.0,
                        help="stop a child when the host's available memory falls below this")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--update", action="store_true",
                        help="keep the families already in --out that this run does not measure (each family "
                             "records its run: runs/<run>)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))

    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; pick from {', '.join(FAMILIES)}")
    extra = [r for r in args.recipes.split(",") if r]
    torch_peak = torch_matmul_peak_gflops(args.threads)
    peak = onnxruntime_matmul_peak_gflops(args.threads)
    print(f"fp32 matmul peak (2048^2, {args.threads} threads): onnxruntime {peak:.1f} GFLOP/s, torch.mm "
          f"{torch_peak:.1f} GFLOP/s", flush=True)
    run = {
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "families": families,
        "host": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": args.threads,
                 "platform": platform.platform(), "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE")
                                                                         * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
                 "matmul_peak_gflops": peak, "matmul_peak_source": "onnxruntime MatMul 2048^2 fp32, best of 10",
                 "torch_mm_peak_gflops": torch_peak, "load_avg_at_start": os.getloadavg()},
        "runtime": onnx_backend.runtime_versions(),
        "settings": {"clip": args.clip or "each family recipe's teacher input", "teacher_runs": args.teacher_runs,
                     "student_runs": args.student_runs, "warmups": 1, "opset": onnx_backend.DEFAULT_OPSET,
                     "teacher_layouts": ["conv3d", "conv2d"] if args.teacher_conv2d else ["conv3d"],
                     "convert_rule": convert_layout.RULE, "teacher_rule": convert_layout.TEACHER_WHY,
                     "min_available_gib": args.min_available_gib},
    }
    report = previous_report(args.out) if args.update else {"runs": [], "families": {}}
    report["runs"].append(run)
    index = len(report["runs"]) - 1
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            recipes = [FAMILIES[family], *(r for r in extra if r != FAMILIES[family])]
            base = {"family": family, "clip": parse_clip(args.clip), "threads": args.threads, "work": tmp}
            load_before, family_started = os.getloadavg(), time.perf_counter()
            students = run_child(base | {"kind": "students", "recipes": recipes, "runs": args.student_runs,
                                         "profile": [r for r in args.profile.split(",") if r]}, args.min_available_gib)
            teacher = run_child(base | {"kind": "teacher", "runs": args.teacher_runs, "check": not args.no_teacher_check,
                                        "layouts": run["settings"]["teacher_layouts"]}, args.min_available_gib)
            result = summarize(family, students, teacher, peak)
            result["recipe"] = FAMILIES[family]
            result["run"] = index
            result["load_avg"] = {"before": load_before, "after": os.getloadavg()}
            result["wall_s"] = time.perf_counter() - family_started
            report["families"][family] = result
            _write(report, args.out)  # after every family, so a long run keeps what it measured
    run["wall_s"] = time.perf_counter() - started
    _write(report, args.out)
    print(f"wrote {args.out}")


def previous_report(path: Path) -> dict:
    """The report in `path` to update: its families measured in earlier runs are kept, with their run's record."""
    if not path.exists():
        return {"runs": [], "families": {}}
    return json.loads(path.read_text())


def _write(report: dict, path: Path) -> None:
    report["runs"][-1]["host"]["load_avg_at_end"] = os.getloadavg()
    order = {family: i for i, family in enumerate(FAMILIES)}
    report["families"] = dict(sorted(report["families"].items(), key=lambda item: order[item[0]]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
