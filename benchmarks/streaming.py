"""Whole-clip vs streamed decode of the Wan 2.1 default config's `turbo-vaed-mobile` student in onnxruntime fp32:
peak memory (RSS) and ms per video frame for 17, 33, 65 and 129 frames (T = 5, 9, 17, 33 latent frames).

Whole-clip: one fixed-shape ONNX export per T (`effconv convert`). Streamed: one `--stream K` export per K, run by
`effconv decode`'s loop (chunks written to a memory-mapped .npy). Each decode runs in a fresh process, so its peak
RSS (VmHWM) is its own; times exclude loading the session; a whole-clip decode that fails (out of memory) is recorded where it stops. Random
weights (speed and memory do not depend on the values). Compare ratios within one run.

    PYTHONPATH=. python benchmarks/streaming.py                        # 256x256
    PYTHONPATH=. python benchmarks/streaming.py --resolution 480x832

Writes benchmarks/results/streaming_HxW.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
LATENT_FRAMES = (5, 9, 17, 33)
CHUNKS = (1, 2)
TEACHER = {"name": "wan21", "model": {"diffusers": "AutoencoderKLWan"}, "part": "decoder"}


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM): unlike ru_maxrss it is not inherited across exec from the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _child(args) -> None:
    """One decode in this process, after loading the artifact: print its time, frames and peak memory as JSON."""
    from effconv.artifacts import manifest_path, read_manifest
    from effconv.backends import registry
    from effconv.backends.streaming import decoded_frames, stream_chunks
    from effconv.video.writer import NpyWriter

    latent = np.load(Path(args.latent), mmap_mode="r")
    backend = registry.get("onnx")
    if args.stream:
        stream = read_manifest(manifest_path(Path(args.artifact))).stream
        run_all = backend.load_all(Path(args.artifact), args.threads)
        frames = decoded_frames(stream, latent.shape[2])
        started = time.perf_counter()
        with NpyWriter(Path(args.out), (1, 3, frames, *args.size)) as writer:
            for chunk in stream_chunks(run_all, stream, latent):
                writer.write(chunk)
    else:
        run = backend.load(Path(args.artifact), args.threads)
        started = time.perf_counter()
        frames = run(np.ascontiguousarray(latent)).shape[2]
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "frames": frames, "peak_rss_mb": _peak_rss_mb()}))


def _measure(artifact: Path, latent: Path, out: Path, threads: int, size: tuple[int, int], stream: bool) -> dict:
    command = [sys.executable, __file__, "--child", "--artifact", str(artifact), "--latent", str(latent), "--out", str(out),
               "--threads", str(threads), "--size", *map(str, size)] + (["--stream"] if stream else [])
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        return {"failed": f"exit {done.returncode}: {(done.stderr.strip().splitlines() or ['killed'])[-1][:200]}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result | {"ms_per_frame": round(1000 * result["seconds"] / result["frames"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", default="256x256")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--artifact", help=argparse.SUPPRESS)
    parser.add_argument("--latent", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--latent-frames", default=",".join(map(str, LATENT_FRAMES)), help="comma list of T")
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    from effconv.artifacts import read_manifest
    from effconv.convert.stage import convert
    from effconv.host import cpu_model
    from effconv.rewrite.stage import rewrite
    from effconv.spec import load_spec

    height, width = map(int, args.resolution.split("x"))
    results = REPO / "benchmarks" / "results" / f"streaming_{height}x{width}.json"
    report = {"script": "benchmarks/streaming.py", "resolution": [height, width], "threads": args.threads,
              "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "ram_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
                          "load_avg_at_start": os.getloadavg()}, "rows": []}
    with tempfile.TemporaryDirectory(prefix="effconv-streaming-") as tmp:
        work = Path(tmp)
        (work / "wan21.yaml").write_text(yaml.safe_dump(TEACHER | {"input": {"frames": 17, "height": height, "width": width}}))
        rewrite(load_spec(work / "wan21.yaml"), "turbo-vaed-mobile", work / "student")
        student = load_spec(work / "student" / "wan21-student.yaml")
        streamed = {k: work / f"k{k}" / convert(student, "onnx", work / f"k{k}", stream=k).artifact for k in CHUNKS}
        _, channels, _, h, w = read_manifest(streamed[1].with_suffix(".json")).inputs[0].shape
        for frames in map(int, args.latent_frames.split(",")):
            latent = work / f"latent{frames}.npy"
            np.save(latent, np.random.default_rng(frames).standard_normal((1, channels, frames, h, w)).astype(np.float32))
            row = {"latent_frames": frames, "video_frames": 1 + 4 * (frames - 1)}
            try:
                whole_dir = work / f"whole{frames}"
                whole = whole_dir / convert(student.with_input(row["video_frames"], height, width), "onnx", whole_dir).artifact
                row["whole"] = _measure(whole, latent, work / "whole.npy", args.threads, (height, width), stream=False)
            except Exception as exc:  # the export itself may run out of memory at large T
                row["whole"] = {"failed": f"export: {type(exc).__name__}: {str(exc)[:160]}"}
            for k, artifact in streamed.items():
                row[f"stream_k{k}"] = _measure(artifact, latent, work / "stream.npy", args.threads, (height, width), stream=True)
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
            report["machine"]["load_avg_at_end"] = os.getloadavg()
            results.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
