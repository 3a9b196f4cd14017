"""The `effconv` command line: parse options, call the library, render with rich. Nothing else.

Exit codes: 0 ok, 1 verification or budget failed, 2 bad input (one-line error), 3 internal error.
"""

from __future__ import annotations

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
    "Start with `effconv inspect SPEC`, then `effconv convert SPEC --to onnx --out DIR`.",
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
    as_json: bool = JsonFlag,
    allow_import: bool = AllowImport,
) -> None:
    """Export a spec's model part and verify it against PyTorch on a seeded random input.

    Writes DIR/NAME.onnx (.mlpackage, .tflite) and the manifest DIR/NAME.json. Core ML and TFLite
    exports first apply effconv's lossless legalizing rewrites (checked against the original).
    Exit 1 if the outputs differ by more than --atol or an op no backend unit can run remains.

    Example: `effconv convert examples/specs/hunyuan-tiny.yaml --to tflite --out out/`
    """
    from effconv.converters.convert import convert as run_convert
    from effconv.profile.lint import BackendBlocked
    from effconv.spec import load_spec

    loaded = load_spec(spec)
    with err.status(f"Exporting {loaded.spec.name} ({loaded.spec.part}) to {to}..."):
        try:
            manifest = run_convert(loaded, to, out_dir, atol=atol, opset=opset, allow_import=allow_import,
                                   precision=precision)
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


LINT_TABLE_WIDTH = 160


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
    # piped output (logs, CI) has no terminal width to respect: keep the table readable there
    (out if out.is_terminal else Console(width=LINT_TABLE_WIDTH)).print(table)


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
    Rules and their sources: effconv/profile/rules/BACKEND.yaml.

    Example: `effconv lint examples/specs/wan21-tiny.yaml --backend coreml --device iphone16pro`
    """
    from effconv.profile.lint import check_exportable, lint_target

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


def main() -> None:
    """Console entry point: maps errors to exit codes, one line each, tracebacks only with --debug."""
    try:
        app(standalone_mode=False)
    except EffconvError as exc:
        if is_debug():
            raise
        _report_error(exc.one_line(), exc.exit_code)
    except click.exceptions.Abort:
        _report_error("interrupted.", 130)
    except click.exceptions.ClickException as exc:
        _report_error(" ".join(exc.format_message().split()) + " (see --help)", 2)
    except Exception as exc:  # a bug in effconv or a library: say so in one line, unless debugging
        if is_debug():
            raise
        detail = " ".join(str(exc).split())[:300]
        _report_error(f"internal error: {type(exc).__name__}: {detail} (rerun with --debug for the traceback)", 3)
