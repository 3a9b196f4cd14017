"""Keep third-party import chatter (torchao's optional kernels, exporter notices) off the terminal.

effconv prints its own one-line errors and tables; library warnings that a user cannot act on
would drown them. `--debug` restores full logging.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings

NOISY_LOGGERS = (
    "torchao",
    "diffusers",
    "torch.onnx",
    "torch._export",
    "torch.export",
    "torch.utils._pytree",
    "onnxscript",
)
_debug = False


def _quiet_libraries() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def set_debug(enabled: bool) -> None:
    """The CLI's switch. Only the CLI owns the process, so only it may ignore warnings process-wide."""
    global _debug
    _debug = enabled
    if not enabled:
        _quiet_libraries()
        warnings.filterwarnings("ignore")


def is_debug() -> bool:
    return _debug


@contextlib.contextmanager
def quiet_imports():
    """Import heavy libraries without their import-time warnings (unless --debug)."""
    if _debug:
        yield
        return
    # Scoped: a library user's own warning filters survive importing effconv.
    _quiet_libraries()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
        with contextlib.suppress(ImportError):
            from diffusers.utils import logging as diffusers_logging

            diffusers_logging.set_verbosity_error()


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
