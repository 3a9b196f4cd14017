"""`effconv convert` and `effconv inspect`: export a spec's model part, show what it is."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from effconv.cli.app import AllowImport, JsonFlag, SpecArg, app
from effconv.cli.render import err, fmt_shape, out, print_lint, progress_lines
from effconv.errors import VerificationFailed


@app.command()
def convert(
    spec: Path = SpecArg,
    to: str = typer.Option("onnx", "--to", help="Target backend: onnx, coreml, tflite or executorch."),
    out_dir: Path = typer.Option(..., "--out", help="Output directory (created if missing).", show_default=False),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (>= 18 for the dynamo exporter)."),
    atol: float | None = typer.Option(None, "--atol", help="Max abs error allowed vs PyTorch [default: 1e-3; 5e-2 for Core ML fp16]."),
    precision: str = typer.Option("fp16", "--precision", help="Core ML compute precision: fp16 (ANE) or fp32."),
    layout: str = typer.Option("auto", "--layout", help="ONNX: conv2d writes every Conv3d as Conv2d over time-stacked frames "
                               "(lossless), conv3d keeps them; auto: a student ships conv2d unless conv3d, exported and "
                               "timed beside it in onnxruntime on this host, is >= 1.3x faster by median and in each of >= 3 "
                               "rounds (every round and the host in the manifest); a teacher keeps conv3d. Force one when "
                               "the ONNX will run on another CPU. See docs/backends.md."),
    stream: int | None = typer.Option(None, "--stream", help="Students: write a streaming artifact that decodes this many "
                                      "latent frames per call, its temporal cache as extra inputs/outputs (every backend; "
                                      "see docs/streaming.md). Decode any length with `effconv decode`."),
    as_json: bool = JsonFlag,
    allow_import: bool = AllowImport,
) -> None:
    """Export a spec's model part and verify it against PyTorch on a seeded random input.

    Writes DIR/NAME.onnx (.mlpackage, .tflite, .pte) and the manifest DIR/NAME.json. Core ML, TFLite and ExecuTorch
    exports first apply effconv's lossless legalizing rewrites (checked against the original); an ONNX
    student ships in the Conv2d layout unless Conv3d runs clearly faster here (--layout). Each step is shown as it
    runs. Exit 1 if the outputs differ by more than --atol or an op no backend unit can run remains.

    Example: `effconv convert examples/specs/hunyuan-tiny.yaml --to tflite --out out/`
    """
    from effconv.convert.stage import convert as run_convert
    from effconv.legalize.lint import BackendBlocked
    from effconv.spec import load_spec

    loaded = load_spec(spec)
    with progress_lines(f"Converting {loaded.spec.name} ({loaded.spec.part}) to {to}") as progress:
        try:
            manifest = run_convert(loaded, to, out_dir, atol=atol, opset=opset, allow_import=allow_import,
                                   precision=precision, layout=layout, stream=stream, progress=progress)
        except VerificationFailed as failure:
            if failure.manifest is not None:
                _print_manifest(failure.manifest, as_json, out_dir)
            raise
        except BackendBlocked as blocked:
            print_lint(blocked.report, as_json, problems_only=True)
            raise
    _print_manifest(manifest, as_json, out_dir)


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
        table.add_row(f"input  {tensor.name}", f"{fmt_shape(tensor.shape)} {tensor.dtype}")
    for tensor in manifest.outputs:
        table.add_row(f"output {tensor.name}", f"{fmt_shape(tensor.shape)} {tensor.dtype}")
    if "max_abs_err" in verify:
        table.add_row("max abs error", f"{verify['max_abs_err']:.3g} (atol {verify['atol']:g})")
        table.add_row("PSNR vs PyTorch", f"{verify['psnr_db']:.1f} dB")
    _add_legalize_rows(table, manifest)
    layout = (manifest.model_extra or {}).get("layout")
    if layout:
        table.add_row("layout", f"{layout['chosen']} ({layout['why']})")
    table.add_row("verified", f"{'[green]yes[/]' if verify['passed'] else '[red]NO[/]'}: {verify['method']}")
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
    _render_summary(summary)


def _render_summary(summary: dict) -> None:
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
    out.print(f"input  {summary['input']['name']}: {fmt_shape(summary['input']['shape'])}")
    out.print(f"output {summary['output']['name']}: {fmt_shape(summary['output']['shape'])}")
    for backend, status in summary["backends"].items():
        out.print(f"backend {backend}: {status}")
