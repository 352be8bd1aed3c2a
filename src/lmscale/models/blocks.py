"""Transformer building blocks shared by the three families: the architecture, layer by layer.

One attention module serves self-attention (bidirectional or causal, with a KV cache) and
cross-attention; masks are built once per forward by `layer_inputs` and reused by every layer, so
a layer only ever sees "an SDPA mask or None" plus an `is_causal` flag. When there is no padding
and no cache offset, no mask tensor exists at all and SDPA takes its fused causal path.

How the heavier operations run on each device (the GELU, the attention call, the losses) lives in
`lmscale.models.kernels`.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lmscale.config import ModelConfig
from lmscale.errors import LmscaleError
from lmscale.models.kernels import attention, gelu_tanh

KV = tuple[torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------- norms

class RMSNorm(nn.Module):
    """T5-style RMS norm: scale only, no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(cfg: ModelConfig, dim: Optional[int] = None) -> nn.Module:
    """LayerNorm always carries weight and bias (BERT/GPT/Transformer); RMSNorm weight only (T5)."""
    dim = dim or cfg.d_model
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps)


# ----------------------------------------------------------------------------- activations / MLP

def activation_fn(name: str):
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return gelu_tanh
    if name == "relu":
        return F.relu
    if name == "silu":
        return F.silu
    raise ValueError(f"unknown activation {name!r}")


class MLP(nn.Module):
    """d -> ffn -> d; gated variants (GEGLU/SwiGLU/ReGLU) keep both input projections in one
    matrix `fc_in` = [gate; up] so the forward is a single matmul."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gated = cfg.gated_mlp
        ffn = cfg.ffn_dim
        self.fc_in = nn.Linear(cfg.d_model, ffn * (2 if self.gated else 1), bias=cfg.bias)
        self.fc_out = nn.Linear(ffn, cfg.d_model, bias=cfg.bias)
        self.act = activation_fn(cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc_in(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.fc_out(h)


def embed(table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """Look rows up. On CPU as `index_select`, whose backward is one vectorised `index_add` into
    the gradient, where the embedding op's CPU backward adds the rows one tensor operation at a
    time. Elsewhere the embedding op as usual."""
    if ids.device.type != "cpu":
        return F.embedding(ids, table.weight)
    return table.weight.index_select(0, ids.reshape(-1)).view(*ids.shape, table.embedding_dim)


def embed_tokens(table: nn.Embedding, ids: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Token embeddings, times sqrt(d_model) where the config asks (the original Transformer)."""
    x = embed(table, ids)
    if cfg.embedding_scale:
        x = x * math.sqrt(cfg.d_model)
    return x


# ----------------------------------------------------------------------------- positions

