"""The Typer app, the options several commands share, and `main()`: errors -> exit codes.

Exit codes: 0 ok, 1 verification or budget failed, 2 bad input (one-line error), 3 internal error.
The commands register themselves on `app` from their modules (see effconv/cli/__init__.py).
"""

from __future__ import annotations

import errno
import sys
import traceback

import click
import typer

from effconv import __version__
from effconv.cli.render import err, out
from effconv.errors import EffconvError
from effconv.quiet import is_debug, set_debug

app = typer.Typer(
    name="effconv",
    help="Make a video VAE decoder run on phones: rewrite it Turbo-VAED style, distill, quantize, "
    "export to ONNX / Core ML / TFLite / ExecuTorch, and profile it.\n\n"
    "Start with `effconv run demo --out runs/demo` (the whole pipeline on the shipped demo), or "
    "`effconv inspect SPEC`, then `effconv convert SPEC --to onnx --out DIR`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

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


def _print_traceback_when_debugging() -> None:
    """--debug adds the traceback of the error being handled; the exit code stays the one the error maps to."""
    if is_debug():
        traceback.print_exc(file=sys.stderr)


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
    """Console entry point: maps errors to exit codes, one line each, tracebacks added with --debug."""
    try:
        app(standalone_mode=False)
    except EffconvError as exc:
        _print_traceback_when_debugging()
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
    except Exception as exc:  # a bug in effconv or a library: say so in one line (after the traceback with --debug)
        _print_traceback_when_debugging()
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS and exc.filename is not None:
            _report_error(f"cannot use '{exc.filename}': {exc.strerror}. Fix: check the path, its permissions and free disk space.", 2)
        detail = " ".join(str(exc).split())[:300]
        hint = "" if is_debug() else " (rerun with --debug for the traceback)"
        _report_error(f"internal error: {type(exc).__name__}: {detail}{hint}", 3)
