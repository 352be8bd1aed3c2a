"""Coordinate check (Yang et al. 2022, Tensor Programs V, Fig. 5): does any activation's scale
drift with width after a few optimizer steps?

For each width and parametrization a fresh model is trained for a few Adam steps on the same
token stream, and the mean |coordinate| of the embedding output, every block's output and the
logits is recorded after each step. Under a correct muP every curve is flat in width; under the
standard parametrization the logits (and with them the rest) grow with width, which is why the
best learning rate shifts as models widen.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from matplotlib.figure import Figure

from lmscale.config import ModelConfig, TrainConfig
from lmscale.errors import LmscaleError
from lmscale.models import build_model
from lmscale.models.blocks import embed_tokens
from lmscale.training.optim import build_optimizer


@dataclass
class CoordCheckConfig:
    model: ModelConfig
    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    steps: int = 5
    lr: float = 1e-2
    base_width: int | None = None  # muP base width (default: the smallest width)
    parametrizations: tuple[str, ...] = ("sp", "mup")
    seeds: int = 3
    batch_size: int = 8
    seq_len: int = 64


def widen(model: ModelConfig, width: int, parametrization: str, base_width: int) -> ModelConfig:
    """`model` at d_model = `width`, every hidden dimension scaled with it (heads kept, head size
    and d_ff proportional), as muP's width limit assumes."""
    d_ff = None if model.d_ff is None else max(1, round(model.d_ff * width / model.d_model))
    d_head = None if model.d_head is None else max(1, round(model.d_head * width / model.d_model))
    if width % model.n_heads:
        raise LmscaleError(f"width {width} is not divisible by n_heads={model.n_heads}")
    return dataclasses.replace(model, d_model=width, d_ff=d_ff, d_head=d_head, dropout=0.0, attention_dropout=0.0,
                               parametrization=parametrization,
                               mup_base_width=base_width if parametrization == "mup" else None)


def token_stream(vocab: int, n: int, seed: int) -> torch.Tensor:
    """Zipf-distributed tokens (exponent 1.1): a unigram law a few steps can start to learn."""
    g = torch.Generator().manual_seed(seed)
    p = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64) ** 1.1
    return torch.multinomial(p / p.sum(), n, replacement=True, generator=g)


def _activations(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, float]:
    """Mean |x| of the embedding output, each block's output and the logits, in one forward pass."""
    with torch.no_grad():
        out: dict[str, float] = {"embedding": float(embed_tokens(model.tok_emb, ids, model.config).abs().mean())}
    hooks = []
    for k, layer in enumerate(model.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, k=k: out.__setitem__(f"block{k}", float(o[0].abs().mean()))))
    try:
        with torch.no_grad():
            logits = model(ids).logits
    finally:
        for h in hooks:
            h.remove()
    out["logits"] = float(logits.abs().mean())
    return out


def train_and_measure(cfg: ModelConfig, steps: int, lr: float, batches: list[torch.Tensor], seed: int
                      ) -> list[dict[str, float]]:
    """Activation scales after each of `steps` Adam steps (index 0: at initialisation)."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    if not hasattr(model, "tok_emb") or not hasattr(model, "layers"):
        raise LmscaleError("the coordinate check runs on decoder models")
    tc = TrainConfig(lr=lr, weight_decay=0.0)
    opt = build_optimizer(model, tc)
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    probe = batches[0]
    record = [_activations(model.eval(), probe)]
    for t in range(steps):
        model.train()
        ids = batches[1 + t % (len(batches) - 1)]
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        record.append(_activations(model.eval(), probe))
    return record


def run_coord_check(cc: CoordCheckConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """{parametrization: {width: {activation: [mean |x| per step, averaged over seeds]}}} plus the
    growth of each activation from the smallest to the largest width at the last step."""
    if cc.model.family != "decoder":
        raise LmscaleError(f"the coordinate check runs on decoder models, not {cc.model.family!r}")
    widths = sorted(cc.widths)
    base = cc.base_width or widths[0]
    n_tok = cc.batch_size * cc.seq_len
    results: dict[str, dict[int, dict[str, list[float]]]] = {}
    for par in cc.parametrizations:
        results[par] = {}
        for w in widths:
            mcfg = widen(cc.model, w, par, base)
            runs = []
            for s in range(cc.seeds):
                stream = token_stream(mcfg.vocab_size, n_tok * (cc.steps + 1), seed=1000 + s)
                batches = list(stream.view(cc.steps + 1, cc.batch_size, cc.seq_len))
                runs.append(train_and_measure(mcfg, cc.steps, cc.lr, batches, seed=s))
            keys = runs[0][0].keys()
            results[par][w] = {k: [float(np.mean([r[t][k] for r in runs])) for t in range(cc.steps + 1)]
                               for k in keys}
            if log:
                last = results[par][w]
                log(f"{par:>4} width {w:>5}: " + ", ".join(f"{k} {v[-1]:.3g}" for k, v in last.items()))
    growth = {par: {k: results[par][widths[-1]][k][-1] / results[par][widths[0]][k][-1]
                    for k in results[par][widths[0]]} for par in results}
    return {"widths": widths, "base_width": base, "steps": cc.steps, "lr": cc.lr, "seeds": cc.seeds,
            "activations": {par: {str(w): v for w, v in r.items()} for par, r in results.items()},
            "growth_last_step": growth}


def plot_coord_check(res: dict[str, Any]) -> Figure:
    """One panel per parametrization: mean |x| at the last step against width, one line per activation."""
    pars = list(res["activations"])
    fig = Figure(figsize=(5.2 * len(pars), 4.2))
    axes = fig.subplots(1, len(pars), sharey=True, squeeze=False)[0]
    widths = res["widths"]
    for ax, par in zip(axes, pars):
        acts = res["activations"][par]
        for k in acts[str(widths[0])]:
            ax.plot(widths, [acts[str(w)][k][-1] for w in widths], marker="o", label=k,
                    lw=2.5 if k == "logits" else 1.2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width (d_model)")
        ax.set_title(f"{par}: after {res['steps']} steps, lr {res['lr']:g}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean |activation|")
    axes[-1].legend(fontsize=8)
    return fig
