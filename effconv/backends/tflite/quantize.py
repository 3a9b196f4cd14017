"""TFLite int8 with the LiteRT quantizer (litert-quantizer, formerly ai-edge-quantizer) on the legalized (Conv2d-only) .tflite that `effconv convert` wrote.

Default: static int8 (W8A8): per-channel symmetric int8 weights, per-tensor asymmetric int8 activations
whose ranges come from running the float model on the calibration latents; the model keeps float32 input
and output (a QUANTIZE after the input, a DEQUANTIZE before the output) so it is a drop-in replacement.
`weights_only`: int8 weights dequantized to float32 inside the graph; smaller, float compute.
Both models run in the LiteRT Interpreter on the held-out latents (quality) and are timed in this process.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from effconv.artifacts import Manifest
from effconv.backends.tflite import export as tflite_backend
from effconv.errors import EffconvError, exception_text, missing_extra
from effconv.host import default_threads
from effconv.backends.files import alternating_latency, check_artifact, size_bytes, size_report
from effconv.backends.base import CalibrationSet
from effconv.backends.quality import CALIBRATE_MORE, WEIGHTS_ONLY, fewest_back_to_float, quality_report
from effconv.quiet import captured_stdout, is_debug, quiet_imports

STATIC_SCHEME = ("W8A8 static int8: per-channel symmetric int8 weights, per-tensor asymmetric int8 activations "
                 "(min/max over the calibration latents), float32 model input/output (ai-edge-quantizer static_wi8_ai8)")
WEIGHT_ONLY_SCHEME = ("W8 weight-only: per-channel symmetric int8 weights dequantized to float32 in the graph, "
                      "float32 compute (ai-edge-quantizer weight_only_wi8_afp32)")
KEEP_FLOAT = ("INPUT", "OUTPUT")  # the model's own input and output stay float32
# Ops whose int8 form LiteRT's CPU runtime runs far slower than their float32 form, so static int8 keeps them float
# (a DEQUANTIZE/QUANTIZE pair at their edges). RSQRT (RMS and L2 norms): int8 cost the tiny Hunyuan student 15 of its
# 21 ms, float 6.2 ms in all (ai-edge-litert 2.3.0, XNNPACK, 1 thread; benchmarks/results/tflite_float_ops.json).
SLOW_IN_INT8 = ("RSQRT",)
SLOW_REASON = "{op}: LiteRT's CPU runtime runs it far slower in int8 than in float32, so effconv keeps it float32"
NO_QUANTIZE = "no_quantize"
CONVERSION_OPS = {"QUANTIZE", "DEQUANTIZE"}
WEIGHTED_OPS = {"CONV_2D", "CONV_3D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL"}
FLOAT_FIX = "re-create it with `effconv convert SPEC --to tflite`."
INT8_FIX = "quantize with --weights-only (float compute), and report the model to effconv with --debug output."
WARMUP_RUNS = 2
TIMED_RUNS = 10
QUANTIZER_PACKAGES = (("litert_quantizer", "litert-quantizer"), ("ai_edge_quantizer", "ai-edge-quantizer"))
CHUNKED_WEIGHT_BYTES = 32 * 2**20  # ai-edge-quantizer quantizes larger weights in chunks
# An int8 scale this large spans +-1e22: only an attention mask (-inf, or the float32 minimum that stands for it) gets
# one, and LiteRT aborts the process when it prepares such a kernel.
MAX_INT8_SCALE = 1e20
OUTPUT_REASON = "writes a graph output the next call reads back (a streaming step's cache): kept float32"
MASK_REASON = "reads or writes an attention mask's -inf, whose int8 scale LiteRT cannot load: kept float32"
RETURNED_REASON = ("returned to float32 to meet --min-psnr-vs-float: its kind is among the most sensitive (all of its "
                   "kind alone in float32 gained {gain:+.2f} dB on the validation split)")


def _quantizer_package() -> tuple[str, str]:
    """(module, distribution) of the LiteRT quantizer installed: `litert-quantizer` (0.11 on), or the
    `ai-edge-quantizer` it was renamed from."""
    for module, distribution in QUANTIZER_PACKAGES:
        if importlib.util.find_spec(module) is not None:
            return module, distribution
    raise missing_extra("litert-quantizer", "tflite")


def _quantizer_modules():
    module, _ = _quantizer_package()
    with quiet_imports(), captured_stdout():
        calibrator, quantizer, recipe = (importlib.import_module(f"{module}.{name}")
                                         for name in ("calibrator", "quantizer", "recipe"))
    return quantizer, recipe, calibrator.CalibrationMode


def _quiet():
    """ai-edge-quantizer draws tqdm bars on stderr and prints a size report on stdout."""
    stack = contextlib.ExitStack()
    stack.enter_context(captured_stdout())
    if not is_debug():
        stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def quantize(artifact: Path, manifest: Manifest, calib: CalibrationSet, held_out: CalibrationSet, out_path: Path,
             weights_only: bool, threads: int | None = None, runs: int = TIMED_RUNS,
             min_psnr_vs_float: float | None = None, progress: Callable[[str], None] = lambda _message: None) -> dict:
    """Write the int8 .tflite to `out_path`; report size, quality on `held_out` and host latency of both models.
    Static int8 that misses `min_psnr_vs_float` on a validation split of `calib` returns its most sensitive ops to
    float32 until it holds there (`_float_until_gate`)."""
    artifact, out_path = Path(artifact), Path(out_path)
    check_artifact(artifact, manifest, tflite_backend.NAME, tflite_backend.SUFFIX)
    threads = threads or default_threads()
    fallback = {}
    if weights_only or min_psnr_vs_float is None or len(calib) < 2:
        builder = Int8Builder(artifact, calib, weights_only, threads)
        model = builder.model()
    else:
        fit, validation = calib.validation_split()
        builder = Int8Builder(artifact, fit, weights_only, threads)
        model, fallback = _float_until_gate(builder, artifact, validation, threads, min_psnr_vs_float, progress)
    out_path.write_bytes(model)
    float_outputs = _predictions(artifact, held_out, threads, FLOAT_FIX)
    quant_outputs = _predictions(out_path, held_out, threads, INT8_FIX)
    returned = {row["name"]: row for row in fallback.get("returned_to_float", [])}
    return {
        "scheme": WEIGHT_ONLY_SCHEME if weights_only else STATIC_SCHEME,
        "size_bytes": size_report(size_bytes(artifact), size_bytes(out_path)),
        "quality": quality_report(float_outputs, quant_outputs, held_out.frames),
        "latency_ms": host_latency(artifact, out_path, held_out.feeds[0], threads, runs),
        "float_nodes": float_nodes(out_path, weights_only, builder.kept, returned),
        "calibration_samples": 0 if weights_only else len(builder.calib),
        **({"sensitivity_fallback": fallback} if fallback else {}),
        "remedies": [] if weights_only else [CALIBRATE_MORE, WEIGHTS_ONLY],
        "notes": _notes(weights_only),
    }


def _float_until_gate(builder: Int8Builder, artifact: Path, validation: CalibrationSet, threads: int, min_psnr: float,
                      progress: Callable[[str], None]) -> tuple[bytes, dict]:
    """The int8 model with the fewest op kinds returned to float32 that meets `min_psnr` (PSNR vs the float model on
    the validation split), measured as the ONNX quantizer measures nodes: each kind (every MUL, every MEAN, ...)
    alone returned to float is scored, then the shortest run of kinds in order of that gain that meets the gate is
    found by bisection. Kinds, not single ops: a student's loss spreads over its norm and activation chains (returning
    all 41 convolutions of the cogvideox-tiny student to float32 gained 0.04 dB), and a few dozen builds stay
    affordable where one per op (300+) is not. When even every kind misses, the model with all of them float32 is
    kept and the gate reports the miss."""
    reference = _predictions(artifact, validation, threads, FLOAT_FIX)

    def psnr_of(model: bytes) -> float:
        with tempfile.TemporaryDirectory(prefix="effconv-tflite-") as tmp:
            path = Path(tmp) / "candidate.tflite"
            path.write_bytes(model)
            return quality_report(reference, _predictions(path, validation, threads, INT8_FIX), None)["psnr_vs_float_db"]

    model = builder.model()
    start = psnr_of(model)
    if start >= min_psnr:
        return model, {}
    kinds = builder.quantizable_ops()

    def build(chosen: frozenset[str]) -> tuple[float, bytes]:
        candidate = builder.model({op for kind in chosen for op in kinds[kind]})
        return psnr_of(candidate), candidate

    fallback = fewest_back_to_float(list(kinds), build, start, min_psnr, progress, "op kinds", "float32")
    return fallback.candidate, fallback.summary(len(validation)) | {
        "builds": fallback.builds,
        "kind_gains_db": {kind: round(gain, 3) for gain, kind in fallback.ranked},
        "returned_to_float": [{"kind": kind, "name": op, "gain_db": round(gain, 3)}
                              for gain, kind in fallback.returned for op in kinds[kind]]}


def _notes(weights_only: bool) -> list[str]:
    notes = ["latency: LiteRT Interpreter on this CPU (XNNPACK delegate), float and int8 timed alternately in one "
             "process; a phone's CPU or NPU delegate is faster or slower in its own way."]
    if weights_only:
        notes.append("weight-only int8 shrinks the file; compute stays float32, so expect no speed-up.")
    return notes


def _signature(artifact: Path) -> tuple[str, list[str]]:
    """(signature key, its input names in argument order)."""
    runner = _interpreter(artifact, threads=1)
    signatures = runner.get_signature_list()
    if len(signatures) != 1:
        raise EffconvError(f"'{artifact}' has {len(signatures)} signatures; ai-edge-quantizer calibrates one.", FLOAT_FIX)
    (key, io_names), = signatures.items()
    return key, tflite_backend.in_argument_order(io_names["inputs"])


def _interpreter(path: Path, threads: int):
    try:
        return tflite_backend.interpreter(path, threads)
    except (ValueError, RuntimeError) as exc:
        raise _load_error(path, exc) from None


def _load_error(path: Path, exc: Exception) -> EffconvError:
    return EffconvError(f"cannot load '{path}' in LiteRT: {exception_text(exc, 200)}.", FLOAT_FIX)


class Int8Builder:
    """The LiteRT quantizer set up for one float model, calibrated once: it writes the int8 model with any set of ops
    (named by their first output tensor) left float32. Op kinds in KEEP_FLOAT and `float_kinds` always stay float,
    and so do the ops effconv must keep float (found on the first builds: `kept`, op -> why).

    Min/max ranges come from LiteRT's profiler-based calibration: the default mode keeps every intermediate
    tensor of the model alive to read it from Python (1.07 GiB peak for the demo student at 9x64x64 against
    0.10 GiB; at 17x256x256 it exceeded 24 GiB), while the profiler tracks the same min/max in C++ (ranges equal
    to 1.5e-7 relative, measured)."""

    def __init__(self, artifact: Path, calib: CalibrationSet, weights_only: bool, threads: int,
                 float_kinds: tuple[str, ...] = SLOW_IN_INT8):
        quantizer, recipe, CalibrationMode = _quantizer_modules()
        signature, input_names = _signature(artifact)
        self.artifact, self.calib, self.float_kinds = artifact, calib, float_kinds
        self._quantizer, self._recipe = quantizer, recipe.weight_only_wi8_afp32() if weights_only else recipe.static_wi8_ai8()
        samples = [dict(zip(input_names, feed, strict=True)) for feed in calib.feeds]
        engine = self._quantizer.Quantizer(str(artifact), self._recipe)
        with _quiet():
            self._ranges = (_min_max_ranges(engine, signature, samples, threads, CalibrationMode.CALIBRATION_PROFILER_BASED)
                            if engine.need_calibration else None)
        self.kept: dict[str, str] = {}
        # An attention mask's -inf gets an unusable int8 scale: the ops it reaches stay float; an op whose output is a
        # graph output the quantizer left int8 (a streaming step's cache, fed back as a float32 input) stays float too.
        # The ranges are reused.
        model = self._build(set())
        while new := {op: why for op, why in self._to_keep(model).items() if op not in self.kept}:
            self.kept |= new
            model = self._build(set())

    def _to_keep(self, model: bytes) -> dict[str, str]:
        """The float model's ops that must stay float in `model`, with why."""
        return ({op: OUTPUT_REASON for op in _ops_touching(self.artifact, _int8_outputs(model, self.artifact))}
                | {op: MASK_REASON for op in _ops_touching(self.artifact, _unusable_scales(model))})

    def _engine(self, float_ops: set[str]):
        engine = self._quantizer.Quantizer(str(self.artifact), self._recipe)
        for op in KEEP_FLOAT + self.float_kinds:
            engine.update_quantization_recipe(regex=".*", operation_name=op, algorithm_key=NO_QUANTIZE)
        for output in float_ops:
            engine.update_quantization_recipe(regex=f"^{re.escape(output)};", operation_name="*", algorithm_key=NO_QUANTIZE)
        return engine

    def _build(self, float_ops: set[str]) -> bytes:
        with _quiet():
            return _quantized(self._engine(float_ops | self.kept.keys()), self._ranges)

    def model(self, float_ops: set[str] = frozenset()) -> bytes:
        model = self._build(set(float_ops))
        check_scales(model)
        return model

    def quantizable_ops(self) -> dict[str, list[str]]:
        """Op kind -> first output names of its ops that this scheme puts in int8."""
        tensors, ops, _ = _graph(self.artifact)
        kept = set(KEEP_FLOAT + self.float_kinds)
        kinds: dict[str, list[str]] = {}
        for op in ops:
            name = tensors[int(op["outputs"][0])]["name"]
            if op["op_name"] not in kept and name not in self.kept:
                kinds.setdefault(op["op_name"], []).append(name)
        return kinds


