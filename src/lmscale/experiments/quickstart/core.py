"""What every quickstart stage shares: the profile, the run's context, the stage record and the
acceptance check, so a stage module holds only its own work and its own rendering."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence, TypeVar

import torch
from rich.console import Console

from lmscale.config import PRESET_DIR, deep_merge, load_yaml
from lmscale.errors import ConfigError, LmscaleError

PROFILES = ("cpu", "gpu")
PROFILE_DIR = PRESET_DIR / "quickstart"


class StageUnavailable(LmscaleError):
    """A stage cannot run here (e.g. no corpus); the message tells the user what to do."""


def load_profile(name: str, fast: bool = False) -> dict[str, Any]:
    """The profile's sizes and budgets, with its `fast` section applied when `fast`."""
    if name not in PROFILES:
        raise ConfigError(f"--profile {name!r} is not one of {', '.join(PROFILES)}")
    data = load_yaml(PROFILE_DIR / f"{name}.yaml", what="quickstart profile")
    fast_part = data.pop("fast", {}) or {}
    return deep_merge(data, fast_part) if fast else data


def default_profile(device: torch.device) -> str:
    """gpu when the run goes to a CUDA device (asked for, or found by `auto`), else cpu."""
    return "gpu" if device.type == "cuda" else "cpu"


@dataclass(frozen=True)
class Check:
    """One line of a stage's acceptance table: the phenomenon, its target, what was measured, and
    whether the target was met (None: nothing to judge, e.g. no sizes to compare)."""
    check: str
    target: str
    measured: Any
    ok: Optional[bool]

    @property
    def met(self) -> str:
        return "-" if self.ok is None else ("yes" if self.ok else "no")

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "target": self.target, "measured": self.measured, "ok": self.ok}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Check:
        return cls(d["check"], d["target"], d["measured"], d["ok"])


def checks_to_dicts(checks: Sequence[Check]) -> list[dict[str, Any]]:
    return [c.to_dict() for c in checks]


def checks_from_dicts(items: Optional[list[dict[str, Any]]]) -> list[Check]:
    return [Check.from_dict(c) for c in items or []]


class StageResult(ABC):
    """What a stage hands on: typed fields for later stages, its JSON record (a re-run loads it
    instead of redoing the work), its console output and its section of the report. Stages that
    only prepare have no checks."""
    stage: ClassVar[str]
    checks: Sequence[Check] = ()

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The stage record's `result`, in the layout earlier records were written in."""

    @classmethod
    @abstractmethod
    def from_dict(cls, d: dict[str, Any]) -> StageResult:
        """The result back from its record."""

    @abstractmethod
    def render_console(self, console: Console, ctx: Context) -> None:
        """What the stage shows in the terminal when it has just run (its checks follow)."""

    @abstractmethod
    def render_html(self) -> str:
        """The stage's section of report.html (escaped markup, figures embedded)."""


R = TypeVar("R", bound=StageResult)


@dataclass
class Context:
    out: Path
    profile_name: str
    profile: dict[str, Any]
    fast: bool
    corpus: str
    device: str
    console: Console
    results: dict[str, StageResult] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return f"{self.profile_name}-{'fast' if self.fast else 'full'}"

    def path(self, *parts: str) -> Path:
        p = self.out.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def need(self, kind: type[R]) -> R:
        """An earlier stage's result, or a clear refusal when that stage has not run into this directory."""
        found = self.results.get(kind.stage)
        if not isinstance(found, kind):
            raise StageUnavailable(f"this stage needs the {kind.stage!r} stage's results; run that stage first "
                                   f"(lmscale quickstart --only {kind.stage} with the same --out)")
        return found


@dataclass(frozen=True)
class Stage:
    title: str
    run: Callable[[Context], StageResult]
    result: type[StageResult]

    @property
    def name(self) -> str:
        return self.result.stage


def all_checks(results: dict[str, StageResult]) -> list[Check]:
    """Every stage's checks against its targets, in stage order."""
    return [c for r in results.values() for c in r.checks]
