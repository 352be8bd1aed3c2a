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
