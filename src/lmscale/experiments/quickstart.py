"""The quickstart: every stage of the pretraining paradigm on real data, resumable stage by stage.

Each stage writes `OUT/stages/<name>.json` atomically when it finishes; a re-run loads that record
instead of redoing the work, so an interrupted quickstart continues where it stopped.
"""
from __future__ import annotations

import json
import math
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
    tokenizer_bytes: int  # 0 = the whole training split
    pretrain_s: float
    finetune_sizes: tuple[int, ...]
    finetune_seeds: int
    finetune_epochs: int
    finetune_min_steps: int
    finetune_max_steps: int
    finetune_evaluations: int

    @classmethod
    def for_mode(cls, fast: bool) -> "Budget":
        if fast:
            return cls(tokenizer_vocab=8192, tokenizer_bytes=2_000_000, pretrain_s=25.0, finetune_sizes=(100, 1000),
                       finetune_seeds=1, finetune_epochs=2, finetune_min_steps=30, finetune_max_steps=60,
                       finetune_evaluations=2)
        return cls(tokenizer_vocab=8192, tokenizer_bytes=0, pretrain_s=90.0, finetune_sizes=(100, 1000),
                   finetune_seeds=3, finetune_epochs=3, finetune_min_steps=40, finetune_max_steps=100,
                   finetune_evaluations=2)


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


def _head_lines(files: list[str], max_bytes: int):
    """The first `max_bytes` of the training text, line by line (a quicker tokenizer fit)."""
    seen = 0
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                seen += len(line)
                if seen > max_bytes:
                    return
                yield line


def stage_tokenizers(ctx: Context) -> dict:
    from lmscale.tokenization import train_tokenizer
    from lmscale.tokenization.explain import explain_bpe

    train_files = ctx.results["data"]["splits"]["train"]
    out: dict[str, Any] = {"tokenizers": {}, "rare_words": {}}
    table = Table(title="How each tokenizer splits rare words")
    table.add_column("word")
    for kind, lower in (("bpe", False), ("wordpiece", True), ("unigram", False)):
        t0 = time.perf_counter()
        source = _head_lines(train_files, ctx.budget.tokenizer_bytes) if ctx.budget.tokenizer_bytes else train_files
        tok = train_tokenizer(kind, source, vocab_size=ctx.budget.tokenizer_vocab, lowercase=lower)
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
    out["bpe_explain"] = steps.to_dict()
    out["bpe_explain_text"] = steps.render()
    ctx.console.print(steps.render())
    return out


PRETRAIN_PLAN = (
    # family, preset, tokenizer kind
    ("encoder", "bert-tiny", "wordpiece"),
    ("decoder", "gpt-tiny", "bpe"),
    ("encoder-decoder", "t5-tiny", "unigram"),
)


def _read_curve(run_dir: Path) -> dict[str, list]:
    from lmscale.training.metrics import read_metrics

    curve: dict[str, list] = {"step": [], "loss": [], "eval_step": [], "val_loss": []}
    for rec in read_metrics(run_dir):
        if rec.get("event") == "train" and rec.get("loss") is not None:
            curve["step"].append(rec["step"])
            curve["loss"].append(rec["loss"])
        elif rec.get("event") == "eval" and rec.get("val_loss") is not None:
            curve["eval_step"].append(rec["step"])
            curve["val_loss"].append(rec["val_loss"])
    return curve


def stage_pretrain(ctx: Context) -> dict:
    from lmscale.config import load_run_config
    from lmscale.training.loop import pretrain

    out: dict[str, Any] = {}
    table = Table(title=f"Pretraining ({ctx.budget.pretrain_s:.0f} s each, CPU, fp32)")
    for col in ("family", "objective", "params", "steps", "tokens", "tokens/s", "val loss", "val ppl"):
        table.add_column(col)
    for family, preset, kind in PRETRAIN_PLAN:
        run_dir = ctx.out / "runs" / family
        tok_dir = ctx.results["tokenizers"]["tokenizers"][kind]["dir"]
        cfg = load_run_config(preset=preset, overrides={
            "data.corpus": ctx.corpus, "data.tokenizer": tok_dir,
            "data.shards": str(ctx.out / "shards" / kind),
            "train.max_time_s": ctx.budget.pretrain_s, "train.eval_every": 100,
            "train.eval_batches": 8, "train.log_every": 10, "train.seed": 1234,
            "train.device": "cpu", "out": str(run_dir),
        })
        resume = (run_dir / "checkpoints").is_dir() and not (run_dir / "summary.json").exists()
        ctx.console.print(f"[bold]{preset}[/] ({family}, {cfg.objective_kind} objective)"
                          + (" - resuming" if resume else ""))
        summary = pretrain(cfg, resume=resume)
        if summary.get("status") == "failed":
            raise StageUnavailable(f"pretraining {preset} failed: {summary.get('error')}")
        val = summary.get("final_val_loss")
        out[family] = {"preset": preset, "run_dir": str(run_dir), "objective": cfg.objective_kind,
                       "summary": summary, "curve": _read_curve(run_dir)}
        table.add_row(family, cfg.objective_kind, f"{summary['params']['total'] / 1e6:.2f}M",
                      str(summary["steps"]), f"{summary['tokens']:,}", f"{summary['tokens_per_s']:.0f}",
                      f"{val:.3f}" if val is not None else "-",
                      f"{math.exp(val):.1f}" if val is not None else "-")
    ctx.console.print(table)
    return out


