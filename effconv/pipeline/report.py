"""The run report, DIR/report.md and DIR/report.html, built only from the stages' manifests.

Every number is read from a manifest and formatted here; nothing is recomputed or typed in. The
Markdown links the images beside it (DIR/eval/frames, DIR/profile-*/); the HTML embeds them, so it opens
on its own in a browser.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import effconv
from effconv.artifacts import staged_output
from effconv.pipeline.plan import HOST_DEVICE, RunInputs, device_label, stages
from effconv.pipeline.stages import (EVAL_MANIFEST, INT8_SUFFIX, LINT_MANIFEST, PROFILE_MANIFEST,
                                     SPEC_STUDENT, STREAM_STUDENT, student_label, student_manifest)
from effconv.quantize.gate import describe as describe_gate

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
MISSING = "—"


def size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return MISSING
    return f"{num_bytes / 1e3:.1f} kB" if num_bytes < 1e6 else f"{num_bytes / 1e6:.2f} MB"


def number(value: float | None, digits: int = 2, unit: str = "") -> str:
    return MISSING if value is None else f"{value:.{digits}f}{unit}"


def share(part: float | None, whole: float | None) -> str:
    return MISSING if part is None or not whole else f"{part / whole:.1%}"


def times(before: float | None, after: float | None) -> str:
    return MISSING if before is None or not after else f"{before / after:.2f}x"


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: str  # relative to DIR
    caption: str


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)  # str (paragraph), Table, Image, or ("code", text)


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class Manifests:
    """The manifests of one run, by stage name (None for a stage that has none)."""

    def __init__(self, inputs: RunInputs, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.student = inputs.student_name
        self.stages = stages(inputs)
        self.backends = inputs.recipe.export.backends
        self.devices = [d for d in inputs.devices if d != HOST_DEVICE]
        self.distill = _load(student_manifest(inputs, self.out_dir))
        self.eval = _load(self.out_dir / "eval" / EVAL_MANIFEST)
        self.lint = _load(self.out_dir / "lint" / LINT_MANIFEST)
        self.convert = {b: _load(self.out_dir / f"convert-{b}" / f"{self.student}.json") for b in self.backends}
        quantized = [(s, _load(self.out_dir / s.name / f"{self.student}{INT8_SUFFIX}.json")) for s in self.stages
                     if s.kind == "quantize"]
        self.quantize = {s.backend: manifest for s, manifest in quantized if s.settings["source"].startswith("convert-")}
        self.stream_quantize = {s.backend: manifest for s, manifest in quantized if s.settings["source"].startswith("stream-")}
        self.stream = {s.backend: _load(self.out_dir / s.name / f"{self.student}.json")
                       for s in self.stages if s.kind == "stream"}
        self.profile = {d: _load(self.out_dir / f"profile-{device_label(d)}" / PROFILE_MANIFEST) for d in inputs.devices}

    def record(self, stage: str) -> dict:
        for candidate in [self.distill, self.eval, self.lint, *self.convert.values(), *self.quantize.values(),
                          *self.stream.values(), *self.stream_quantize.values(), *self.profile.values()]:
            if candidate and candidate.get("stage", {}).get("name") == stage:
                return candidate["stage"]
        return {}


def _artifact_bytes(manifest: dict | None) -> int | None:
    if not manifest:
        return None
    return manifest.get("stage", {}).get("output_bytes", {}).get(manifest["artifact"])


def _profiled(m: Manifests, device: str, model: str) -> dict | None:
    profile = m.profile.get(device)
    return profile["models"].get(model) if profile else None


def _student(m: Manifests, device: str) -> dict | None:
    """The student as the device's first costed backend ships it (its spec as ONNX when it costs none)."""
    profile = m.profile.get(device)
    if not profile:
        return None
    return _profiled(m, device, student_label(profile["backends"][0], "float") if profile["backends"] else SPEC_STUDENT)


def _estimate(result: dict | None) -> tuple[str, str]:
    if not result:
        return MISSING, MISSING
    latency, fps = result["latency_ms"], result["fps"]
    return (f"{latency['estimate']:.2f} ms ({latency['low']:.2f} - {latency['high']:.2f})",
            f"{fps['estimate']:.1f} ({fps['low']:.1f} - {fps['high']:.1f})")


