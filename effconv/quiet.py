"""Keep third-party import chatter (torchao's optional kernels, exporter notices, LiteRT's native logs) off
the terminal.

effconv prints its own one-line errors and tables; library warnings that a user cannot act on
would drown them. `--debug` restores full logging.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings

NOISY_LOGGERS = (
    "torchao",
    "diffusers",
    "torch.onnx",
    "torch._export",
    "torch.export",
    "torch.utils._pytree",
    "onnxscript",
    "absl",  # absl-py's logger (LiteRT's converter and quantizer log through it), not Python's root logger
    "jax",  # the LiteRT quantizer imports jax, which logs its backend choice
)
_debug = False
_cli_quiet = False


def set_debug(enabled: bool) -> None:
    """The CLI's switch. Only the CLI owns the process, so only it quiets loggers and warnings process-wide;
    a library user keeps their own logging and warning filters."""
    global _debug, _cli_quiet
    _debug = enabled
    _cli_quiet = not enabled
    if _cli_quiet:
        _quiet_process()


def _quiet_process() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def is_debug() -> bool:
    return _debug


def cli_setting() -> bool | None:
    """The CLI's --debug switch (None outside the CLI): what a worker process it starts passes to follow_cli."""
    return _debug if _debug or _cli_quiet else None


def follow_cli(setting: bool | None) -> None:
    """In a worker process (a pool initializer: this module imports nothing heavy, so the worker is quiet before its
    tasks import torch), take over the CLI's switch (cli_setting) of the process that started it."""
    if setting is not None:
        set_debug(setting)


@contextlib.contextmanager
def quiet_imports():
    """Import heavy libraries without their import-time warnings (unless --debug). For the CLI, also without what
    their native code writes to stderr as it loads: LiteRT's converter library logs absl's "All log messages
    before absl::InitializeLog() is called are written to STDERR" and TensorFlow's "oneDNN custom operations
    are on" from its static initializers, through C++ absl logging, which TF_CPP_MIN_LOG_LEVEL does not reach."""
    if _debug:
        yield
        return
    native = native_stderr_silenced() if _cli_quiet else contextlib.nullcontext()
    with warnings.catch_warnings(), native:  # scoped: the caller's warning filters are back after the block
        warnings.simplefilter("ignore")
        yield
    if _cli_quiet:  # importing torch sets its loggers' levels anew: quiet them again for the CLI
        _quiet_process()


@contextlib.contextmanager
def captured_stdout():
    """Swallow progress text that exporters print to stdout, which would corrupt `--json` output."""
    if _debug:
        yield io.StringIO()
        return
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield buffer


@contextlib.contextmanager
def native_stderr_silenced():
    """C++ runtimes (ExecuTorch's cpuinfo probe, XNNPACK) write to file descriptor 2, which Python-level
    redirection does not reach; silence it for the block (unless --debug)."""
    if _debug:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