def stage_use(ctx: Context) -> dict:
    import lmscale
    from lmscale.inference.fill_mask import fill_mask
    from lmscale.inference.generate import generate, infill

    runs = ctx.results["pretrain"]
    out: dict[str, Any] = {"fill_mask": [], "generation": [], "infill": None}
    model, tok = lmscale.load(runs["encoder"]["run_dir"])
    for prompt in FILL_MASK_PROMPTS:
        preds = fill_mask(model, tok, prompt, top_k=5)[0]
        out["fill_mask"].append({"prompt": prompt, "predictions": preds})
        table = Table(title=prompt)
        table.add_column("candidate")
        table.add_column("probability", justify="right")
        for p in preds:
            table.add_row(p["token"], f"{p['probability']:.3f}")
        ctx.console.print(table)
    model, tok = lmscale.load(runs["decoder"]["run_dir"])
    for prompt in GENERATION_PROMPTS:
        for mode, kwargs in (("greedy", {"greedy": True}),
                             ("sampled (T=0.8, top-p 0.95)", {"temperature": 0.8, "top_p": 0.95, "seed": 0})):
            res = generate(model, tok, prompt, max_new_tokens=30, **kwargs)
            out["generation"].append({"prompt": prompt, "mode": mode, "text": res.text})
            ctx.console.print(f"[bold]{mode}[/]: {prompt}[cyan]{res.text}[/]")
    model, tok = lmscale.load(runs["encoder-decoder"]["run_dir"])
    res = infill(model, tok, INFILL_PROMPT.replace("<extra_id_0>", "<X>").replace("<extra_id_1>", "<Y>"))
    out["infill"] = {"prompt": "Thank you <X> me to your party <Y> week.", "spans": res.spans, "text": res.text}
    ctx.console.print(f"T5 infilling: spans {res.spans} -> [cyan]{res.text}[/]")
    return out


def stage_finetune(ctx: Context) -> dict:
    from lmscale.experiments.pretraining_effect import run_pretraining_effect

    sizes = [s if s else None for s in ctx.budget.finetune_sizes]
    result = run_pretraining_effect(
        ctx.out / "finetune", checkpoint=ctx.results["pretrain"]["encoder"]["run_dir"],
        sizes=sizes, seeds=list(range(ctx.budget.finetune_seeds)), regression=not ctx.fast,
        epochs=ctx.budget.finetune_epochs, min_steps=ctx.budget.finetune_min_steps,
        max_steps=ctx.budget.finetune_max_steps, evaluations=ctx.budget.finetune_evaluations, minilm_sizes=None, log=ctx.console.print,
    )
    return {"tables": result.get("tables", {}), "plot": str(ctx.out / "finetune" / "pretraining_effect.png"),
            "results": str(ctx.out / "finetune" / "results.json")}


def _sweep_design(fast: bool) -> tuple[list[float], list[float]]:
    """Target non-embedding sizes and token budgets of the quickstart's grid sweep."""
    if fast:
        return [1.5e4, 4.0e4, 1.0e5], [4.0e4, 8.0e4]
    return [2.0e4, 6.0e4, 1.6e5], [1.5e5, 3.0e5, 6.0e5]


