"""A Turbo-VAED student on the XNNPACK backends in its two forms: frames folded into the batch (what `effconv
convert` exports for ExecuTorch and LiteRT, `effconv/legalize/frames.py`) against the 5-D student with each Conv3d
rewritten to Conv2d taps (what it exported before). Same weights, same legalizing rewrites, same backend export;
each artifact is checked against PyTorch and all are timed in one process in interleaved rounds, so load on a shared
machine falls on all alike. Compare the ratios within one run.

    PYTHONPATH=. python benchmarks/student_forms.py
    PYTHONPATH=. python benchmarks/student_forms.py --models demo --runs 10

Writes benchmarks/results/student_forms.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from backends import MODELS, interleaved_ms, student_spec
from effconv.backends import registry
from effconv.host import cpu_int8_features, cpu_model
from effconv.legalize.frames import FramesInBatchDecoder
from effconv.legalize.rewrites import legalize, rewrites_for
from effconv.models.loader import load_model
from effconv.spec import load_spec

RESULTS = Path(__file__).resolve().parent / "results" / "student_forms.json"
XNNPACK_BACKENDS = ("executorch", "tflite")


def exported_forms(spec: Path, work: Path) -> tuple[dict[str, dict], list[int]]:
    """Each backend's artifact of the student in both forms, with its export time and max abs error vs PyTorch; and
    the student's input shape."""
    model = load_model(load_spec(spec))
    example = model.example_input(0)
    with torch.no_grad():
        reference = model.module(example).numpy()
    forms = {"5-D": model.module, "frames-in-batch": FramesInBatchDecoder(model.module).eval()}
    made = {}
    for backend in XNNPACK_BACKENDS:
        target = registry.get(backend)
        for form, module in forms.items():
            path = work / f"{backend}-{form}{target.suffix}"
            started = time.perf_counter()
            target.export(legalize(module, example, rewrites_for(backend)).module, example, path, "latent", "video")
            export_s = round(time.perf_counter() - started, 1)
            error = float(np.abs(target.predict(path, example) - reference).max())
            made[f"{backend} {form}"] = {"artifact": path, "export_s": export_s, "max_abs_err": error}
            print(f"  {backend} {form}: export {export_s} s, max abs err {error:.2g}", flush=True)
    return made, list(example.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["hunyuan-mobile"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    results = {"cpu": cpu_model(), "cpu_int8_features": cpu_int8_features(), "machine": platform.machine(),
               "threads": args.threads, "runs": args.runs, "models": {}}
    for model in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            print(f"{model}:", flush=True)
            made, shape = exported_forms(student_spec(model, work), work)
            load_before = os.getloadavg()
            ms = interleaved_ms(made, shape, args.threads, args.runs)
            rows = {key: {k: v for k, v in entry.items() if k != "artifact"} | {"host_ms": ms[key]} for key, entry in made.items()}
            results["models"][model] = {
                "input_shape": shape, "load_average_before": load_before, "load_average_after": os.getloadavg(), "rows": rows,
                "frames_over_5d": {b: round(ms[f"{b} frames-in-batch"] / ms[f"{b} 5-D"], 3) for b in XNNPACK_BACKENDS},
            }
            print(json.dumps(results["models"][model]["frames_over_5d"]), flush=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
