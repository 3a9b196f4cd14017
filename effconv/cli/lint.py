"""`effconv lint`: which compute units of a backend can run each op kind, before and after the rewrites."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from effconv.cli.app import AllowImport, app
from effconv.cli.render import err, out, print_lint


@app.command()
def lint(
    target: Path = typer.Argument(..., help="Model spec YAML, or an artifact effconv wrote (its manifest sits beside it).",
                                  show_default=False),
    backend: str = typer.Option(..., "--backend", help="onnx, coreml, tflite or executorch.", show_default=False),
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
        print(json.dumps(result.as_dict(), indent=2))
    else:
        _render_lint(result, backend, device, all_ops)
    check_exportable(result.after, "after effconv's rewrites")


def _render_lint(result, backend: str, device: str | None, all_ops: bool) -> None:
    print_lint(result.before, False, problems_only=not all_ops,
               title=f"{backend}{' on ' + device if device else ''}: ops as exported (no = cannot run there)")
    if result.rewrites:
        applied = ", ".join(f"{name} x{count}" for name, count in result.rewrites.items() if count) or "none"
        out.print(f"effconv rewrites for {backend}: {applied}")
    if result.after.problems:
        print_lint(result.after, False, problems_only=True, title="after effconv's rewrites")
    blocked = ", ".join(row.op for row in result.after.blocking)
    out.print(f"[red]blocked after rewrites: {blocked}[/]" if blocked else
              f"[green]after rewrites nothing blocks {backend} export[/]")