def _measured(result: dict | None) -> tuple[str, str]:
    if not result or not result.get("measured"):
        return MISSING, MISSING
    median = result["measured"]["median_ms"]
    return f"{median:.2f} ms", f"{1000 * result['frames'] / median:.1f}"


def _distill_run(run: dict) -> str:
    """`300 steps (150 in the last run: 45 s, 3.3 steps/s on cpu; time: data 1%, teacher 20%, ...)`."""
    last = f"{run['steps_this_run']} in the last run: " if run["steps_this_run"] != run["steps"] else ""
    shares = ", ".join(f"{name} {share:.0%}" for name, share in run.get("phase_share", {}).items())
    return (f"{run['steps']} steps ({last}{run['wall_seconds']:.0f} s, {run['steps_per_second']} steps/s on "
            f"{run['device']}" + (f"; time: {shares}" if shares else "") + ")")


def _spec_section(m: Manifests) -> Section:
    section = Section("Spec")
    if not m.distill:
        section.blocks.append("The distill stage has no manifest.")
        return section
    section.blocks += [
        f"Teacher (`{m.distill['teacher']['name']}`, {m.distill['teacher']['part']}):",
        ("code", yaml.safe_dump(m.distill["teacher"], sort_keys=False, default_flow_style=None)),
    ]
    if "imported" in m.distill:
        section.blocks += [
            "Student: trained already, imported (not distilled by this run) from:",
            ("code", yaml.safe_dump(m.distill["imported"], sort_keys=False, default_flow_style=None)),
        ]
        return section
    recipe = m.distill["recipe"]
    section.blocks += [
        f"Student: recipe `{recipe['source']}`, distilled {_distill_run(m.distill['run'])}.",
        ("code", yaml.safe_dump({"student": recipe["student"], "distill": recipe["distill"]}, sort_keys=False,
                                default_flow_style=None)),
    ]
    return section


def _comparison_section(m: Manifests) -> Section:
    section = Section("Student vs teacher")
    distill, evaluated = m.distill or {}, (m.eval or {}).get("eval", {})
    teacher_params, student_params = distill.get("teacher_params"), distill.get("params")
    rows = [["decoder params", f"{teacher_params:,}" if teacher_params else MISSING,
             f"{student_params:,}" if student_params else MISSING, share(student_params, teacher_params)]]
    for backend in m.backends:
        rows.append([f"{backend} artifact size", MISSING, size(_artifact_bytes(m.convert[backend])), ""])
    rows += [
        ["PSNR on the eval clip (dB)", number(evaluated.get("mean_teacher_psnr_db")),
         number(evaluated.get("mean_student_psnr_db")), share(evaluated.get("mean_student_psnr_db"), evaluated.get("mean_teacher_psnr_db"))],
        ["SSIM on the eval clip", number(evaluated.get("mean_teacher_ssim"), 4), number(evaluated.get("mean_student_ssim"), 4),
         share(evaluated.get("mean_student_ssim"), evaluated.get("mean_teacher_ssim"))],
    ]
    host_teacher, host_student = _profiled(m, HOST_DEVICE, "teacher"), _student(m, HOST_DEVICE)
    (t_ms, t_fps), (s_ms, s_fps) = _measured(host_teacher), _measured(host_student)
    speedup = times(*(r["measured"]["median_ms"] if r and r.get("measured") else None for r in (host_teacher, host_student)))
    run = (host_student or {}).get("measured", {}) or {}
    rows += [[f"host latency, measured ({run.get('runtime', '?')}, {run.get('threads', '?')} threads)", t_ms, s_ms, speedup],
             ["host FPS, measured", t_fps, s_fps, ""]]
    for device in m.devices:
        teacher, student = _profiled(m, device, "teacher"), _student(m, device)
        (t_lat, t_fps), (s_lat, s_fps) = _estimate(teacher), _estimate(student)
        speed = times(*(r["latency_ms"]["estimate"] if r else None for r in (teacher, student)))
        rows += [[f"{device} latency, estimated (band)", t_lat, s_lat, speed], [f"{device} FPS, estimated (band)", t_fps, s_fps, ""]]
    section.blocks.append(Table(["", "teacher", "student", "student / teacher"], rows))
    clip = evaluated.get("clip")
    if clip:
        videos = ", ".join(Path(v["video"]).name for v in evaluated.get("videos", []))
        domain = (" These videos were also used for training, so this is in-domain quality."
                  if evaluated.get("eval_is_train") else " None of them was used for training.")
        section.blocks.append(f"PSNR/SSIM: teacher VAE vs teacher encoder -> student decoder, on the centre "
                              f"{clip['frames']}x{clip['height']}x{clip['width']} clip of: {videos}.{domain} "
                              "The teacher is not exported (sizes are the student's).")
    shapes = []
    for device in [HOST_DEVICE, *m.devices]:
        result = _student(m, device)
        if result:
            shapes.append(f"{device}: {result['frames']} frames, {result['target']}: {result['source']}")
    if shapes:
        section.blocks.append("Latency is per decode call; FPS = video frames / latency. Phone figures are "
                              "roofline estimates with their error band, not measurements. The student column is the "
                              "artifact of each device's first costed backend (all of them: Devices, below). Shapes and "
                              "graphs: " + "; ".join(shapes) + ".")
    return section


