"""Public value validators shared by every config dataclass (run configs, fine-tuning, ...).

Each raises `ConfigError` with a one-line message that names the key and says what is allowed:

- `choice(name, value, choices)`: one of `choices`, with a did-you-mean for a near miss;
- `positive(name, value, allow_none=False)`: a positive finite number (bools refused);
- `finite(section, cfg)`: every float field of dataclass `cfg` is finite (no NaN, no infinities);
- `in_range(name, value, lo, hi=inf, lo_open=False, hi_open=False, allow_none=False)`: a finite
  number within [lo, hi] (an open end excluded); the message states the range.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import fields
from typing import Any

from lmscale.errors import ConfigError

__all__ = ["choice", "finite", "in_range", "positive"]


def choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """`value` is one of `choices`; a near miss gets a did-you-mean."""
    if value not in choices:
        near = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}{hint}")


def positive(name: str, value: Any, allow_none: bool = False) -> None:
    """`value` is a positive finite number (not a bool); None passes when `allow_none`."""
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be a positive (finite) number")


def finite(section: str, cfg: Any) -> None:
    """Every float field of a config section is a finite number (NaN and infinities are refused)."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{section}.{f.name}={v!r} must be a finite number")


def in_range(name: str, value: Any, lo: float, hi: float = math.inf, lo_open: bool = False,
             hi_open: bool = False, allow_none: bool = False) -> None:
    """`value` within [lo, hi] (an open end excluded); the message states the range."""
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        lo_s, hi_s = ("(" if lo_open else "[") + f"{lo:g}", ("inf)" if hi == math.inf else f"{hi:g}" + (
            ")" if hi_open else "]"))
        raise ConfigError(f"{name}={value!r} must be in {lo_s}, {hi_s}")