def sinusoidal_table(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Vaswani et al. (2017): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...).

    Computed from the positions themselves, so any length works (the table has no size limit).
    """
    half = torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32)
    inv_freq = torch.exp(half * (-math.log(10000.0) / dim))
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq
    out = torch.empty(*positions.shape, dim, device=positions.device, dtype=torch.float32)
    out[..., 0::2] = torch.sin(angles)
    out[..., 1::2] = torch.cos(angles[..., : dim // 2])
    return out


def rope_frequencies(dim: int, theta: float, scaling: Optional[dict] = None,
                     max_positions: Optional[int] = None) -> tuple[torch.Tensor, float]:
    """RoPE inverse frequencies for `dim` rotated dimensions, and the factor cos and sin are scaled by.

    `scaling` is a `ModelConfig.rope_scaling` mapping, computed as `transformers` computes it:
    `linear` divides every frequency by `factor` (position interpolation, Chen et al. 2023);
    `llama3` divides the low frequencies by `factor`, keeps the high ones and interpolates between
    them (Llama 3.1); `yarn` blends interpolated and original frequencies along a ramp set by
    `beta_fast`/`beta_slow` and scales cos and sin by its attention factor (Peng et al. 2023).
    """
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv, 1.0
    assert scaling is not None
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv / factor, 1.0
    if kind == "llama3":
        old = float(scaling["original_max_position_embeddings"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) * ~(wavelen > old / low)
        return torch.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":
        old = float(scaling.get("original_max_position_embeddings") or max_positions or 0)
        attention_factor = scaling.get("attention_factor")
        if attention_factor is None:
            mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
            if mscale and mscale_all:
                attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all)
            else:
                attention_factor = _yarn_mscale(factor)
        beta_fast = scaling.get("beta_fast") or 32
        beta_slow = scaling.get("beta_slow") or 1

        def correction_dim(rotations: float) -> float:
            return (dim * math.log(old / (rotations * 2 * math.pi))) / (2 * math.log(theta))

        lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
        if scaling.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - lo) / (hi - lo), 0, 1)
        extrapolation = 1 - ramp
        return (inv / factor) * (1 - extrapolation) + inv * extrapolation, float(attention_factor)
    raise LmscaleError(f"RoPE scaling type {kind!r} is not supported")


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


class Rotary(nn.Module):
    """Rotary embeddings (Su et al. 2021), rotate-half layout (GPT-NeoX / LLaMA).

    Angles are computed from position ids, so sequences longer than `max_positions` run
    (extrapolation; quality beyond the trained length is not guaranteed). With `rotary_dim` below
    the head dimension only the first `rotary_dim` dimensions of each head turn (GPT-NeoX's partial
    rotary); `scaling` is a `ModelConfig.rope_scaling` mapping (see `rope_frequencies`).
    """

    def __init__(self, head_dim: int, theta: float, rotary_dim: Optional[int] = None,
                 scaling: Optional[dict] = None, max_positions: Optional[int] = None) -> None:
        super().__init__()
        inv, self.attention_factor = rope_frequencies(rotary_dim or head_dim, theta, scaling, max_positions)
        self.register_buffer("inv_freq", inv, persistent=False)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "Rotary":
        return cls(cfg.head_dim, cfg.rope_theta, cfg.rotary_dim, cfg.rope_scaling, cfg.max_positions)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [B or 1, T] -> (cos, sin) of shape [B or 1, 1, T, rotary_dim]."""
        freqs = position_ids.to(torch.float32).unsqueeze(-1) * self.inv_freq.to(position_ids.device)
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)
        cos, sin = emb.cos(), emb.sin()
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return cos.to(dtype), sin.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dimensions of each head; any others pass through."""
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    turned, kept = x[..., :r], x[..., r:]
    return torch.cat((turned * cos + _rotate_half(turned) * sin, kept), dim=-1)


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucketing (Raffel et al. 2020): exact for small offsets, log-spaced up to max_distance.

    Offsets beyond max_distance share the last bucket, so any length runs.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        relative_position = relative_position.abs()
    else:
        relative_position = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, relative_position, large)


class RelativeBias(nn.Module):
    """T5 relative position bias: one [buckets, heads] table per stack, shared by all its layers."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = cfg.relative_buckets
        self.max_distance = cfg.relative_max_distance
        self.embedding = nn.Embedding(cfg.relative_buckets, cfg.n_heads)

    def forward(self, q_len: int, k_len: int, past_len: int = 0) -> torch.Tensor:
        """-> [1, H, q_len, k_len]; queries sit at positions past_len .. past_len + q_len - 1."""
        device = self.embedding.weight.device
        q_pos = torch.arange(past_len, past_len + q_len, device=device)[:, None]
        k_pos = torch.arange(k_len, device=device)[None, :]
        buckets = relative_position_bucket(k_pos - q_pos, self.bidirectional, self.num_buckets, self.max_distance)
        # index_select's backward is an index_add, far cheaper on CPU than embedding's
        bias = self.embedding.weight.index_select(0, buckets.reshape(-1)).view(q_len, k_len, -1)
        return bias.permute(2, 0, 1).unsqueeze(0)

    @torch.no_grad()
    def init_alibi(self) -> None:
        """Bias each bucket by -slope_h x its mean distance: head h attends mostly within about
        1 / slope_h tokens, with ALiBi's geometric slopes 1, 2^(-8/H), 2^(-16/H), ... (Press et al.
        2022, starting at 1 rather than 2^(-8/H) so the first head sees its neighbours sharply)."""
        n_heads = self.embedding.weight.shape[1]
        rel = torch.arange(-4 * self.max_distance, 4 * self.max_distance + 1)
        buckets = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
        total = torch.zeros(self.num_buckets).index_add_(0, buckets, rel.abs().float())
        count = torch.zeros(self.num_buckets).index_add_(0, buckets, torch.ones(len(rel)))
        distance = total / count.clamp(min=1)
        slopes = torch.tensor([2.0 ** (-8.0 * h / n_heads) for h in range(n_heads)])
        self.embedding.weight.copy_(-distance[:, None] * slopes[None, :])


