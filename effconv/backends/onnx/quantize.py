"""ONNX post-training quantization with onnxruntime: static QDQ, per-channel int8 weights, per-tensor
activations.

The recipe, in order (the choices, each measured only when it fits --search-seconds, are in search.py):
1. Pre-process (onnxruntime's shape inference + graph optimisation); split the calibration samples into the
   ones whose ranges are collected and a validation split that scores the choices. Ranges are cached per
   method, so every variant reuses them.
2. Activation type: uint8 or int8 activations, the faster on this host.
3. Node kinds (dense / depthwise / pointwise conv, matmul, each by channel width): for another device, from
   its profile; for this host, timed: from everything in int8, one kind at a time back to float (measured
   here: int8 Conv3d loses below ~32 channels, where Turbo-VAED's full-resolution stages are).
4. Calibration method: MinMax or Percentile, the better on the validation split.
5. Sensitivity, when the model misses the gate on the validation split (or when asked): quantize one node at
   a time and measure PSNR against the float output (the table is reported); while the gate is missed,
   return the most sensitive remaining node to float.
6. Write the model calibrated with the chosen method; run it and the float model in alternation on the
   held-out samples, which give its quality, the gate's verdict and its speed.
Only compute ops (Conv, MatMul, Gemm) are quantized: int8 element-wise ops would add Q/DQ pairs
around cheap ops without removing any float work. Nodes that compute in float still store int8 weights
(a DequantizeLinear on the weight), so the file is ~4x smaller whatever the speed decisions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from effconv.artifacts import Manifest
from effconv.host import cpu_int8_features
from effconv.errors import EffconvError, exception_text
from effconv.backends.files import size_report
from effconv.backends.base import HOST_DEVICE, CalibrationSet
from effconv.backends.onnx.export import session
from effconv.backends.onnx.search import (MIN_REPEATS, MIN_SPEEDUP, Budget, Progress, Search,
                                         choose_activation, choose_method, device_kinds, fast_kinds, sensitivity_table)
from effconv.backends.quality import CALIBRATE_MORE, WEIGHTS_ONLY, apart_from, quality_report
from effconv.quiet import captured_stdout, is_debug
from effconv.recipe import DEFAULT_SEARCH_SECONDS

NAME = "onnx"
SUFFIX = ".onnx"
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")
PERCENTILE = 99.999
MIN_VALIDATION_SPLIT = 3
DEQUANTIZE_PER_CALL = "onnxruntime dequantizes every int8 weight on each call"


@contextlib.contextmanager
def quiet_ort():
    """onnxruntime.quantization logs advice and per-node notes on the root logger; keep them off the terminal."""
    root = logging.getLogger()
    level = root.level
    if not is_debug():
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


WIDTH_BUCKETS = ((0, 32, "<32 ch"), (32, 128, "32-127 ch"), (128, 1 << 30, ">=128 ch"))


def _width_bucket(channels: int) -> str:
    return next(label for low, high, label in WIDTH_BUCKETS if low <= channels < high)


def node_kinds(model) -> dict[str, str]:
    """Compute nodes by kind and width: dense / depthwise / pointwise conv (from weight shape and group) or
    matmul, with the narrower of in/out channels bucketed, because int8 GEMM kernels only pay off at
    enough channels (measured here: a 3x3x3 Conv3d in u8s8 is 0.3x float at 8 channels, 2x at 32, 3x at 128)."""
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    kinds = {}
    for node in model.graph.node:
        weight = initializers.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None or node.op_type not in COMPUTE_OPS:
            continue  # weights computed at run time cannot be quantized per channel
        dims = list(weight.dims)
        if node.op_type != "Conv":
            kinds[node.name] = f"matmul {_width_bucket(min(dims))}"
            continue
        group = next((attr.i for attr in node.attribute if attr.name == "group"), 1)
        if group > 1 and dims[1] == 1:
            kinds[node.name] = f"depthwise conv {_width_bucket(dims[0])}"
        elif all(d == 1 for d in dims[2:]):
            kinds[node.name] = f"pointwise conv {_width_bucket(min(dims[0], dims[1] * group))}"
        else:
            kinds[node.name] = f"dense conv {_width_bucket(min(dims[0], dims[1] * group))}"
    return kinds


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
SATURATION_SOURCE = ("onnxruntime quantization docs, 'When and why do I need to try U8U8?' and 'reduce_range': "
                     "https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html")


def int8_kernel_rule(features: list[str] | None = None, machine: str | None = None) -> dict:
    """What onnxruntime documents for this CPU. On x86 without VNNI its u8s8 kernels multiply with
    vpmaddubsw, which adds pairs of u8 x s8 products into a saturating int16; s8s8 is run through the
    same kernels. Weights quantized to 7 bits (`reduce_range`) keep every pair sum inside int16.
    VNNI (vpdpbusd) and ARM (sdot/udot, or widening multiplies) accumulate in int32 and need no workaround.
    Measured on an AVX2-only AMD EPYC (demo student, every conv int8): 22.6 dB vs float (u8s8) and 24.5 dB
    (s8s8) with 8-bit weights, 35.0 dB with reduce_range; the same QDQ model's exact arithmetic is 35.4 dB."""
    features = cpu_int8_features() if features is None else features
    machine = (machine or platform.machine()).lower()
    x86 = machine in ("x86_64", "amd64", "i386", "i686")
    saturates = x86 and not any(flag in features for flag in VNNI_FLAGS)
    return {"cpu": machine, "cpu_int8_features": features, "u8s8_saturation": saturates, "reduce_range": saturates,
            "why": ("x86 without VNNI: 8-bit weights can saturate onnxruntime's int16 pair sums, so weights use 7 bits "
                    "(reduce_range)") if saturates else "int8 products accumulate in int32 on this CPU: full 8-bit weights",
            "source": SATURATION_SOURCE}


