"""The quantize stage: an effconv artifact (.onnx, .mlpackage, .tflite, .pte) + calibration data -> its int8
version beside a manifest that says how much smaller, faster and worse it is, measured on held-out data."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from effconv.recipe import DEFAULT_SEARCH_SECONDS, MAX_SEARCH_SECONDS
from effconv.artifacts import Manifest, manifest_path, read_manifest, staged_output, write_manifest
from effconv.video.clips import BUNDLED_CLIP
from effconv.errors import EffconvError, VerificationFailed
from effconv.models.loader import LoadedModel
from effconv.quantize import calibration, streaming
from effconv.quantize import gate as quality_gate
from effconv.backends import registry
from effconv.backends.base import HOST_DEVICE, Backend, CalibrationSet, QuantizeOptions
from effconv.backends.streaming import RunAll

QUANTIZED_SUFFIX = "-int8"
DEFAULT_SAMPLES = 16
DEFAULT_MAX_PSNR_DROP = 0.3
# Fidelity to the float artifact, whatever the ground truth: a weak student is far from ground truth anyway, so
# a drop-only gate can pass a broken int8 model. Measured: int8 of the random-init demo student reaches 35.4 dB
# with exact QDQ arithmetic; saturated x86 kernels gave 22.6 dB; trained students 37-74 dB on every backend.
DEFAULT_MIN_PSNR_VS_FLOAT = 30.0
HELD_OUT_SHARE = 4  # one sample in four measures quality; the rest calibrate
STREAM_BACKENDS = ("onnx", "tflite", "executorch")  # whose quantizers calibrate and run a step's several inputs
# W8A16 changes weights only, so a Core ML step (which cannot run here) is checked on the whole-clip decoder with the
# program's int8 weights: the step's chunk loop computes exactly that decode (`effconv convert` verified it)
WEIGHT_ONLY_STREAMS = {"coreml": "w8a16"}
# the manifest keys that explain an int8 model's quality, those a backend's report has
QUALITY_EVIDENCE = ("quality", "stream", "sensitivity", "int8_kernels", "float_nodes", "simulation_check")
SHORT_STEP_CALIBRATION = ("the latents file holds clips of {calls} latent frames, so the step is calibrated on its "
                          "chunk loop's first {calls} calls only: ranges of later calls may be clipped (read the "
                          "per-call PSNR in quantize.stream; calibrate from video for clips of "
                          f"{streaming.CALIBRATION_LATENT_FRAMES} latent frames)")


def backend_of(artifact: Path) -> Backend:
    backend = registry.for_artifact(artifact)
    if not artifact.exists():
        raise EffconvError(f"artifact '{artifact}' does not exist.", "run `effconv convert SPEC --to BACKEND --out DIR` first.")
    return backend


def _check_source(artifact: Path, manifest: Manifest, backend: str, scheme: str = "auto") -> None:
    if manifest.backend != backend:
        raise EffconvError(f"the manifest beside '{artifact.name}' describes a {manifest.backend} artifact.",
                           "keep each artifact with the manifest `effconv convert` wrote for it.")
    if "quantize" in (manifest.model_extra or {}):
        raise EffconvError(f"'{artifact.name}' is already quantized.", "quantize the float artifact it came from.")
    if manifest.spec.get("part", "decoder") != "decoder":
        raise EffconvError("effconv quantizes decoders (its calibration data are latents).",
                           "convert the decoder (`part: decoder`) and quantize that.")
    weight_only = WEIGHT_ONLY_STREAMS.get(backend)
    if "stream" in (manifest.model_extra or {}) and weight_only and scheme not in ("auto", weight_only):
        raise EffconvError(f"'{artifact.name}' is a {backend} streaming step; effconv quantizes those as {weight_only} "
                           f"only (int8 weights), not {scheme}.",
                           f"pass --scheme {weight_only}, or quantize the whole-clip export for {scheme}.")


def _held_out_count(samples: int) -> int:
    return max(1, samples // HELD_OUT_SHARE)


@dataclasses.dataclass
class Calibration:
    """Calibration and held-out clips, warnings about them, and (from video) the teacher and videos they came from."""

    calib: CalibrationSet
    held_out: CalibrationSet
    notes: list[str]
    teacher: LoadedModel | None = None
    videos: list[Path] | None = None


def calibration_sets(manifest: Manifest, calib: list[str] | None, samples: int, teacher: Path | None,
                     eval_data: list[Path] | None, chunk_loop: bool = False) -> Calibration:
    """Clips of latents the artifact decodes: its input, or a streaming step's whole exported clip. `chunk_loop`: the
    step's chunk loop runs on them here, so they are clips of streaming.calibration_shape, long enough for it to run
    past its first calls (a latents file keeps the exported clip's shape). Without --calib: clips of the bundled
    real video."""
    if samples < 2:
        raise EffconvError(f"--samples {samples} leaves nothing to measure quality on.", "use --samples 2 or more (default 16).")
    stream = "stream" in (manifest.model_extra or {})
    expected = streaming.whole_clip_shape(manifest) if stream else tuple(manifest.inputs[0].shape)
    sources = calib or [str(BUNDLED_CLIP)]
    notes: list[str] = []
    if calibration.RANDOM in sources:
        if len(sources) > 1:
            raise EffconvError("--calib random cannot be mixed with files.", "pass either `--calib random` or files.")
        notes.append("calibrating on random latents: ranges and quality numbers do not reflect real video")
        full = calibration.random_latents(streaming.calibration_shape(manifest) if chunk_loop else expected, samples)
    elif len(sources) == 1 and calibration.is_latent_file(sources[0]):
        full = calibration.from_file(Path(sources[0]), expected)
        if chunk_loop:
            notes.append(SHORT_STEP_CALIBRATION.format(calls=expected[2]))
    elif any(calibration.is_latent_file(source) for source in sources):
        raise EffconvError("a latents file cannot be mixed with videos in --calib.", "pass one latents file, or videos.")
    else:
        teacher_model, videos = calibration.teacher_model(manifest, teacher), [Path(s) for s in sources]
        frames = None
        if chunk_loop:
            expected = streaming.calibration_shape(manifest, [videos] + ([list(eval_data)] if eval_data else []))
            frames = teacher_model.compression.pixel_frames(expected[2])
        full = calibration.from_video(teacher_model, videos, samples, expected=expected, frames=frames)
        if eval_data:
            held_out = calibration.held_out_video(teacher_model, list(eval_data), _held_out_count(samples),
                                                  expected=expected, frames=frames)
            return Calibration(full, held_out, notes, teacher_model, videos)
        return Calibration(*full.split(_held_out_count(len(full))), notes, teacher_model, videos)
    if eval_data:
        raise EffconvError("--eval-data needs video calibration (the teacher encodes both).", "drop --eval-data, or calibrate from video.")
    if full.frames is None:
        notes.append("no ground-truth frames: PSNR drop and the --max-psnr-drop gate cannot be measured, only PSNR vs the float artifact")
    return Calibration(*full.split(_held_out_count(len(full))), notes)


def _chunk_loop_report(backend: Backend, run_float: RunAll, out_path: Path, stream: dict, clips: Calibration,
                       report: dict, progress: Callable[[str], None], threads: int | None) -> dict:
    """The streaming step's quality as a phone decodes with it: the int8 chunk loop, caches fed back, on the held-out
    clips (this is what the gate judges; the backend's per-call figures, each call fed the float loop's caches, are
    kept as `step_quality`), and its drift over a long clip."""
    run_quant = backend.load_all(out_path, threads)
    progress(f"running the float and int8 chunk loops on the {len(clips.held_out)} held-out clips")
    quality = streaming.chunk_loop_quality(run_float, run_quant, stream, clips.held_out)
    if clips.teacher is not None and clips.videos:
        long, source = streaming.long_latent(clips.teacher, clips.videos, streaming.LONG_CLIP_LATENT_FRAMES)
    else:
        long, source = streaming.joined_latent(clips.calib, streaming.LONG_CLIP_LATENT_FRAMES)
    progress(f"measuring drift: float and int8 chunk loops over {long.shape[2]} latent frames ({source})")
    return {"quality": quality, "step_quality": report["quality"],
            "stream": streaming.drift(run_float, run_quant, stream, long, source) | {
                "latent_frames_per_call": stream["latent_frames_per_call"],
                "calibration": f"every call of the float step's chunk loop over each calibration clip "
                               f"({clips.calib.latents[0].shape[2]} latent frames), with the caches that loop made; "
                               "caches cross calls in float32",
                "quality": "the int8 step's own chunk loop (its caches fed back) against the float step's, whole "
                           "held-out clips"}}


def _failure_fix(json_path: Path, report: dict, remedies: list[str], bound: str) -> str:
    """What to do about a missed bound: the manifest keys that explain this backend's quality, what this
    backend's quantization can change (its report's remedies), and the bound itself as the last resort."""
    evidence = [f"quantize.{key}" for key in QUALITY_EVIDENCE if report.get(key)]
    return f"see {', '.join(evidence)} in {json_path}; " + "".join(f"{remedy}, " for remedy in remedies) + \
        f"or {bound} only if that error is acceptable."


def quantize_artifact(artifact: Path, out_dir: Path, calib: list[str] | None = None, samples: int = DEFAULT_SAMPLES,
                      max_psnr_drop: float | None = DEFAULT_MAX_PSNR_DROP, weights_only: bool = False,
                      teacher: Path | None = None, eval_data: list[Path] | None = None,
                      progress: Callable[[str], None] | None = None, activation: str = "auto",
                      select_by_speed: bool = True, sensitivity: bool = False,
                      min_psnr_vs_float: float | None = DEFAULT_MIN_PSNR_VS_FLOAT, target_device: str = HOST_DEVICE,
                      kind_decisions: dict[str, dict] | None = None,
                      search_seconds: float = DEFAULT_SEARCH_SECONDS, qnn: bool = False, scheme: str = "auto") -> Manifest:
    """Write OUT/NAME-int8.{onnx,mlpackage,tflite,pte} + OUT/NAME-int8.json; raise VerificationFailed after
    writing when the held-out PSNR drop exceeds `max_psnr_drop` or the output strays from the float artifact's
    by more than `min_psnr_vs_float` allows. `kind_decisions` (ONNX node kind -> {int8, why}) come from the
    profile of `target_device` when that is not this host; `qnn`: that device runs ONNX through onnxruntime's QNN
    execution provider, which gets its own QDQ form instead."""
    artifact = Path(artifact)
    backend = backend_of(artifact)
    source = read_manifest(manifest_path(artifact))
    _check_source(artifact, source, backend.name, scheme)
    report_progress = progress or (lambda _message: None)
    options = QuantizeOptions(weights_only=weights_only, max_psnr_drop=max_psnr_drop, min_psnr_vs_float=min_psnr_vs_float,
                              activation=activation, select_by_speed=select_by_speed, sensitivity=sensitivity,
                              progress=report_progress, target_device=target_device, kind_decisions=kind_decisions,
                              search_seconds=search_seconds, qnn=qnn, scheme=scheme)
    backend.check_quantizable(artifact, options)  # before the teacher encodes calibration clips
    if not 0 <= search_seconds <= MAX_SEARCH_SECONDS:
        raise EffconvError(f"--search-seconds {search_seconds:g} is outside 0-{MAX_SEARCH_SECONDS}.",
                           f"give the seconds the int8 choices may spend measuring, e.g. {DEFAULT_SEARCH_SECONDS:g}.")
    if max_psnr_drop is not None and max_psnr_drop < 0:
        raise EffconvError(f"--max-psnr-drop {max_psnr_drop} is negative.", "give the largest acceptable drop in dB, e.g. 0.3.")
    if min_psnr_vs_float is not None and not 0 <= min_psnr_vs_float <= 200:
        raise EffconvError(f"--min-psnr-vs-float {min_psnr_vs_float} is outside 0-200 dB.",
                           f"give the lowest acceptable PSNR against the float output, e.g. {DEFAULT_MIN_PSNR_VS_FLOAT:g}.")
    stream = (source.model_extra or {}).get("stream")
    report_progress("making calibration latents")
    runs_step = stream and backend.name in STREAM_BACKENDS
    clips = calibration_sets(source, calib, samples, teacher, eval_data, chunk_loop=bool(runs_step))
    calib_set, held_out, notes = clips.calib, clips.held_out, clips.notes
    if runs_step:
        run_float = backend.load_all(artifact, options.threads)
        report_progress("running the float step's chunk loop for the inputs each call really gets")
        calib_set, held_out = (streaming.step_samples(run_float, stream, clips.calib),
                               streaming.step_samples(run_float, stream, clips.held_out))
    name = f"{source.name}{QUANTIZED_SUFFIX}"
    with staged_output(out_dir) as stage:
        out_path = stage / f"{name}{artifact.suffix}"
        report = backend.quantize(artifact, source, calib_set, held_out, out_path, options)
        if runs_step:
            report |= _chunk_loop_report(backend, run_float, out_path, stream, clips, report, report_progress, options.threads)
        elif stream:
            report["stream"] = {"latent_frames_per_call": stream["latent_frames_per_call"],
                                "quality": "int8 weights only: the whole-clip decoder with the program's int8 weights, which "
                                           "the step's chunk loop computes exactly (effconv convert verified the float "
                                           "step's loop against the whole-clip decode)"}
        remedies = report.pop("remedies")
        gate = quality_gate.evaluate(report, max_psnr_drop, min_psnr_vs_float)
        report["notes"] = notes + report.get("notes", [])
        slower = quality_gate.speed_warning(report["latency_ms"])
        if slower:
            report["speed_warning"] = slower
        manifest = Manifest(
            **source.model_dump(include={"spec", "inputs", "outputs", "params"}),
            name=name,
            backend=backend.name,
            artifact=out_path.name,
            verify={"passed": gate["passed"], "held_out": report["quality"]},
            quantize={**report, "weights_only": weights_only, "gate": gate, "source_artifact": str(artifact.resolve()),
                      "calibration": {"source": calib_set.source, "samples": len(calib_set),
                                      "held_out": len(held_out), "held_out_source": held_out.source}},
            family=(source.model_extra or {}).get("family"),
            compression=(source.model_extra or {}).get("compression"),
            versions=(source.model_extra or {}).get("versions"),
            **({"stream": stream} if stream else {}),
        )
        write_manifest(manifest, stage)
    json_path = Path(out_dir) / f"{name}.json"
    if gate.get("failed") == "simulation":
        raise VerificationFailed(f"int8 {backend.name}: {gate['reason']}.", "report this as an effconv bug.", manifest=manifest)
    if gate.get("failed") == "psnr_vs_float":
        raise VerificationFailed(f"int8 {backend.name}: {gate['reason']}.",
                                 _failure_fix(json_path, report, remedies, "lower --min-psnr-vs-float"), manifest=manifest)
    if gate.get("failed") == "psnr_drop":
        raise VerificationFailed(f"int8 {backend.name}: {gate['reason']}.",
                                 _failure_fix(json_path, report, remedies, "raise --max-psnr-drop"), manifest=manifest)
    if gate.get("failed") == "drift":
        raise VerificationFailed(f"int8 {backend.name} streaming step: {gate['reason']}.",
                                 f"see quantize.stream.psnr_per_call_db in {json_path}; calibrate on more or longer clips "
                                 f"(--samples {2 * samples}: the later calls' activation ranges are what the early ones miss), "
                                 "or ship the float step (--min-psnr-vs-float 0 turns this bound off).", manifest=manifest)
    return manifest