def _conversion_section(m: Manifests) -> Section:
    rows = []
    for backend in m.backends:
        manifest = m.convert[backend]
        if not manifest:
            rows.append([backend, MISSING, MISSING, MISSING, "not run"])
            continue
        verify = manifest["verify"]
        error, psnr = verify.get("max_abs_err"), verify.get("psnr_db")
        if error is None and isinstance(verify.get("fp16_simulation"), dict):
            error, psnr = verify["fp16_simulation"]["max_abs_err"], verify["fp16_simulation"]["psnr_db"]
            backend_note = f"{backend} (fp16 simulated in torch; {verify.get('prediction')})"
        else:
            backend_note = backend
        rows.append([backend_note, f"{manifest['artifact']} ({size(_artifact_bytes(manifest))})",
                     MISSING if error is None else f"{error:.3g}", number(psnr, 1), "yes" if verify["passed"] else "NO"])
    return Section("Conversion", [Table(["backend", "artifact", "max abs error vs PyTorch", "PSNR vs PyTorch (dB)", "verified"], rows)])


def _quantize_section(m: Manifests) -> Section:
    section = Section("Quantization")
    if not m.quantize:
        section.blocks.append("No backend was quantized (the recipe's `quantize.backends` names none that effconv can quantize).")
        return section
    rows, warnings = [], []
    for backend, manifest in m.quantize.items():
        if not manifest:
            rows.append([backend] + [MISSING] * 8 + ["not run"])
            continue
        q = manifest["quantize"]
        sizes, quality, latency, gate = q["size_bytes"], q["quality"], q["latency_ms"], q["gate"]
        measured = "float" in latency
        slower = q.get("speed_warning")
        if slower:
            warnings.append(f"WARNING ({backend}): {slower}. The gate below judges fidelity, not speed.")
        rows.append([
            backend, str(q["scheme"]), size(sizes["float"]), size(sizes["quantized"]), f"{sizes['ratio']:.2f}x",
            number(quality.get("psnr_vs_float_db")), number(quality.get("psnr_drop_db")), number(quality.get("ssim_drop"), 4),
            f"{latency['float']:.2f} / {latency['quantized']:.2f} ms ({latency['speedup']:.2f}x{', slower than float' if slower else ''})"
            if measured else str(latency.get("not_measured", MISSING)),
            describe_gate(gate),
        ])
    section.blocks.extend(warnings)
    section.blocks.append(Table(["backend", "scheme", "float size", "int8 size", "smaller", "PSNR vs float (dB)",
                                 "PSNR drop (dB)", "SSIM drop", "latency float / int8", "gate"], rows))
    section.blocks.append("PSNR figures: held-out clips of the eval videos; sizes and host latency as measured by "
                          "`effconv quantize`. Each device's float and int8 latency: Devices, above.")
    return section


def _latency_cell(result: dict) -> str:
    """`12.30 ms (6.15 - 24.60)`, the estimate and its band, then `; measured 14.10 ms` where it ran here."""
    cell = _estimate(result)[0]
    return cell + (f"; measured {result['measured']['median_ms']:.2f} ms" if result.get("measured") else "")


def _fps_cell(result: dict) -> str:
    cell = _estimate(result)[1]
    return cell + (f"; measured {_measured(result)[1]}" if result.get("measured") else "")