# ----------------------------------------------------------------------------- masks

def attention_mask_for(
    q_len: int,
    k_len: int,
    key_mask: Optional[torch.Tensor] = None,
    causal: bool = False,
    position_bias: Optional[torch.Tensor] = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Optional[torch.Tensor], bool]:
    """Build what SDPA needs: `(attn_mask, is_causal)`.

    key_mask: [B, k_len] with 1 for real tokens. Queries are the last q_len of the k_len keys
    (a KV cache holds the first k_len - q_len). Returns no tensor when none is needed: the plain
    causal case uses SDPA's `is_causal`, and one new query with no padding attends to everything.
    With padding, the bool mask is [B, 1, 1, k] (bidirectional) or [B, 1, q, k] (causal, every
    query may always see itself so no row is empty). A position bias makes it an additive float
    mask [B or 1, H, q, k].
    """
    device = key_mask.device if key_mask is not None else (
        position_bias.device if position_bias is not None else None
    )
    if key_mask is None and position_bias is None:
        if not causal or q_len == 1:
            return None, False
        if q_len == k_len:
            return None, True
    allowed = None
    if key_mask is not None:
        allowed = key_mask.bool()[:, None, None, :]
    if causal:
        past = k_len - q_len
        q_idx = torch.arange(past, k_len, device=device)[:, None]
        k_idx = torch.arange(k_len, device=device)[None, :]
        tri = k_idx <= q_idx
        allowed = tri[None, None] if allowed is None else (allowed & tri) | (k_idx == q_idx)
    if position_bias is None:
        return allowed, False
    # contiguous once here rather than a strided read in every layer
    bias = position_bias.to(dtype).contiguous()
    if allowed is None:
        return bias, False
    return bias.masked_fill(~allowed, torch.finfo(dtype).min), False


# ----------------------------------------------------------------------------- what every stack shares

