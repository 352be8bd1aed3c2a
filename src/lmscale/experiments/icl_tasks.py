"""Synthetic in-context-learning tasks small enough to watch a phase transition on a CPU.

Two tasks, mixed in training, both solvable only from the context:

- associative recall, the lecture's `thanks -> merci, hello -> bonjour, otter -> ?` with a fresh
  random mapping in every sequence: `k1 -> v1 , k2 -> v2 , ... , q -> ?`. Memorising a mapping
  is useless; the model must find the key in its context and copy what followed it.
- induction / copying: a random token sequence followed by its repeat; from the second copy on,
  every next token can be read off the first copy (Olsson et al. 2022's induction heads).

Both need a two-step attention circuit that forms abruptly during training, so in-context
accuracy sits at chance for a while and then jumps (Olsson et al. 2022). The driver trains
decoders of several sizes with the library's model and optimizer and records accuracy (a
discontinuous metric) next to the log-probability of the right answer (a continuous one).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np
import torch

from lmscale.config import ModelConfig, TrainConfig
from lmscale.errors import LmscaleError
from lmscale.models import build_model
from lmscale.training.device import resolve_device
from lmscale.training.optim import build_optimizer, lr_at
from lmscale.training.step import BadSteps, OptimizerStep, record_step, streak_message

PAD, SEP, ARROW = 0, 1, 2
N_SPECIAL = 3


@dataclass
class ICLConfig:
    """Task sizes and the training budget. `small()` is the seconds-long setting for tests."""

    n_keys: int = 32
    n_values: int = 32
    n_pairs: int = 6
    n_queries: int = 4
    copy_len: int = 20
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    n_layers: int = 2
    steps: int = 3000  # long enough for every width to show its induction jump
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 50
    eval_every: int = 50
    eval_episodes: int = 256
    recall_fraction: float = 0.5
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def small(cls) -> "ICLConfig":
        return cls(n_keys=12, n_values=12, n_pairs=4, n_queries=2, copy_len=8, widths=[16, 32], steps=60,
                   batch_size=16, eval_every=20, eval_episodes=64)

    @property
    def vocab_size(self) -> int:
        return N_SPECIAL + self.n_keys + self.n_values

    @property
    def recall_len(self) -> int:
        return 1 + 4 * self.n_pairs + 4 * self.n_queries

    @property
    def copy_total(self) -> int:
        return 1 + 2 * self.copy_len

    @property
    def seq_len(self) -> int:
        return max(self.recall_len, self.copy_total)


def recall_episode(cfg: ICLConfig, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Tokens of one recall episode and its (position of `->` before the answer, answer) queries."""
    keys = rng.choice(cfg.n_keys, cfg.n_pairs, replace=False) + N_SPECIAL
    vals = rng.integers(0, cfg.n_values, cfg.n_pairs) + N_SPECIAL + cfg.n_keys
    toks = [PAD]
    for k, v in zip(keys, vals):
        toks += [int(k), ARROW, int(v), SEP]
    queries = []
    for j in rng.choice(cfg.n_pairs, cfg.n_queries, replace=cfg.n_queries > cfg.n_pairs):
        toks += [int(keys[j]), ARROW]
        queries.append((len(toks) - 1, int(vals[j])))
        toks += [int(vals[j]), SEP]
    out = np.full(cfg.seq_len, PAD, dtype=np.int64)
    out[: len(toks)] = toks
    return out, queries


