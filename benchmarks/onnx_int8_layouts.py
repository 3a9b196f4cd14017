"""Where a narrow student's time goes in onnxruntime, float vs int8, in both ONNX layouts.

The demo student's convs are 8-48 channels wide; `effconv quantize` keeps most of them float because
their int8 kernels are slower here. This script shows why, per op type: the student is exported as
written (Conv3d) and with `effconv convert --conv2d` (Conv2d over time-stacked frames), each is
quantized with every Conv in int8 (QDQ, per-channel int8 weights, uint8 or int8 activations; the
calibration values do not matter for speed), and all six models are timed in interleaved rounds and
profiled (onnxruntime's per-node kernel times, summed by op type).

    python benchmarks/onnx_int8_layouts.py --student runs/q-student/demo-teacher-student.yaml --size 17 256 256

Writes benchmarks/results/onnx_int8_layouts.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from effconv.convert.stage import convert
from effconv.backends.onnx.quantize import cpu_int8_features, file_size
from effconv.backends.onnx.search import interleaved_latency
from effconv.spec import load_spec

from quantize import resized_spec  # the sibling benchmark script (its folder is on sys.path when run)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "onnx_int8_layouts.json"
ACTIVATIONS = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


class _OneSample:
    def __init__(self, name: str, latent: np.ndarray):
        self._feeds = iter([{name: latent}])

    def get_next(self):
        return next(self._feeds, None)


def _session(path: Path, threads: int, profile: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.enable_profiling = profile
    options.profile_file_prefix = str(path.with_suffix(""))  # beside the model, in the temporary folder
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quantized_variants(float_model: Path, latent: np.ndarray, work: Path) -> dict[str, Path]:
    preprocessed = work / "preprocessed.onnx"
    quant_pre_process(str(float_model), str(preprocessed), skip_symbolic_shape=True)
    variants = {}
    for activation, quant_type in ACTIVATIONS.items():
        target = work / f"int8-{activation}.onnx"
        quantize_static(str(preprocessed), str(target), _OneSample("latent", latent), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv"], per_channel=True, activation_type=quant_type,
                        weight_type=QuantType.QInt8, extra_options={"WeightSymmetric": True})
        variants[f"all Conv int8, {activation} activations"] = target
    return variants


def op_type_profile(path: Path, latent: np.ndarray, threads: int, runs: int = 3) -> dict[str, dict]:
    """Kernel ms per op type (mean per run) and node count, from onnxruntime's profiler."""
    session = _session(path, threads, profile=True)
    session.run(None, {"latent": latent})  # warm-up, excluded below by counting only the last `runs`
    for _ in range(runs):
        session.run(None, {"latent": latent})
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    kernel = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run = len(kernel) // (runs + 1)
    totals: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for event in kernel[per_run:]:
        totals[event["args"]["op_name"]] += event["dur"] / 1000 / runs
        counts[event["args"]["op_name"]] += 1
    return {op: {"ms": round(ms, 1), "nodes": counts[op] // runs} for op, ms in totals.most_common()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", type=Path, required=True, help="student spec written by `effconv distill`")
    parser.add_argument("--size", nargs=3, type=int, default=[17, 256, 256], metavar=("FRAMES", "HEIGHT", "WIDTH"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    loaded = load_spec(resized_spec(args.student, *args.size))
    report = {"student": str(args.student), "size": args.size, "threads": args.threads,
              "cpu_int8_features": cpu_int8_features(), "onnxruntime": ort.__version__, "layouts": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for layout in ("conv3d", "conv2d"):
            work = Path(tmp) / layout
            manifest = convert(loaded, "onnx", work, layout=layout)
            float_model = work / manifest.artifact
            latent = np.random.default_rng(0).standard_normal(manifest.inputs[0].shape).astype(np.float32)
            paths = {"float": float_model, **quantized_variants(float_model, latent, work)}
            medians = dict(zip(paths, interleaved_latency(list(paths.values()), latent, args.threads, args.rounds)))
            report["layouts"][layout] = {
                label: {"median_ms": medians[label], "speedup_vs_float": round(medians["float"] / medians[label], 3),
                        "size_bytes": file_size(path), "op_types": op_type_profile(path, latent, args.threads)}
                for label, path in paths.items()}
            for label, row in report["layouts"][layout].items():
                top = ", ".join(f"{op} {v['ms']:.0f}" for op, v in list(row["op_types"].items())[:4])
                print(f"{layout:6s} {label:38s} {row['median_ms']:8.1f} ms ({row['speedup_vs_float']:.2f}x)  {top}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
