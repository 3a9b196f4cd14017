"""The one published phone cross-check: the Turbo-VAED paper's iPhone 16 Pro figures for the full teacher decoders,
against `effconv profile --device iphone16pro` of the same diffusers configs.

The Turbo-VAED paper (arXiv 2508.09136, Table 1; 512x512, iPhone 16 Pro) reports 17.7 FPS for the LTX-Video VAE
decoder and out-of-memory for the HunyuanVideo one. This script profiles `benchmarks/specs/ltx-full.yaml` and
`benchmarks/specs/hunyuan-full.yaml` (default diffusers configs, random weights: a roofline estimate does not depend
on their values) with the CLI, exactly as a user would, and writes the estimate, its band, the memory verdict and the
paper's figure side by side to benchmarks/results/paper_crosscheck.json, which docs/profile.md quotes. Two data
points with unknowns (the paper's clip length; its Core ML rewrite of LTX's rank-8 permute, which effconv costs on
the CPU), not a validation of the band.

    PYTHONPATH=. python benchmarks/paper_crosscheck.py
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "paper_crosscheck.json"
PAPER = {"source": "Turbo-VAED (arXiv 2508.09136), Table 1: 512x512 on an iPhone 16 Pro", "url": "https://arxiv.org/abs/2508.09136"}
CASES = {
    "ltx-video": {"spec": "benchmarks/specs/ltx-full.yaml", "paper": {"fps": 17.7}},
    "hunyuanvideo": {"spec": "benchmarks/specs/hunyuan-full.yaml", "paper": {"fits": False, "reported": "out of memory"}},
}
DEVICE = "iphone16pro"


def profile(spec: str) -> dict:
    """`effconv profile SPEC --device iphone16pro --json`, its estimate and how long it took."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "effconv", "profile", spec, "--device", DEVICE, "--json"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    return {"fps": result["fps"], "latency_ms": result["latency_ms"], "frames": result["frames"],
            "gflops": result["gflops"], "memory": result["memory"], "dtype": result["dtype"],
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    rows = {}
    for name, case in CASES.items():
        estimate = profile(case["spec"])
        row = {"spec": case["spec"], "estimate": estimate, "paper": case["paper"]}
        if "fps" in case["paper"]:
            row["estimate_over_paper_fps"] = round(estimate["fps"]["estimate"] / case["paper"]["fps"], 3)
            row["paper_inside_band"] = estimate["fps"]["low"] <= case["paper"]["fps"] <= estimate["fps"]["high"]
        else:
            row["fits_agrees"] = estimate["memory"]["fits"] == case["paper"]["fits"]
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    OUT.write_text(json.dumps({"device": DEVICE, "paper": PAPER, "rows": rows,
                               "host": {"cpu": platform.processor() or platform.machine(), "load_avg": os.getloadavg()},
                               "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