class FeedReader:
    """onnxruntime CalibrationDataReader over a window (`set_range`) of the calibration samples, each the model's
    inputs in argument order (a decoder's latent; a streaming step's latent chunk, first-call flag and caches)."""

    def __init__(self, input_names: list[str], feeds: list[tuple[np.ndarray, ...]]):
        self._feeds = [dict(zip(input_names, feed, strict=True)) for feed in feeds]
        self._window = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._window = iter(self._feeds[start_index:end_index])

    def get_next(self):
        return next(self._window, None)


def input_names(runner) -> list[str]:
    return [spec.name for spec in runner.get_inputs()]


def run_all(path: Path, feeds: list[tuple[np.ndarray, ...]], threads: int, fused: bool = True) -> list[np.ndarray]:
    """The first output (the video) for each sample's inputs."""
    runner = session(path, threads, fused, lean=not fused)  # the op-by-op QDQ run keeps every dequantized weight
    names = input_names(runner)
    return [runner.run(None, dict(zip(names, feed, strict=True)))[0] for feed in feeds]


def file_size(path: Path) -> int:
    """An .onnx with its external data files, if any."""
    import onnx

    size = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    external = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data if entry.key == "location"}
    return size + sum((path.parent / name).stat().st_size for name in external)


@dataclasses.dataclass
class _Workspace:
    """The pre-processed model and the calibration ranges cached per method, from which QDQ variants are made."""

    directory: Path
    original: Path
    preprocessed: Path
    calib: CalibrationSet
    compute_nodes: list[str]
    reduce_range: bool
    threads: int
    counter: int = 0
    sample_seconds: float = 0.0  # one calibration sample's run: the search budget's unit

    def ranges(self, method: str) -> Path:
        """The tensor ranges of `method`, collected once into onnxruntime's calibration cache (which
        `quantize_static` then reads). onnxruntime's calibrator runs its augmented model (a ReduceMin/ReduceMax on
        every calibrated tensor) with graph optimizations off and the default node order, which keeps every
        calibrated tensor alive: measured on the paper-size HunyuanVideo student at 17x256x256, 94 s and 9.7 GB
        a sample. Run here optimized and lean (see `export.session`): 24 s and 1.9 GB. The ranges agree with
        onnxruntime's own to ~1e-6 relative (tests/test_quantize_onnx.py)."""
        from onnxruntime.quantization import CalibrationMethod
        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

        cache = self.directory / f"calibration-{method}.json"
        if cache.is_file():
            return cache
        options = {"percentile": PERCENTILE} if method == "Percentile" else {}
        with quiet_ort(), captured_stdout():
            calibrator = create_calibrator(self.preprocessed, list(COMPUTE_OPS), calibrate_method=getattr(CalibrationMethod, method),
                                           augmented_model_path=str(self.directory / f"augmented-{method}.onnx"),
                                           providers=["CPUExecutionProvider"], extra_options=options)
            calibrator.infer_session = session(Path(calibrator.augmented_model_path), self.threads, lean=True)
            reader = FeedReader(self.input_names, self.calib.feeds)
            started = time.perf_counter()
            for start in range(len(reader)):  # one sample at a time: a histogram holds one sample's activations
                reader.set_range(start, start + 1)
                calibrator.collect_data(reader)
            self.sample_seconds = (time.perf_counter() - started) / len(reader)
            save_tensors_data(calibrator.compute_data(), cache)
        Path(calibrator.augmented_model_path).unlink()
        return cache

    def quantize(self, nodes: list[str], method: str, activation: str, out: Path | None = None) -> Path:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        if out is None:
            self.counter += 1
            out = self.directory / f"variant-{self.counter}.onnx"
        extra = {"WeightSymmetric": True, "ActivationSymmetric": False}
        cache = self.ranges(method)
        with quiet_ort(), captured_stdout():
            quantize_static(
                str(self.preprocessed), str(out),
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(COMPUTE_OPS),
                nodes_to_quantize=nodes,
                per_channel=True,
                reduce_range=self.reduce_range,
                activation_type=QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, method),
                extra_options=extra,
                calibration_cache_path=str(cache),
            )
        store_weights_int8(out, set(self.compute_nodes) - set(nodes))
        return out

    @property
    def input_names(self) -> list[str]:
        return graph_input_names(self.original)


