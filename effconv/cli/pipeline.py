"""`effconv run`: the whole pipeline, with its plan table and stage progress."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from effconv.cli.app import AllowImport, app
from effconv.cli.render import err, out, print_wide


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
    pretrained: Path | None = typer.Option(None, "--pretrained", help="The teacher's trained weights (save_pretrained dir, or one .safetensors checkpoint)."),
    data: list[Path] | None = typer.Option(None, "--data", help="Training videos: files, folders, or LIST.txt files (repeatable) [default: the recipe's]."),
    eval_data: list[Path] | None = typer.Option(None, "--eval-data", help="Eval videos (repeatable) [default: the recipe's, else --data]."),
    train_device: str = typer.Option("auto", "--train-device", help="Where distillation runs: auto (CUDA when torch sees "
                                     "a GPU), cpu, cuda, cuda:N."),
    workers: int | None = typer.Option(None, "--workers", min=0, max=64, help="Video-decoding processes for distillation "
                                       "[default: 1 beside CPU training, up to 8 beside a GPU]."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan and the outcome as JSON."),
    allow_import: bool = AllowImport,
) -> None:
    """The whole pipeline: distill -> eval -> convert -> quantize -> lint -> profile -> report.

    Each stage writes DIR/STAGE/ with its manifest, which records a hash of the stage's inputs. A
    rerun skips stages whose inputs are unchanged, redoes the rest and everything after them, and
    resumes an interrupted distillation from its last checkpoint (also a finished one, when --steps
    asks for more). Exit 2 for bad input and exit 3 for
    an internal error, both naming the failed stage; exit 1 when an artifact failed its check (the
    report is still written).

    Example: `effconv run demo --out runs/demo`

    Example: `effconv run turbo-vaed-wan --pretrained ~/Wan2.1-T2V-1.3B-Diffusers --data clips/ --out runs/wan --dry-run`
    """
    from effconv.pipeline.plan import resolve
    from effconv.pipeline.runner import execute, plan, plan_caption

    inputs = resolve(target, recipe, steps, pretrained, data, eval_data, device, allow_import=allow_import,
                     train_device=train_device, workers=workers)
    with err.status("Planning (hashing inputs)...") as status:
        decisions = plan(inputs, out_dir, on_progress=lambda message: status.update(f"Planning: {message}"))
    if not as_json:
        print_wide(_plan_table(decisions, plan_caption(decisions, train_device)))
    if dry_run:
        if as_json:
            print(json.dumps({"out": str(out_dir), "plan": [d.as_dict() for d in decisions]}, indent=2))
        return
    progress = _RunProgress()
    try:
        result = execute(inputs, out_dir, on_event=progress,
                         on_warning=lambda message: err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True))
    finally:
        progress.close()
    if as_json:
        print(json.dumps({"out": str(out_dir), "plan": [d.as_dict() for d in decisions], "report": str(result.report),
                          "stages": [vars(o) for o in result.outcomes]}, indent=2, default=str))
    else:
        out.print(f"report: {result.report} (and {result.report.with_suffix('.html')})")
    result.check()


def _plan_table(decisions, caption: str) -> Table:
    from effconv.pipeline.durations import duration_text

    table = Table(title="plan (times are estimates)")
    for column in ("stage", "action", "why", "estimate", "how estimated"):
        table.add_column(column, justify="right" if column == "estimate" else "left")
    colours = {"skip": "green", "run": "yellow", "resume": "yellow", "blocked": "red"}
    for d in decisions:
        seconds = f"~{duration_text(d.estimate.seconds)}" if d.estimate else ""
        why = f"{d.reason}\n[dim]{escape(d.stage.note)}[/]" if d.stage.note else d.reason
        table.add_row(d.stage.name, f"[{colours[d.action]}]{d.action}[/]", why, seconds,
                      d.estimate.basis if d.estimate else "")
    table.caption, table.caption_justify = caption, "left"
    return table


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

        from effconv.pipeline.durations import duration_text

        name = decision.stage.name
        if kind == "start" and decision.action in ("run", "resume"):
            estimate = f" (estimate ~{duration_text(decision.estimate.seconds)})" if decision.estimate else ""
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
        elif kind == "progress":
            err.print(f"{name}: {info['message']}", style="dim", highlight=False, soft_wrap=True)
        elif kind == "done":
            self.close()
            outcome = info["outcome"]
            if decision.action in ("run", "resume"):
                verdict = "done" if outcome.passed else f"[red]FAILED its check[/]: {outcome.message}"
                err.print(f"{name}: {verdict} in {outcome.seconds:.1f} s", highlight=False, soft_wrap=True)
            else:
                err.print(f"{name}: {decision.action} ({decision.reason})", highlight=False)