def stage_scaling(ctx: Context) -> dict:
    from lmscale.experiments.sweep import SweepConfig, run_sweep
    from lmscale.scaling.allocation import compute_optimal
    from lmscale.scaling.report import build_report, fit_table, load_runs

    sizes, tokens = _sweep_design(ctx.fast)
    tok = ctx.results["tokenizers"]["tokenizers"]["bpe"]
    sweep = SweepConfig.from_dict({
        "name": "quickstart-fast" if ctx.fast else "quickstart",
        "design": "grid", "preset": "gpt-tiny", "sizes": sizes, "tokens": tokens, "seeds": [0],
        "base": {
            "model": {"vocab_size": tok["vocab_size"], "max_positions": 64},
            "data": {"corpus": ctx.corpus, "tokenizer": tok["dir"], "shards": str(ctx.out / "shards" / "bpe")},
            "train": {"seq_len": 64, "batch_size": 16, "lr": 0.003, "warmup_fraction": 0.05,
                      "schedule": "cosine", "eval_batches": 16, "log_every": 20, "device": "cpu"},
        },
    })
    sweep_dir = ctx.out / "sweep"
    ctx.console.print(f"grid sweep: {len(sizes)} sizes x {len(tokens)} token budgets, 2 workers")

    def progress(o) -> None:
        ctx.console.print(f"  {o.name}: {o.status}" + (f" ({o.error})" if getattr(o, "error", None) else ""))

    result = run_sweep(sweep, sweep_dir, workers=2, progress=progress)
    if result.counts.get("finished", 0) < 6:
        raise StageUnavailable(f"only {result.counts.get('finished', 0)} sweep runs finished "
                               f"(counts: {result.counts}); see {sweep_dir}")
    report = build_report(result.registry, out_html=sweep_dir / "report.html", png_dir=sweep_dir / "figures",
                          sweep=sweep.name, n_bootstrap=200, title="Quickstart scaling sweep")
    fit = report.get("fit") or {}
    law = {"law": "chinchilla", "params": fit.get("params", {})}
    out: dict[str, Any] = {"registry": result.registry, "report": str(sweep_dir / "report.html"),
                           "figures": report.get("pngs", []), "fit": fit, "counts": result.counts}
    if fit.get("params"):
        p, ci = fit["params"], fit.get("ci95", {})
        table = Table(title="Chinchilla fit L(N, D) = E + A/N^alpha + B/D^beta (95% bootstrap intervals)")
        table.add_column("parameter")
        table.add_column("value", justify="right")
        table.add_column("95% interval", justify="right")
        for k in ("E", "A", "B", "alpha", "beta"):
            lo_hi = ci.get(k)
            table.add_row(k, f"{p[k]:.4g}", f"[{lo_hi[0]:.4g}, {lo_hi[1]:.4g}]" if lo_hi else "-")
        ctx.console.print(table)
        loose = [k for k, (lo, hi) in ci.items() if k in p and lo > 0 and hi / lo > 10]
        if loose:
            out["fit_warning"] = (f"the 95% intervals of {', '.join(loose)} span more than a factor of 10: these few "
                                  "short runs do not pin the law down, so treat the allocation below as illustrative")
            ctx.console.print(f"[yellow]note: {out['fit_warning']}[/]")
        check = fit.get("holdout_check", {})
        if check.get("holdout"):
            errs = [h["rel_error"] for h in check["holdout"]]
            out["holdout_rel_errors"] = errs
            ctx.console.print("held-out largest-compute runs, relative error of the predicted loss: "
                              + ", ".join(f"{e:+.1%}" for e in errs))
        budget = 1e15
        if not all(math.isfinite(v) for v in p.values()) or p["alpha"] > 5 or p["beta"] > 5:
            out["fit_warning"] = ("the fit is degenerate (a term vanished: within this sweep the loss hardly depends "
                                  "on one of N or D), so no compute-optimal allocation is derived from it; "
                                  "`lmscale sweep run --demo` spans a wider range")
            ctx.console.print(f"[yellow]note: {out['fit_warning']}[/]")
            return out
        t = load_runs(result.registry, sweep=sweep.name)
        refit = fit_table(t, holdout=None, n_bootstrap=200)
        alloc = compute_optimal(refit["_law"] if refit else law, budget)
        out["allocation"] = alloc
        ci = alloc.get("ci", {})

        def with_ci(key: str) -> str:
            lo_hi = ci.get(key)
            return f"{alloc[key]:.3g}" + (f" [{lo_hi[0]:.3g}, {lo_hi[1]:.3g}]" if lo_hi else "")

        rule = alloc["rule_of_thumb_20"]
        ctx.console.print(
            f"compute-optimal at C = {budget:.0e} FLOPs (95% intervals): N_opt = {with_ci('N_opt')} non-embedding "
            f"parameters, D_opt = {with_ci('D_opt')} tokens, {with_ci('tokens_per_param')} tokens/parameter, "
            f"predicted loss {with_ci('loss')}.\n20-tokens-per-parameter rule of thumb: N = {rule['N']:.3g}, "
            f"D = {rule['D']:.3g}" + (f", predicted loss {rule['loss']:.3f}" if "loss" in rule else ""))
    return out


def stage_report(ctx: Context) -> dict:
    from lmscale.experiments.quickstart_report import write_report

    path = write_report(ctx.out, ctx.results, fast=ctx.fast)
    ctx.console.print(f"report written to [bold]{path}[/]")
    return {"report": str(path)}


STAGES: list[Stage] = [
    Stage("data", "1. Fetch WikiText-2 through the corpus catalog", stage_data),
    Stage("tokenizers", "2. Train BPE, WordPiece and Unigram tokenizers", stage_tokenizers),
    Stage("pretrain", "3. Pretrain an encoder (MLM), a decoder (causal LM) and an encoder-decoder (span corruption)", stage_pretrain),
    Stage("use", "4. Use them: fill-mask, generation, span infilling", stage_use),
    Stage("finetune", "5. Fine-tune on movie-review sentiment: pretrained vs random initialisation", stage_finetune),
    Stage("scaling", "6. A small scaling sweep, a Chinchilla fit and a compute-optimal recommendation", stage_scaling),
    Stage("report", "7. Write report.html", stage_report),
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
        ctx.results[stage.name] = result
        atomic_write_json(record, {"stage": stage.name, "mode": mode,
                                   "wall_s": round(timings[stage.name], 1), "result": result})
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