def graph_input_names(path: Path) -> list[str]:
    import onnx

    return [value.name for value in onnx.load(str(path), load_external_data=False).graph.input]


def _preprocess(original: Path, target: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with quiet_ort():
            quant_pre_process(str(original), str(target), skip_symbolic_shape=True)
    except Exception as exc:  # onnxruntime raises bare Exception/RuntimeError types for malformed graphs
        raise EffconvError(f"onnxruntime cannot pre-process '{original.name}' for quantization: {exception_text(exc, 200)}",
                           "re-export the model with `effconv convert --to onnx`.") from None
    drop_exporter_notes(target)


def drop_exporter_notes(path: Path) -> None:
    """torch's exporter stores per-node debug notes (stack traces, module paths) that can outweigh a small
    model's int8 weights; onnxruntime's optimizer drops them for some graphs and keeps them for others
    (measured on the demo student: 365 kB of a 590 kB int8 file), so drop them always."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if any(tensor.external_data for tensor in model.graph.initializer):
        return  # a >2 GB model keeps its notes rather than risk rewriting external data references
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, str(path))


ACTIVATIONS = ("auto", "uint8", "int8")


def check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise EffconvError(f"unknown --activation '{activation}'.", f"use one of: {', '.join(ACTIVATIONS)}.")


def quantize(artifact: Path, manifest: Manifest, calib: CalibrationSet, held_out: CalibrationSet, out_path: Path,
             weights_only: bool = False, max_psnr_drop: float | None = None, progress: Progress | None = None,
             threads: int | None = None, activation: str = "auto", select_by_speed: bool = True,
             sensitivity: bool = False, min_psnr_vs_float: float | None = None,
             kind_decisions: dict[str, dict] | None = None, target_device: str = HOST_DEVICE,
             search_seconds: float = DEFAULT_SEARCH_SECONDS) -> dict:
    """`activation`: auto (timed), uint8 or int8. Which node kinds compute in int8: `kind_decisions` (kind ->
    {int8, why}) when the target is another device, decided from its profile; else timed on this host;
    `select_by_speed=False` quantizes every compute node. Choices are made on a validation split of `calib`
    within `search_seconds` (search.py); `held_out` only measures the written model. The per-node
    sensitivity table is computed when the model misses the gate on the validation split (loses more than
    `max_psnr_drop` against ground truth, or is further than `min_psnr_vs_float` from the float output) or
    when `sensitivity` asks for it."""
    import onnx

    check_activation(activation)
    progress = progress or (lambda _message: None)
    threads = threads or os.cpu_count() or 1
    try:
        model = onnx.load(str(artifact), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise EffconvError(f"'{artifact}' is not a readable ONNX model ({type(exc).__name__}).",
                           "re-export it with `effconv convert --to onnx`.") from None
    kinds = node_kinds(model)
    if not kinds:
        raise EffconvError(f"'{artifact.name}' has no Conv/MatMul/Gemm with constant weights to quantize.",
                           "quantize a decoder exported by `effconv convert --to onnx`.")
    host_target = kind_decisions is None
    with tempfile.TemporaryDirectory(prefix="effconv-quantize-") as tmp:
        tmp = Path(tmp)
        if weights_only:
            return _weights_only(artifact, out_path, kinds, held_out, threads, progress)
        preprocessed = tmp / "preprocessed.onnx"
        progress("pre-processing the graph (onnxruntime shape inference and optimisation)")
        _preprocess(artifact, preprocessed)
        kernels = int8_kernel_rule()
        fit, validation, validation_report = _validation_split(calib)
        ws = _Workspace(tmp, artifact, preprocessed, fit, list(kinds), reduce_range=kernels["reduce_range"], threads=threads)
        progress(f"collecting MinMax ranges on {len(fit)} samples (every choice below reuses them)")
        ws.ranges("MinMax")
        # a calibration run (the model plus a min and max of every conv tensor) is the budget's unit: a little
        # above a plain float run, so the budget errs on the safe side, and no run is spent only on timing
        budget = Budget(search_seconds, ws.sample_seconds)
        search = Search(ws.quantize, lambda path, feeds: run_all(path, feeds, threads), threads, artifact,
                        validation.feeds, validation.frames, budget, progress)
        all_nodes = list(kinds)
        if activation == "auto":
            activation, activation_report = choose_activation(search, all_nodes)
        else:
            activation_report = {"chosen": activation, "by": "--activation"}
        if not host_target:
            nodes, kind_table, left_float = device_kinds(kinds, kind_decisions, target_device)
        elif select_by_speed:
            nodes, kind_table, left_float = fast_kinds(search, kinds, activation)
        else:
            nodes, kind_table, left_float = all_nodes, [{"kind": "all", "nodes": len(all_nodes), "quantized": True}], []
        decided = {"target_device": target_device, "activation_type": activation_report, "validation": validation_report}
        if not nodes:
            return _weights_only_fallback(artifact, out_path, kinds, held_out, threads, progress, kind_table, left_float) | decided
        method, method_report = choose_method(search, nodes, activation, len(fit))
        gate = _Gate(max_psnr_drop if validation.frames is not None else None, min_psnr_vs_float)
        table, skipped = _fall_back_on_validation(search, gate, nodes, kinds, method, activation, sensitivity, left_float)
        search_report = budget.as_dict()
        progress(f"writing the int8 model ({method} ranges)")
        ws.quantize(nodes, method, activation, out=out_path)
        progress(f"running float and int8 on the {len(held_out)} held-out samples")
        float_outputs, quant_outputs, latency = _final_runs(artifact, out_path, held_out.feeds, threads)
        quality = quality_report(float_outputs, quant_outputs, held_out.frames)
        progress("checking this CPU's int8 kernels against the QDQ model's own arithmetic")
        kernels |= kernel_fidelity(out_path, held_out.feeds[:1], threads, float_outputs[:1], quant_outputs[:1])
        slower_note = []
        if host_target and select_by_speed and latency["speedup"] < 1 / MIN_SPEEDUP:
            weight_only_path = out_path.with_name(f"{out_path.stem}.weight-only{out_path.suffix}")
            fallback = _weights_only_fallback(artifact, weight_only_path, kinds, held_out, threads, progress, kind_table,
                                              [{"name": n, "kind": kinds[n], "reason": "the int8 model as a whole was slower "
                                                f"here ({latency['quantized']:.1f} vs {latency['float']:.1f} ms float)"} for n in kinds])
            if not keeps_int8_compute(latency, fallback["latency_ms"]):
                os.replace(weight_only_path, out_path)
                rejected = {"latency_ms": latency, "quality": quality, "int8_kernels": kernels, "nodes": len(nodes)}
                return fallback | decided | {"calibration_method": method_report, "search": search_report, "rejected_int8": rejected}
            weight_only_path.unlink()
            slower_note = [f"int8 compute ran at {latency['speedup']:.2f}x the float speed here, but the weight-only "
                           f"fallback ran slower still ({fallback['latency_ms']['speedup']:.2f}x: {DEQUANTIZE_PER_CALL}), "
                           "so the int8-compute model is kept"]
    quantized = set(nodes)
    for row in table:
        row["int8"] = row["name"] in quantized
    return {
        "scheme": f"onnxruntime static QDQ: per-channel symmetric int8 weights{' (7-bit range)' if ws.reduce_range else ''}, "
                  f"per-tensor {activation} activations "
                  f"({method} calibration) on {', '.join(sorted({kinds[n] for n in quantized}))}",
        "size_bytes": artifact_sizes(artifact, out_path),
        "quality": quality,
        "latency_ms": latency,
        "float_nodes": left_float,
        "nodes": {"int8": len(quantized), "float": len(kinds) - len(quantized), "kinds": kind_table},
        "target_device": target_device,
        "activation_type": activation_report,
        "int8_kernels": kernels,
        "calibration_method": method_report,
        "validation": validation_report,
        "search": search_report,
        "sensitivity": table,
        "remedies": [CALIBRATE_MORE, WEIGHTS_ONLY],
        "notes": [f"only {', '.join(COMPUTE_OPS)} are quantized; element-wise ops stay float",
                  "nodes left in float still store int8 weights (dequantized in the graph), so the file shrinks ~4x either way"]
                 + _kernel_notes(kernels)
                 + ([validation_report["note"]] if "note" in validation_report else [])
                 + _sensitivity_note(bool(table), skipped, gate) + slower_note,
    }


def keeps_int8_compute(int8_latency: dict, weight_only_latency: dict) -> bool:
    """After the int8-compute model timed slower than float: whether it still beats the weight-only fallback. Both
    files are int8-sized, and a weight-only model is not float-speed in onnxruntime (it dequantizes every weight on
    each call: the Hunyuan mobile student at 9x128x128 ran 1.87x slower than float), so the faster of the two,
    each timed against its own float runs, is kept."""
    return int8_latency["speedup"] > weight_only_latency["speedup"]


def _validation_split(calib: CalibrationSet) -> tuple[CalibrationSet, CalibrationSet, dict]:
    """(ranges, validation, report): a third of the calibration samples (at least one) choose the method and
    the sensitivity fallback without taking part in the ranges. With fewer than three samples the choices
    are validated on the calibration samples themselves, and the report says so."""
    if len(calib) < MIN_VALIDATION_SPLIT:
        return calib, calib, {"samples": len(calib), "split": "in-sample",
                              "note": f"choices validated on the {len(calib)} calibration samples themselves (a separate "
                                      f"validation split needs {MIN_VALIDATION_SPLIT}; raise --samples)"}
    fit, validation = calib.split(max(1, len(calib) // 3))
    return fit, validation, {"samples": len(validation), "split": f"last {len(validation)} of {len(calib)} calibration "
                                                                  "samples, kept out of the ranges"}


def _fall_back_on_validation(search: Search, gate: "_Gate", nodes: list[str], kinds: dict[str, str], method: str,
                             activation: str, forced: bool, left_float: list[dict]) -> tuple[list[dict], str]:
    """While the candidate misses the gate on the validation split, return its most sensitive node to float
    (`nodes` and `left_float` are updated). Returns (sensitivity table, why part of it was skipped or '')."""
    if not gate.describe() and not forced:
        return [], ""
    if not forced and not search.budget.affords(search.validation_runs()):
        return [], search.budget.over(search.validation_runs(), "the gate on the validation split")
    validated = search.quality(search.quantize(nodes, method, activation))
    if not forced and not gate.missed(validated):
        return [], ""
    table, skipped = sensitivity_table(search, nodes, kinds, method, activation, forced)
    for row in table:
        if not gate.missed(validated) or len(nodes) == 1:
            break
        if not search.budget.affords(search.validation_runs()):
            return table, search.budget.over(search.validation_runs(), "returning more sensitive nodes to float")
        search.progress(f"{gate.missed(validated)} on the validation split: {row['name']} back to float")
        nodes.remove(row["name"])
        left_float.append({"name": row["name"], "kind": row["kind"],
                           "reason": f"most sensitive remaining node (alone in int8: {row['psnr_vs_float_db']:.1f} dB vs float)"})
        validated = search.quality(search.quantize(nodes, method, activation))
    return table, skipped


def _final_runs(original: Path, quantized: Path, samples: list[tuple[np.ndarray, ...]], threads: int) -> tuple[list, list, dict]:
    """Float and int8 outputs on the held-out samples, run in alternation so the same runs also time both
    models under the same load: each model's first run is its warm-up, the rest are timed (topped up with the
    first sample to MIN_REPEATS timed runs)."""
    sessions = [session(original, threads), session(quantized, threads)]
    names = [input_names(runner) for runner in sessions]
    feeds = samples + [samples[0]] * max(0, MIN_REPEATS + 1 - len(samples))
    outputs: list[list[np.ndarray]] = [[], []]
    times: list[list[float]] = [[], []]
    for index, feed in enumerate(feeds):
        for which, runner in enumerate(sessions):
            named = dict(zip(names[which], feed, strict=True))
            started = time.perf_counter()
            result = runner.run(None, named)[0]
            elapsed_ms = (time.perf_counter() - started) * 1000
            if index < len(samples):
                outputs[which].append(result)
            if index > 0:
                times[which].append(elapsed_ms)
    float_ms, quant_ms = (round(statistics.median(t), 3) for t in times)
    latency = {"float": float_ms, "quantized": quant_ms, "speedup": round(float_ms / quant_ms, 3), "threads": threads,
               "timed_runs": len(times[0]), "cpu_int8_features": cpu_int8_features()}
    return outputs[0], outputs[1], latency



def kernel_fidelity(path: Path, feeds: list[tuple[np.ndarray, ...]], threads: int, float_outputs: list[np.ndarray],
                    fused_outputs: list[np.ndarray]) -> dict:
    """How much fidelity to the float model onnxruntime's fused int8 kernels lose against the QDQ model's exact
    arithmetic (the model run op by op in float, DequantizeLinear -> op -> QuantizeLinear). Saturating int16
    kernels (x86 without VNNI, 8-bit weights) lose 11-13 dB; correct kernels lose about nothing. Fused and exact
    outputs are not compared with each other: onnxruntime legitimately fuses around layout ops (the Conv2d
    layout's time-shift Slice/Concat) where the op-by-op run requantizes, so the two differ by rounding as
    much as either differs from float, while their distance to float is the same."""
    exact = run_all(path, feeds, threads, fused=False)
    qdq_vs_float_db = quality_report(float_outputs, exact, None)["psnr_vs_float_db"]
    kernels_vs_float_db = quality_report(float_outputs, fused_outputs, None)["psnr_vs_float_db"]
    return {"qdq_vs_float_psnr_db": qdq_vs_float_db, "kernel_loss_db": round(qdq_vs_float_db - kernels_vs_float_db, 3),
            "samples": len(feeds)}


def _kernel_notes(kernels: dict) -> list[str]:
    if not kernels["reduce_range"]:
        return []
    return [f"this CPU has no VNNI ({', '.join(kernels['cpu_int8_features']) or 'no int8 extensions'}): weights use 7 "
            "bits (onnxruntime's reduce_range) so its int8 kernels cannot saturate; quantize on a VNNI x86 or an ARM "
            "host for full 8-bit weights"]


@dataclasses.dataclass
class _Gate:
    """The quality gate the sensitivity fallback works towards (None: that bound is not applied)."""

    max_psnr_drop: float | None
    min_psnr_vs_float: float | None

    def missed(self, quality: dict) -> str:
        """Why `quality` misses the gate ('' when it meets it)."""
        if self.min_psnr_vs_float is not None and quality["psnr_vs_float_db"] < self.min_psnr_vs_float:
            return f"{apart_from(quality['psnr_vs_float_db'], self.min_psnr_vs_float)} dB vs float < {self.min_psnr_vs_float:g} dB"
        if self.max_psnr_drop is not None and quality["psnr_drop_db"] > self.max_psnr_drop:
            return f"PSNR drop {apart_from(quality['psnr_drop_db'], self.max_psnr_drop, 2)} dB > {self.max_psnr_drop:g} dB"
        return ""

    def describe(self) -> str:
        bounds = [f"--max-psnr-drop {self.max_psnr_drop:g}" if self.max_psnr_drop is not None else "",
                  f"--min-psnr-vs-float {self.min_psnr_vs_float:g}" if self.min_psnr_vs_float is not None else ""]
        return ", ".join(bound for bound in bounds if bound)


def _sensitivity_note(computed: bool, skipped: str, gate: _Gate) -> list[str]:
    if skipped:
        return [f"{skipped}; the gate is applied to the held-out samples below (raise --search-seconds, or pass "
                "--sensitivity, to let the fallback run)"]
    if computed:
        return []
    if not gate.describe():
        return ["per-node sensitivity not computed: no quality gate to meet (--max-psnr-drop with ground truth, or "
                "--min-psnr-vs-float); --sensitivity computes it anyway"]
    return [f"per-node sensitivity not computed: the int8 model met the gate ({gate.describe()}) on the validation "
            "split with every selected node in int8; --sensitivity computes it anyway"]


def artifact_sizes(original: Path, quantized: Path) -> dict:
    return size_report(file_size(original), file_size(quantized))


def _weight_axis(node, weight_dims: list[int]) -> int:
    """The output-channel axis of a weight: 0 for Conv (and Gemm with transB), else the last."""
    if node.op_type == "Conv":
        return 0
    trans_b = next((attr.i for attr in node.attribute if attr.name == "transB"), 0)
    return 0 if node.op_type == "Gemm" and trans_b else len(weight_dims) - 1


def store_weights_int8(path: Path, nodes: set[str]) -> int:
    """Store the float weights of `nodes` as per-channel symmetric int8 + scale, dequantized by a
    DequantizeLinear in the graph: the file shrinks ~4x while the op itself stays float (weight-only
    quantization). Returns how many weight tensors were converted."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    converted: dict[str, str] = {}
    new_nodes = []
    for node in model.graph.node:
        if node.name in nodes and len(node.input) > 1 and node.input[1] in initializers:
            name = node.input[1]
            if name not in converted:
                weight = numpy_helper.to_array(initializers[name]).astype(np.float32)
                axis = _weight_axis(node, list(weight.shape))
                reduce_axes = tuple(a for a in range(weight.ndim) if a != axis)
                scale = np.maximum(np.abs(weight).max(axis=reduce_axes), 1e-12) / 127.0
                shape = [1] * weight.ndim
                shape[axis] = -1
                quantized = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
                model.graph.initializer.remove(initializers[name])
                model.graph.initializer.extend([
                    numpy_helper.from_array(quantized, f"{name}_int8"),
                    numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
                    numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}_zero_point"),
                ])
                converted[name] = f"{name}_dequantized"
                new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"],
                                                  [converted[name]], name=f"{name}_DequantizeLinear", axis=axis))
            node.input[1] = converted[name]
    kept = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes + kept)  # dequantize first: the graph stays topologically sorted
    onnx.save(model, str(path))
    return len(converted)


