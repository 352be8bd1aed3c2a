"""Argument types for the command line: a bad value is a one-line usage error naming the flag
(exit code 2) before any work starts, never a traceback or a silently odd run."""
from __future__ import annotations

import argparse
import math
from typing import Any, Optional

from lmscale.config import DEVICE_RE

OVERWRITE_DIR_HELP = ("write into --out even when it holds lmscale's output of another kind "
                      "(a directory holding files lmscale did not write is always refused)")


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def seed(text: str) -> int:
    """A random seed: 0 to 2**63 - 1, what torch and numpy take (a larger one overflows deep inside)."""
    value = nonnegative_int(text)
    if value >= 2**63:
        raise argparse.ArgumentTypeError(f"must be below 2**63, got {text}")
    return value


def bootstrap_count(text: str) -> int:
    """Bootstrap resamples: 0 (no intervals) or at least 2, checked before any fitting."""
    value = nonnegative_int(text)
    if value == 1:
        raise argparse.ArgumentTypeError("give 0 (no intervals) or at least 2 resamples, got 1")
    return value


def positive_float(text: str) -> float:
    value = float(_number(text, float))
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    value = float(_number(text, float))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number, got {text}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    value = float(_number(text, float))
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def unit_interval(text: str) -> float:
    """A number in [0, 1]."""
    value = float(_number(text, float))
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def at_least(lo: float) -> "argparse._ActionType":  # type: ignore[name-defined]
    """A finite number >= `lo`."""
    def check(text: str) -> float:
        value = float(_number(text, float))
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo:g}, got {text}")
        return value
    check.__name__ = f"number >= {lo:g}"
    return check


DEVICE_HELP = "auto (CUDA when present), cpu, cuda, cuda:N or mps"


class _DeviceSpelling(argparse.Action):
    """`--device`: only the spelling is checked while parsing (`lmscale.config.DEVICE_RE`, what
    train.device accepts); whether the device exists is `resolve_device`'s question."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        if not DEVICE_RE.fullmatch(values):
            parser.error(f"{option_string} {values!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
        setattr(namespace, self.dest, values)


def add_device_argument(parser: Any, default: Optional[str] = "auto", help: str = DEVICE_HELP,
                        resolve: bool = True) -> None:
    """The `--device` flag of a command. With `resolve`, the command receives the device as this
    machine has it (`auto` resolved, an absent one refused with exit code 2 before any work, see
    `resolve_device_argument`); without, the spelling goes on as given (to a run config, or to
    runs on other machines)."""
    parser.add_argument("--device", action=_DeviceSpelling, default=default, help=help)
    if resolve:
        parser.set_defaults(_resolve_device=True)


def resolve_device_argument(args: argparse.Namespace) -> None:
    """Replace a resolving command's `--device` by the device it names here (`auto` picked)."""
    if getattr(args, "_resolve_device", False):
        from lmscale.training.device import resolve_device

        args.device = str(resolve_device(args.device, what="--device"))
