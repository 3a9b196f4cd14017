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
    table.add_row("verified", "[green]yes[/]" if verify["passed"] else "[red]NO[/]")
    out.print(table)


@app.command()
def convert(
    spec: Path = SpecArg,
    to: str = typer.Option("onnx", "--to", help="Target backend: onnx."),
    out_dir: Path = typer.Option(..., "--out", help="Output directory (created if missing).", show_default=False),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (>= 18 for the dynamo exporter)."),
    atol: float | None = typer.Option(None, "--atol", help="Max abs error allowed vs PyTorch [default: 1e-3]."),
    as_json: bool = JsonFlag,
    allow_import: bool = AllowImport,
) -> None:
    """Export a spec's model part and verify it against PyTorch on a seeded random input.

    Writes DIR/NAME.onnx and the manifest DIR/NAME.json. Exit 1 if the outputs differ by more than --atol.

    Example: `effconv convert examples/specs/hunyuan-tiny.yaml --to onnx --out out/`
    """
    from effconv.converters.convert import convert as run_convert
    from effconv.spec import load_spec

    loaded = load_spec(spec)
    with err.status(f"Exporting {loaded.spec.name} ({loaded.spec.part}) to {to}..."):
        try:
            manifest = run_convert(loaded, to, out_dir, atol=atol, opset=opset, allow_import=allow_import)
        except VerificationFailed as failure:
            if failure.manifest is not None:
                _print_manifest(failure.manifest, as_json, out_dir)
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
    initialized = {k: v for k, v in manifest.init["tensors"].items() if not v.startswith("kept random")}
    out.print(f"init: {manifest.init['mode']}" + (f" ({len(initialized)} tensor groups from the teacher)" if initialized else ""))
    out.print(f"student: {out_dir / manifest.artifact}/  spec: {out_dir / (manifest.name + '.yaml')}  "
              f"manifest: {out_dir / (manifest.name + '.json')}")


@app.command()
def rewrite(
    spec: Path = SpecArg,
    recipe: str = typer.Option(..., "--recipe", help="Recipe YAML, or a packaged one: turbo-vaed, tiny.", show_default=False),
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
    from effconv.rewrites.rewrite import rewrite as run_rewrite
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
    with Progress(*columns, console=err, disable=not is_main) as progress:
        task = progress.add_task("distill", total=None, info="loading teacher and video...")

        def on_step(record: dict, elapsed: float) -> None:
            terms = " ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in {"step"})
            rate = (record["step"] - first[0]) / elapsed if elapsed > 0 else 0.0
            progress.update(task, completed=record["step"], info=f"{terms} | {rate:.2f} it/s")

        first = [0]
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
