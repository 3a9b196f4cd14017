"""The quantize stage: an effconv artifact (.onnx, .mlpackage, .tflite, .pte) + calibration data -> its int8
version beside a manifest that says how much smaller, faster and worse it is, measured on held-out data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from effconv.recipe import DEFAULT_SEARCH_SECONDS, MAX_SEARCH_SECONDS
from effconv.artifacts import Manifest, manifest_path, read_manifest, staged_output, write_manifest
from effconv.video.clips import BUNDLED_CLIP
from effconv.errors import EffconvError, VerificationFailed
from effconv.quantize import calibration
from effconv.quantize import gate as quality_gate
from effconv.backends import registry
from effconv.backends.base import HOST_DEVICE, Backend, CalibrationSet, QuantizeOptions

QUANTIZED_SUFFIX = "-int8"
DEFAULT_SAMPLES = 16
DEFAULT_MAX_PSNR_DROP = 0.3
# Fidelity to the float artifact, whatever the ground truth: a weak student is far from ground truth anyway, so
# a drop-only gate can pass a broken int8 model. Measured: int8 of the random-init demo student reaches 35.4 dB
# with exact QDQ arithmetic; saturated x86 kernels gave 22.6 dB; trained students 37-74 dB on every backend.
DEFAULT_MIN_PSNR_VS_FLOAT = 30.0
HELD_OUT_SHARE = 4  # one sample in four measures quality; the rest calibrate
# the manifest keys that explain an int8 model's quality, those a backend's report has
QUALITY_EVIDENCE = ("quality", "sensitivity", "int8_kernels", "float_nodes", "simulation_check")


def backend_of(artifact: Path) -> Backend:
    backend = registry.for_artifact(artifact)
    if not artifact.exists():
        raise EffconvError(f"artifact '{artifact}' does not exist.", "run `effconv convert SPEC --to BACKEND --out DIR` first.")
    return backend


def _check_source(artifact: Path, manifest: Manifest, backend: str) -> None:
    if manifest.backend != backend:
        raise EffconvError(f"the manifest beside '{artifact.name}' describes a {manifest.backend} artifact.",
                           "keep each artifact with the manifest `effconv convert` wrote for it.")
    if "quantize" in (manifest.model_extra or {}):
        raise EffconvError(f"'{artifact.name}' is already quantized.", "quantize the float artifact it came from.")
    if manifest.spec.get("part", "decoder") != "decoder":
        raise EffconvError("effconv quantizes decoders (its calibration data are latents).",
                           "convert the decoder (`part: decoder`) and quantize that.")
    if "stream" in (manifest.model_extra or {}):
        raise EffconvError(f"'{artifact.name}' is a streaming step (inputs: latent, flag, caches); effconv quantizes "
                           "whole-clip artifacts only so far.", f"quantize the whole-clip export (`effconv convert STUDENT.yaml --to {backend}`).")


def _held_out_count(samples: int) -> int:
    return max(1, samples // HELD_OUT_SHARE)


def calibration_sets(manifest: Manifest, calib: list[str] | None, samples: int, teacher: Path | None,
                     eval_data: list[Path] | None) -> tuple[CalibrationSet, CalibrationSet, list[str]]:
    """(calibration, held-out, warnings). Without --calib: clips of the bundled real video."""
    if samples < 2:
        raise EffconvError(f"--samples {samples} leaves nothing to measure quality on.", "use --samples 2 or more (default 16).")
    expected = tuple(manifest.inputs[0].shape)
    sources = calib or [str(BUNDLED_CLIP)]
    notes: list[str] = []
    if calibration.RANDOM in sources:
        if len(sources) > 1:
            raise EffconvError("--calib random cannot be mixed with files.", "pass either `--calib random` or files.")
        notes.append("calibrating on random latents: ranges and quality numbers do not reflect real video")
        full = calibration.random_latents(expected, samples)
    elif len(sources) == 1 and calibration.is_latent_file(sources[0]):
        full = calibration.from_file(Path(sources[0]), expected)
    elif any(calibration.is_latent_file(source) for source in sources):
        raise EffconvError("a latents file cannot be mixed with videos in --calib.", "pass one latents file, or videos.")
    else:
        teacher_model = calibration.teacher_model(manifest, teacher)
        full = calibration.from_video(teacher_model, [Path(s) for s in sources], samples, expected=expected)
        if eval_data:
            held_out = calibration.held_out_video(teacher_model, list(eval_data), _held_out_count(samples), expected=expected)
            return full, held_out, notes
    if eval_data:
        raise EffconvError("--eval-data needs video calibration (the teacher encodes both).", "drop --eval-data, or calibrate from video.")
    if full.frames is None:
        notes.append("no ground-truth frames: PSNR drop and the --max-psnr-drop gate cannot be measured, only PSNR vs the float artifact")
    calib_set, held_out = full.split(_held_out_count(len(full)))
    return calib_set, held_out, notes


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
                      search_seconds: float = DEFAULT_SEARCH_SECONDS, qnn: bool = False) -> Manifest:
    """Write OUT/NAME-int8.{onnx,mlpackage,tflite,pte} + OUT/NAME-int8.json; raise VerificationFailed after
    writing when the held-out PSNR drop exceeds `max_psnr_drop` or the output strays from the float artifact's
    by more than `min_psnr_vs_float` allows. `kind_decisions` (ONNX node kind -> {int8, why}) come from the
    profile of `target_device` when that is not this host; `qnn`: that device runs ONNX through onnxruntime's QNN
    execution provider, which gets its own QDQ form instead."""
    artifact = Path(artifact)
    backend = backend_of(artifact)
    source = read_manifest(manifest_path(artifact))
    _check_source(artifact, source, backend.name)
    report_progress = progress or (lambda _message: None)
    options = QuantizeOptions(weights_only=weights_only, max_psnr_drop=max_psnr_drop, min_psnr_vs_float=min_psnr_vs_float,
                              activation=activation, select_by_speed=select_by_speed, sensitivity=sensitivity,
                              progress=report_progress, target_device=target_device, kind_decisions=kind_decisions,
                              search_seconds=search_seconds, qnn=qnn)
    backend.check_quantizable(artifact, options)  # before the teacher encodes calibration clips
    if not 0 <= search_seconds <= MAX_SEARCH_SECONDS:
        raise EffconvError(f"--search-seconds {search_seconds:g} is outside 0-{MAX_SEARCH_SECONDS}.",
                           f"give the seconds the int8 choices may spend measuring, e.g. {DEFAULT_SEARCH_SECONDS:g}.")
    if max_psnr_drop is not None and max_psnr_drop < 0:
        raise EffconvError(f"--max-psnr-drop {max_psnr_drop} is negative.", "give the largest acceptable drop in dB, e.g. 0.3.")
    if min_psnr_vs_float is not None and not 0 <= min_psnr_vs_float <= 200:
        raise EffconvError(f"--min-psnr-vs-float {min_psnr_vs_float} is outside 0-200 dB.",
                           f"give the lowest acceptable PSNR against the float output, e.g. {DEFAULT_MIN_PSNR_VS_FLOAT:g}.")
    report_progress("making calibration latents")
    calib_set, held_out, notes = calibration_sets(source, calib, samples, teacher, eval_data)
    name = f"{source.name}{QUANTIZED_SUFFIX}"
    with staged_output(out_dir) as stage:
        out_path = stage / f"{name}{artifact.suffix}"
        report = backend.quantize(artifact, source, calib_set, held_out, out_path, options)
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
    return manifest
