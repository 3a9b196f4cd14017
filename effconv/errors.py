"""Errors the CLI maps to exit codes: bad input is exit 2, a failed verification or budget is exit 1."""


class EffconvError(Exception):
    """Bad input or environment. The message names the problem; `fix` says what to do about it."""

    exit_code = 2

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def one_line(self) -> str:
        text = self.message if not self.fix else f"{self.message} Fix: {self.fix}"
        return " ".join(text.split())


class VerificationFailed(EffconvError):
    """The artifact was written but does not meet its tolerance (exit 1). Carries the manifest."""

    exit_code = 1

    def __init__(self, message: str, fix: str | None = None, manifest=None):
        super().__init__(message, fix)
        self.manifest = manifest


def exception_text(exc: BaseException, limit: int = 300) -> str:
    """A library exception's message on one line, cut to `limit` characters (its type name when it has none), for
    the middle of an EffconvError's message."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


def missing_extra(package: str, extra: str) -> EffconvError:
    return EffconvError(
        f"{package} is not installed.", f"pip install 'effconv[{extra}]' (or pip install {package})."
    )
