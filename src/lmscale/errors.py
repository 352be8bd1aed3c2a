"""Errors users see: each says what went wrong and what to change.

One root, `LmscaleError`: the CLI prints any of them as a one-line message (exit code 2) instead of
a traceback. The kinds below it say which input was wrong, so callers can catch just that.
"""


class LmscaleError(ValueError):
    """A user-facing error from any stage (bad flag, bad input file, missing checkpoint, ...)."""


class ConfigError(LmscaleError):
    """A configuration problem, phrased as what to change."""


class DataError(LmscaleError):
    """Bad input data: names the file, and the byte offset or line where it applies."""


class CheckpointError(LmscaleError):
    """A checkpoint that cannot be loaded as asked (missing/unexpected/mis-shaped tensors, ...)."""


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message` of a third-party exception, for a one-line error."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
