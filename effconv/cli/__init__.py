"""The `effconv` command line: parse options, call the library, render with rich. Nothing else.

app.py holds the Typer app, the shared options and `main()` (errors -> exit codes: 0 ok, 1 verification
or budget failed, 2 bad input, 3 internal error); render.py the rich helpers several commands share;
one module per command group registers its commands on the app. Commands import the library inside
their function, so `effconv --help` does not import torch.
"""

from __future__ import annotations

# isort: off
# Importing a command module registers its commands: this order is the order of `effconv --help`.
from effconv.cli.app import app, main
from effconv.cli import export  # convert, inspect
from effconv.cli import profile  # devices, profile, calibrate
from effconv.cli import lint  # lint
from effconv.cli import student  # rewrite, distill, eval
from effconv.cli import pipeline  # run
from effconv.cli import quantize  # quantize
from effconv.cli import decode  # decode
# isort: on

__all__ = ["app", "main"]
