"""`effconv rewrite`, `effconv distill` and `effconv eval`: build, train and measure a Turbo-VAED student."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import typer
from rich.table import Table

from effconv.cli.app import AllowImport, JsonFlag, SpecArg, app
from effconv.cli.render import err, fmt_shape, out


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
    table.add_row("output shape", fmt_shape(shape["teacher"]), fmt_shape(shape["student"]),
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
def distill(
    spec: Path = SpecArg,
    recipe: str = typer.Option(..., "--recipe", help="Recipe YAML or packaged name (its student: and distill: sections).", show_default=False),
    data: list[Path] = typer.Option(..., "--data", help="Training videos: files, folders, or LIST.txt files of paths (repeatable).", show_default=False),
    out_dir: Path = typer.Option(..., "--out", help="Output directory: checkpoints/, the student, distill.json.", show_default=False),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps [default: the recipe's]."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
    eval_data: list[Path] | None = typer.Option(None, "--eval-data", help="Held-out videos for periodic eval (repeatable)."),
    lpips: bool = typer.Option(False, "--lpips", help="Add LPIPS(VGG) loss (needs the lpips package and cached weights)."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes for DDP (launches torchrun; gloo on CPU, nccl on GPU)."),
    device: str = typer.Option("auto", "--device", help="Training device: auto (CUDA when torch sees a GPU), cpu, cuda, cuda:N."),
    workers: int | None = typer.Option(None, "--workers", min=0, max=64, help="Video-decoding processes [default: 1 "
                                       "beside CPU training, up to 8 beside a GPU; 0 = decode in the training process]."),
    as_json: bool = JsonFlag,
    allow_import: bool = AllowImport,
) -> None:
    """Distill the teacher's decoder into a Turbo-VAED student on real video (decoder-only).

    The frozen teacher encodes clips to latents; the student learns to reconstruct the frames
    (L1 + SSIM [+ LPIPS] + feature alignment). Videos (files, folders, or LIST.txt files of paths) are
    decoded on demand in worker processes, so memory does not grow with the dataset. Checkpoints every K
    steps; `--resume` continues exactly, also with a larger `--steps` than the run was started with.

    Example: `effconv distill examples/specs/demo-teacher.yaml --recipe demo --data effconv/assets/video --out runs/demo --steps 200`
    """
    from effconv.distill.launch import is_main_process, relaunch_with_torchrun
    from effconv.distill.stage import distill as run_distill
    from effconv.recipe import load_recipe
    from effconv.spec import load_spec

    if nproc > 1:
        sys.exit(relaunch_with_torchrun(nproc))
    loaded = load_spec(spec)
    total = steps or load_recipe(recipe)[0].distill.steps
    with _distill_progress(total, enabled=is_main_process()) as on_step:
        result = run_distill(
            loaded, recipe, data, out_dir, steps=steps, resume=resume, eval_data=eval_data, lpips=lpips,
            allow_import=allow_import, on_step=on_step, on_videos=lambda videos: _warn_skipped(videos.skipped),
            device=device, workers=workers,
        )
    if result.manifest is None:
        return
    if as_json:
        print(result.manifest.to_json())
        return
    _print_distilled(result.manifest, out_dir)


@contextlib.contextmanager
def _distill_progress(total: int, enabled: bool):
    """A transient bar on stderr (rank 0 only): steps done of `total`, the loss terms, it/s and the time left;
    yields the on_step(record, elapsed) callback that moves it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("distill"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=err, disable=not enabled, transient=True) as progress:
        task = progress.add_task("distill", total=total, info="loading teacher and video...")
        rate_of = step_rate()

        def on_step(record: dict, elapsed: float) -> None:
            terms = " ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in {"step"})
            rate = rate_of(record["step"], elapsed)
            # rich estimates the time left from the advances after the first update, so the steps a --resume
            # starts from (the checkpoint's) do not count as this run's speed
            progress.update(task, completed=record["step"], info=f"{terms} | {rate:.2f} it/s")

        yield on_step


def step_rate():
    """(step, elapsed) -> it/s over this run's steps only: after --resume, steps start at the checkpoint's, not 0."""
    start = None

    def rate(step: int, elapsed: float) -> float:
        nonlocal start
        if start is None:
            start = step - 1  # elapsed is timed from before this run's first step
        return (step - start) / elapsed if elapsed > 0 else 0.0

    return rate


def _print_distilled(manifest, out_dir: Path) -> None:
    run = manifest.run
    out.print(f"distilled {run['steps']} steps ({run['steps_this_run']} this run) in {run['wall_seconds']:.0f} s "
              f"({run['steps_per_second']} steps/s on {run['device']}, {run['world_size']} process(es))")
    shares = ", ".join(f"{name} {share:.0%}" for name, share in run["phase_share"].items())
    memory = f"peak RSS {run['peak_host_rss_mb']:.0f} MB" + (
        f", peak GPU memory {run['peak_device_memory_mb']:.0f} MB" if "peak_device_memory_mb" in run else "")
    out.print(f"time: {shares} ({run['data_workers']} data worker(s)); {memory}")
    if "eval_psnr_db" in manifest.verify:
        out.print(f"held-out PSNR (EMA student vs real frames): {manifest.verify['eval_psnr_db']:.2f} dB")
    out.print(f"student: {out_dir / manifest.artifact}/  spec: {out_dir / (manifest.artifact + '.yaml')}  "
              f"manifest: {out_dir / 'distill.json'}")


def _warn_skipped(skipped) -> None:
    for path, reason in skipped:
        err.print(f"[yellow]warning:[/] skipping {path}: {reason}", highlight=False, soft_wrap=True)


@app.command(name="eval")
def evaluate(
    spec: Path = typer.Argument(..., help="A student spec (from rewrite/distill) or a teacher spec.", show_default=False),
    data: list[Path] = typer.Option(..., "--data", help="Videos: files, folders, or LIST.txt files of paths (repeatable).", show_default=False),
    teacher: Path | None = typer.Option(None, "--teacher", help="Teacher spec [default: from the student's manifest]."),
    save_frames: Path | None = typer.Option(None, "--save-frames", help="Write ground truth / teacher / student PNG strips here."),
    device: str = typer.Option("auto", "--device", help="Device: auto (CUDA when torch sees a GPU), cpu, cuda, cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    allow_import: bool = AllowImport,
) -> None:
    """PSNR / SSIM of the teacher VAE and of teacher encoder -> student decoder on real video.

    Retention = student PSNR / teacher PSNR (the paper reports 96.9%).

    Example: `effconv eval runs/demo/demo-teacher-student.yaml --data effconv/assets/video --save-frames runs/frames`
    """
    from effconv.distill.evaluate import evaluate as run_eval

    with err.status("Evaluating..."):
        summary = run_eval(spec, data, teacher_path=teacher, save_frames=save_frames, allow_import=allow_import,
                           device=device)
    _warn_skipped([(s["video"], s["reason"]) for s in summary["skipped"]])
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    _render_eval(summary)


def _render_eval(summary: dict) -> None:
    has_student = "retention" in summary
    clip = summary["clip"]
    table = Table(title=f"reconstruction quality ({clip['frames']}x{clip['height']}x{clip['width']}, on {summary['device']})")
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
