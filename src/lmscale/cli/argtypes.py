"""Argument types for the command line: a bad value is a one-line usage error naming the flag
(exit code 2) before any work starts, never a traceback or a silently odd run."""
from __future__ import annotations

import argparse
import math
import re

_DEVICE = re.compile(r"auto|(cpu|mps|cuda)(:\d+)?")


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


def device(text: str) -> str:
    """auto (CUDA when present, else the CPU), cpu, cuda, cuda:N or mps, checked against what this
    machine has; `auto` comes back as the device it picked."""
    if text == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    if text.startswith("cuda") or text == "mps":
        import torch

        if text.startswith("cuda"):
            if not torch.cuda.is_available():
                raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine; use cpu")
            index = int(text.split(":")[1]) if ":" in text else 0
            if index >= torch.cuda.device_count():
                raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA "
                                                 "device(s)")
        elif not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise argparse.ArgumentTypeError("mps: Apple's Metal backend is not available here; use cpu")
    return text