def _min_max_ranges(engine, signature: str, samples: list[dict], threads: int, mode) -> dict:
    """Each tensor's min and max over all samples. LiteRT's calibrator merges samples by a moving average of min and
    max (smoothing 0.95, `qsv_utils.moving_average_update`), which favours the first samples and shrinks a range only
    some samples reach: a streaming step's first-call flag, 1 in one call per clip, was calibrated to [0, 0.82], and
    the int8 step fell to 17-23 dB vs float. So each sample is calibrated alone and the ranges merged here."""
    merged: dict[str, dict] = {}
    for sample in samples:
        for name, qsv in engine.calibrate({signature: [sample]}, num_threads=threads, mode=mode).items():
            held = merged.get(name)
            if not held:
                merged[name] = qsv
            elif qsv:  # a sample that left a tensor unmeasured keeps the range the others gave it
                merged[name] = {**qsv, "min": np.minimum(held["min"], qsv["min"]), "max": np.maximum(held["max"], qsv["max"])}
    return merged


def quantized_bytes(artifact: Path, calib: CalibrationSet, weights_only: bool, threads: int,
                    float_kinds: tuple[str, ...] = SLOW_IN_INT8) -> tuple[bytes, set[str]]:
    """The int8 model, and the ops effconv kept float (by output name: an attention mask's, an int8 graph output's)."""
    builder = Int8Builder(artifact, calib, weights_only, threads, float_kinds)
    return builder.model(), set(builder.kept)


