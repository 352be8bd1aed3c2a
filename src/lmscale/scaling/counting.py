"""Exact parameter and FLOP counts from a `ModelConfig`, without building the model.

Scaling laws are stated in parameters N and tokens D, and compute is C ~ 6ND; all three must be
known for a 175B model as readily as for a 1M one, so everything here is arithmetic on the config.
The parameter counts and the PaLM FLOP count are the model config's own (`ModelConfig.
parameter_breakdown`, `.parameter_counts`, `.training_flops_per_token`): they follow `lmscale.models`
exactly (and therefore the `transformers` reference implementations), and split parameters the way
Kaplan et al. 2020 do: `embedding` = token + learned absolute position + segment embeddings + an
untied output projection; everything else is `non_embedding`. This module names them for scaling
laws and adds the other FLOP conventions.

FLOP conventions, all per *training* token (forward + backward = 3x forward):

- ``6N``: Kaplan et al. 2020 / Hoffmann et al. 2022 rule of thumb with all parameters.
- ``6N_non_embedding``: the same with non-embedding parameters (Kaplan's N).
- ``kaplan``: Kaplan et al. 2020 eq. 2.2, ``6N + 6 n_layer n_ctx d_model`` (N non-embedding).
- ``palm``: Chowdhery et al. 2022 App. B, ``6N + 12 L H Q T`` (N all parameters; the tied
  embedding is counted once, which stands in for the output projection).
- ``chinchilla``: Hoffmann et al. 2022 App. F as printed: embedding lookup as a matmul, QKV, logits,
  softmax, attention-weighted values, output projection of attention, dense block, final logits.
- ``exact``: every matmul the model performs (2 FLOPs per multiply-add), including attention
  scores and values over the full (unmasked) window, gated MLPs, cross-attention, the MLM transform
  and the output projection; for encoders the MLM head runs only on the masked fraction of
  positions; no embedding-lookup, norm or softmax FLOPs.
"""
from __future__ import annotations

from typing import Any, Iterable

from lmscale.config import ModelConfig, family_objective, preset_model

CONVENTIONS = ("6N", "6N_non_embedding", "kaplan", "palm", "chinchilla", "exact")


def _model_config(cfg: Any) -> ModelConfig:
    """Accept a ModelConfig, a RunConfig (its .model) or a preset name."""
    if isinstance(cfg, ModelConfig):
        return cfg
    if isinstance(cfg, str):
        return preset_model(cfg)
    model = getattr(cfg, "model", None)
    if isinstance(model, ModelConfig):
        return model
    raise TypeError(f"expected a ModelConfig, RunConfig or preset name, got {type(cfg).__name__}")


def parameter_breakdown(cfg: ModelConfig) -> dict[str, int]:
    """Parameters by component (token/position/segment embeddings, stacks, heads)."""
    return _model_config(cfg).parameter_breakdown()


def count_parameters(cfg: ModelConfig) -> dict[str, int]:
    """`{"params_total", "params_embedding", "params_non_embedding"}` as exact integers."""
    counts = _model_config(cfg).parameter_counts()
    return {f"params_{k}": v for k, v in counts.items()}


# ----------------------------------------------------------------------------- FLOPs

def _attn_matmul_flops(cfg: ModelConfig, q_len: int, kv_len: int, cross: bool = False) -> int:
    """Forward FLOPs of one attention block for one sequence (projections, scores, values, out);
    self-attention's key/value projections are `kv_dim` wide (grouped-query attention)."""
    d, a = cfg.d_model, cfg.attn_dim
    kv = a if cross else cfg.kv_dim
    proj = 2 * q_len * d * a + 2 * 2 * kv_len * d * kv + 2 * q_len * a * d
    return proj + 2 * q_len * kv_len * a * 2


def _mlp_matmul_flops(cfg: ModelConfig, length: int) -> int:
    n_in = 2 if cfg.gated_mlp else 1
    return 2 * length * cfg.d_model * cfg.ffn_dim * (n_in + 1)


