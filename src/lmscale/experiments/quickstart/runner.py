"""The quickstart: every stage of the pretraining paradigm on real data, resumable stage by stage,
with each stage checked against the phenomenon it stands for.

A profile (`presets/quickstart/{cpu,gpu}.yaml`) sets every size and budget. Training stages have
token or step budgets, never time budgets, so a profile prints the same numbers run after run;
wall-clock limits are safety caps that say so when they stop a run. Each stage writes
`OUT/stages/<name>.json` atomically when it finishes; a re-run of the same profile and mode loads
that record instead of redoing the work, so an interrupted quickstart continues where it stopped.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from rich.console import Console
from rich.table import Table

from lmscale.config import deep_merge
from lmscale.errors import LmscaleError
from lmscale.experiments.quickstart import data, emergence, finetune, pretrain, report, scaling, tokenizers, use
from lmscale.experiments.quickstart.core import (
    Check,
    Context,
    Stage,
    StageUnavailable,
    all_checks,
    default_profile,
    load_profile,
)
from lmscale.io import atomic_write_json
from lmscale.io import console as io_console
from lmscale.io.outputs import check_output_dir, mark_output_dir
from lmscale.training.device import resolve_device

STAGES: list[Stage] = [
    Stage("1. Fetch the corpus through the catalog", data.run, data.DataResult),
    Stage("2. Train BPE, WordPiece and Unigram tokenizers", tokenizers.run, tokenizers.TokenizersResult),
    Stage("3. Pretrain an encoder (MLM), a decoder (causal LM) and an encoder-decoder (span corruption)",
          pretrain.run, pretrain.PretrainResult),
    Stage("4. Use them: fill-mask, generation, span infilling", use.run, use.UseResult),
    Stage("5. Fine-tune on movie-review sentiment: pretrained vs random initialisation", finetune.run,
          finetune.FinetuneResult),
    Stage("6. A scaling sweep, its law with intervals, and what it predicts", scaling.run, scaling.ScalingResult),
    Stage("7. A capability that switches on: in-context induction", emergence.run, emergence.EmergenceResult),
    Stage("8. Write report.html", report.run, report.ReportResult),
]

# what the stages write in the quickstart's directory (the marker's manifest claims them up front)
QUICKSTART_ENTRIES = ("stages", "report.html", "tokenizers", "shards", "runs", "finetune", "sweep", "emergence")


def print_checks(console: Console, checks: Sequence[Check], profile: str) -> None:
    """The check / target / measured / met table, after each stage and for the whole run."""
    table = Table(title=f"What this stage shows ({profile} profile)")
    for col in ("check", "target", "measured", "met"):
        table.add_column(col)
    for c in checks:
        table.add_row(c.check, c.target, str(c.measured), "[red]no[/]" if c.met == "no" else c.met)
    console.print(table)


def run_quickstart(out: str | Path = "lmscale-out", fast: bool = False, corpus: Optional[str] = None,
                   only: list[str] | None = None, redo: list[str] | None = None,
                   console: Console | None = None, profile: Optional[str] = None, device: str = "auto",
                   overrides: Optional[dict[str, Any]] = None, overwrite: bool = False) -> int:
    """Run (or continue) the quickstart into `out`; `overrides` are merged into the profile (tests
    run the gpu profile's code with tiny budgets that way). Returns the exit code."""
    console = console or io_console()
    known = {s.name for s in STAGES}
    for name in (only or []) + (redo or []):
        if name not in known:
            raise LmscaleError(f"unknown stage {name!r}; stages are: {', '.join(s.name for s in STAGES)}")
    found = resolve_device(device, what="--device")  # a misspelled or absent device fails here
    name = profile or default_profile(found)
    spec = deep_merge(load_profile(name, fast), overrides or {})
    if device == "auto":
        device = "cuda" if name == "gpu" and found.type == "cuda" else "cpu"
    out = Path(out).resolve()
    check_output_dir(out, "--out", overwrite=overwrite, ours=lambda p: (p / "stages").is_dir(), kinds=("quickstart",),
                     names=QUICKSTART_ENTRIES)
    out.mkdir(parents=True, exist_ok=True)
    mark_output_dir(out, "quickstart", names=QUICKSTART_ENTRIES)
    corpus = corpus or spec.get("corpus", "wikitext-2")  # the profile's own corpus unless one is given
    ctx = Context(out=out, profile_name=name, profile=spec, fast=fast, corpus=corpus, device=device, console=console)
    console.rule(f"lmscale quickstart ({ctx.mode} profile, {device}) -> {out}")
    status: dict[str, str] = {}
    t_start = time.perf_counter()
    for stage in STAGES:
        if _reuse_record(ctx, stage, only, redo, status):
            continue
        console.rule(stage.title)
        t0 = time.perf_counter()
        try:
            result = stage.run(ctx)
        except StageUnavailable as exc:
            console.print(f"[red]{stage.title}: cannot run[/]\n{exc}")
            status[stage.name] = "failed"
            _print_summary(ctx, status)
            return 1
        wall = time.perf_counter() - t0
        ctx.results[stage.name] = result
        atomic_write_json(out / "stages" / f"{stage.name}.json",
                          {"stage": stage.name, "mode": ctx.mode, "wall_s": round(wall, 1), "result": result.to_dict()})
        result.render_console(console, ctx)
        if result.checks:
            print_checks(console, result.checks, ctx.profile_name)
        status[stage.name] = f"done in {wall:.0f} s"
    _print_summary(ctx, status)
    console.print(f"total wall time this run: {(time.perf_counter() - t_start) / 60:.1f} min")
    return 0


def _reuse_record(ctx: Context, stage: Stage, only: Optional[list[str]], redo: Optional[list[str]],
                  status: dict[str, str]) -> bool:
    """True when the stage is skipped: not asked for, or finished earlier in this profile and mode."""
    record = ctx.out / "stages" / f"{stage.name}.json"
    if record.exists() and stage.name not in (redo or []):
        saved = json.loads(record.read_text(encoding="utf-8"))
        if saved.get("mode") == ctx.mode:
            ctx.results[stage.name] = stage.result.from_dict(saved["result"])
            status[stage.name] = "done earlier (skipped)"
            ctx.console.print(f"[dim]{stage.title}: done earlier, skipped[/]")
            return True
    if only and stage.name not in only:
        status[stage.name] = "not requested"
        return True
    return False


def _print_summary(ctx: Context, status: dict[str, str]) -> None:
    table = Table(title=f"quickstart summary ({ctx.mode} profile)")
    table.add_column("stage")
    table.add_column("status")
    for stage in STAGES:
        table.add_row(stage.title, status.get(stage.name, "not run"))
    ctx.console.print(table)
    checks = all_checks(ctx.results)
    if checks:
        print_checks(ctx.console, checks, ctx.profile_name)
    report_path = ctx.out / "report.html"
    if report_path.exists():
        ctx.console.print(f"report: [bold]{report_path}[/]")
    ctx.console.print(f"everything is in [bold]{ctx.out}[/]")
