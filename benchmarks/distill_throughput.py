"""Distillation throughput and memory on this machine: the demo teacher and recipe on the bundled Big Buck Bunny
clip, and the same run over a folder of many copies of it (every copy a separate video to probe and decode).

    python benchmarks/distill_throughput.py --steps 150 --copies 200

Each run is `effconv distill` in a subprocess (2 torch threads), timed as a user would see it; the process
tree's resident memory (the trainer and its data workers) is sampled every 20 ms. Writes
benchmarks/results/distill_throughput.json with steps/s, the share of time in each phase (data, teacher,
student, optimizer) from distill.json, and peak memory. Targets: steps/s at least the 3.4 of the earlier
in-memory loader, data share under 10%, and peak memory over 200 copies within 1.2x of one copy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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
SAMPLE_SECONDS = 0.02


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            pages = int((entry / "statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = pages * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def distill_run(data: Path, out: Path, steps: int, workers: int | None) -> dict:
    command = [sys.executable, "-m", "effconv", "distill", str(TEACHER_SPEC), "--recipe", "demo", "--data", str(data),
               "--out", str(out), "--steps", str(steps), "--device", "cpu", "--json"]
    if workers is not None:
        command += ["--workers", str(workers)]
    env = os.environ | {"OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    peak = 0
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

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
                                     "data_workers", "peak_host_rss_mb")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--copies", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="effconv-throughput-") as scratch:
        scratch = Path(scratch)
        one, many = scratch / "one", scratch / "many"
        one.mkdir()
        many.mkdir()
        shutil.copy(BUNDLED_CLIP, one / BUNDLED_CLIP.name)
        for index in range(args.copies):
            shutil.copy(BUNDLED_CLIP, many / f"copy{index:04d}.mp4")
        runs = {
            "one_video": distill_run(one, scratch / "run-one", args.steps, None),
            "one_video_in_process": distill_run(one, scratch / "run-in-process", args.steps, 0),
            f"{args.copies}_videos": distill_run(many, scratch / "run-many", args.steps, None),
        }
    many_run, one_run = runs[f"{args.copies}_videos"], runs["one_video"]
    results = {
        "teacher": str(TEACHER_SPEC.relative_to(REPO)),
        "recipe": "demo (9x64x64 clips, batch 2, a pool of 96 clips whose teacher latents and clips are cached)",
        "device": "cpu",
        "torch_threads": 2,
        "host": {"machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                 "int8_features": cpu_int8_features(), "load_average_before": os.getloadavg()},
        "runs": runs,
        "memory_ratio_many_vs_one": round(many_run["peak_tree_rss_mb"] / one_run["peak_tree_rss_mb"], 3),
        "targets": {"steps_per_second_at_least": 3.4, "data_share_below": 0.10, "memory_ratio_at_most": 1.2},
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