def _exact_forward(cfg: ModelConfig, seq_len: int, target_len: int, mlm_fraction: float) -> tuple[float, int]:
    """(forward FLOPs per sequence, tokens that count as trained per sequence)."""
    d, v = cfg.d_model, cfg.vocab_size
    objective = family_objective(cfg.family)  # the family's layout, from the config-level registry
    if objective == "causal":
        layer = _attn_matmul_flops(cfg, seq_len, seq_len) + _mlp_matmul_flops(cfg, seq_len)
        return cfg.n_layers * layer + 2 * seq_len * d * v, seq_len
    if objective == "mlm":
        layer = _attn_matmul_flops(cfg, seq_len, seq_len) + _mlp_matmul_flops(cfg, seq_len)
        masked = mlm_fraction * seq_len
        head = masked * (2 * d * v + (2 * d * d if cfg.mlm_transform else 0))
        pooled = (2 * d * d + (2 * d * 2 if cfg.nsp_head else 0)) if cfg.pooler else 0
        return cfg.n_layers * layer + head + pooled, seq_len
    enc = cfg.n_layers * (_attn_matmul_flops(cfg, seq_len, seq_len) + _mlp_matmul_flops(cfg, seq_len))
    dec_layer = (_attn_matmul_flops(cfg, target_len, target_len)
                 + _attn_matmul_flops(cfg, target_len, seq_len, cross=True)
                 + _mlp_matmul_flops(cfg, target_len))
    dec = cfg.decoder_layers * dec_layer + 2 * target_len * d * v
    return enc + dec, seq_len + target_len


def _chinchilla_forward(cfg: ModelConfig, seq_len: int) -> float:
    """Hoffmann et al. 2022, Appendix F, term by term (per sequence, one stack of n_layers)."""
    d, v, a, h = cfg.d_model, cfg.vocab_size, cfg.attn_dim, cfg.n_heads
    embeddings = 2 * seq_len * v * d
    attention = (2 * 3 * seq_len * d * a + 2 * seq_len * seq_len * a + 3 * h * seq_len * seq_len
                 + 2 * seq_len * seq_len * a + 2 * seq_len * a * d)
    dense = 2 * seq_len * (d * cfg.ffn_dim * 2)
    logits = 2 * seq_len * d * v
    return embeddings + cfg.total_layers * (attention + dense) + logits


def flops_per_token(
    cfg: ModelConfig,
    seq_len: int | None = None,
    convention: str | Iterable[str] | None = None,
    *,
    target_len: int | None = None,
    mlm_fraction: float = 0.15,
) -> dict[str, float]:
    """Training FLOPs per token under each named convention (see the module docstring).

    `seq_len` defaults to the context the config supports (`max_positions`). For encoder-decoders
    the exact count is per token entering either stack (`seq_len` source + `target_len` target,
    default equal) — where 6N, which pushes every token through every parameter, overcounts by
    about 2x. `convention` picks one name or a list; default all, in `CONVENTIONS` order.
    """
    if convention is None:
        names = list(CONVENTIONS)
    elif isinstance(convention, str):
        names = [convention]
    else:
        names = list(convention)
    cfg = _model_config(cfg)
    for n in names:
        if n not in CONVENTIONS:
            raise ValueError(f"unknown FLOP convention {n!r}; choose from {', '.join(CONVENTIONS)}")
    t = int(seq_len if seq_len is not None else cfg.max_positions)
    if t <= 0:
        raise ValueError(f"seq_len={t} must be positive")
    if not 0.0 < mlm_fraction <= 1.0:
        raise ValueError(f"mlm_fraction={mlm_fraction} must be in (0, 1]")
    tt = int(target_len if target_len is not None else t)
    p = cfg.parameter_counts()
    out: dict[str, float] = {}
    for n in names:
        if n == "6N":
            out[n] = 6.0 * p["total"]
        elif n == "6N_non_embedding":
            out[n] = 6.0 * p["non_embedding"]
        elif n == "kaplan":
            out[n] = 6.0 * p["non_embedding"] + 6.0 * cfg.total_layers * t * cfg.d_model
        elif n == "palm":
            out[n] = cfg.training_flops_per_token(t)
        elif n == "chinchilla":
            out[n] = 3.0 * _chinchilla_forward(cfg, t) / t
        else:
            fwd, tokens = _exact_forward(cfg, t, tt, mlm_fraction)
            out[n] = 3.0 * fwd / tokens
    return out


def training_flops(cfg: ModelConfig, tokens: float, convention: str = "6N", **kw: Any) -> float:
    """Total training FLOPs for `tokens` training tokens (C = flops_per_token x D)."""
    try:
        t = float(tokens)
    except (TypeError, ValueError):
        raise ValueError(f"tokens={tokens!r} must be a positive number") from None
    if not (t > 0 and t != float("inf")):
        raise ValueError(f"tokens={tokens!r} must be a positive number")
    return flops_per_token(cfg, convention=convention, **kw)[convention] * t