def _speedups(float_result: dict, int8_result: dict) -> tuple[float, float | None]:
    """int8's speed-up over float: estimated, and measured where both ran here."""
    estimated = float_result["latency_ms"]["estimate"] / int8_result["latency_ms"]["estimate"]
    both = float_result.get("measured") and int8_result.get("measured")
    return estimated, float_result["measured"]["median_ms"] / int8_result["measured"]["median_ms"] if both else None


def _speedup_cell(float_result: dict, int8_result: dict) -> str:
    estimated, measured = _speedups(float_result, int8_result)
    return f"{estimated:.2f}x" + (f"; measured {measured:.2f}x" if measured is not None else "")


def _outside_band(label: str, result: dict) -> str | None:
    latency, measured = result["latency_ms"], (result.get("measured") or {}).get("median_ms")
    if measured is None or latency["low"] <= measured <= latency["high"]:
        return None
    return f"{label} measured {measured:.2f} ms is outside the estimate's band ({latency['low']:.2f} - {latency['high']:.2f} ms)"


def _direction(float_result: dict, int8_result: dict) -> str | None:
    estimated, measured = _speedups(float_result, int8_result)
    if measured is None or (estimated > 1) == (measured > 1):
        return None
    return (f"int8 estimated {'faster' if estimated > 1 else 'slower'} ({estimated:.2f}x) but measured "
            f"{'faster' if measured > 1 else 'slower'} ({measured:.2f}x)")


def _quantize_facts(quantize: dict | None) -> list[str]:
    """What the int8 artifact's manifest says about its compute: weight-only, nodes left in float, 7-bit kernels."""
    q = (quantize or {}).get("quantize") or {}
    facts = []
    if q.get("weights_only") or str(q.get("scheme", "")).startswith("weight-only"):
        facts.append("the int8 artifact is weight-only: int8 weights, float compute (quantize `scheme`)")
    left_float = q.get("float_nodes") or []
    if left_float:
        facts.append(f"{len(left_float)} quantizable nodes compute in float: {left_float[0]['reason']} "
                     "(quantize `float_nodes`)")
    kernels = q.get("int8_kernels") or {}
    if kernels.get("reduce_range"):
        facts.append(f"this CPU's int8 kernels: {kernels['why']} (quantize `int8_kernels`)")
    return facts


def _profile_facts(result: dict) -> list[str]:
    """What the profile says about how far to trust the host estimate, and what graph it costed."""
    facts = [f"host-cpu profile: {result['validation'].split('. ')[0].rstrip('.')}"]
    runtime, fitted = (result.get("measured") or {}).get("runtime"), result.get("fitted_runtime")
    if runtime and fitted and runtime != fitted:
        facts.append(f"host efficiencies are fitted to {fitted}, this ran in {runtime}")
    mix = ", ".join(f"{dtype} {share['flop_share']:.0%}" for dtype, share in result["dtypes"].items())
    facts.append(f"costed FLOPs by dtype: {mix}")
    return facts


def _disagreement(float_result: dict, int8_result: dict | None, quantize: dict | None) -> str:
    """One line where a measurement contradicts its estimate (outside the band, or int8's speed-up in the other
    direction), with the manifest facts that bear on it; empty where they agree or nothing was measured."""
    pairs = [("float", float_result)] + ([("int8", int8_result)] if int8_result else [])
    found = [d for d in [*(_outside_band(label, r) for label, r in pairs),
                         _direction(float_result, int8_result) if int8_result else None] if d]
    if not found:
        return ""
    facts = _quantize_facts(quantize) if int8_result else []
    return "; ".join(found) + ". Facts: " + "; ".join(facts + _profile_facts(int8_result or float_result)) + "."


def _dtype_text(result: dict) -> str:
    """The costed compute dtypes, and how many ops read int8-stored weights (a W8A16 .mlpackage computes in fp16)."""
    narrow = sum(share["narrow_weight_ops"] for share in result["dtypes"].values())
    return result["dtype"] + (f", int8 weights on {narrow} ops" if narrow else "")


def _artifact_cell(backend: str, float_result: dict, int8_result: dict | None, quantize: dict | None) -> str:
    cell = f"{backend}: {float_result['target']} ({_dtype_text(float_result)})"
    if not int8_result:
        return cell
    scheme = str((quantize or {}).get("quantize", {}).get("scheme", "")).split(":")[0]
    return cell + f" / {int8_result['target']} ({scheme + ', ' if scheme else ''}{_dtype_text(int8_result)})"


