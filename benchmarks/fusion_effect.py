"""What kernel fusion changes in the iPhone 16 Pro estimate of every family's Turbo-VAED student, by op category.

For each family (HunyuanVideo, CogVideoX, Wan 2.1, Wan 2.2 TI2V-5B, LTX-Video, Mochi) the family recipe's
paper-layout student (`turbo-vaed-<family>`, the recipe benchmarks/student_vs_teacher.py also times) is built and
profiled with the CLI, exactly as a user would, one family at a time, each command in its own process:

    effconv rewrite TEACHER.yaml --recipe turbo-vaed-<family> --out DIR --json
    effconv profile DIR/<name>-student.yaml --device iphone16pro --resolution 512x512 --frames N --json

TEACHER.yaml is the family recipe's teacher spec (inline in the recipe; `teacher_spec` of student_vs_teacher.py)
written to a temporary folder. The teacher gets random weights (no `pretrained:`): a roofline estimate does not
depend on the values, and `requires_pretrained` only matters to `effconv run`. N is the recipe clip's frame count:
17, and 19 for Mochi (its frames are 1 + 6k). 512x512 is the resolution of the paper's iPhone 16 Pro figures. The
default recipe's student of LTX-Video (`turbo-vaed-mobile`, what a bare `effconv rewrite` builds) is profiled too.

From `effconv profile --json` (effconv/profile/run.py, `to_dict` and `fusion_summary`) it records per student: the
estimate (ms, FPS, band and its band_source), GFLOPs, the estimate with every op its own kernel (`fusion.unfused_ms`),
the time per op category after and before fusion (ms and share of the total), the fusion counts (ops, kernels,
fused ops, the rules applied per unit) and the top 5 kernels (name, kind, the kinds fused into it, ms). A family
that fails is recorded with its error and the run goes on. Also recorded: the host's CPU, the date, the effconv
commit (and whether effconv/profile or the device profiles had uncommitted changes), and the seconds and child peak
memory of each command. Writes benchmarks/results/fusion_effect.json.

    PYTHONPATH=. python benchmarks/fusion_effect.py
    PYTHONPATH=. python benchmarks/fusion_effect.py --families ltx,mochi --out /tmp/fusion.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from effconv.host import cpu_model
from student_vs_teacher import DEFAULT_RECIPE, FAMILIES, teacher_spec  # the sibling benchmark (its folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "fusion_effect.json"
DEVICE = "iphone16pro"
RESOLUTION = "512x512"
TOP = 5
EXTRA = [("ltx", DEFAULT_RECIPE)]  # (family, recipe) profiled besides each family's own recipe


def _drop_none(value):
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def cli(args: list[str], log: Path) -> tuple[str, dict]:
    """`effconv ARGS` in a child process: its stdout, and its seconds and peak resident memory. Raises on failure
    with the tail of its stderr."""
    started = time.perf_counter()
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        child = subprocess.Popen([sys.executable, "-m", "effconv", *args], cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    run = {"seconds": round(time.perf_counter() - started, 1), "peak_rss_gib": round(usage.ru_maxrss / 1024**2, 2)}
    if child.returncode != 0:
        tail = log.with_suffix(".err").read_text().strip().splitlines()[-8:]
        raise RuntimeError(f"`effconv {shlex.join(args)}` exited with {child.returncode}: " + " | ".join(tail))
    return log.with_suffix(".out").read_text(), run


def shares(by_category_ms: dict[str, float]) -> dict[str, dict]:
    total = sum(by_category_ms.values())
    return {cat: {"ms": round(ms, 3), "share": round(ms / total, 4)} for cat, ms in by_category_ms.items() if ms > 1e-9}


def measure(family: str, recipe: str, work: Path) -> dict:
    """Rewrite the family's teacher with `recipe`, then profile the student on the phone."""
    started = time.perf_counter()
    loaded = teacher_spec(family, None)
    spec = _drop_none(loaded.resolved())
    frames = spec["input"]["frames"]
    folder = work / f"{family}-{recipe}"
    folder.mkdir(parents=True)
    teacher_path = folder / f"{spec['name']}.yaml"
    teacher_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    rewrite_args = ["rewrite", str(teacher_path), "--recipe", recipe, "--out", str(folder / "out"), "--json"]
    manifest_text, rewrite_run = cli(rewrite_args, folder / "rewrite")
    manifest = json.loads(manifest_text)
    student = folder / "out" / f"{manifest['name']}.yaml"
    profile_args = ["profile", str(student), "--device", DEVICE, "--resolution", RESOLUTION, "--frames", str(frames),
                    "--json"]
    profile_text, profile_run = cli(profile_args, folder / "profile")
    result = json.loads(profile_text)
    fusion = result["fusion"]
    fused_ms, unfused_ms = result["latency_ms"]["estimate"], fusion.get("unfused_ms")
    record = {
        "recipe": recipe,
        "teacher_spec": spec,
        "teacher_spec_path": str(teacher_path),
        "student_spec_path": str(student),
        "how": {"rewrite": "effconv " + shlex.join(rewrite_args), "profile": "effconv " + shlex.join(profile_args)},
        "student_params": manifest.get("params"),
        "teacher_params": manifest.get("teacher_params"),
        "frames": result["frames"],
        "resolution": RESOLUTION,
        "dtype": result["dtype"],
        "dtypes": result["dtypes"],
        "gflops": result["gflops"],
        "latency_ms": result["latency_ms"],
        "fps": result["fps"],
        "unfused_ms": unfused_ms,
        "fusion_saves_ms": None if unfused_ms is None else unfused_ms - fused_ms,
        "fusion_saves_share": None if unfused_ms is None else (unfused_ms - fused_ms) / unfused_ms,
        "by_category": {"fused": shares(result["by_category_ms"]),
                        "unfused": shares(fusion["unfused_by_category_ms"]) if "unfused_by_category_ms" in fusion else None},
        "fusion": {k: fusion[k] for k in ("rules", "ops", "kernels", "fused_ops")},
        "top_kernels": [{"name": k["name"], "kind": k["kind"], "fused": k["fused"], "unit": k["unit"],
                         "ms": k["ms"]} for k in result["top_kernels"][:TOP]],
        "memory": {k: result["memory"][k] for k in ("total_mb", "usable_ram_mb", "fits")},
        "fallbacks": result["fallbacks"],
        "notes": result["notes"],
        "commands": {"rewrite": rewrite_run, "profile": profile_run},
    }
    record["seconds"] = round(time.perf_counter() - started, 1)
    return record


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma list of: " + ", ".join(FAMILIES))
    parser.add_argument("--no-extra", action="store_true", help=f"skip LTX-Video's {DEFAULT_RECIPE} student")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; pick from {', '.join(FAMILIES)}")
    report = {
        "what": __doc__.splitlines()[0],
        "device": DEVICE, "resolution": RESOLUTION,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
        "effconv_commit": git("rev-parse", "HEAD"),
        "uncommitted_estimator_changes": git("status", "--porcelain", "--", "effconv/profile", "effconv/device_profiles").splitlines(),
        "families": {},
        "default_recipe": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fusion-effect-") as tmp:
        jobs = [(f, FAMILIES[f], "families") for f in families]
        if not args.no_extra:
            jobs += [(f, r, "default_recipe") for f, r in EXTRA if f in families]
        for family, recipe, section in jobs:
            family_started = time.perf_counter()
            try:
                record = measure(family, recipe, Path(tmp))
                print(f"{family} {recipe}: {record['latency_ms']['estimate']:.0f} ms fused, {record['unfused_ms']:.0f} ms "
                      f"unfused, {record['gflops']:.0f} GFLOPs, {record['seconds']:.0f} s", flush=True)
            except Exception as error:  # noqa: BLE001 - recorded in the JSON; the run goes on
                record = {"recipe": recipe, "error": f"{type(error).__name__}: {error}",
                          "seconds": round(time.perf_counter() - family_started, 1)}
                print(f"{family} {recipe}: FAILED {record['error']}", flush=True)
            report[section][family] = record
            _write(report, args.out)  # after every family, so a long run keeps what it measured
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["note"] = ("student_spec_path, teacher_spec_path: a temporary folder, removed after the run; `how` "
                      "rebuilds them (random weights; the estimate does not depend on them)")
    _write(report, args.out)
    print(f"wrote {args.out}")


def _write(report: dict, path: Path) -> None:
    report["host"]["load_avg_at_end"] = os.getloadavg()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
