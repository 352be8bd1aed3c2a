"""Errors users see: each says what went wrong and what to change."""
from lmscale.config import ConfigError


class LmscaleError(ConfigError):
    """A user-facing error from any stage (bad input file, missing checkpoint, ...).

    It subclasses ConfigError so the CLI prints it as a one-line message instead of a traceback.
    """


class DataError(LmscaleError):
    """Bad input data: names the file, and the byte offset or line where it applies."""


class CheckpointError(LmscaleError):
    """A checkpoint that cannot be loaded as asked (missing/unexpected/mis-shaped tensors, ...)."""