def _quantized(engine, ranges) -> bytes:
    try:
        return bytes(engine.quantize(ranges, enable_progress_report=False).quantized_model)
    except (ValueError, RuntimeError, IndexError, KeyError) as exc:  # the quantizer's own failures, deep in its passes
        raise EffconvError(f"{_quantizer_version()} failed to quantize this model: {exception_text(exc, 200)}",
                           INT8_FIX) from None


def _ops_touching(path: Path, tensor_names: list[str]) -> set[str]:
    """First output names of the float model's ops that read or write these tensors (the LiteRT quantizer names an
    op's scope `out1;out2;`)."""
    tensors, ops, _ = _graph(path)
    wanted = set(tensor_names)
    return {tensors[int(op["outputs"][0])]["name"] for op in ops
            if wanted & {tensors[int(i)]["name"] for i in [*op["inputs"], *op["outputs"]] if int(i) >= 0}}


def _unusable_scales(model: bytes) -> list[str]:
    """Names of the tensors whose int8 scale is not a usable number: not positive, or above MAX_INT8_SCALE."""
    fb = tflite_backend.schema()
    graph = fb.ModelT.InitFromObj(fb.Model.GetRootAs(model, 0)).subgraphs[0]
    return [tensor.name.decode(errors="replace") for tensor in graph.tensors
            if tensor.quantization is not None and tensor.quantization.scale is not None and len(tensor.quantization.scale)
            and not np.all((np.asarray(tensor.quantization.scale) > 0) & (np.asarray(tensor.quantization.scale) < MAX_INT8_SCALE))]