def _backend_row(m: Manifests, device: str, backend: str) -> list[str] | None:
    profile = m.profile[device]
    float_result = profile["models"].get(student_label(backend, "float"))
    if not float_result:
        return None
    int8_label = student_label(backend, "int8")
    int8_result = profile["models"].get(int8_label)
    int8_cells = ([_latency_cell(int8_result), _fps_cell(int8_result), _speedup_cell(float_result, int8_result)]
                  if int8_result else [MISSING] * 3)
    note = _disagreement(float_result, int8_result, m.quantize.get(backend)) or profile.get("not_costed", {}).get(
        int8_label, "" if int8_result else "not quantized")
    return [device, _artifact_cell(backend, float_result, int8_result, m.quantize.get(backend)), _latency_cell(float_result),
            _fps_cell(float_result),
            *int8_cells, note]


def _device_rows(m: Manifests, device: str) -> list[list[str]]:
    profile = m.profile.get(device)
    if not profile:
        return [[device, "not profiled"] + [MISSING] * 5 + [""]]
    rows = [_backend_row(m, device, backend) for backend in profile["backends"]]
    spec = profile["models"].get(SPEC_STUDENT)
    if spec:
        rows.append([device, f"student spec as ONNX ({_dtype_text(spec)}): none of its backends is exported",
                     _latency_cell(spec), _fps_cell(spec)] + [MISSING] * 3 + [_disagreement(spec, None, None)])
    teacher = profile["models"].get("teacher")
    if teacher:
        rows.append([device, f"teacher: spec as ONNX ({_dtype_text(teacher)})", _latency_cell(teacher), _fps_cell(teacher)]
                    + [MISSING] * 3 + [_disagreement(teacher, None, None)])
    return [row for row in rows if row]


def _devices_section(m: Manifests) -> Section:
    rows = [row for device in [HOST_DEVICE, *m.devices] for row in _device_rows(m, device)]
    return Section("Devices: the artifact each row costs", [
        Table(["device", "artifact (costed dtypes: float / int8)", "float latency, estimated (band)", "float FPS",
               "int8 latency, estimated (band)", "int8 FPS", "int8 speed-up", "note"], rows),
        "Each row costs the artifact named in it on that device's profile: a .tflite on its own LiteRT flatbuffer, "
        "a .mlpackage on its own ML program (fp16; a W8A16 int8 computes in fp16 on int8 weights, a W8A8 one at the "
        "int8 rate of a unit whose profile says it computes int8 x int8: Apple measured W8A8 1.8x (ResNet-50) and 2.4x "
        "(MobileNetV2) faster than float16 on an iPhone 15 Pro's Neural Engine, coremltools guide 'Performance' under "
        "quantization; the iPhone profiles' Neural Engine figures are fitted to those tables, benchmarks/device_truth.py), "
        "an .onnx on its "
        "own graph, a .pte on the ONNX graph of the module it was lowered from, each op in the dtype it computes in there. Which backends a device "
        "costs: the recipe's `profile.backends`, else the exported backends its profile lists (host-cpu: those that run "
        "here). On host-cpu every artifact that runs here is also measured in its own runtime; the note says why a "
        "measurement falls outside its estimate's band or int8's measured speed-up goes the other way.",
    ])


def _stream_row(backend: str, manifest: dict | None) -> list[str]:
    label = f"{backend}, streaming"
    if not manifest:
        return [label] + [MISSING] * 4 + ["not run"]
    stream, verify = manifest["stream"], manifest["verify"]
    cache_bytes = sum(4 * math.prod(cache["shape"]) for cache in stream["caches"])
    return [label, f"{manifest['artifact']} ({size(_artifact_bytes(manifest))})",
            f"{stream['latent_frames_per_call']} -> {stream['video_frames_per_call']} (first call drops "
            f"{stream['drop_leading_frames_of_first_call']})", f"{len(stream['caches'])} ({size(cache_bytes)})",
            f"{verify['max_abs_err']:.3g}", "yes" if verify["passed"] else "NO"]


