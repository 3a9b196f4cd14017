"""Rich output shared by several command modules: the consoles, shapes, wide tables, the lint table."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)

WIDE_TABLE_WIDTH = 160


def fmt_shape(shape) -> str:
    return "x".join(str(d) for d in shape)


@contextlib.contextmanager
def progress_lines(title: str) -> Iterator[Callable[[str], None]]:
    """Report long work's steps: a spinner on a terminal; where stderr is a log (CI, nohup, a pipe) and a spinner
    prints nothing, a timestamped line per finished step with its duration. A step that fails is not logged:
    the error says what went wrong, in one line."""
    if err.is_terminal:
        with err.status(f"{title}...") as status:
            yield lambda message: status.update(f"{title}: {message}...")
        return
    started = time.monotonic()
    step = {"message": None, "since": started}

    def finish_step(message: str | None) -> None:
        now = time.monotonic()
        if step["message"] is not None:
            err.print(f"[{now - started:5.0f} s] {title}: {step['message']} ({now - step['since']:.1f} s)",
                      highlight=False, soft_wrap=True)
        step.update(message=message, since=now)

    yield finish_step
    finish_step(None)


def print_wide(table: Table) -> None:
    """Piped output (logs, CI) has no terminal width to respect: keep wide tables readable there."""
    (out if out.is_terminal else Console(width=WIDE_TABLE_WIDTH)).print(table)


def _mark(illegal: int, count: int) -> str:
    if not illegal:
        return "[green]yes[/]"
    return "[red]no[/]" if illegal == count else f"[yellow]no {illegal}/{count}[/]"


def print_lint(report, as_json: bool, problems_only: bool = False, title: str = "") -> None:
    """A lint report (effconv.legalize.lint): one row per op kind, a column per compute unit."""
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
    print_wide(table)