def _weights_only_fallback(artifact: Path, out_path: Path, kinds: dict[str, str], held_out: CalibrationSet,
                           threads: int, progress: Progress, kind_table: list[dict], left_float: list[dict]) -> dict:
    """int8 compute did not pay on this CPU: store int8 weights, compute in float."""
    report = _weights_only(artifact, out_path, kinds, held_out, threads, progress)
    report["nodes"]["kinds"] = kind_table
    report["float_nodes"] = left_float
    report["notes"].insert(0, "int8 compute is not faster than float on this CPU for this model: weights are stored int8, "
                              "compute stays float (--all-nodes forces int8 compute)")
    return report


def _weights_only(artifact: Path, out_path: Path, kinds: dict[str, str], held_out: CalibrationSet,
                  threads: int, progress: Progress) -> dict:
    """Weight-only: int8 weights in the file, float compute; no calibration needed. Starts from the same
    pre-processed graph as static quantization, which also drops the exporter's per-node metadata."""
    progress("weight-only quantization")
    _preprocess(artifact, out_path)
    store_weights_int8(out_path, set(kinds))
    progress(f"running float and int8-weight models on the {len(held_out)} held-out samples")
    float_outputs, outputs, latency = _final_runs(artifact, out_path, held_out.feeds, threads)
    return {
        "scheme": "weight-only: per-channel symmetric int8 weights dequantized in the graph (DequantizeLinear), float compute",
        "size_bytes": artifact_sizes(artifact, out_path),
        "quality": quality_report(float_outputs, outputs, held_out.frames),
        "latency_ms": latency,
        "float_nodes": [],
        "nodes": {"int8_weights": len(kinds), "int8_compute": 0},
        "remedies": [],  # no activation ranges to calibrate, and already weight-only
        "notes": ["weight-only mode shrinks the file; compute stays float"
                  + (f", yet it ran at {latency['speedup']:.2f}x the float speed here ({DEQUANTIZE_PER_CALL})"
                     if latency["speedup"] < 1 / MIN_SPEEDUP else ", at about float speed")],
    }