def _int8_outputs(model: bytes, artifact: Path) -> list[str]:
    """The float model's names of the graph outputs the quantizer wrote in int8 (it renames them, so by position)."""
    fb = tflite_backend.schema()
    quantized, original = (fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0)).subgraphs[0]
                           for data in (model, artifact.read_bytes()))
    return [original.tensors[ours].name.decode(errors="replace") for theirs, ours in zip(quantized.outputs, original.outputs)
            if quantized.tensors[theirs].type == fb.TensorType.INT8]


def check_scales(model: bytes) -> None:
    """Refuse an int8 model with an unusable quantization scale before any interpreter loads it: LiteRT aborts the
    whole process on one (no Python exception to catch). Measured on litert-quantizer 0.11.0 with the HunyuanVideo
    decoder's causal attention mask (-inf: scale inf) and a -inf mask that litert-torch stored as the float32 minimum
    (scale 1.3e36), which the quantize loop above keeps float."""
    bad = _unusable_scales(model)
    if bad:
        raise EffconvError(f"{_quantizer_version()} wrote {len(bad)} tensor(s) with an unusable int8 scale "
                           f"(first: '{bad[0][-80:]}'); LiteRT would abort loading it.", INT8_FIX)


def _runner(path: Path, threads: int):
    """The model as a function of its inputs (argument order) to its first output (the video)."""
    try:
        run_all = tflite_backend.load_all(path, threads)
    except (ValueError, RuntimeError) as exc:
        raise _load_error(path, exc) from None
    return lambda feed: run_all(list(feed))[0]


