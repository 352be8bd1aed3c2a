"""The transfer pretraining buys, in labelled examples (Hernandez et al. 2021; ULMFiT's claim).

For each pretrained checkpoint and its random-weight twin (same architecture, same tokenizer),
train a classifier at several label counts over seeds, then read the random-init curve at the
pretrained scores: the labels random init needs to match the pretrained model (D_E), the data
transferred (D_T = D_E - D_F) and the factor D_E / D_F. Several checkpoints (pretraining budgets
or sizes) also fit D_T = k * D_F^alpha * N^beta, N being each checkpoint's pretraining tokens.

Two ways to train the classifier: `finetune` (every weight, the protocol ULMFiT's claim is
about) and `probe` (a ridge classifier on frozen mean-pooled features: what the weights already
encode, in seconds, so many seeds and sizes are affordable on a CPU). The report says which.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from matplotlib.figure import Figure

from lmscale.errors import LmscaleError
from lmscale.experiments.pretraining_effect import (
    PretrainingEffectConfig,
    _finetune_one,
    cap_eval_splits,
    summarize,
    transfer_from_tables,
)
from lmscale.finetune.api import random_body
from lmscale.finetune.probe import probe
from lmscale.finetune.tasks import TaskData, TaskSpec, load_task
from lmscale.io import atomic_path, atomic_write_json, atomic_write_text
from lmscale.models.loading import load
from lmscale.models.spec import family_spec
from lmscale.scaling.transfer import fit_transfer_law
from lmscale.training.device import resolve_device

METHODS = ("finetune", "probe")
DEFAULT_SIZES = (100, 300, 1000, 3000)


@dataclass
class TransferConfig:
    """Checkpoints to compare with their random twins, and how each classifier is trained."""

    checkpoints: Sequence[str | Path]
    out_dir: str | Path = "runs/transfer"
    task: str | Path = "imdb"
    sizes: Sequence[int] = DEFAULT_SIZES
    seeds: Sequence[int] = (0, 1, 2)
    method: str = "finetune"
    max_length: int = 128
    max_dev: Optional[int] = 1000  # dev examples scored (the first ones of the fixed split)
    finetune: PretrainingEffectConfig = field(default_factory=PretrainingEffectConfig)
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LmscaleError(f"method={self.method!r} is not one of {', '.join(METHODS)}")
        if not self.checkpoints:
            raise LmscaleError("give at least one pretrained checkpoint")
        if len(self.sizes) < 2:
            raise LmscaleError("the random-init curve needs two or more label counts (--sizes)")
        self.out_dir = Path(self.out_dir)


def _pretraining_tokens(checkpoint: str | Path) -> Optional[int]:
    """Tokens the checkpoint was pretrained on: a training checkpoint's own state, else the summary
    of the run it belongs to."""
    d = Path(checkpoint)
    state = d / "trainer_state.json"
    candidates = [(state, lambda j: j["state"]["tokens"])] if state.is_file() else []
    candidates += [(p / "summary.json", lambda j: j.get("tokens")) for p in (d, *d.parents[:3])]
    for path, read in candidates:
        if path.is_file():
            try:
                return int(read(json.loads(path.read_text())) or 0) or None
            except (ValueError, OSError, TypeError, KeyError):
                return None
    return None


def _rows(cfg: TransferConfig, task: TaskData, init: str, make: Callable[[int], tuple[Any, Any]],
          say: Callable[[str], None]) -> list[dict[str, Any]]:
    if cfg.method == "probe":
        body, tok = make(0)
        spec = family_spec(body)
        rows = probe(body, tok, task, list(cfg.sizes), list(cfg.seeds), init, pooling=spec.default_pooling,
                     max_length=cfg.max_length, max_train=max(cfg.sizes), device=resolve_device(cfg.device))
        for r in rows:
            say(f"probe {init:10s} n={r['train_examples']:5d} seed={r['seed']} dev accuracy "
                f"{r['dev']['accuracy']:.4f}")
        return rows
    n_train = len(task.splits["train"])
    ft = copy.copy(cfg.finetune)
    ft.max_length, ft.device = cfg.max_length, cfg.device
    return [_finetune_one(ft, task, "classification", init, make, size, seed, n_train, say)
            for size in cfg.sizes for seed in cfg.seeds]


def _curve(table: dict[str, dict[str, float]]) -> tuple[list[int], list[float], list[float]]:
    sizes = sorted(int(s) for s in table)
    return sizes, [table[str(s)]["mean"] for s in sizes], [table[str(s)]["std"] for s in sizes]


def run_transfer(cfg: TransferConfig, log: Optional[Callable[[str], None]] = print) -> dict[str, Any]:
    """Train every (checkpoint | random twin) x size x seed classifier; write results.json,
    table.txt and transfer.png under `cfg.out_dir`; return the results."""
    say = log or (lambda s: None)
    t0 = time.perf_counter()
    task = load_task(cfg.task, TaskSpec(kind="classification"))
    cap_eval_splits(task, cfg.max_dev)
    if len(task.splits["train"]) < max(cfg.sizes):
        raise LmscaleError(f"task {task.name} has {len(task.splits['train'])} training examples; "
                           f"--sizes asks for {max(cfg.sizes)}")
    results: list[dict[str, Any]] = []
    twins: dict[str, dict[str, Any]] = {}  # architecture -> random-init table (one per shape)
    for ckpt in cfg.checkpoints:
        body, tok = load(ckpt)
        if tok is None:
            raise LmscaleError(f"{ckpt}: no tokenizer saved with the checkpoint")
        arch = copy.deepcopy(body.config)
        key = repr(sorted(vars(arch).items())) + str(getattr(tok, "hash", id(tok)))
        runs = _rows(cfg, task, "pretrained", lambda seed, b=body, t=tok: (copy.deepcopy(b), t), say)
        if key not in twins:
            twin_runs = _rows(cfg, task, "random", lambda seed, a=arch, t=tok: (
                random_body(a, t, seed=1000 + seed, fit_vocab=False), t), say)
            twins[key] = {"runs": twin_runs, "table": summarize(twin_runs, "accuracy", "classification")["random"]}
        table = {"pretrained": summarize(runs, "accuracy", "classification")["pretrained"],
                 "random": twins[key]["table"]}
        points = transfer_from_tables(table)["pretrained"]
        results.append({"checkpoint": str(ckpt), "pretraining_tokens": _pretraining_tokens(ckpt),
                        "params": int(sum(p.numel() for p in body.parameters())), "table": table,
                        "transfer": [p.to_dict() for p in points], "runs": runs})
        say(f"{ckpt}: " + "; ".join(p.describe() for p in points))
    law = None
    if len(results) > 1:
        d_f, d_t, n = [], [], []
        for r in results:
            for p in r["transfer"]:
                if p["transferred"] is not None and r["pretraining_tokens"]:
                    d_f.append(p["labels"])
                    d_t.append(p["transferred"])
                    n.append(r["pretraining_tokens"])
        law = fit_transfer_law(d_f, d_t, n).to_dict() if d_f else None
    text = format_transfer(results, law, cfg.method, task.name)
    say(text)
    png = plot_transfer(results, cfg.out_dir / "transfer.png", f"{task.name}: {cfg.method}")
    out = {"task": task.name, "method": cfg.method, "sizes": list(cfg.sizes), "seeds": list(cfg.seeds),
           "max_length": cfg.max_length, "dev_examples": len(task.splits["dev"]), "checkpoints": results,
           "random_runs": [r for t in twins.values() for r in t["runs"]], "law": law, "plot": str(png),
           "wall_s": round(time.perf_counter() - t0, 1)}
    atomic_write_json(cfg.out_dir / "results.json", out)
    atomic_write_text(cfg.out_dir / "table.txt", text + "\n")
    return out


def format_transfer(results: list[dict[str, Any]], law: Optional[dict[str, Any]], method: str, task: str) -> str:
    """One block per checkpoint: accuracy of both starts and the effective data transferred."""
    lines = [f"Effective data transferred on {task} ({method}; dev accuracy, mean ± std over seeds)"]
    for r in results:
        tokens = f", {r['pretraining_tokens']:,} pretraining tokens" if r["pretraining_tokens"] else ""
        lines += [f"{r['checkpoint']}{tokens}",
                  f"{'labels':>7} | {'pretrained':>15} | {'random':>15} | {'random needs':>12} | {'factor':>8}"]
        for p in r["transfer"]:
            pre, rnd = r["table"]["pretrained"][str(p["labels"])], r["table"]["random"].get(str(p["labels"]))
            need = "-" if p["equivalent_labels"] is None else f"{p['equivalent_labels']:,.0f}"
            factor = "-" if p["factor"] is None else f"x{p['factor']:.1f}"
            note = {"extrapolated": " (extrapolated)", "none transferred": " (none)",
                    "not identified": " (not identified)"}.get(p["how"], "")
            rnd_s = f"{rnd['mean']:.3f} ± {rnd['std']:.3f}" if rnd else "-"
            lines.append(f"{p['labels']:>7} | {pre['mean']:.3f} ± {pre['std']:.3f} | {rnd_s:>15} | "
                         f"{need:>12} | {factor:>8}{note}")
    if law is not None:
        lines.append(law["formula"])
    return "\n".join(lines)


def plot_transfer(results: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Left: accuracy against labels per start; right: the factor D_E / D_F against labels."""
    fig = Figure(figsize=(11, 4))
    ax, bx = fig.subplots(1, 2)
    shown_random = set()
    for r in results:
        label = Path(r["checkpoint"]).name + (f" ({r['pretraining_tokens']:,} tok)" if r["pretraining_tokens"] else "")
        for init in ("pretrained", "random"):
            if init == "random":
                key = repr(r["table"]["random"])
                if key in shown_random:
                    continue
                shown_random.add(key)
            sizes, means, stds = _curve(r["table"][init])
            pre = init == "pretrained"
            ax.errorbar(sizes, means, yerr=stds, marker="o", capsize=3, label=label if pre else "random init",
                        ls="-" if pre else "--")
        pts = [p for p in r["transfer"] if p["factor"] is not None]
        bx.plot([p["labels"] for p in pts], [p["factor"] for p in pts], marker="o", label=label)
        for p in pts:
            if p["how"] == "extrapolated":
                bx.annotate("extrapolated", (p["labels"], p["factor"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training examples")
    ax.set_ylabel("dev accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.axhline(1.0, color="grey", lw=0.8)
    bx.set_xlabel("labelled examples fine-tuned from pretrained weights (D_F)")
    bx.set_ylabel("labels random init needs / D_F")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7)
    fig.suptitle(f"Effective data transferred: {title}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path