def copy_episode(cfg: ICLConfig, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A random sequence and its repeat; targets are the repeat's tokens after its first."""
    seq = rng.integers(N_SPECIAL, cfg.vocab_size, cfg.copy_len)
    toks = np.concatenate([[PAD], seq, seq])
    out = np.full(cfg.seq_len, PAD, dtype=np.int64)
    out[: len(toks)] = toks
    start = 1 + cfg.copy_len
    return out, [(p, int(toks[p + 1])) for p in range(start, start + cfg.copy_len - 1)]


def batch(cfg: ICLConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    rows = [(recall_episode if rng.random() < cfg.recall_fraction else copy_episode)(cfg, rng)[0] for _ in range(n)]
    return np.stack(rows)


def evaluate(model: Any, episodes: list[tuple[np.ndarray, list[tuple[int, int]]]],
             answer_ids: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy (argmax == answer) and mean log-probability of the answer at the query positions.

    `answer_ids` restricts the argmax to the tokens an answer can be (the values, for recall).
    """
    x = torch.from_numpy(np.stack([e[0] for e in episodes])).to(next(model.parameters()).device)
    with torch.no_grad():
        logits = model(x).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    correct, lp, n = 0, 0.0, 0
    for b, (_, qs) in enumerate(episodes):
        for pos, ans in qs:
            row = logp[b, pos]
            if answer_ids is not None:
                pred = int(answer_ids[int(torch.argmax(row[answer_ids]))])
            else:
                pred = int(torch.argmax(row))
            correct += pred == ans
            lp += float(row[ans])
            n += 1
    return {"accuracy": correct / n, "answer_logprob": lp / n}


def model_config(cfg: ICLConfig, width: int) -> ModelConfig:
    """A pre-LN GPT decoder of `cfg.n_layers` layers and width `width` for the task vocabulary."""
    return ModelConfig(family="decoder", vocab_size=cfg.vocab_size, d_model=width, n_layers=cfg.n_layers,
                       n_heads=max(1, width // 16), d_ff=4 * width, max_positions=max(64, cfg.seq_len),
                       position="learned", activation="gelu", norm="layernorm", norm_position="pre",
                       tie_embeddings=True, dropout=0.0)


def train_config(cfg: ICLConfig) -> TrainConfig:
    """AdamW, the schedule and the optimizer step of pretraining (`lmscale.training.optim.lr_at`,
    `lmscale.training.step.OptimizerStep`): linear warm-up over `warmup_steps`, then cosine to a
    tenth of the peak over the remaining steps; gradients clipped to norm 1."""
    return TrainConfig(lr=cfg.lr, weight_decay=0.01, beta1=0.9, beta2=0.98, schedule="cosine", min_lr_ratio=0.1,
                       warmup_steps=cfg.warmup_steps, grad_clip=1.0)


def _loss(model: Any, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return model(x, labels=labels).loss


def train_one(cfg: ICLConfig, width: int, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train one decoder on the task mix and evaluate both tasks every `eval_every` steps."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(model_config(cfg, width)).to(device)
    tcfg = train_config(cfg)
    opt = build_optimizer(model, tcfg)
    counts = model.num_parameters()
    erng = np.random.default_rng(10_000 + cfg.seed)
    rec_eval = [recall_episode(cfg, erng) for _ in range(cfg.eval_episodes)]
    copy_eval = [copy_episode(cfg, erng) for _ in range(cfg.eval_episodes)]
    values = np.arange(N_SPECIAL + cfg.n_keys, cfg.vocab_size)
    rng = np.random.default_rng(cfg.seed)
    evals = []
    t0, c0 = time.perf_counter(), time.process_time()
    tokens_per_step = cfg.batch_size * cfg.seq_len

    def do_eval(step: int) -> None:
        model.eval()
        r = evaluate(model, rec_eval, values)
        c = evaluate(model, copy_eval)
        model.train()
        evals.append({"step": step, "tokens": step * tokens_per_step, "recall": r, "induction": c})
        if log:
            log(f"d_model={width} step {step}: recall acc {r['accuracy']:.3f}, induction acc {c['accuracy']:.3f}")

    model.train()
    optimizer_step, bad = OptimizerStep(model, opt, tcfg.grad_clip), BadSteps()
    for step in range(cfg.steps):
        if step % cfg.eval_every == 0 and step > 0:
            do_eval(step)
        x = torch.from_numpy(batch(cfg, rng, cfg.batch_size)).to(device)
        labels = x.clone()
        labels[:, 1:][x[:, 1:] == PAD] = -100  # padding after short episodes
        result = optimizer_step(lr_at(step, cfg.steps, tcfg), partial(_loss, model, x, labels))
        if record_step(bad, result.read()[2], tcfg.max_bad_steps):
            raise LmscaleError(f"d_model={width}: {streak_message(bad.consecutive_bad, step + 1)}; lower lr")
    do_eval(cfg.steps)
    return {"d_model": width, "n_layers": cfg.n_layers, "params_total": int(counts["total"]),
            "params_non_embedding": int(counts["non_embedding"]), "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0,
            "evals": evals, "transition": {task: transition(evals, task) for task in ("recall", "induction")}}


def transition(evals: list[dict[str, Any]], task: str = "recall") -> dict[str, Any]:
    """Where and how abruptly accuracy rises: tokens at half the rise, and the largest single jump.

    `jump_fraction` is the share of the total rise that happens between two consecutive
    evaluations; a smooth rise over a log-spaced budget spreads it out, a phase transition
    concentrates it.
    """
    acc = np.array([e[task]["accuracy"] for e in evals])
    tok = np.array([e["tokens"] for e in evals], dtype=float)
    if len(acc) < 2:
        return {"risen": False}
    rise = float(acc.max() - acc[0])
    if rise <= 0.05:
        return {"risen": False, "rise": rise}
    half = acc[0] + rise / 2
    i = int(np.argmax(acc >= half))
    jumps = np.diff(acc)
    j = int(np.argmax(jumps))
    return {"risen": rise > 0.2, "rise": rise, "accuracy_before": float(acc[0]), "accuracy_after": float(acc[-1]),
            "tokens_at_half_rise": float(tok[i]),
            "largest_jump": float(jumps[j]), "jump_fraction": float(jumps[j] / rise),
            "jump_between_tokens": [float(tok[j]), float(tok[j + 1])]}


def switch(evals: list[dict[str, Any]], total_steps: int, task: str = "induction", low: float = 0.1,
           high: float = 0.9) -> dict[str, Any]:
    """Does accuracy switch on: from at most `low` to at least `high`, and within what share of the
    training steps (from the last evaluation at or below `low` to the first at or above `high`)?"""
    steps = [0] + [e["step"] for e in evals]
    acc = [None] + [e[task]["accuracy"] for e in evals]
    up = next((i for i in range(1, len(acc)) if acc[i] >= high), None)
    if up is None:
        return {"switched": False, "max_accuracy": max(a for a in acc[1:]) if evals else None}
    down = max((i for i in range(1, up) if acc[i] <= low), default=0)  # 0: before the first evaluation
    fraction = (steps[up] - steps[down]) / max(total_steps, 1)
    return {"switched": True, "from_step": steps[down], "to_step": steps[up], "step_fraction": fraction,
            "accuracy_from": acc[down], "accuracy_to": acc[up], "low": low, "high": high}


def run_icl(cfg: ICLConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train every width; the result JSON feeds `plots.plot_icl` and the report."""
    models = [train_one(cfg, w, log) for w in cfg.widths]
    return {"config": asdict(cfg), "torch_threads": torch.get_num_threads(),
            "chance": {"recall": 1.0 / cfg.n_values, "recall_in_context": 1.0 / cfg.n_pairs,
                       "induction": 1.0 / (cfg.vocab_size - N_SPECIAL)},
            "models": models}
