"""Distillation throughput and memory on this machine: the demo teacher and recipe on the bundled Big Buck Bunny
clip, and the same run over a folder of many copies of it (every copy a separate video to probe and decode).

    python benchmarks/distill_throughput.py --steps 150 --copies 200 --baseline ../effconv-before

Each run is `effconv distill` in a subprocess (2 torch threads), timed as a user would see it; the process
tree's resident memory (the trainer and its data workers) is sampled every 100 ms. Writes
benchmarks/results/distill_throughput.json with steps/s, the share of time in each phase (data, teacher,
student, optimizer) from distill.json, and peak memory. With `--baseline CHECKOUT` the one-video run is
repeated with an earlier effconv (the loader that decoded every video into memory). Targets: steps/s at least
the earlier loader's, data share under 10%, and peak memory over 200 copies within 1.2x of one copy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from effconv.host import cpu_int8_features
from effconv.video.clips import BUNDLED_CLIP

REPO = Path(__file__).resolve().parents[1]
TEACHER_SPEC = REPO / "examples" / "specs" / "demo-teacher.yaml"
RESULTS = REPO / "benchmarks" / "results" / "distill_throughput.json"
SAMPLE_SECONDS = 0.1


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of a process and all its descendants (/proc/PID/task/TID/children, statm)."""
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in Path(f"/proc/{pid}/task").iterdir():
                stack += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue  # exited while being read
    return total


def distill_run(data: Path, out: Path, steps: int, workers: int | None, code: Path = REPO) -> dict:
    command = [sys.executable, "-m", "effconv", "distill", str(TEACHER_SPEC), "--recipe", "demo", "--data", str(data),
               "--out", str(out), "--steps", str(steps), "--json"]
    if workers is not None:
        command += ["--workers", str(workers)]
    env = os.environ | {"OMP_NUM_THREADS": "2", "PYTHONPATH": str(code)}
    peak = 0
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sample() -> None:
        nonlocal peak
        while process.poll() is None:
            peak = max(peak, _tree_rss_bytes(process.pid))
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, stderr = process.communicate()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"effconv distill failed ({process.returncode}): {stderr[-2000:]}")
    run = json.loads(stdout)["run"]
    return {
        "videos": len(list(data.iterdir())) if data.is_dir() else 1,
        "command_seconds": round(time.perf_counter() - started, 2),
        "peak_tree_rss_mb": round(peak / (1 << 20), 1),
        **{key: run[key] for key in ("steps", "wall_seconds", "steps_per_second", "phase_seconds", "phase_share",
                                     "data_workers", "peak_host_rss_mb") if key in run},
    }


def _revision(checkout: Path) -> str:
    return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--copies", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of the one-video runs")
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier effconv (git worktree) to time the same "
                        "run with, on this machine: the steps/s target is relative to the loader it replaces")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="effconv-throughput-") as scratch:
        scratch = Path(scratch)
        one, many = scratch / "one", scratch / "many"
        one.mkdir()
        many.mkdir()
        shutil.copy(BUNDLED_CLIP, one / BUNDLED_CLIP.name)
        for index in range(args.copies):
            shutil.copy(BUNDLED_CLIP, many / f"copy{index:04d}.mp4")
        runs = {}
        for round_ in range(1, args.rounds + 1):  # interleaved: this machine's speed drifts between runs
            runs[f"one_video_round{round_}"] = distill_run(one, scratch / f"run-one-{round_}", args.steps, None)
            if args.baseline:
                runs[f"one_video_baseline_round{round_}"] = distill_run(one, scratch / f"run-baseline-{round_}",
                                                                        args.steps, None, code=args.baseline)
        runs[f"{args.copies}_videos"] = distill_run(many, scratch / "run-many", args.steps, None)
    many_run, one_run = runs[f"{args.copies}_videos"], runs["one_video_round1"]

    def median_rate(prefix: str) -> float | None:
        rates = [run["steps_per_second"] for name, run in runs.items() if name.startswith(prefix + "_round")]
        return statistics.median(rates) if rates else None

    results = {
        "teacher": str(TEACHER_SPEC.relative_to(REPO)),
        "recipe": "demo (9x64x64 clips, batch 2, a pool of 96 clips whose teacher latents and clips are cached)",
        "device": "cpu",
        "torch_threads": 2,
        "host": {"machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                 "int8_features": cpu_int8_features(), "load_average_before": os.getloadavg()},
        "code": _revision(REPO),
        "runs": runs,
        "baseline_code": _revision(args.baseline) if args.baseline else None,
        "median_steps_per_second": {"this_code": median_rate("one_video"), "baseline": median_rate("one_video_baseline")},
        "memory_ratio_many_vs_one": round(many_run["peak_tree_rss_mb"] / one_run["peak_tree_rss_mb"], 3),
        "targets": {"steps_per_second_at_least": "the baseline's", "data_share_below": 0.10, "memory_ratio_at_most": 1.2},
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