def padding_mask(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """`mask` [B, k] (1 = real token), or None when it marks every token as real: without a mask
    SDPA takes its mask-free kernel (the fused causal one for a decoder). Checked on CPU only: on
    an accelerator the check would cost a host sync per call, and its kernels take the mask anyway."""
    if mask is not None and mask.device.type == "cpu" and bool(host_item(mask.all())):
        return None
    return mask


def add_positions(
    x: torch.Tensor, position_ids: torch.Tensor, cfg: ModelConfig, pos_emb: Optional[nn.Embedding]
) -> torch.Tensor:
    """Absolute positions added to the embeddings: a learned table or the sinusoidal one (the
    rotary and relative schemes act inside attention instead, through `layer_inputs`)."""
    if pos_emb is not None:
        return x + embed(pos_emb, position_ids)
    if cfg.position == "sinusoidal":
        return x + sinusoidal_table(position_ids, cfg.d_model).to(x.dtype)
    return x


def layer_inputs(
    x: torch.Tensor,
    position_ids: torch.Tensor,
    key_mask: Optional[torch.Tensor],
    causal: bool,
    rotary: Optional[Rotary],
    rel_bias: Optional[RelativeBias],
    past_len: int = 0,
) -> tuple[Optional[torch.Tensor], bool, Optional[tuple[torch.Tensor, torch.Tensor]]]:
    """What every layer of a stack reads besides its input: `(mask, is_causal, rope)`.

    `x` [B, T, d] holds the queries, which sit after `past_len` cached keys; `key_mask` covers all
    past_len + T keys. The rotary tables come from `position_ids`, the relative bias (if any) is
    folded into the mask."""
    q_len = x.shape[1]
    k_len = past_len + q_len
    rope = rotary(position_ids, x.dtype) if rotary is not None else None
    bias = rel_bias(q_len, k_len, past_len) if rel_bias is not None else None
    mask, is_causal = attention_mask_for(q_len, k_len, key_mask, causal=causal, position_bias=bias, dtype=x.dtype)
    return mask, is_causal, rope


# ----------------------------------------------------------------------------- attention

def repeat_kv(k: torch.Tensor, v: torch.Tensor, groups: int) -> KV:
    """Grouped-query attention: each key/value head [B, H_kv, T, hd] serves `groups` consecutive
    query heads (query head h reads key/value head h // groups, as in transformers' `repeat_kv`)."""
    if groups == 1:
        return k, v
    return k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)


