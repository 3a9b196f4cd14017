"""`effconv quantize`: per-channel int8 post-training quantization with a measured quality gate."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from effconv.cli.app import JsonFlag, app
from effconv.cli.render import err, out, progress_lines
from effconv.errors import VerificationFailed
from effconv.recipe import DEFAULT_SEARCH_SECONDS, HOST_DEVICE


@app.command()
def quantize(
    artifact: Path = typer.Argument(..., help="An .onnx, .mlpackage, .tflite or .pte written by `effconv convert`.", show_default=False),
    out_dir: Path = typer.Option(..., "--out", help="Output directory for NAME-int8.* and NAME-int8.json.", show_default=False),
    calib: list[str] | None = typer.Option(
        None, "--calib", help="Calibration videos/folders (repeatable), one .npy/.npz latents file, or `random` "
        "(no ground truth; warned) [default: the bundled real clip].", show_default=False),
    samples: int = typer.Option(16, "--samples", help="Calibration clips drawn from the videos; a quarter is held out to measure quality."),
    max_psnr_drop: float | None = typer.Option(0.3, "--max-psnr-drop", help="Largest PSNR loss (dB, held-out ground truth) allowed; exit 1 beyond it."),
    min_psnr_vs_float: float = typer.Option(30.0, "--min-psnr-vs-float", help="Lowest PSNR (dB) of the int8 output against "
                                            "the float artifact's, ground truth or not; exit 1 below it, or when a streaming "
                                            "step's chunk loop drifts more than 1 dB over a long clip (0 turns both off)."),
    weights_only: bool = typer.Option(False, "--weights-only", help="Only weights in int8 (ONNX: dynamic quantization), for size."),
    teacher: Path | None = typer.Option(None, "--teacher", help="Teacher spec whose encoder makes latents [default: from the manifests]."),
    eval_data: list[Path] | None = typer.Option(None, "--eval-data", help="Videos kept out of calibration to measure quality (repeatable)."),
    activation: str = typer.Option("auto", "--activation", help="ONNX activation type: auto (the faster here), uint8 or int8."),
    all_nodes: bool = typer.Option(False, "--all-nodes", help="ONNX: int8 for every Conv/MatMul, even where this host's int8 "
                                   "kernels are slower (when the target is not this CPU)."),
    sensitivity: bool = typer.Option(False, "--sensitivity", help="ONNX: always compute the per-node sensitivity table "
                                     "(one quantization and run per node) [default: only when the gate needs it]."),
    device: str = typer.Option(HOST_DEVICE, "--device", help="Where the int8 model will run (`effconv devices`). ONNX: "
                               "host-cpu times which node kinds are faster in int8 here; a Snapdragon device whose "
                               "profile runs ONNX on the HTP (galaxy-s24, sd8-elite) gets the QDQ form onnxruntime's "
                               "QNN execution provider compiles (w8a8, else w8a16); another device decides the kinds "
                               "from its profile, since this CPU's int8 kernels say nothing about a phone's."),
    search_seconds: float = typer.Option(DEFAULT_SEARCH_SECONDS, "--search-seconds", help="ONNX: time the int8 choices (activation type, "
                                         "node kinds, calibration method, sensitivity fallback) may spend measuring; "
                                         "a choice that does not fit is made by a stated rule (0: rules only)."),
    scheme: str = typer.Option("auto", "--scheme", help="Core ML: w8a16 (int8 weights, fp16 compute: size) or w8a8 "
                               "(int8 weights and activations: the int8 compute of A17 Pro / A18 Pro Neural Engines); "
                               "auto: w8a8 where the --device profile's Neural Engine computes in int8, else w8a16."),
    as_json: bool = JsonFlag,
) -> None:
    """Per-channel int8 post-training quantization, with a measured quality gate.

    ONNX: onnxruntime static QDQ; the activation type, which node kinds go int8 (on host-cpu, those
    whose int8 kernels are faster here; on another `--device`, those its profile estimates faster) and
    the calibration method are chosen on a validation split of the calibration clips, then the most
    sensitive nodes return to float until the gate holds there; the held-out clips only measure the
    result. Each measured choice must fit `--search-seconds`. For a Snapdragon `--device` (QNN HTP): onnxruntime's
    QNN QDQ form instead, every op quantized, w8a8 or w8a16 as the gate needs, its arithmetic checked op by op
    here. Core ML: W8A16 (int8 weights, fp16 compute) or W8A8 (int8 weights and activations, for Neural Engines
    with int8 compute: iphone16pro); --scheme auto picks by --device.
    TFLite: LiteRT quantizer static int8. Calibration latents come from the teacher encoder on real clips.
    A streaming step (`convert --stream K`) is calibrated on the inputs its float chunk loop feeds each call and
    checked by its own chunk loop, caches fed back, over the held-out clips and a long clip (drift per call).

    Example: `effconv quantize out/demo-teacher-student.onnx --calib effconv/assets/video --out out/int8`

    Example: `effconv quantize student.onnx --device pixel9 --calib clips/ --out int8/` (kinds by the Pixel 9's profile)

    Example: `effconv quantize student.onnx --device galaxy-s24 --calib clips/ --out int8/` (QNN HTP QDQ)

    Example: `effconv quantize stream/student.tflite --out int8/` (a streaming step)
    """
    from effconv.quantize.stage import quantize_artifact

    qnn = artifact.suffix == ".onnx" and _onnx_on_qnn(device)
    scheme = _scheme(artifact, scheme, device)
    decisions = None if qnn else _kind_decisions(artifact, device)
    with progress_lines("Quantizing") as progress:
        try:
            manifest = quantize_artifact(artifact, out_dir, calib=calib, samples=samples, max_psnr_drop=max_psnr_drop,
                                         weights_only=weights_only, teacher=teacher, eval_data=eval_data,
                                         activation=activation, select_by_speed=not all_nodes, sensitivity=sensitivity,
                                         min_psnr_vs_float=min_psnr_vs_float or None, target_device=device,
                                         kind_decisions=decisions, search_seconds=search_seconds, qnn=qnn,
                                         scheme=scheme, progress=progress)
        except VerificationFailed as failure:
            if failure.manifest is not None:
                _print_quantize(failure.manifest, as_json, out_dir)
            raise
    _print_quantize(manifest, as_json, out_dir)


def _scheme(artifact: Path, scheme: str, device: str) -> str:
    """--scheme is Core ML's; auto picks the scheme the --device profile's Neural Engine gains speed from."""
    from effconv.errors import EffconvError
    from effconv.profile.device.profiles import load_device

    if artifact.suffix != ".mlpackage":
        if scheme != "auto":
            raise EffconvError(f"--scheme {scheme} applies to Core ML packages; '{artifact.name}' is not one.",
                               "drop --scheme (ONNX picks its QDQ form from --device; TFLite and ExecuTorch are W8A8).")
        return scheme
    if scheme != "auto":
        return scheme
    if _is_stream(artifact):
        return "w8a16"  # a streaming step's only Core ML scheme (docs/quantize.md, "Streaming steps")
    return load_device(device).coreml_scheme


def _is_stream(artifact: Path) -> bool:
    from effconv.artifacts import manifest_path, read_manifest

    manifest = manifest_path(artifact)
    return manifest.is_file() and "stream" in (read_manifest(manifest).model_extra or {})


def _onnx_on_qnn(device: str) -> bool:
    from effconv.profile.device.profiles import load_device

    return device != HOST_DEVICE and load_device(device).onnx_on_qnn


def _kind_decisions(artifact: Path, device: str) -> dict[str, dict] | None:
    """For an ONNX model bound for another device: which node kinds compute in int8, from that device's profile."""
    from effconv.profile.device.profiles import load_device
    from effconv.profile.estimate.int8_kinds import kind_decisions

    load_device(device)  # an unknown device is an error for every backend, before any work
    if device == HOST_DEVICE or artifact.suffix != ".onnx" or not artifact.is_file():
        return None
    return kind_decisions(artifact, device)


def _print_quantize(manifest, as_json: bool, out_dir: Path) -> None:
    if as_json:
        print(manifest.to_json())
        return
    from effconv.backends.quality import apart_from
    from effconv.quantize.gate import describe as describe_gate

    report = manifest.quantize
    for note in report["notes"]:
        err.print(f"[yellow]note:[/] {note}")
    table = Table(title=f"{manifest.name} ({manifest.backend})", show_header=False)
    table.add_row("artifact", str(out_dir / manifest.artifact))
    table.add_row("scheme", report["scheme"])
    if "search" in report:
        search = report["search"]
        table.add_row("choices", f"for {report['target_device']}, scored on the validation split ({report['validation']['split']}); "
                                 f"{search['spent_seconds']:.0f} s of --search-seconds {search['seconds']:g} (one run of the "
                                 f"model {search['run_seconds']:.1f} s)")
    calibration = report["calibration"]
    table.add_row("calibration", f"{calibration['samples']} samples ({calibration['source']}); "
                                 f"{calibration['held_out']} held out ({calibration['held_out_source']})")
    size = report["size_bytes"]
    table.add_row("size", f"{size['float'] / 1e6:.2f} MB -> {size['quantized'] / 1e6:.2f} MB ({size['ratio']:.2f}x smaller)")
    quality, gate = report["quality"], report["gate"]
    if "psnr_drop_db" in quality:
        drop = quality["psnr_drop_db"]
        table.add_row("PSNR vs ground truth", f"{quality['psnr_float_db']:.2f} -> {quality['psnr_quant_db']:.2f} dB "
                                              f"(drop {'+' if drop >= 0 else ''}{apart_from(drop, gate.get('max_psnr_drop'), 3)} dB)")
        table.add_row("SSIM", f"{quality['ssim_float']:.4f} -> {quality['ssim_quant']:.4f} (drop {quality['ssim_drop']:+.4f})")
    table.add_row("PSNR vs float output", f"{apart_from(quality['psnr_vs_float_db'], gate.get('min_psnr_vs_float'))} dB")
    drift = report.get("stream", {})
    if "fall_db" in drift:
        table.add_row("chunk loop, long clip", f"{drift['psnr_first_window_db']:.1f} dB over the first {drift['window_latent_frames']} "
                                               f"latent frames, {drift['psnr_last_window_db']:.1f} dB over the last "
                                               f"(of {drift['latent_frames']}; drift {drift['fall_db']:.2f} dB)")
    kernels = report.get("int8_kernels")
    if kernels:
        weights = "7-bit weights (no VNNI: avoids int16 saturation)" if kernels["reduce_range"] else "8-bit weights"
        table.add_row("int8 kernels here", f"{weights}; they lose {kernels['kernel_loss_db']:+.1f} dB vs the QDQ model's exact "
                                           f"arithmetic ({kernels['qdq_vs_float_psnr_db']:.1f} dB vs float; "
                                           f"{', '.join(kernels['cpu_int8_features']) or 'no int8 extensions'})")
    latency, slower = report["latency_ms"], report.get("speed_warning")
    if "speedup" in latency:
        table.add_row("host latency", Text(f"{latency['float']:.1f} -> {latency['quantized']:.1f} ms ({latency['speedup']:.2f}x, "
                                           f"{latency['threads']} threads)" + (": SLOWER than float" if slower else ""),
                                           style="bold red" if slower else ""))
    else:
        table.add_row("host latency", f"not measured: {latency['not_measured']}")
    if report["float_nodes"]:
        reasons: dict[str, int] = {}
        for node in report["float_nodes"]:
            reasons[node["reason"]] = reasons.get(node["reason"], 0) + 1
        table.add_row("left in float", "\n".join(f"{count} x {reason}" for reason, count in reasons.items()))
    style = "" if not gate["applied"] else "green" if gate["passed"] else "red"
    table.add_row("quality gate", Text(describe_gate(gate), style=style))
    out.print(table)
    if slower:
        err.print(f"[bold red]warning:[/] {slower}", highlight=False, soft_wrap=True)
