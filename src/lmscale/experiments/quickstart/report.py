"""Stage 8: `report.html`, every stage's results on one self-contained page that opens offline,
headed by the checks table."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Console

from lmscale.experiments.quickstart.core import Context, StageResult, all_checks
from lmscale.experiments.quickstart.fragments import render
from lmscale.io import atomic_write_text

RAW_JSON_LIMIT = 200_000  # characters of the raw results the page carries


def render_report(results: dict[str, StageResult], fast: bool, profile: str = "cpu", device: str = "cpu") -> str:
    raw = json.dumps({name: r.to_dict() for name, r in results.items()}, indent=1, default=str)
    return render("report.html.j2", profile=profile, mode=f"{profile} profile{', fast' if fast else ''}, {device}",
                  checks=all_checks(results), sections=[r.render_html() for r in results.values()],
                  raw=raw[:RAW_JSON_LIMIT])


def write_report(out: str | Path, results: dict[str, StageResult], fast: bool = False, profile: str = "cpu",
                 device: str = "cpu") -> Path:
    path = Path(out) / "report.html"
    atomic_write_text(path, render_report(results, fast, profile, device))
    return path


@dataclass
class ReportResult(StageResult):
    stage: ClassVar[str] = "report"
    report: str

    def to_dict(self) -> dict[str, Any]:
        return {"report": self.report}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReportResult:
        return cls(report=d["report"])

    def render_console(self, console: Console, ctx: Context) -> None:
        console.print(f"report written to [bold]{self.report}[/]")

    def render_html(self) -> str:
        return ""  # the report does not describe itself


def run(ctx: Context) -> ReportResult:
    path = write_report(ctx.out, ctx.results, fast=ctx.fast, profile=ctx.profile_name, device=ctx.device)
    return ReportResult(report=str(path))