def attention_scale(cfg: ModelConfig) -> Optional[float]:
    """The factor on q.k: None (SDPA's 1/sqrt(d_head)), 1.0 for T5's relative attention; under muP
    1/d_head (Yang et al. 2022: q and k become correlated during training, so their product grows
    like d_head, not sqrt(d_head)), normalised to the sp value at the base width."""
    sp = 1.0 if cfg.position == "relative" else None
    if cfg.parametrization != "mup":
        return sp
    base = (1.0 if sp is not None else 1.0 / math.sqrt(cfg.head_dim / cfg.width_mult))
    return base / cfg.width_mult


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused q|k|v projection and an optional KV cache.

    With grouped-query attention (`n_kv_heads` < `n_heads`) the projection is [q; k; v] with k and
    v narrower; the cache holds the narrow keys and values."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.kv_heads
        self.head_dim = cfg.head_dim
        a = cfg.attn_dim
        self.qkv = nn.Linear(cfg.d_model, a + 2 * cfg.kv_dim, bias=cfg.bias)
        self.out = nn.Linear(a, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.attention_dropout
        # T5 folds 1/sqrt(d_head) into its initialisation and attends without scaling.
        self.scale = attention_scale(cfg)

    def forward(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        past: Optional[KV] = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Optional[KV]]:
        b, t, _ = x.shape
        if self.n_kv_heads == self.n_heads:
            # unbind, not indexing: indexing's backward zero-fills the whole q|k|v tensor three times
            q, k, v = (z.transpose(1, 2) for z in self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).unbind(2))
        else:
            a, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            q, k, v = self.qkv(x).split((a, kv, kv), dim=-1)
            q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
            k, v = (z.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2) for z in (k, v))
        if rope is not None:
            q = apply_rotary(q, *rope)
            k = apply_rotary(k, *rope)
        if past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        present = (k, v) if use_cache else None
        k, v = repeat_kv(k, v, self.n_heads // self.n_kv_heads)
        y = attention(q, k, v, mask, self.dropout if self.training else 0.0, is_causal, self.scale)
        y = y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
        return self.out(y), present

    def forward_rows(
        self,
        x: torch.Tensor,
        xq: torch.Tensor,
        rows: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Self-attention output at the positions `rows` [B, M] only: keys and values from every
        position of `x` [B, T, d], queries from `xq` [B, M, d] (= x at those rows)."""
        b, t, _ = x.shape
        m = rows.shape[1]
        a = self.n_heads * self.head_dim
        w, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(xq, w[:a], None if bias is None else bias[:a])
        q = q.view(b, m, self.n_heads, self.head_dim).transpose(1, 2)
        kv = F.linear(x, w[a:], None if bias is None else bias[a:])
        k, v = (z.transpose(1, 2) for z in kv.view(b, t, 2, self.n_kv_heads, self.head_dim).unbind(2))
        if rope is not None:
            r = rope[0].shape[-1]
            idx = rows[:, None, :, None].expand(b, 1, m, r)
            cos, sin = (c.expand(b, 1, t, r).gather(2, idx) for c in rope)
            q = apply_rotary(q, cos, sin)
            k = apply_rotary(k, *rope)
        k, v = repeat_kv(k, v, self.n_heads // self.n_kv_heads)
        if mask is not None and mask.shape[2] != 1:
            h, kl = mask.shape[1], mask.shape[3]
            mask = mask.expand(b, h, t, kl).gather(2, rows[:, None, :, None].expand(b, h, m, kl))
        y = attention(q, k, v, mask, self.dropout if self.training else 0.0, False, self.scale)
        return self.out(y.transpose(1, 2).reshape(b, m, a))


class CrossAttention(nn.Module):
    """Decoder-to-encoder attention; keys/values come from the encoder once and can be cached."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        a = cfg.attn_dim
        self.q = nn.Linear(cfg.d_model, a, bias=cfg.bias)
        self.kv = nn.Linear(cfg.d_model, 2 * a, bias=cfg.bias)
        self.out = nn.Linear(a, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.attention_dropout
        self.scale = attention_scale(cfg)

    def project_kv(self, memory: torch.Tensor) -> KV:
        b, s, _ = memory.shape
        k, v = self.kv(memory).view(b, s, 2, self.n_heads, self.head_dim).unbind(2)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        memory: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        past: Optional[KV] = None,
    ) -> tuple[torch.Tensor, KV]:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = past if past is not None else self.project_kv(memory)
        y = attention(q, k, v, mask, self.dropout if self.training else 0.0, False, self.scale)
        y = y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
        return self.out(y), (k, v)


# ----------------------------------------------------------------------------- block

class Block(nn.Module):
    """One transformer layer: self-attention, optional cross-attention, MLP.

    Pre-LN: x + f(norm(x)) (GPT-2, T5). Post-LN: norm(x + f(x)) (BERT, GPT-1, Transformer).
    Parallel residual (GPT-J, GPT-NeoX): x + attn(norm(x)) + mlp(norm'(x)), both from the same x.
    """

    def __init__(self, cfg: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        self.pre = cfg.norm_position == "pre"
        self.parallel = cfg.parallel_residual
        self.attn_norm = make_norm(cfg)
        self.attn = SelfAttention(cfg)
        self.cross = CrossAttention(cfg) if cross else None
        self.cross_norm = make_norm(cfg) if cross else None
        self.mlp_norm = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        past: Optional[tuple[torch.Tensor, ...]] = None,
        use_cache: bool = False,
        memory: Optional[torch.Tensor] = None,
        memory_mask: Optional[torch.Tensor] = None,
        rows: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, Optional[tuple[torch.Tensor, ...]]]:
        """`rows` [B, M]: compute the output at those positions only (see `_forward_rows`).
        Taking it here rather than in a separate public method keeps the call inside
        `__call__`, so module hooks (FSDP2's per-block all-gather) still run."""
        if rows is not None:
            if past is not None or use_cache or self.cross is not None:
                raise ValueError("rows= serves a self-attention layer without cache or cross-attention")
            return self._forward_rows(x, rows, mask, rope), None
        self_past = past[:2] if past is not None else None
        if self.parallel:
            h, present = self.attn(self.attn_norm(x), mask, is_causal, rope, self_past, use_cache)
            return x + self.drop(h) + self.drop(self.mlp(self.mlp_norm(x))), present
        if self.pre:
            h, present = self.attn(self.attn_norm(x), mask, is_causal, rope, self_past, use_cache)
            x = x + self.drop(h)
        else:
            h, present = self.attn(x, mask, is_causal, rope, self_past, use_cache)
            x = self.attn_norm(x + self.drop(h))
        if self.cross is not None:
            cross_past = past[2:4] if past is not None and len(past) == 4 else None
            if self.pre:
                h, cross_kv = self.cross(self.cross_norm(x), memory, memory_mask, cross_past)
                x = x + self.drop(h)
            else:
                h, cross_kv = self.cross(x, memory, memory_mask, cross_past)
                x = self.cross_norm(x + self.drop(h))
            if use_cache:
                present = present + cross_kv
        if self.pre:
            x = x + self.drop(self.mlp(self.mlp_norm(x)))
        else:
            x = self.mlp_norm(x + self.drop(self.mlp(x)))
        return x, present

    def _forward_rows(
        self,
        x: torch.Tensor,
        rows: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """The layer's output at the positions `rows` [B, M] only (a bidirectional layer without
        cache or cross-attention). A masked-LM loss reads the last layer at about 15% of the
        positions: every other position's queries, output projection and MLP are skipped there,
        and the result and gradients are those of `forward` at the same rows."""
        idx = rows[..., None].expand(*rows.shape, x.shape[-1])
        xq = x.gather(1, idx)
        if self.parallel:
            src = self.attn_norm(x)
            h = self.attn.forward_rows(src, src.gather(1, idx), rows, mask, rope)
            return xq + self.drop(h) + self.drop(self.mlp(self.mlp_norm(xq)))
        if self.pre:
            src = self.attn_norm(x)
            xq = xq + self.drop(self.attn.forward_rows(src, src.gather(1, idx), rows, mask, rope))
            return xq + self.drop(self.mlp(self.mlp_norm(xq)))
        xq = self.attn_norm(xq + self.drop(self.attn.forward_rows(x, xq, rows, mask, rope)))
        return self.mlp_norm(xq + self.drop(self.mlp(xq)))


# ----------------------------------------------------------------------------- init and utilities

def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """Normal(0, init_std) for matrices and embeddings, zero biases, unit norms; pre-LN residual
    output projections scaled by 1/sqrt(2 * layers) (GPT-2) so the residual stream does not grow
    with depth."""
    std = cfg.init_std
    n_res = 2 * cfg.total_layers
    # muP: hidden matrices' variance goes as 1/fan_in relative to the base width; the readout
    # (lm_head) keeps its init and is scaled in the forward pass instead (`readout_multiplier`)
    hidden_std = std / math.sqrt(cfg.width_mult)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            s = std if name.split(".")[-1] == "lm_head" else hidden_std
            if cfg.norm_position == "pre" and (name.endswith(".out") or name.endswith("fc_out")):
                s = s / math.sqrt(max(n_res, 1))
            nn.init.normal_(module.weight, 0.0, s)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
    if cfg.relative_bias_init == "alibi":
        for module in model.modules():
            if isinstance(module, RelativeBias):
                module.init_alibi()


def readout_multiplier(cfg: ModelConfig) -> Optional[float]:
    """muP's factor on the output logits, base_width / width (None under sp: no multiply at all)."""
    return 1.0 / cfg.width_mult if cfg.parametrization == "mup" else None


def check_length(cfg: ModelConfig, length: int, what: str = "input") -> None:
    """Learned positions have a hard limit; the other schemes extrapolate (documented)."""
    if cfg.position == "learned" and length > cfg.max_positions:
        raise LmscaleError(
            f"{what} of {length} tokens is longer than the model's {cfg.max_positions} learned "
            f"positions (model.max_positions); truncate it to {cfg.max_positions} tokens"
        )


@torch.compiler.disable
def host_item(t: torch.Tensor) -> Any:
    """`t.item()` outside any compiled graph: under `torch.compile` a data-dependent read splits
    the graph either way; through here it does so quietly instead of warning at every compile."""
    return t.item()
