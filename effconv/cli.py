"""The `effconv` command line: parse options, call the library, render with rich. Nothing else.

Exit codes: 0 ok, 1 verification or budget failed, 2 bad input (one-line error), 3 internal error.
"""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.table import Table

from effconv import __version__
from effconv.errors import EffconvError, VerificationFailed
from effconv.quiet import is_debug, set_debug

app = typer.Typer(
    name="effconv",
    help="Make a video VAE decoder run on phones: rewrite it Turbo-VAED style, distill, quantize, "
    "export to ONNX / Core ML / TFLite, and profile it.\n\n"
    "Start with `effconv run demo --out runs/demo` (the whole pipeline on the shipped demo), or "
    "`effconv inspect SPEC`, then `effconv convert SPEC --to onnx --out DIR`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
out = Console()
err = Console(stderr=True)

SpecArg = typer.Argument(..., help="Model spec YAML (see README 'Model spec').", show_default=False)
AllowImport = typer.Option(False, "--allow-import", help="Allow a spec's `factory` to import and run your code.")
JsonFlag = typer.Option(False, "--json", help="Print the manifest as JSON on stdout instead of a table.")


def _version(value: bool) -> None:
    if value:
        out.print(f"effconv {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show library logs and full tracebacks."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    set_debug(debug)


def _fmt_shape(shape) -> str:
    return "x".join(str(d) for d in shape)


def _print_manifest(manifest, as_json: bool, out_dir: Path) -> None:
    if as_json:
        print(manifest.to_json())
        return
    verify = manifest.verify
    table = Table(title=f"{manifest.name} -> {manifest.backend}", show_header=False)
    table.add_row("artifact", str(out_dir / manifest.artifact))
    table.add_row("manifest", str(out_dir / f"{manifest.name}.json"))
    table.add_row("params", f"{manifest.params:,}")
    for tensor in manifest.inputs:
        table.add_row(f"input  {tensor.name}", f"{_fmt_shape(tensor.shape)} {tensor.dtype}")
    for tensor in manifest.outputs:
        table.add_row(f"output {tensor.name}", f"{_fmt_shape(tensor.shape)} {tensor.dtype}")
    if "max_abs_err" in verify:
        table.add_row("max abs error", f"{verify['max_abs_err']:.3g} (atol {verify['atol']:g})")
        table.add_row("PSNR vs PyTorch", f"{verify['psnr_db']:.1f} dB")
    _add_legalize_rows(table, manifest)
    table.add_row("verified", "[green]yes[/]" if verify["passed"] else "[red]NO[/]")
    out.print(table)


def _add_legalize_rows(table: Table, manifest) -> None:
    """Core ML / TFLite extras: rewrites applied, their checked error, and what could not be run."""
    extra = manifest.model_extra or {}
    legal = extra.get("legalize")
    if legal:
        applied = ", ".join(f"{name} x{count}" for name, count in legal["rewrites"].items() if count) or "none needed"
        table.add_row("rewrites", applied)
        table.add_row("rewrites vs original", f"max abs error {legal['equivalence']['max_abs_err']:.3g} (fp32)")
    verify = manifest.verify
    if "prediction" in verify and verify["prediction"] != "run":
        table.add_row("prediction", f"[yellow]{verify['prediction']}[/]")
        table.add_row("max tensor rank", f"{verify['max_rank']} (Core ML allows 5)")
        simulated = verify.get("fp16_simulation")
        if isinstance(simulated, dict):
            table.add_row("fp16 (simulated in torch)", f"max abs error {simulated['max_abs_err']:.3g}, "
                          f"PSNR {simulated['psnr_db']:.1f} dB")
    export = extra.get("export") or {}
    if "minimum_deployment_target" in export:
        table.add_row("deployment target", f"{export['minimum_deployment_target']} ({export['precision']})")


@app.command()
def convert(
    spec: Path = SpecArg,
    to: str = typer.Option("onnx", "--to", help="Target backend: onnx, coreml or tflite."),
    out_dir: Path = typer.Option(..., "--out", help="Output directory (created if missing).", show_default=False),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (>= 18 for the dynamo exporter)."),
    atol: float | None = typer.Option(None, "--atol", help="Max abs error allowed vs PyTorch [default: 1e-3; 5e-2 for Core ML fp16]."),
    precision: str = typer.Option("fp16", "--precision", help="Core ML compute precision: fp16 (ANE) or fp32."),
    conv2d: bool = typer.Option(False, "--conv2d", help="ONNX: write every Conv3d as Conv2d over time-stacked frames "
                                "(lossless). Faster in onnxruntime for Turbo-VAED students (narrow and depthwise "
                                "convs), slower for teachers; see docs/student.md."),
    as_json: bool = JsonFlag,
    allow_import: bool = AllowImport,
) -> None:
    """Export a spec's model part and verify it against PyTorch on a seeded random input.

    Writes DIR/NAME.onnx (.mlpackage, .tflite) and the manifest DIR/NAME.json. Core ML and TFLite
    exports first apply effconv's lossless legalizing rewrites (checked against the original); ONNX
    exports do with --conv2d. Exit 1 if the outputs differ by more than --atol or an op no backend
    unit can run remains.

    Example: `effconv convert examples/specs/hunyuan-tiny.yaml --to tflite --out out/`
    """
    from effconv.convert.stage import convert as run_convert
    from effconv.legalize.lint import BackendBlocked
    from effconv.spec import load_spec

    loaded = load_spec(spec)
    with err.status(f"Exporting {loaded.spec.name} ({loaded.spec.part}) to {to}..."):
        try:
            manifest = run_convert(loaded, to, out_dir, atol=atol, opset=opset, allow_import=allow_import,
                                   precision=precision, conv2d=conv2d)
        except VerificationFailed as failure:
            if failure.manifest is not None:
                _print_manifest(failure.manifest, as_json, out_dir)
            raise
        except BackendBlocked as blocked:
            _print_lint(blocked.report, as_json, problems_only=True)
            raise
    _print_manifest(manifest, as_json, out_dir)


@app.command()
def inspect(
    spec: Path = SpecArg,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    allow_import: bool = AllowImport,
) -> None:
    """Show a model part's parameters per block, latent and output shapes, and known backends.

    Example: `effconv inspect examples/specs/wan21-tiny.yaml`
    """
    from effconv.models.loader import load_model
    from effconv.models.summary import summarize
    from effconv.spec import load_spec

    with err.status("Building model..."):
        summary = summarize(load_model(load_spec(spec), allow_import=allow_import))
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    blocks = Table(title=f"{summary['name']}: {summary['class']} {summary['part']}")
    blocks.add_column("block")
    blocks.add_column("params", justify="right")
    blocks.add_column("share", justify="right")
    for block, count in summary["blocks"].items():
        blocks.add_row(block, f"{count:,}", f"{100 * count / max(summary['params'], 1):.1f}%")
    blocks.add_row("[bold]total[/]", f"[bold]{summary['params']:,}[/]", "")
    out.print(blocks)
    comp = summary["compression"]
    out.print(
        f"compression: {comp['temporal']}x time, {comp['spatial']}x space, "
        f"{comp['latent_channels']} latent channels{' (causal first frame)' if comp['causal'] else ''}"
    )
    out.print(f"input  {summary['input']['name']}: {_fmt_shape(summary['input']['shape'])}")
    out.print(f"output {summary['output']['name']}: {_fmt_shape(summary['output']['shape'])}")
    for backend, status in summary["backends"].items():
        out.print(f"backend {backend}: {status}")


@app.command()
def devices(as_json: bool = typer.Option(False, "--json", help="Print the profiles as JSON.")) -> None:
    """List the device profiles `effconv profile --device` accepts, with their key figures.

    host-cpu is measured on this machine the first time (a few seconds) and cached. Add your own
    device with `--device path/to/my.yaml` (same schema; see docs/profile.md).

    Example: `effconv devices`
    """
    from effconv.profile.devices import builtin_names, load_device

    profiles = [load_device(name) for name in builtin_names()]
    if as_json:
        print(json.dumps([p.model_dump(mode="json") for p in profiles], indent=2))
        return
    table = Table(title="device profiles (vendor figures or derived; host-cpu measured here)")
    for column in ("name", "compute units: peak TOP/s", "DRAM GB/s", "RAM GB", "backends", "band"):
        table.add_column(column)
    for p in profiles:
        units = "\n".join(
            f"{name} ({u.kind}): " + ", ".join(f"{d} {f.value / 1000:.2g}" for d, f in u.peak_gops.items())
            for name, u in p.units.items()
        )
        table.add_row(p.name, units, f"{p.memory.bandwidth_gbps.value:.1f}", f"{p.memory.ram_gb.value:.0f}",
                      ", ".join(p.backends), f"x{1 + p.model_uncertainty:.1f}")
    out.print(table)
    out.print("Every figure has a source and an uncertainty in its YAML (effconv/device_profiles/); phone "
              "latencies are estimates, not measurements.")


def _render_profile(result, top: int) -> None:
    data = result.to_dict(top)
    est = result.estimate
    out.print(f"[bold]{data['model']}[/] on [bold]{data['device']}[/] ({result.device.description}); {data['source']}")
    ops = Table(title=f"top {top} ops by estimated time")
    for column in ("op", "kind", "unit", "dtype", "GFLOP", "MB", "ms", "bound"):
        ops.add_column(column, justify="right" if column in ("GFLOP", "MB", "ms") else "left")
    for op in data["top_ops"]:
        handoff = f" (+{op['handoff_ms']:.2f} hand-off)" if op["handoff_ms"] else ""
        ops.add_row(op["name"][:40], op["kind"], op["unit"], op["dtype"], f"{op['gflops']:.3f}", f"{op['mb']:.2f}",
                    f"{op['ms']:.3f}{handoff}", op["bound"])
    out.print(ops)
    shares = ", ".join(f"{k} {v:.1f}" for k, v in data["by_category_ms"].items() if v >= 0.05)
    out.print(f"by op category (ms): {shares}")
    if len(data["by_unit_ms"]) > 1:
        out.print(f"by compute unit (ms): {', '.join(f'{k} {v:.1f}' for k, v in data['by_unit_ms'].items())}")
    if data["fallbacks"]:
        fallen = ", ".join(f"{k} x{v}" for k, v in sorted(data["fallbacks"].items(), key=lambda kv: -kv[1]))
        out.print(f"[yellow]ops off {next(iter(result.device.units))}[/] (each hand-off costs {result.device.fallback_us.value:g} us + a copy): {fallen}")
    for note in data["notes"]:
        out.print(f"[yellow]note:[/] {note}")
    latency, fps, memory = data["latency_ms"], data["fps"], data["memory"]
    summary = Table(show_header=False, title="estimate (a model, not a measurement)")
    summary.add_row("latency", f"{latency['estimate']:.1f} ms  (band {latency['low']:.1f} - {latency['high']:.1f} ms)")
    summary.add_row("frames / FPS", f"{data['frames']} frames -> {fps['estimate']:.1f} FPS  (band {fps['low']:.1f} - {fps['high']:.1f})")
    summary.add_row("compute", f"{data['gflops']:.2f} GFLOP, {est.dtype}")
    fits = "[green]fits[/]" if memory["fits"] else "[red]does NOT fit[/]"
    summary.add_row("memory", f"{memory['total_mb']:.1f} MB peak (weights {memory['weights_mb']:.1f} + activations "
                    f"{memory['peak_activations_mb']:.1f}) of {memory['usable_ram_mb']:.0f} MB usable: {fits}")
    if not memory["fits"]:
        chunk = memory["chunk_latent_frames"]
        advice = (f"decode in chunks of {chunk} latent frames" + (f" ({memory['chunk_frames']} video frames)" if memory["chunk_frames"] else "")
                  if chunk else "even one latent frame does not fit: lower the resolution or tile spatially")
        summary.add_row("suggestion", advice)
    if data["measured"]:
        m = data["measured"]
        summary.add_row("measured here", f"{m['median_ms']:.1f} ms median of {m['repeats']} (after {m['warmup']} warm-up), "
                        f"onnxruntime CPU, {m['threads']} threads")
        summary.add_row("predicted vs measured", f"{latency['estimate']:.1f} vs {m['median_ms']:.1f} ms: {data['rel_error']:+.0%}")
    elif result.threads:
        summary.add_row("threads", f"{result.threads} (onnxruntime intra-op)")
    if data["budget_ms"] is not None:
        verdict = "[green]PASS[/]" if data["passed"] else "[red]FAIL[/]"
        summary.add_row("budget", f"{data['budget_ms']:.1f} ms ({data['budget_from']}), judged on {data['judged_on']}: {verdict}")
    out.print(summary)
    out.print(f"[dim]{result.device.validation}[/]", highlight=False)


@app.command()
def profile(
    target: Path = typer.Argument(..., help="An .onnx written by effconv (manifest beside it) or a spec YAML.", show_default=False),
    device: str = typer.Option(..., "--device", help="Device profile name (see `effconv devices`) or a profile YAML path.", show_default=False),
    resolution: str | None = typer.Option(None, "--resolution", help="480p (480x832), 720p (720x1280), 1080p (1088x1920) or HxW."),
    frames: int | None = typer.Option(None, "--frames", help="Video frames per decode (must fit the temporal compression)."),
    budget_ms: float | None = typer.Option(None, "--budget-ms", help="Latency budget per decode call, ms."),
    fps: float | None = typer.Option(None, "--fps", help="Budget as video frames per second (real time = 24)."),
    do_measure: bool = typer.Option(False, "--measure", help="Also run it here with onnxruntime (host-cpu only)."),
    threads: int | None = typer.Option(None, "--threads", help="host-cpu threads [default: all cores]."),
    dtype: str | None = typer.Option(None, "--dtype", help="Cost as fp32/fp16/int8 instead of the artifact's dtype."),
    top: int = typer.Option(10, "--top", help="How many ops to list."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a latency breakdown + roofline chart (PNG)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    allow_import: bool = AllowImport,
) -> None:
    """Estimate latency, FPS and memory on a device (per-op roofline with an error band); judge a budget.

    Exit 1 when the budget (--budget-ms or --fps) is missed; the result is printed first.

    Example: `effconv profile out/student.onnx --device iphone16pro --resolution 720p --fps 24`

    Example: `effconv profile examples/specs/ltx-tiny.yaml --device host-cpu --measure`
    """
    from effconv.profile.run import check_budget, run

    with err.status(f"Profiling {target.name} on {device}..."):
        result = run(target, device, resolution, frames, dtype, budget_ms, fps, do_measure, threads, allow_import=allow_import)
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


def _render_calibration(result: dict) -> None:
    table = Table(title="host-cpu estimator error (|predicted - measured| / measured)")
    for column in ("model", "set", "measured ms", "before ms", "after ms", "error before", "error after"):
        table.add_column(column)
    for before, after in zip(result["before"]["rows"], result["after"]["rows"]):
        table.add_row(before["name"], "held-out" if before["held_out"] else "fit", f"{before['measured_ms']:.1f}",
                      f"{before['predicted_ms']:.1f}", f"{after['predicted_ms']:.1f}",
                      f"{before['rel_error']:+.0%}", f"{after['rel_error']:+.0%}")
    out.print(table)
    for label in ("before", "after"):
        held = result[label]["held_out"]
        out.print(f"held-out ({held['n']} models) {label}: median {held['median_abs']:.0%}, p90 {held['p90_abs']:.0%}, max {held['max_abs']:.0%}")
    fit = result["fit"]
    out.print(f"fit: efficiency {', '.join(f'{k} {v:.2f}' for k, v in fit['efficiency'].items())}; "
              f"op overhead {fit['op_overhead_us']:.1f} us; narrow channels {fit['narrow_channels']:g}; "
              f"wall/kernels {fit['wall_over_kernels']:.2f}. Stored in the host-cpu cache.")


@app.command()
def calibrate(
    threads: int | None = typer.Option(None, "--threads", help="onnxruntime threads [default: all cores]."),
    repeats: int = typer.Option(10, "--repeats", help="Timed runs per model (median is used)."),
    remeasure: bool = typer.Option(False, "--remeasure", help="Re-measure host peak GFLOP/s and bandwidth first."),
    report: Path | None = typer.Option(None, "--report", help="Also write the full result as JSON to this file."),
) -> None:
    """Fit host-cpu's per-op-category efficiencies on measured models and report held-out error.

    Exports 16 small decoders (teachers of the five families at two sizes, and students), measures
    them with onnxruntime in interleaved rounds (medians), fits on half, reports the estimator's
    error before and after on the other half, and caches the fit so `effconv profile --device
    host-cpu` uses it. Takes a few minutes.

    Example: `effconv calibrate --threads 1`
    """
    from effconv.profile.calibrate import calibrate as run_calibrate
    from effconv.host import default_threads
    from effconv.profile.devices import HOST, load_device

    if repeats < 1 or (threads is not None and threads < 1):
        raise EffconvError("--repeats and --threads must be at least 1.", "pass positive numbers.")
    threads = threads or default_threads()
    load_device(HOST, threads=threads, remeasure=remeasure)
    result = run_calibrate(threads, repeats=repeats, progress=lambda m: err.print(m, highlight=False))
    _render_calibration(result)
    if report is not None:
        from effconv.artifacts import staged_output

        with staged_output(report.parent) as stage:
            (stage / report.name).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
        out.print(f"report: {report}")


WIDE_TABLE_WIDTH = 160


def _print_wide(table: Table) -> None:
    """Piped output (logs, CI) has no terminal width to respect: keep wide tables readable there."""
    (out if out.is_terminal else Console(width=WIDE_TABLE_WIDTH)).print(table)


def _mark(illegal: int, count: int) -> str:
    if not illegal:
        return "[green]yes[/]"
    return "[red]no[/]" if illegal == count else f"[yellow]no {illegal}/{count}[/]"


def _print_lint(report, as_json: bool, problems_only: bool = False, title: str = "") -> None:
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return
    device = f" on {report.device}" if report.device else ""
    table = Table(title=title or f"{report.backend}{device}: op legality per compute unit")
    table.add_column("op", no_wrap=True)
    table.add_column("count", justify="right")
    for unit in report.units:
        table.add_column(unit, no_wrap=True)
    table.add_column("why not", ratio=3)
    table.add_column("fixed by", no_wrap=True)
    for row in report.problems if problems_only else report.rows:
        marks = [_mark(row.illegal[unit], row.count) for unit in report.units]
        name = f"[bold red]{row.op}[/]" if row.blocking else row.op
        table.add_row(name, str(row.count), *marks, "; ".join(row.why), "\n".join(row.fix))
    _print_wide(table)


@app.command()
def lint(
    target: Path = typer.Argument(..., help="Model spec YAML, or an artifact effconv wrote (its manifest sits beside it).",
                                  show_default=False),
    backend: str = typer.Option(..., "--backend", help="onnx, coreml or tflite.", show_default=False),
    device: str | None = typer.Option(None, "--device", help="Only this device's compute units, e.g. iphone16pro, "
                                      "pixel9, galaxy-s24, sd8-elite, rpi5, host-cpu."),
    all_ops: bool = typer.Option(False, "--all", help="List every op kind, not only those with a problem."),
    as_json: bool = typer.Option(False, "--json", help="Print both reports as JSON."),
    allow_import: bool = AllowImport,
) -> None:
    """Say, per op kind, which compute units of a backend can run it, why not, and which rewrite fixes it.

    Lints the graph as exported, then again after effconv's legalizing rewrites for that backend
    (what `convert` exports). Exit 1 if an op that no unit can run remains after the rewrites.
    Rules and their sources: effconv/legalize/rules/BACKEND.yaml.

    Example: `effconv lint examples/specs/wan21-tiny.yaml --backend coreml --device iphone16pro`
    """
    from effconv.legalize.lint import check_exportable, lint_target

    with err.status(f"Linting for {backend}..."):
        result = lint_target(target, backend, device, allow_import=allow_import)
    if as_json:
        print(json.dumps({"before_rewrites": result.before.as_dict(), "after_rewrites": result.after.as_dict(),
                          "rewrites": result.rewrites}, indent=2))
    else:
        _print_lint(result.before, False, problems_only=not all_ops,
                    title=f"{backend}{' on ' + device if device else ''}: ops as exported (no = cannot run there)")
        if result.rewrites:
            applied = ", ".join(f"{name} x{count}" for name, count in result.rewrites.items() if count) or "none"
            out.print(f"effconv rewrites for {backend}: {applied}")
        if result.after.problems:
            _print_lint(result.after, False, problems_only=True, title="after effconv's rewrites")
        blocked = ", ".join(row.op for row in result.after.blocking)
        out.print(f"[red]blocked after rewrites: {blocked}[/]" if blocked else
                  f"[green]after rewrites nothing blocks {backend} export[/]")
    check_exportable(result.after, "after effconv's rewrites")


def _report_error(message: str, code: int) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


# Typer >= 0.20 raises the exceptions of its own vendored copy of click, older Typer click's.
USAGE_ERRORS = (click.exceptions.ClickException, getattr(typer, "TyperException", click.exceptions.ClickException))
ABORTS = (click.exceptions.Abort, typer.Abort)
# Failures of the user's files or disk rather than of effconv: one line and exit 2, like bad input.
ENVIRONMENT_ERRNOS = {errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT,
                      errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.EIO}


def main() -> None:
    """Console entry point: maps errors to exit codes, one line each, tracebacks only with --debug."""
    try:
        app(standalone_mode=False)
    except EffconvError as exc:
        if is_debug():
            raise
        _report_error(exc.one_line(), exc.exit_code)
    except ABORTS:
        _report_error("interrupted.", 130)
    except USAGE_ERRORS as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `effconv`: its message is the help
            print(exc.format_message())
            sys.exit(0)
        context = getattr(exc, "ctx", None)
        command = context.command_path if context is not None else "effconv"
        _report_error(" ".join(exc.format_message().split()) + f" Fix: see `{command} --help`.", 2)
    except Exception as exc:  # a bug in effconv or a library: say so in one line, unless debugging
        if is_debug():
            raise
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS and exc.filename is not None:
            _report_error(f"cannot use '{exc.filename}': {exc.strerror}. Fix: check the path, its permissions and free disk space.", 2)
        detail = " ".join(str(exc).split())[:300]
        _report_error(f"internal error: {type(exc).__name__}: {detail} (rerun with --debug for the traceback)", 3)


def _print_rewrite(manifest, out_dir: Path) -> None:
    comparison = manifest.comparison
    table = Table(title=f"{manifest.teacher['name']} -> {manifest.name} (recipe {Path(manifest.recipe['source']).stem})")
    table.add_column("stage")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")
    table.add_column("student/teacher", justify="right")
    for stage, counts in comparison["stages"].items():
        share = f"{counts['student'] / counts['teacher']:.2f}" if counts["teacher"] else "-"
        table.add_row(f"params {stage}", f"{counts['teacher']:,}", f"{counts['student']:,}", share)
    params, flops, shape = comparison["params"], comparison["flops_per_frame"], comparison["output_shape"]
    table.add_row("[bold]params total[/]", f"{params['teacher']:,}", f"{params['student']:,}", f"[bold]{params['ratio']:.1%}[/]")
    table.add_row("GFLOPs / output frame", f"{flops['teacher'] / 1e9:.3g}", f"{flops['student'] / 1e9:.3g}", f"{flops['ratio']:.1%}")
    table.add_row("output shape", _fmt_shape(shape["teacher"]), _fmt_shape(shape["student"]),
                  "[green]equal[/]" if shape["equal"] else "[red]DIFFERENT[/]")
    out.print(table)
    if params["ratio"] >= 1:
        err.print(f"[yellow]warning:[/] the student has {params['ratio']:.1f}x the teacher decoder's parameters: this "
                  "recipe's widths are absolute, made for published configs; for a small teacher use --recipe tiny "
                  "or a recipe with `width_scale` below 1.")
    initialized = {k: v for k, v in manifest.init["tensors"].items() if not v.startswith("kept random")}
    out.print(f"init: {manifest.init['mode']}" + (f" ({len(initialized)} tensor groups from the teacher)" if initialized else ""))
    out.print(f"student: {out_dir / manifest.artifact}/  spec: {out_dir / (manifest.name + '.yaml')}  "
              f"manifest: {out_dir / (manifest.name + '.json')}")


@app.command()
def rewrite(
    spec: Path = SpecArg,
    recipe: str = typer.Option("turbo-vaed-mobile", "--recipe",
                               help="Recipe YAML, or a packaged one: turbo-vaed-mobile (<=15% of a published "
                                    "teacher's params, the fastest), turbo-vaed (the paper's layout), "
                                    "turbo-vaed-lite, tiny (for tiny test teachers)."),
    out_dir: Path = typer.Option(..., "--out", help="Output directory (created if missing).", show_default=False),
    init: str | None = typer.Option(None, "--init", help="random | from-teacher [default: the recipe's `init`]."),
    as_json: bool = JsonFlag,
    allow_import: bool = AllowImport,
) -> None:
    """Build a Turbo-VAED student decoder for a teacher spec and compare it with the teacher.

    Writes DIR/NAME-student/ (config + safetensors; random init until distilled), the spec
    DIR/NAME-student.yaml (for `effconv convert`) and the manifest DIR/NAME-student.json.

    Example: `effconv rewrite examples/specs/hunyuan-tiny.yaml --recipe tiny --out out/`
    """
    from effconv.rewrite.stage import rewrite as run_rewrite
    from effconv.spec import load_spec

    loaded = load_spec(spec)
    with err.status(f"Building the student of {loaded.spec.name}..."):
        manifest = run_rewrite(loaded, recipe, out_dir, init=init, allow_import=allow_import)
    if as_json:
        print(manifest.to_json())
        return
    _print_rewrite(manifest, out_dir)


def _warn_skipped(skipped) -> None:
    for path, reason in skipped:
        err.print(f"[yellow]warning:[/] skipping {path}: {reason}", highlight=False, soft_wrap=True)


def _step_rate():
    """(step, elapsed) -> it/s over this run's steps only: after --resume, steps start at the checkpoint's, not 0."""
    start = None

    def rate(step: int, elapsed: float) -> float:
        nonlocal start
        if start is None:
            start = step - 1  # elapsed is timed from before this run's first step
        return (step - start) / elapsed if elapsed > 0 else 0.0

    return rate


def _relaunch_with_torchrun(nproc: int) -> None:
    """`effconv distill --nproc N ...` = `torchrun --nproc_per_node N -m effconv distill ...`."""
    import subprocess

    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "effconv", *args]
    sys.exit(subprocess.call(command))


@app.command()
def distill(
    spec: Path = SpecArg,
    recipe: str = typer.Option(..., "--recipe", help="Recipe YAML or packaged name (its student: and distill: sections).", show_default=False),
    data: list[Path] = typer.Option(..., "--data", help="Training video files or folders (repeatable).", show_default=False),
    out_dir: Path = typer.Option(..., "--out", help="Output directory: checkpoints/, the student, distill.json.", show_default=False),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps [default: the recipe's]."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
    eval_data: list[Path] | None = typer.Option(None, "--eval-data", help="Held-out videos for periodic eval (repeatable)."),
    lpips: bool = typer.Option(False, "--lpips", help="Add LPIPS(VGG) loss (needs the lpips package and cached weights)."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes for DDP (launches torchrun; gloo on CPU, nccl on GPU)."),
    as_json: bool = JsonFlag,
    allow_import: bool = AllowImport,
) -> None:
    """Distill the teacher's decoder into a Turbo-VAED student on real video (decoder-only).

    The frozen teacher encodes clips to latents; the student learns to reconstruct the frames
    (L1 + SSIM [+ LPIPS] + feature alignment). Checkpoints every K steps; `--resume` continues exactly.

    Example: `effconv distill examples/specs/demo-teacher.yaml --recipe demo --data effconv/assets/video --out runs/demo --steps 200`
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from effconv.distill.stage import distill as run_distill
    from effconv.distill.trainer import World
    from effconv.spec import load_spec

    if nproc > 1:
        _relaunch_with_torchrun(nproc)
    loaded = load_spec(spec)
    is_main = World.from_env().is_main
    columns = (TextColumn("distill"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    with Progress(*columns, console=err, disable=not is_main, transient=True) as progress:
        task = progress.add_task("distill", total=None, info="loading teacher and video...")

        step_rate = _step_rate()

        def on_step(record: dict, elapsed: float) -> None:
            terms = " ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in {"step"})
            rate = step_rate(record["step"], elapsed)
            progress.update(task, completed=record["step"], info=f"{terms} | {rate:.2f} it/s")

        result = run_distill(
            loaded, recipe, data, out_dir, steps=steps, resume=resume, eval_data=eval_data, lpips=lpips,
            allow_import=allow_import, on_step=on_step, on_videos=lambda videos: _warn_skipped(videos.skipped),
        )
    if result.manifest is None:
        return
    manifest = result.manifest
    if as_json:
        print(manifest.to_json())
        return
    run = manifest.run
    out.print(f"distilled {run['steps']} steps ({run['steps_this_run']} this run) in {run['wall_seconds']:.0f} s "
              f"({run['steps_per_second']} steps/s on {run['device']}, {run['world_size']} process(es))")
    if "eval_psnr_db" in manifest.verify:
        out.print(f"held-out PSNR (EMA student vs real frames): {manifest.verify['eval_psnr_db']:.2f} dB")
    out.print(f"student: {out_dir / manifest.artifact}/  spec: {out_dir / (manifest.artifact + '.yaml')}  "
              f"manifest: {out_dir / 'distill.json'}")


@app.command(name="eval")
def evaluate(
    spec: Path = typer.Argument(..., help="A student spec (from rewrite/distill) or a teacher spec.", show_default=False),
    data: list[Path] = typer.Option(..., "--data", help="Video files or folders (repeatable).", show_default=False),
    teacher: Path | None = typer.Option(None, "--teacher", help="Teacher spec [default: from the student's manifest]."),
    save_frames: Path | None = typer.Option(None, "--save-frames", help="Write ground truth / teacher / student PNG strips here."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    allow_import: bool = AllowImport,
) -> None:
    """PSNR / SSIM of the teacher VAE and of teacher encoder -> student decoder on real video.

    Retention = student PSNR / teacher PSNR (the paper reports 96.9%).

    Example: `effconv eval runs/demo/demo-teacher-student.yaml --data effconv/assets/video --save-frames runs/frames`
    """
    from effconv.distill.evaluate import evaluate as run_eval

    with err.status("Evaluating..."):
        summary = run_eval(spec, data, teacher_path=teacher, save_frames=save_frames, allow_import=allow_import)
    _warn_skipped([(s["video"], s["reason"]) for s in summary["skipped"]])
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    has_student = "retention" in summary
    table = Table(title=f"reconstruction quality ({summary['clip']['frames']}x{summary['clip']['height']}x{summary['clip']['width']})")
    for column in ["video", "teacher PSNR", "teacher SSIM"] + (["student PSNR", "student SSIM"] if has_student else []):
        table.add_column(column, justify="left" if column == "video" else "right")
    for row in summary["videos"]:
        cells = [Path(row["video"]).name, f"{row['teacher_psnr_db']:.2f}", f"{row['teacher_ssim']:.4f}"]
        if has_student:
            cells += [f"{row['student_psnr_db']:.2f}", f"{row['student_ssim']:.4f}"]
        table.add_row(*cells)
    out.print(table)
    if has_student:
        out.print(f"retention: {summary['retention']:.1%} (student {summary['mean_student_psnr_db']:.2f} dB / "
                  f"teacher {summary['mean_teacher_psnr_db']:.2f} dB); params {summary['student_params']:,} vs "
                  f"{summary['teacher_params']:,} ({summary['student_params'] / summary['teacher_params']:.1%})")
    for frame in summary.get("frames", []):
        out.print(f"frames: {frame}")


def _plan_table(decisions) -> Table:
    table = Table(title="plan (times are estimates)")
    for column in ("stage", "action", "why", "estimate", "how estimated"):
        table.add_column(column, justify="right" if column == "estimate" else "left")
    colours = {"skip": "green", "run": "yellow", "resume": "yellow", "blocked": "red"}
    for d in decisions:
        seconds = f"~{d.estimate.seconds:.0f} s" if d.estimate else ""
        table.add_row(d.stage.name, f"[{colours[d.action]}]{d.action}[/]", d.reason, seconds,
                      d.estimate.basis if d.estimate else "")
    total = sum(d.estimate.seconds for d in decisions if d.estimate)
    table.caption = f"about {total / 60:.1f} min in all (an estimate)"
    return table


def _plan_json(decisions) -> list[dict]:
    return [{"stage": d.stage.name, "action": d.action, "reason": d.reason, "hash": d.hash,
             "estimate_seconds": round(d.estimate.seconds, 1) if d.estimate else None,
             "estimate_basis": d.estimate.basis if d.estimate else None} for d in decisions]


@app.command(name="run")
def run_pipeline(
    target: str = typer.Argument(..., metavar="RECIPE_OR_SPEC", show_default=False,
                                 help="A recipe (packaged name such as demo, or a YAML path) or a teacher spec YAML."),
    out_dir: Path = typer.Option(..., "--out", help="Run folder: one subfolder per stage, report.md, report.html.",
                                 show_default=False),
    recipe: str | None = typer.Option(None, "--recipe", help="With a spec: the recipe to use [default: turbo-vaed]."),
    device: list[str] | None = typer.Option(None, "--device", help="Profile on this device instead of the recipe's (repeatable)."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Distillation steps [default: the recipe's]."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print which stages would run or be skipped, with estimated times."),
    pretrained: Path | None = typer.Option(None, "--pretrained", help="The teacher's trained weights (save_pretrained dir)."),
    data: list[Path] | None = typer.Option(None, "--data", help="Training videos, files or folders (repeatable) [default: the recipe's]."),
    eval_data: list[Path] | None = typer.Option(None, "--eval-data", help="Eval videos (repeatable) [default: the recipe's, else --data]."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan and the outcome as JSON."),
    allow_import: bool = AllowImport,
) -> None:
    """The whole pipeline: distill -> eval -> convert -> quantize -> lint -> profile -> report.

    Each stage writes DIR/STAGE/ with its manifest, which records a hash of the stage's inputs. A
    rerun skips stages whose inputs are unchanged, redoes the rest and everything after them, and
    resumes an interrupted distillation from its last checkpoint. Exit 2 for bad input and exit 3 for
    an internal error, both naming the failed stage; exit 1 when an artifact failed its check (the
    report is still written).

    Example: `effconv run demo --out runs/demo`

    Example: `effconv run turbo-vaed-wan --pretrained ~/Wan2.1-T2V-1.3B-Diffusers --data clips/ --out runs/wan --dry-run`
    """
    from effconv.pipeline.plan import resolve
    from effconv.pipeline.runner import execute, plan

    inputs = resolve(target, recipe, steps, pretrained, data, eval_data, device, allow_import=allow_import)
    with err.status("Planning (hashing inputs)..."):
        decisions = plan(inputs, out_dir)
    if dry_run:
        if as_json:
            print(json.dumps({"out": str(out_dir), "plan": _plan_json(decisions)}, indent=2))
        else:
            _print_wide(_plan_table(decisions))
        return
    if not as_json:
        _print_wide(_plan_table(decisions))
    progress = _RunProgress()
    try:
        result = execute(inputs, out_dir, on_event=progress,
                         on_warning=lambda message: err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True))
    finally:
        progress.close()
    if as_json:
        print(json.dumps({"out": str(out_dir), "plan": _plan_json(decisions), "report": str(result.report),
                          "stages": [vars(o) for o in result.outcomes]}, indent=2, default=str))
    else:
        out.print(f"report: {result.report} (and {result.report.with_suffix('.html')})")
    result.check()


class _RunProgress:
    """Stage start/finish lines on stderr, and a transient bar while distillation trains."""

    def __init__(self):
        self.bar = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __call__(self, kind: str, decision, info: dict) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        name = decision.stage.name
        if kind == "start" and decision.action in ("run", "resume"):
            estimate = f" (estimate ~{decision.estimate.seconds:.0f} s)" if decision.estimate else ""
            err.print(f"{name}: {decision.action}{estimate}...", highlight=False)
        elif kind == "step":
            if self.bar is None:
                columns = (TextColumn(name), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                           TimeRemainingColumn())
                self.bar = Progress(*columns, console=err, transient=True)
                self.bar.start()
                self.task = self.bar.add_task(name, total=decision.stage.settings["distill"]["steps"], info="")
            loss = info["record"].get("total")
            self.bar.update(self.task, completed=info["record"]["step"], info=f"loss {loss:.4f}" if loss is not None else "")
        elif kind == "done":
            self.close()
            outcome = info["outcome"]
            if decision.action in ("run", "resume"):
                verdict = "done" if outcome.passed else f"[red]FAILED its check[/]: {outcome.message}"
                err.print(f"{name}: {verdict} in {outcome.seconds:.1f} s", highlight=False, soft_wrap=True)
            else:
                err.print(f"{name}: {decision.action} ({decision.reason})", highlight=False)


@app.command()
def quantize(
    artifact: Path = typer.Argument(..., help="An .onnx, .mlpackage or .tflite written by `effconv convert`.", show_default=False),
    out_dir: Path = typer.Option(..., "--out", help="Output directory for NAME-int8.* and NAME-int8.json.", show_default=False),
    calib: list[str] | None = typer.Option(
        None, "--calib", help="Calibration videos/folders (repeatable), one .npy/.npz latents file, or `random` "
        "(no ground truth; warned) [default: the bundled real clip].", show_default=False),
    samples: int = typer.Option(16, "--samples", help="Calibration clips drawn from the videos; a quarter is held out to measure quality."),
    max_psnr_drop: float | None = typer.Option(0.3, "--max-psnr-drop", help="Largest PSNR loss (dB, held-out ground truth) allowed; exit 1 beyond it."),
    min_psnr_vs_float: float = typer.Option(30.0, "--min-psnr-vs-float", help="Lowest PSNR (dB) of the int8 output against "
                                            "the float artifact's, ground truth or not; exit 1 below it (0 turns it off)."),
    weights_only: bool = typer.Option(False, "--weights-only", help="Only weights in int8 (ONNX: dynamic quantization), for size."),
    teacher: Path | None = typer.Option(None, "--teacher", help="Teacher spec whose encoder makes latents [default: from the manifests]."),
    eval_data: list[Path] | None = typer.Option(None, "--eval-data", help="Videos kept out of calibration to measure quality (repeatable)."),
    activation: str = typer.Option("auto", "--activation", help="ONNX activation type: auto (the faster here), uint8 or int8."),
    all_nodes: bool = typer.Option(False, "--all-nodes", help="ONNX: int8 for every Conv/MatMul, even where this host's int8 "
                                   "kernels are slower (when the target is not this CPU)."),
    sensitivity: bool = typer.Option(False, "--sensitivity", help="ONNX: always compute the per-node sensitivity table "
                                     "(one quantization and run per node) [default: only when the gate needs it]."),
    as_json: bool = JsonFlag,
) -> None:
    """Per-channel int8 post-training quantization, with a measured quality gate.

    ONNX: onnxruntime static QDQ; the activation type, which node kinds go int8 (only those whose int8
    kernels are faster here) and the calibration method are chosen by measurement, then the most
    sensitive nodes return to float until `--max-psnr-drop` holds. Core ML: W8A16 weights
    (coremltools). TFLite: ai-edge-quantizer static int8. Calibration latents come from the teacher
    encoder on real clips.

    Example: `effconv quantize out/demo-teacher-student.onnx --calib effconv/assets/video --out out/int8`
    """
    from effconv.quantize.stage import quantize_artifact

    with err.status("Quantizing...") as status:
        try:
            manifest = quantize_artifact(artifact, out_dir, calib=calib, samples=samples, max_psnr_drop=max_psnr_drop,
                                         weights_only=weights_only, teacher=teacher, eval_data=eval_data,
                                         activation=activation, select_by_speed=not all_nodes, sensitivity=sensitivity,
                                         min_psnr_vs_float=min_psnr_vs_float or None,
                                         progress=lambda message: status.update(f"Quantizing: {message}..."))
        except VerificationFailed as failure:
            if failure.manifest is not None:
                _print_quantize(failure.manifest, as_json, out_dir)
            raise
    _print_quantize(manifest, as_json, out_dir)


def _print_quantize(manifest, as_json: bool, out_dir: Path) -> None:
    if as_json:
        print(manifest.to_json())
        return
    report = manifest.quantize
    for note in report["notes"]:
        err.print(f"[yellow]note:[/] {note}")
    table = Table(title=f"{manifest.name} ({manifest.backend})", show_header=False)
    table.add_row("artifact", str(out_dir / manifest.artifact))
    table.add_row("scheme", report["scheme"])
    calibration = report["calibration"]
    table.add_row("calibration", f"{calibration['samples']} samples ({calibration['source']}); "
                                 f"{calibration['held_out']} held out ({calibration['held_out_source']})")
    size = report["size_bytes"]
    table.add_row("size", f"{size['float'] / 1e6:.2f} MB -> {size['quantized'] / 1e6:.2f} MB ({size['ratio']:.2f}x smaller)")
    quality = report["quality"]
    if "psnr_drop_db" in quality:
        table.add_row("PSNR vs ground truth", f"{quality['psnr_float_db']:.2f} -> {quality['psnr_quant_db']:.2f} dB "
                                              f"(drop {quality['psnr_drop_db']:+.3f} dB)")
        table.add_row("SSIM", f"{quality['ssim_float']:.4f} -> {quality['ssim_quant']:.4f} (drop {quality['ssim_drop']:+.4f})")
    table.add_row("PSNR vs float output", f"{quality['psnr_vs_float_db']:.1f} dB")
    kernels = report.get("int8_kernels")
    if kernels:
        weights = "7-bit weights (no VNNI: avoids int16 saturation)" if kernels["reduce_range"] else "8-bit weights"
        table.add_row("int8 kernels here", f"{weights}; kernels vs QDQ arithmetic {kernels['kernels_vs_qdq_psnr_db']:.1f} dB "
                                           f"({', '.join(kernels['cpu_int8_features']) or 'no int8 extensions'})")
    latency = report["latency_ms"]
    if "speedup" in latency:
        table.add_row("host latency", f"{latency['float']:.1f} -> {latency['quantized']:.1f} ms ({latency['speedup']:.2f}x, "
                                      f"{latency['threads']} threads)")
    else:
        table.add_row("host latency", f"not measured: {latency['not_measured']}")
    if report["float_nodes"]:
        reasons: dict[str, int] = {}
        for node in report["float_nodes"]:
            reasons[node["reason"]] = reasons.get(node["reason"], 0) + 1
        table.add_row("left in float", "\n".join(f"{count} x {reason}" for reason, count in reasons.items()))
    gate = report["gate"]
    table.add_row("quality gate", ("[green]passed[/]" if gate["passed"] else "[red]FAILED[/]") if gate["applied"]
                  else f"not applied ({gate['reason']})")
    out.print(table)
