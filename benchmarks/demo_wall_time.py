"""Wall time of `effconv run demo` from scratch (an empty --out and an empty host-cpu cache, as on a fresh machine:
the profile stage measures the host and runs the host probe), the figure README's set-up section quotes.

The time depends on the CPU above all, and on whatever else runs: the results file records the CPU model, its
int8 instructions, the core count and the load average before and after, beside the total and each stage's
seconds as the run reports them. Run it on an otherwise idle machine and say so only if the recorded load shows it.

    PYTHONPATH=. python benchmarks/demo_wall_time.py

Writes benchmarks/results/demo_wall_time.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from effconv.host import cpu_int8_features, cpu_model

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "demo_wall_time.json"


def git_commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        # a fresh machine: no host-cpu cache, so the run measures the host and runs the host probe as a new user's does
        fresh_cache = {**os.environ, "EFFCONV_CACHE_DIR": str(Path(work) / "cache")}
        finished = subprocess.run([sys.executable, "-m", "effconv", "run", "demo", "--out", str(Path(work) / "demo"), "--json"],
                                  capture_output=True, text=True, check=True, env=fresh_cache)
        wall = time.perf_counter() - started
    outcome = json.loads(finished.stdout)
    result = {
        "script": "benchmarks/demo_wall_time.py",
        "command": "effconv run demo --out DIR (DIR empty, EFFCONV_CACHE_DIR empty)",
        "date": datetime.date.today().isoformat(),
        "code": git_commit(),
        "host": {"cpu": cpu_model(), "int8_features": cpu_int8_features(), "cores": os.cpu_count(),
                 "load_average_before": [round(x, 2) for x in load_before],
                 "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "wall_seconds": round(wall, 1),
        "stages": outcome["stages"],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