def _predictions(path: Path, samples: CalibrationSet, threads: int, fix: str) -> list[np.ndarray]:
    try:
        run = _runner(path, threads)
        return [run(feed) for feed in samples.feeds]
    except (ValueError, RuntimeError) as exc:
        raise EffconvError(f"'{path.name}' does not run in LiteRT: {exception_text(exc, 300)}.", fix) from None


def host_latency(float_path: Path, quant_path: Path, feed: tuple[np.ndarray, ...], threads: int, runs: int) -> dict:
    run_float, run_quant = _runner(float_path, threads), _runner(quant_path, threads)
    latency = alternating_latency(lambda: run_float(feed), lambda: run_quant(feed), runs, warmup=WARMUP_RUNS)
    return latency | {"threads": threads}


def _graph(path: Path) -> tuple[dict[int, dict], list[dict], set[int]]:
    """(tensors by index, ops, indices of tensors computed at run time: op outputs and the model input)."""
    try:  # no delegate: XNNPACK would fold the ops into DELEGATE nodes
        runner = tflite_backend._interpreter_module().Interpreter(model_path=str(path))
    except (ValueError, RuntimeError) as exc:
        raise _load_error(path, exc) from None
    tensors = {tensor["index"]: tensor for tensor in runner.get_tensor_details()}
    ops = runner._get_ops_details()
    computed = {int(index) for op in ops for index in op["outputs"]} | {d["index"] for d in runner.get_input_details()}
    return tensors, ops, computed


