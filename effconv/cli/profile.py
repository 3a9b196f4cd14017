"""`effconv devices`, `effconv profile` and `effconv calibrate`: device profiles, estimates, the host fit."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import typer
from rich.table import Table

from effconv.cli.app import AllowImport, app
from effconv.cli.render import err, out
from effconv.errors import EffconvError


@app.command()
def devices(as_json: bool = typer.Option(False, "--json", help="Print the profiles as JSON.")) -> None:
    """List the device profiles `effconv profile --device` accepts, with their key figures.

    host-cpu is measured on this machine the first time (a few seconds) and cached. Add your own
    device with `--device path/to/my.yaml` (same schema; see docs/profile.md).

    Example: `effconv devices`
    """
    from effconv.profile.device.profiles import builtin_names, load_device

    profiles = [load_device(name) for name in builtin_names()]
    if as_json:
        print(json.dumps([p.model_dump(mode="json") for p in profiles], indent=2))
        return
    _render_devices(profiles)


def _render_devices(profiles) -> None:
    table = Table(title="device profiles (vendor figures or derived; host-cpu measured here)")
    for column in ("name", "compute units: peak TOP/s", "DRAM GB/s", "RAM GB", "backends", "band"):
        table.add_column(column)
    for p in profiles:
        units = "\n".join(
            f"{name} ({u.kind}): " + ", ".join(f"{d} {f.value / 1000:.2g}" for d, f in u.peak_gops.items())
            for name, u in p.units.items()
        )
        table.add_row(p.name, units, f"{p.memory.bandwidth_gbps.value:.1f}", f"{p.memory.ram_gb.value:.0f}",
                      ", ".join(f"{b}*" if b in p.backend_units else b for b in p.backends), f"x{1 + p.model_uncertainty:.1f}")
    out.print(table)
    out.print("Every figure has a source and an uncertainty in its YAML (effconv/device_profiles/); phone "
              "latencies are estimates, not measurements. * runs on some units only (`backend_units` in "
              "`effconv devices --json`): e.g. ExecuTorch runs on phone CPUs through XNNPACK, the only delegate effconv builds.")


@app.command()
def profile(
    target: Path = typer.Argument(..., help="An artifact written by effconv (.onnx, .tflite, .pte, .mlpackage; manifest beside it) or a spec YAML.", show_default=False),
    device: str = typer.Option(..., "--device", help="Device profile name (see `effconv devices`) or a profile YAML path.", show_default=False),
    resolution: str | None = typer.Option(None, "--resolution", help="480p (480x832), 720p (720x1280), 1080p (1088x1920) or HxW."),
    frames: int | None = typer.Option(None, "--frames", help="Video frames per decode (must fit the temporal compression)."),
    budget_ms: float | None = typer.Option(None, "--budget-ms", help="Latency budget per decode call, ms."),
    fps: float | None = typer.Option(None, "--fps", help="Budget as video frames per second (real time = 24)."),
    do_measure: bool = typer.Option(False, "--measure", help="Also run it here in its own runtime: onnxruntime, LiteRT or ExecuTorch (host-cpu only; Core ML needs macOS)."),
    threads: int | None = typer.Option(None, "--threads", help="host-cpu threads for the estimate and the runtime [default: all cores]."),
    probe: bool = typer.Option(True, "--probe/--no-probe", help="host-cpu, onnxruntime's unit, no fit cached yet: first fit it "
                               "with the one-minute host probe (cached; `effconv calibrate --quick` runs it alone). "
                               "--no-probe, or EFFCONV_HOST_PROBE=off, keeps the uncalibrated x0.2-x5 band."),
    dtype: str | None = typer.Option(None, "--dtype", help="Cost every op as fp32/fp16/int8 instead of the artifact's own dtypes."),
    top: int = typer.Option(10, "--top", help="How many ops to list."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a latency breakdown + roofline chart (PNG)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    allow_import: bool = AllowImport,
) -> None:
    """Estimate latency, FPS and memory on a device (per-op roofline with an error band); judge a budget.

    Exit 1 when the budget (--budget-ms or --fps) is missed; the result is printed first.

    Example: `effconv profile out/student.onnx --device iphone16pro --resolution 720p --fps 24`

    Example: `effconv profile examples/specs/ltx-tiny.yaml --device host-cpu --measure`

    Example: `effconv profile out/student.pte --device host-cpu --measure --threads 2`

    An .onnx, .tflite or .mlpackage is costed on its own graph, each op in the dtype it computes in there
    (int8 where quantized, float with int8 weight bytes for weight-only int8, fp16 for Core ML); a .pte on the
    ONNX graph of the spec in its manifest with the dtypes it ships. --measure runs the file itself in its runtime.
    """
    from effconv.profile.run import check_budget, run

    with err.status(f"Profiling {target.name} on {device}..."):
        result = run(target, device, resolution, frames, dtype, budget_ms, fps, do_measure, threads, allow_import=allow_import,
                     probe=probe, progress=_progress)
    if plot is not None:
        from effconv.profile.plot import write_plot

        write_plot(result, plot)
    if as_json:
        print(json.dumps(result.to_dict(top), indent=2))
    else:
        _render_profile(result, top)
        if plot is not None:
            out.print(f"plot: {plot}")
    check_budget(result)


def _render_profile(result, top: int) -> None:
    from effconv.profile.device.host_cpu import OUTDATED_CALIBRATION

    data = result.to_dict(top)
    out.print(f"[bold]{data['model']}[/] on [bold]{data['device']}[/] ({result.device.description}); {data['source']}")
    ops = Table(title=f"top {top} kernels by estimated time")
    for column in ("kernel", "kind", "+ fused", "unit", "dtype", "GFLOP", "MB", "ms", "bound"):
        ops.add_column(column, justify="right" if column in ("GFLOP", "MB", "ms") else "left")
    for kernel in data["top_kernels"]:
        handoff = f" (+{kernel['handoff_ms']:.2f} hand-off)" if kernel["handoff_ms"] else ""
        ops.add_row(kernel["name"][:32], kernel["kind"], _fused_text(kernel["fused"]), kernel["unit"], kernel["dtype"],
                    f"{kernel['gflops']:.3f}", f"{kernel['mb']:.2f}", f"{kernel['ms']:.3f}{handoff}", kernel["bound"])
    out.print(ops)
    total = sum(data["by_category_ms"].values()) or 1.0
    shares = ", ".join(f"{k} {v:.3g}" for k, v in data["by_category_ms"].items() if v >= 0.01 * total)
    out.print(f"by op category (ms): {shares}")
    fusion = data["fusion"]
    if fusion["rules"]:
        rules = ", ".join(f"{unit}: {name}" for unit, name in fusion["rules"].items())
        out.print(f"fusion ({rules}; effconv/device_profiles/fusion/): {fusion['ops']} ops run as {fusion['kernels']} "
                  f"kernels, {fusion['fused_ops']} of them fused into another op's kernel"
                  + (f", {fusion['in_place_ops']} written in place by their producers" if fusion["in_place_ops"] else "")
                  + f"; every op its own kernel, the estimate would be {fusion['unfused_ms']:.3g} ms")
    if len(data["by_unit_ms"]) > 1:
        out.print(f"by compute unit (ms): {', '.join(f'{k} {v:.1f}' for k, v in data['by_unit_ms'].items())}")
    if data["fallbacks"]:
        fallen = ", ".join(f"{k} x{v}" for k, v in sorted(data["fallbacks"].items(), key=lambda kv: -kv[1]))
        out.print(f"[yellow]ops off {next(iter(result.device.units))}[/] (each hand-off costs {result.device.fallback_us.value:g} us + a copy): {fallen}")
    for note in data["notes"]:
        out.print(f"[yellow]note:[/] {note}")
    latency, fps, memory = data["latency_ms"], data["fps"], data["memory"]
    summary = Table(show_header=False, title="estimate (a model, not a measurement)")
    summary.add_row("latency", f"{latency['estimate']:.3g} ms  (band {latency['low']:.3g} - {latency['high']:.3g} ms: "
                    f"{latency['band_source']})")
    summary.add_row("frames / FPS", f"{data['frames']} frames -> {fps['estimate']:.1f} FPS  (band {fps['low']:.1f} - {fps['high']:.1f})")
    summary.add_row("compute", f"{data['gflops']:.2f} GFLOP, {_dtype_text(data['dtypes'])}")
    fits = "[green]fits[/]" if memory["fits"] else "[red]does NOT fit[/]"
    summary.add_row("memory", f"{memory['total_mb']:.1f} MB peak (weights {memory['weights_mb']:.1f} + activations "
                    f"{memory['peak_activations_mb']:.1f}) of {memory['usable_ram_mb']:.0f} MB usable: {fits}")
    if not memory["fits"]:
        chunk = memory["chunk_latent_frames"]
        advice = (f"stream it: `effconv convert STUDENT.yaml --stream {chunk}` decodes {chunk} latent frames"
                  + (f" ({memory['chunk_frames']} video frames)" if memory["chunk_frames"] else "") + " per call (docs/streaming.md)"
                  if chunk else "even one latent frame does not fit: lower the resolution or tile spatially")
        summary.add_row("suggestion", advice)
    if data["measured"]:
        m = data["measured"]
        summary.add_row("measured here", f"{m['median_ms']:.1f} ms median of {m['repeats']} (after {m['warmup']} warm-up), "
                        f"{m['runtime']}, {m['threads']} threads")
        summary.add_row("predicted vs measured", f"{latency['estimate']:.1f} vs {m['median_ms']:.1f} ms: {data['rel_error']:+.0%}")
    elif result.threads:
        summary.add_row("threads", f"{result.threads} (runtime threads the host estimate assumes)")
    if data["budget_ms"] is not None:
        verdict = "[green]PASS[/]" if data["passed"] else "[red]FAIL[/]"
        summary.add_row("budget", f"{data['budget_ms']:.1f} ms ({data['budget_from']}), judged on {data['judged_on']}: {verdict}")
    out.print(summary)
    out.print(f"[dim]{result.device.validation}[/]", highlight=False)
    if set(result.device.measured.get("outdated_calibration", ())) & set(result.device.units):
        out.print(f"[yellow]{OUTDATED_CALIBRATION}[/]", highlight=False)


def _fused_text(kinds: list[str]) -> str:
    """`Add, Silu x2`: the kinds of the ops a kernel fused, counted."""
    counts = Counter(kinds)
    return ", ".join(kind if n == 1 else f"{kind} x{n}" for kind, n in counts.items())


def _dtype_text(dtypes: dict[str, dict]) -> str:
    """`int8 (61 ops, 92% of FLOPs) + fp32 (12 ops, 8% of FLOPs; 10 on narrower stored weights)`: what the ops compute in."""
    parts = []
    for dtype, row in dtypes.items():
        narrow = f"; {row['narrow_weight_ops']} on narrower stored weights" if row["narrow_weight_ops"] else ""
        share = f", {row['flop_share']:.0%} of FLOPs" if len(dtypes) > 1 else ""
        parts.append(f"{dtype} ({row['ops']} ops{share}{narrow})")
    return " + ".join(parts)


@app.command()
def calibrate(
    threads: int | None = typer.Option(None, "--threads", help="Threads each runtime uses [default: all cores]."),
    repeats: int | None = typer.Option(None, "--repeats", help="Timed rounds per artifact (median is used) [default: 10; 5 with --quick]."),
    runtime: list[str] | None = typer.Option(None, "--runtime", help="Runtime to fit, by backend: onnx (onnxruntime), "
                                              "tflite (LiteRT, XNNPACK); repeatable [default: both]."),
    int8: bool = typer.Option(True, "--int8/--no-int8", help="Also quantize each model and fit what int8 ops reach (per category)."),
    remeasure: bool = typer.Option(False, "--remeasure", help="Re-measure the runtimes' peak GFLOP/s and the bandwidth first."),
    report: Path | None = typer.Option(None, "--report", help="Also write the full result as JSON to this file."),
    quick: bool = typer.Option(False, "--quick", help="Only the host probe: onnxruntime's unit fitted on 7 small decoders "
                               "in about a minute, its band from leaving each out in turn (what `effconv profile` runs "
                               "on first use of host-cpu)."),
) -> None:
    """Fit host-cpu's latency model for each runtime on measured models and report held-out error.

    Converts 28 small decoders (teachers of the six families at three sizes, and Turbo-VAED students
    of five families at two widths) to each runtime's artifact, fp32 and int8 (`quantize --calib
    random`), measures them in their own runtime in interleaved rounds (medians), fits each runtime's
    efficiencies (fp32 and int8) and overheads on half of the models, reports the estimator's error
    before and after on the other half, and caches the fits so `effconv profile --device host-cpu`
    uses them. Takes tens of minutes on 2 cores (`--runtime onnx --no-int8`: a few minutes).

    `--quick` runs the host probe instead (onnxruntime only, about a minute), which `effconv profile
    --device host-cpu` also runs by itself the first time it costs an ONNX model without a fit.

    Example: `effconv calibrate --threads 1`

    Example: `effconv calibrate --quick`
    """
    from effconv.profile.fit.calibrate import calibrate_host, write_report
    from effconv.profile.fit.measure_set import BACKEND_UNITS

    if quick:
        from effconv.profile.fit.probe import PROBE_BACKEND, PROBE_REPEATS, quick_calibrate

        if set(runtime or ()) - {PROBE_BACKEND} or not int8:
            raise EffconvError("--quick probes onnxruntime only, fp32 and int8.", "drop --runtime and --no-int8, or drop --quick.")
        result = quick_calibrate(threads, PROBE_REPEATS if repeats is None else repeats, remeasure, _progress)
        render_probe(result)
    else:
        result = calibrate_host(threads, repeats=10 if repeats is None else repeats, remeasure=remeasure, progress=_progress,
                                backends=tuple(dict.fromkeys(runtime or BACKEND_UNITS)), int8=int8)
        render_calibration(result)
    if report is not None:
        out.print(f"report: {write_report(result, report)}")


def _progress(message: str) -> None:
    err.print(message, highlight=False)


def render_probe(result: dict) -> None:
    table = Table(title="host probe: each decoder left out of the fit in turn (|predicted - measured| / measured)")
    for column in ("model", "dtype", "measured ms", "predicted ms", "error"):
        table.add_column(column)
    for row in result["left_out"]["rows"]:
        table.add_row(row["name"], row["dtype"], f"{row['measured_ms']:.1f}", f"{row['predicted_ms']:.1f}", f"{row['rel_error']:+.0%}")
    out.print(table)
    out.print(result["fit"]["validation"], highlight=False)


def render_calibration(result: dict) -> None:
    for backend, fitted in result["runtimes"].items():
        table = Table(title=f"host-cpu estimator error, {backend} artifacts (|predicted - measured| / measured)")
        for column in ("model", "dtype", "set", "measured ms", "before ms", "after ms", "error before", "error after"):
            table.add_column(column)
        for before, after in zip(fitted["before"]["rows"], fitted["after"]["rows"]):
            table.add_row(before["name"], before["dtype"], "held-out" if before["held_out"] else "fit",
                          f"{before['measured_ms']:.1f}", f"{before['predicted_ms']:.1f}", f"{after['predicted_ms']:.1f}",
                          f"{before['rel_error']:+.0%}", f"{after['rel_error']:+.0%}")
        out.print(table)
        for label in ("before", "after"):
            held = fitted[label]["held_out"]
            spread = "max (under 10 artifacts: no p90)" if held["p90_is_max"] else f"p90 {held['p90_abs']:.0%}, max"
            out.print(f"{backend} held-out ({held['n']} artifacts) {label}: median {held['median_abs']:.0%}, "
                      f"{spread} {held['max_abs']:.0%}")
        fit = fitted["fit"]
        out.print(f"{backend} fit (host-cpu unit '{fitted['unit']}'): efficiency "
                  f"{', '.join(f'{k} {v:.2f}' for k, v in fit['efficiency'].items())}; op overhead {fit['op_overhead_us']:.1f} us; "
                  f"run overhead {fit['run_overhead_ms']:.2f} ms; narrow channels {fit['narrow_channels']:g}; int8 efficiency "
                  f"{', '.join(f'{k} {v:.2f}' for k, v in fit['int8_efficiency'].items()) or '(no int8 models)'}"
                  + (f"; int8 ns per output position {', '.join(f'{k} {v:.0f}' for k, v in fit['int8_position_ns'].items())}."
                     if fit.get("int8_position_ns") else "."))
    out.print("Stored in the host-cpu cache.")