def _stream_section(m: Manifests) -> Section:
    section = Section("Streaming")
    section.blocks.append(Table(["backend", "artifact", "latent -> video frames per call", "caches",
                                 "max abs error vs whole-clip decode", "verified"],
                                [_stream_row(backend, manifest) for backend, manifest in m.stream.items()]))
    rows = []
    for device in [HOST_DEVICE, *m.devices]:
        streamed, whole = _profiled(m, device, STREAM_STUDENT), _student(m, device)
        if not streamed:
            continue
        measured = _measured(streamed)[0] if streamed.get("measured") else "not measured (estimate only)"
        rows.append([f"{device} ({streamed['target']})", _estimate(streamed)[0], measured, _estimate(streamed)[1],
                     f"{streamed['memory']['total_mb']:.0f} MB" + (f" (whole clip: {whole['memory']['total_mb']:.0f} MB)"
                                                                  if whole else "")])
    if rows:
        section.blocks += [Table(["device", "per call, estimated", "per call, measured", "steady-state FPS, estimated",
                                  "memory (weights + caches + one call)"], rows),
                           "Each call decodes the recipe's `deploy.stream` latent frames; a clip of any length is a "
                           "loop of calls with the caches fed back (the manifest's `stream.loop` says how; "
                           "`effconv decode` runs it on this machine)."]
    if m.stream_quantize:
        section.blocks += [Table(["backend", "int8 step", "PSNR vs float (dB)", "long clip: first / last "
                                  "window (dB)", "gate"], [_stream_int8_row(backend, manifest)
                                                          for backend, manifest in m.stream_quantize.items()]),
                           "An ONNX, TFLite or ExecuTorch int8 step is calibrated on the inputs its chunk loop feeds it; its "
                           "own chunk loop (caches fed back) is compared with the float one on the held-out clips, and over "
                           "a long clip whose first and last windows show any drift. A Core ML step is W8A16 (int8 weights): the "
                           "whole-clip decoder with its int8 weights, which its chunk loop computes exactly, is compared."]
    return section


def _stream_int8_row(backend: str, manifest: dict | None) -> list[str]:
    label = f"{backend}, int8 streaming"
    if not manifest:
        return [label] + [MISSING] * 3 + ["not run"]
    q = manifest["quantize"]
    drift = q["stream"]
    windows = (f"{drift['psnr_first_window_db']:.1f} / {drift['psnr_last_window_db']:.1f} ({drift['latent_frames']} latent "
               f"frames, windows of {drift['window_latent_frames']})" if "calls" in drift
               else "int8 weights only: nothing quantized crosses calls")
    return [label, f"{manifest['artifact']} ({size(q['size_bytes']['quantized'])})", number(q["quality"]["psnr_vs_float_db"]),
            windows, describe_gate(q["gate"])]


def _lint_section(m: Manifests) -> Section:
    section = Section("Lint (op legality per backend)")
    if not m.lint:
        section.blocks.append("The lint stage has no manifest.")
        return section
    rows, remaining = [], []
    for backend, result in m.lint["backends"].items():
        before, after = _limited(result["before"]), _limited(result["after"])
        applied = ", ".join(f"{name} x{count}" for name, count in result["rewrites"].items() if count) or "none"
        units = ", ".join(result["after"]["units"])
        rows.append([backend, f"{result['device'] or 'any device'} ({units})", str(len(before)), applied, str(len(after)),
                     ", ".join(result["after"]["blocking"]) or "none"])
        remaining += [f"{backend}: `{op['op']}` x{op['count']}, not on "
                      f"{', '.join(unit for unit, n in op['illegal'].items() if n)}: {'; '.join(op['why'])}" for op in after]
    section.blocks.append(Table(["backend", "device (compute units)", "op kinds some unit cannot run, as exported",
                                 "rewrites applied", "after the rewrites", "blocking"], rows))
    if remaining:
        section.blocks.append("Left after the rewrites (they run, but not on every compute unit):\n\n" +
                              "\n".join(f"- {line}" for line in remaining))
    return section


def _limited(report: dict) -> list[dict]:
    """Op kinds that at least one compute unit of the linted device cannot run."""
    return [op for op in report["ops"] if any(op["illegal"].values())]


