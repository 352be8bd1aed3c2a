"""The quickstart: every stage of the pretraining paradigm on real data, resumable stage by stage.

Each stage writes `OUT/stages/<name>.json` atomically when it finishes; a re-run loads that record
instead of redoing the work, so an interrupted quickstart continues where it stopped.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from lmscale.errors import LmscaleError
from lmscale.io import atomic_write_json

FILL_MASK_PROMPTS = [
    "I put ___ fork down on the table.",
    "The woman walked across the street, checking for traffic over ___ shoulder.",
    "University of Minnesota is located in ___, Minnesota.",
]
GENERATION_PROMPTS = ["The history of the city", "In 1998 , the band"]
INFILL_PROMPT = "Thank you <extra_id_0> me to your party <extra_id_1> week."
RARE_WORDS = ["photosynthesis", "unbelievably", "Minneapolis", "tokenization"]


class StageUnavailable(LmscaleError):
    """A stage cannot run here (e.g. no corpus); the message tells the user what to do."""


@dataclass
class Budget:
    """Stage budgets: the full walk-through fits in ~20 minutes on 2 cores, --fast in ~5."""

    tokenizer_vocab: int
    pretrain_s: float
    finetune_sizes: tuple[int, ...]
    finetune_seeds: int
    finetune_epochs: int
    sweep_runs: int
    sweep_max_s: float

    @classmethod
    def for_mode(cls, fast: bool) -> "Budget":
        if fast:
            return cls(tokenizer_vocab=8192, pretrain_s=35.0, finetune_sizes=(100, 1000),
                       finetune_seeds=2, finetune_epochs=2, sweep_runs=4, sweep_max_s=60.0)
        return cls(tokenizer_vocab=8192, pretrain_s=150.0, finetune_sizes=(100, 1000, 0),
                   finetune_seeds=3, finetune_epochs=3, sweep_runs=9, sweep_max_s=330.0)


@dataclass
class Context:
    out: Path
    fast: bool
    corpus: str
    console: Console
    budget: Budget
    results: dict[str, Any] = field(default_factory=dict)

    def path(self, *parts: str) -> Path:
        p = self.out.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


@dataclass
class Stage:
    name: str
    title: str
    fn: Callable[[Context], dict]


# ----------------------------------------------------------------------------- stages

def stage_data(ctx: Context) -> dict:
    from lmscale.data.catalog import resolve_corpus

    try:
        corpus = resolve_corpus(ctx.corpus)
    except LmscaleError as exc:
        raise StageUnavailable(
            f"could not obtain the corpus {ctx.corpus!r}: {exc}\n"
            "Without network access, point the quickstart at local text instead:\n"
            "  lmscale quickstart --corpus path/to/texts/   (a .txt, .txt.gz or .jsonl file, or a directory)\n"
            "or set LMSCALE_DATA_DIR to a directory holding wikitext-2/wiki.{train,valid,test}.raw."
        ) from None
    splits = {name: [str(p) for p in paths] for name, paths in corpus.splits.items()}
    n_bytes = sum(Path(p).stat().st_size for paths in splits.values() for p in paths)
    if n_bytes == 0:
        raise StageUnavailable(f"corpus {ctx.corpus!r} is empty; refusing to train on nothing")
    ctx.console.print(f"corpus [bold]{corpus.name}[/]: " + ", ".join(
        f"{k} ({sum(Path(p).stat().st_size for p in v) / 1e6:.1f} MB)" for k, v in splits.items()))
    return {"corpus": corpus.name, "splits": splits, "bytes": n_bytes}


def stage_tokenizers(ctx: Context) -> dict:
    from lmscale.tokenization import train_tokenizer
    from lmscale.tokenization.explain import explain_bpe

    train_files = ctx.results["data"]["splits"]["train"]
    out: dict[str, Any] = {"tokenizers": {}, "rare_words": {}}
    table = Table(title="How each tokenizer splits rare words")
    table.add_column("word")
    for kind, lower in (("bpe", False), ("wordpiece", True), ("unigram", False)):
        t0 = time.perf_counter()
        tok = train_tokenizer(kind, train_files, vocab_size=ctx.budget.tokenizer_vocab, lowercase=lower)
        d = ctx.path("tokenizers", kind)
        tok.save(d)
        out["tokenizers"][kind] = {"dir": str(d), "vocab_size": tok.vocab_size,
                                   "train_s": round(time.perf_counter() - t0, 2)}
        out["rare_words"][kind] = {w: tok.tokens(w) for w in RARE_WORDS}
        table.add_column(f"{kind} ({tok.vocab_size})")
    for w in RARE_WORDS:
        table.add_row(w, *[" ".join(out["rare_words"][k][w]) for k in ("bpe", "wordpiece", "unigram")])
    ctx.console.print(table)
    steps = explain_bpe("aaabdaaabac", merges=3)
    out["bpe_explain"] = steps.to_dict() if hasattr(steps, "to_dict") else steps
    ctx.console.print(steps.render() if hasattr(steps, "render") else str(steps))
    return out


STAGES: list[Stage] = [
    Stage("data", "1. Fetch WikiText-2 through the corpus catalog", stage_data),
    Stage("tokenizers", "2. Train BPE, WordPiece and Unigram tokenizers", stage_tokenizers),
]


# ----------------------------------------------------------------------------- runner

def run_quickstart(out: str | Path = "lmscale-out", fast: bool = False, corpus: str = "wikitext-2",
                   only: list[str] | None = None, redo: list[str] | None = None,
                   console: Console | None = None) -> int:
    console = console or Console()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out=out, fast=fast, corpus=corpus, console=console, budget=Budget.for_mode(fast))
    known = {s.name for s in STAGES}
    for name in (only or []) + (redo or []):
        if name not in known:
            raise LmscaleError(f"unknown stage {name!r}; stages are: {', '.join(s.name for s in STAGES)}")
    mode = "fast" if fast else "full"
    console.rule(f"lmscale quickstart ({mode}) -> {out}")
    timings: dict[str, float] = {}
    status: dict[str, str] = {}
    t_start = time.perf_counter()
    for stage in STAGES:
        record = out / "stages" / f"{stage.name}.json"
        if only and stage.name not in only and not record.exists():
            status[stage.name] = "not requested"
            continue
        if record.exists() and stage.name not in (redo or []):
            saved = json.loads(record.read_text(encoding="utf-8"))
            if saved.get("mode") == mode or (saved.get("mode") == "full" and fast):
                ctx.results[stage.name] = saved["result"]
                status[stage.name] = "done earlier (skipped)"
                console.print(f"[dim]{stage.title}: done earlier, skipped[/]")
                continue
        if only and stage.name not in only:
            status[stage.name] = "not requested"
            continue
        console.rule(stage.title)
        t0 = time.perf_counter()
        try:
            result = stage.fn(ctx)
        except StageUnavailable as exc:
            console.print(f"[red]{stage.title}: cannot run[/]\n{exc}")
            status[stage.name] = "failed"
            _print_summary(console, status, timings, out)
            return 1
        timings[stage.name] = time.perf_counter() - t0
        result["wall_s"] = round(timings[stage.name], 1)
        ctx.results[stage.name] = result
        atomic_write_json(record, {"stage": stage.name, "mode": mode, "result": result})
        status[stage.name] = f"done in {timings[stage.name]:.0f} s"
    total = time.perf_counter() - t_start
    _print_summary(console, status, timings, out)
    console.print(f"total wall time this run: {total / 60:.1f} min")
    return 0


def _print_summary(console: Console, status: dict[str, str], timings: dict[str, float], out: Path) -> None:
    table = Table(title="quickstart summary")
    table.add_column("stage")
    table.add_column("status")
    for stage in STAGES:
        table.add_row(stage.title, status.get(stage.name, "not run"))
    console.print(table)
    report = out / "report.html"
    if report.exists():
        console.print(f"report: [bold]{report}[/]")
    console.print(f"everything is in [bold]{out}[/]")