def check_weight_sizes(path: Path) -> None:
    """Called by the quantize stage before calibration. The LiteRT quantizer quantizes a weight over 32 MiB in chunks,
    and that path cannot broadcast the
    per-channel scales of a conv kernel (rank > 2): it fails deep in quantize() with a NumPy error
    (google-ai-edge/ai-edge-quantizer#512; measured on ai-edge-quantizer 0.10.0 and, 2026-12-01, on litert-quantizer
    0.11.0: 'input operand has more dimensions than allowed by the axis remapping' for a 36 MiB Conv2d, static and
    weight-only). Refuse such models up front, with the fix."""
    tensors, ops, computed = _graph(path)
    for op in ops:
        if op["op_name"] not in WEIGHTED_OPS or len(op["inputs"]) < 2:
            continue
        weight = tensors[int(op["inputs"][1])]
        size = int(np.prod(weight["shape"])) * np.dtype(weight["dtype"]).itemsize
        if weight["index"] not in computed and len(weight["shape"]) > 2 and size > CHUNKED_WEIGHT_BYTES:
            raise EffconvError(
                f"{_quantizer_version()} cannot quantize the {op['op_name']} weight "
                f"{tuple(int(d) for d in weight['shape'])} ({size / 2**20:.0f} MiB): per-channel weights over 32 MiB "
                "hit its chunked-quantization bug (google-ai-edge/ai-edge-quantizer#512).",
                "use a student whose convs have at most 8.4 M weights each (the default recipe turbo-vaed-mobile; "
                "the paper's 256->2048 upsampler has 14.2 M), or quantize the ONNX or Core ML export.")


def _quantizer_version() -> str:
    from importlib.metadata import version

    distribution = _quantizer_package()[1]
    return f"{distribution} {version(distribution)}"


def float_nodes(path: Path, weights_only: bool, kept: dict[str, str] | None = None,
                returned: dict[str, dict] | None = None) -> list[dict]:
    """Ops the scheme meant to be int8 that stay float, named by their first output tensor, with why (`kept`: those
    effconv kept float, with the reason; `returned`: those the sensitivity fallback returned to float, with their
    measured gain).

    Static: ops with a float32 output (besides QUANTIZE/DEQUANTIZE). Weight-only: conv/matmul ops whose
    weight is a float32 constant (an int8 weight reaches its op through a DEQUANTIZE)."""
    tensors, ops, computed = _graph(path)
    is_float = {index: np.dtype(tensor["dtype"]) == np.float32 for index, tensor in tensors.items()}
    rows = []
    for op in ops:
        kind = op["op_name"]
        if weights_only:
            weight = int(op["inputs"][1]) if kind in WEIGHTED_OPS and len(op["inputs"]) > 1 else -1
            stays_float = weight >= 0 and weight not in computed and is_float[weight]
        else:
            stays_float = kind not in CONVERSION_OPS and any(is_float[int(index)] for index in op["outputs"])
        if stays_float:
            name = tensors[int(op["outputs"][0])]["name"]
            reason = (kept[name] if name in (kept or {}) else SLOW_REASON.format(op=kind) if kind in SLOW_IN_INT8
                      else RETURNED_REASON.format(gain=returned[name]["gain_db"]) if name in (returned or {})
                      else no_int8_rule(kind))
            rows.append({"op": kind, "name": name, "reason": reason})
    return rows


def no_int8_rule(op: str) -> str:
    return f"{op}: ai-edge-quantizer has no int8 rule for it, so it stays float32"