def _plots_section(m: Manifests) -> Section:
    section = Section("Plots")
    for device in m.profile:
        profile = m.profile[device]
        if profile:
            section.blocks.append(Image(f"profile-{device_label(device)}/{profile['plot']}",
                                        f"student on {device}: estimated latency by op category, and roofline"))
    frames = (m.eval or {}).get("eval", {}).get("frames", [])
    section.blocks += [Image(f"eval/{frame}", f"{Path(frame).stem}: rows ground truth, teacher, student") for frame in frames]
    return section


def _stages_section(m: Manifests, result) -> Section:
    outcomes = {o.stage: o for o in (result.outcomes if result else [])}
    rows = []
    for stage in m.stages:
        record, outcome = m.record(stage.name), outcomes.get(stage.name)
        action = outcome.action if outcome else MISSING
        passed = record.get("passed")
        rows.append([stage.name, action, number(record.get("seconds"), 1, " s") if record else MISSING,
                     MISSING if passed is None else ("yes" if passed else "NO"), (record.get("hash") or MISSING)[:12]])
    return Section("Stages", [Table(["stage", "this run", "took (when it ran)", "check passed", "input hash"], rows),
                              "Each stage's folder holds its manifest; `stage` in it records the inputs its hash covers."])


def build(inputs: RunInputs, out_dir: Path, result=None) -> list[Section]:
    m = Manifests(inputs, out_dir)
    streaming = [_stream_section(m)] if m.stream else []
    return [_spec_section(m), _comparison_section(m), _devices_section(m), _conversion_section(m), _quantize_section(m),
            *streaming,
            _lint_section(m), _plots_section(m), _stages_section(m, result)]


def _markdown_table(table: Table) -> str:
    escape = (lambda cell: cell.replace("|", "\\|").replace("\n", " "))
    lines = ["| " + " | ".join(map(escape, table.headers)) + " |", "|" + "---|" * len(table.headers)]
    lines += ["| " + " | ".join(map(escape, row)) + " |" for row in table.rows]
    return "\n".join(lines)


def to_markdown(title: str, sections: list[Section]) -> str:
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(_markdown_table(block))
            elif isinstance(block, Image):
                parts.append(f"![{block.caption}]({block.path})\n\n*{block.caption}*")
            elif isinstance(block, tuple):
                parts.append(f"```yaml\n{block[1].rstrip()}\n```")
            else:
                parts.append(block)
    return "\n\n".join(parts) + "\n"


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
         "th{background:#f3f3f3}pre{background:#f6f6f6;padding:8px;overflow-x:auto}img{max-width:100%}"
         "figcaption{font-style:italic;color:#555}")


def _inline_markdown(text: str) -> str:
    """Paragraph text: escape, then turn `code` spans and '- ' bullet lines into HTML."""
    escaped = html.escape(text)
    pieces = escaped.split("`")
    escaped = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))
    lines = escaped.split("\n")
    bullets = [line[2:] for line in lines if line.startswith("- ")]
    prose = " ".join(line for line in lines if line and not line.startswith("- "))
    return f"<p>{prose}</p>" + ("<ul>" + "".join(f"<li>{b}</li>" for b in bullets) + "</ul>" if bullets else "")


def _html_image(out_dir: Path, image: Image) -> str:
    path = out_dir / image.path
    if not path.is_file():
        return f"<p>missing image: {html.escape(image.path)}</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(image.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(image.caption)}</figcaption></figure>")


def to_html(title: str, sections: list[Section], out_dir: Path) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
                rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block.rows)
                body.append(f"<table><tr>{head}</tr>{rows}</table>")
            elif isinstance(block, Image):
                body.append(_html_image(out_dir, block))
            elif isinstance(block, tuple):
                body.append(f"<pre>{html.escape(block[1])}</pre>")
            else:
                body.append(_inline_markdown(block))
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(inputs: RunInputs, out_dir: Path, result=None) -> Path:
    """Write DIR/report.md and DIR/report.html; return the Markdown path."""
    out_dir = Path(out_dir)
    sections = build(inputs, out_dir, result)
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"effconv run: {inputs.student_name} (recipe {Path(inputs.recipe_source).stem}, effconv {effconv.__version__}, {created})"
    with staged_output(out_dir) as staging:
        (staging / REPORT_MD).write_text(to_markdown(title, sections), encoding="utf-8")
        (staging / REPORT_HTML).write_text(to_html(title, sections, out_dir), encoding="utf-8")
    return out_dir / REPORT_MD
