"""Transformer building blocks shared by the three families.

One attention module serves self-attention (bidirectional or causal, with a KV cache) and
cross-attention; masks are built once per forward by `attention_mask_for` and reused by every
layer, so a layer only ever sees "an SDPA mask or None" plus an `is_causal` flag. When there is no
padding and no cache offset, no mask tensor exists at all and SDPA takes its fused causal path.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lmscale.config import ModelConfig

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

_GELU_C = 2.0 * math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


def _gelu_gate(x: torch.Tensor) -> torch.Tensor:
    """sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), in place on one temporary."""
    s = x * x
    return s.mul_(_GELU_A * _GELU_C).add_(_GELU_C).mul_(x).sigmoid_()


class _SigmoidGelu(torch.autograd.Function):
    """GELU, tanh approximation, on CPU: 0.5 x (1 + tanh(u)) = x sigmoid(2u) with
    u = sqrt(2/pi) (x + 0.044715 x^3), the same function to rounding. ATen's CPU tanh is about
    3.5x slower than its sigmoid, which makes its tanh-GELU forward and backward each about
    twice as slow as these few vectorised passes (one of a GPT block's larger non-matmul costs
    on one core: a few percent of a training step, measured)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        s = _gelu_gate(x)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, s = ctx.saved_tensors
        # d/dx x s(v) = s + x s (1 - s) v',  v' = 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2)
        t = x * x
        t.mul_(3 * _GELU_A * _GELU_C).add_(_GELU_C).mul_(x).mul_(s).mul_(1.0 - s)
        return t.add_(s).mul_(grad)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU. Accelerators and reduced precision keep ATen's kernel (fused or compiled
    there); CPU fp32/fp64 takes the sigmoid form above."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return F.gelu(x, approximate="tanh")
    if torch.is_grad_enabled() and x.requires_grad:
        return _SigmoidGelu.apply(x)
    return x * _gelu_gate(x)


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
    time (slightly slower). Elsewhere the embedding op as usual."""
    if ids.device.type != "cpu":
        return F.embedding(ids, table.weight)
    return table.weight.index_select(0, ids.reshape(-1)).view(*ids.shape, table.embedding_dim)


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


class Rotary(nn.Module):
    """Rotary embeddings (Su et al. 2021), rotate-half layout (GPT-NeoX / LLaMA).

    Angles are computed from position ids, so sequences longer than `max_positions` run
    (extrapolation; quality beyond the trained length is not guaranteed).
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [B or 1, T] -> (cos, sin) of shape [B or 1, 1, T, head_dim]."""
        freqs = position_ids.to(torch.float32).unsqueeze(-1) * self.inv_freq.to(position_ids.device)
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


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


def _sdpa_mask(mask: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    if mask is None or mask.dtype == torch.bool or mask.dtype == dtype:
        return mask
    return mask.to(dtype).clamp(min=torch.finfo(dtype).min)


# ----------------------------------------------------------------------------- attention

class _BiasAttention(torch.autograd.Function):
    """softmax(q k^T * scale + bias) v with a learned additive bias (T5), for CPU training.

    SDPA's fused CPU kernel cannot return a gradient for a float mask, so with a trainable bias
    it falls back to its generic path, which scales q and k separately and stores the scores
    for a softmax backward. Here the probabilities are kept once and the backward uses
    dS = P * (dP - rowsum(dO * O)) (the flash-attention identity), in place, and the bias
    gradient is dS summed over the dimensions the bias was broadcast along (a few percent
    faster per call than that fallback, same result to rounding).
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, scale):  # type: ignore[override]
        s = torch.matmul(q, k.transpose(-1, -2))
        if scale != 1.0:
            s.mul_(scale)
        s.add_(bias)
        p = torch.softmax(s, -1)
        del s
        o = torch.matmul(p, v)
        ctx.save_for_backward(q, k, v, p, o)
        ctx.scale = scale
        ctx.bias_shape = bias.shape
        return o

    @staticmethod
    def backward(ctx, grad_o):  # type: ignore[override]
        q, k, v, p, o = ctx.saved_tensors
        scale = ctx.scale
        grad_o = grad_o.contiguous()
        grad_v = torch.matmul(p.transpose(-1, -2), grad_o) if ctx.needs_input_grad[2] else None
        ds = torch.matmul(grad_o, v.transpose(-1, -2))
        ds.sub_((grad_o * o).sum(-1, keepdim=True)).mul_(p)
        grad_bias = None
        if ctx.needs_input_grad[3]:
            dims = [i for i, (a, b) in enumerate(zip(ctx.bias_shape, ds.shape)) if a == 1 and b != 1]
            grad_bias = ds.sum(dims, keepdim=True) if dims else ds.clone()
        if scale != 1.0:
            ds.mul_(scale)
        grad_q = torch.matmul(ds, k) if ctx.needs_input_grad[0] else None
        grad_k = torch.matmul(ds.transpose(-1, -2), q) if ctx.needs_input_grad[1] else None
        return grad_q, grad_k, grad_v, grad_bias, None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor],
    dropout: float,
    is_causal: bool = False,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """SDPA, except a trainable additive bias on CPU without dropout goes to `_BiasAttention`.

    Under CPU bf16 autocast the attention itself runs in fp32 and only its output is cast back:
    torch's CPU flash kernel is about twice as slow in bf16 as in fp32 (forward and backward,
    4 x 4 heads x 128 tokens, measured), and its inputs are small next to the projections."""
    if q.device.type == "cpu" and q.dtype != torch.float32 and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return attention(q.float(), k.float(), v.float(), mask, dropout, is_causal, scale).to(q.dtype)
    if (
        mask is not None
        and mask.dtype == q.dtype
        and mask.requires_grad
        and dropout == 0.0
        and q.device.type == "cpu"
        and mask.dim() == 4
    ):
        return _BiasAttention.apply(q, k, v, mask, q.shape[-1] ** -0.5 if scale is None else scale)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=_sdpa_mask(mask, q.dtype), dropout_p=dropout, is_causal=is_causal, scale=scale
    )


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused q|k|v projection and an optional KV cache."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        a = cfg.attn_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * a, bias=cfg.bias)
        self.out = nn.Linear(a, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.attention_dropout
        # T5 folds 1/sqrt(d_head) into its initialisation and attends without scaling.
        self.scale = 1.0 if cfg.position == "relative" else None

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
        # unbind, not indexing: indexing's backward zero-fills the whole q|k|v tensor three times
        q, k, v = (z.transpose(1, 2) for z in self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).unbind(2))
        if rope is not None:
            q = apply_rotary(q, *rope)
            k = apply_rotary(k, *rope)
        if past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        present = (k, v) if use_cache else None
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
        k, v = (z.transpose(1, 2) for z in kv.view(b, t, 2, self.n_heads, self.head_dim).unbind(2))
        if rope is not None:
            idx = rows[:, None, :, None].expand(b, 1, m, self.head_dim)
            cos, sin = (r.expand(b, 1, t, self.head_dim).gather(2, idx) for r in rope)
            q = apply_rotary(q, cos, sin)
            k = apply_rotary(k, *rope)
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
        self.scale = 1.0 if cfg.position == "relative" else None

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
    """

    def __init__(self, cfg: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        self.pre = cfg.norm_position == "pre"
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
    n_res = 2 * (cfg.n_layers + (cfg.decoder_layers if cfg.family == "encoder-decoder" else 0))
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            s = std
            if cfg.norm_position == "pre" and (name.endswith(".out") or name.endswith("fc_out")):
                s = std / math.sqrt(max(n_res, 1))
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


def check_length(cfg: ModelConfig, length: int, what: str = "input") -> None:
    """Learned positions have a hard limit; the other schemes extrapolate (documented)."""
    if cfg.position == "learned" and length > cfg.max_positions:
        from lmscale.errors import LmscaleError

        raise LmscaleError(
            f"{what} of {length} tokens is longer than the model's {cfg.max_positions} learned "
            f"positions (model.max_positions); truncate it to {cfg.max_positions} tokens"
        )


@torch.compiler.disable
def host_item(t: torch.Tensor) -> Any:
    """`t.item()` outside any compiled graph: under `torch.compile` a data-dependent read splits
    the graph either way; through here it does so quietly instead of warning at every compile."""
    return t.item()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy over labels != -100 (0 when nothing is labelled, not NaN)."""
    logits = logits.reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    loss = F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")
    n = (labels != -100).sum().clamp(min=1)
    return loss / n


VOCAB_MAJOR_MIN_ROWS = 256
# exp(60) * 1e12 words stays below float32's maximum, exp(-60) above its smallest normal
NO_SHIFT_LOGIT_BOUND = 60.0


class _LinearCrossEntropy(torch.autograd.Function):
    """Output projection + mean cross-entropy, chunk by chunk, gradients formed in the forward.

    The [N, vocab] logits never exist at once: each chunk's logits are exponentiated once, in
    place, and that one tensor gives both the loss (log of the row sums) and the gradient
    (softmax - onehot), which is multiplied straight into the input and weight gradients while it
    is hot in cache. On CPU this removes the log-softmax and its backward pass and the full-size
    logits traffic, the largest non-matmul costs of a small language model's training step.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, labels, chunk, mm_dtype=None):  # type: ignore[override]
        n = h.shape[0]
        valid = labels != -100
        count = valid.sum().clamp(min=1).to(torch.float32)
        safe = labels.clamp(min=0)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = grad_b = None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        # |z| <= max|h_i| max|W_v| + max|b| (Cauchy-Schwarz): when that bound is small, exp cannot
        # overflow or underflow and the usual max-subtraction pass is skipped
        w_norm = float(torch.linalg.vector_norm(weight, dim=1).max()) if n else 0.0
        b_max = float(bias.abs().max()) if bias is not None and bias.numel() else 0.0
        # under autocast the three products run in its dtype (as the unfused path's would), the
        # exponentials, sums and gradient accumulation in fp32
        wm = weight if mm_dtype is None else weight.to(mm_dtype)
        bm = bias if mm_dtype is None or bias is None else bias.to(mm_dtype)
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            hc = h[s:e] if mm_dtype is None else h[s:e].to(mm_dtype)
            # large chunks compute their logits vocabulary-major (W h^T) and work on the
            # [rows, vocab] transposed view: that product and the W-gradient one run 3-8% faster
            # in that layout on one core (measured); small chunks (a T5 target) are faster row-major
            if e - s >= VOCAB_MAJOR_MIN_ROWS:
                z = (wm @ hc.t() if bm is None else torch.addmm(bm[:, None], wm, hc.t())).float().t()
            else:
                z = F.linear(hc, wm, bm).float()
            if float(torch.linalg.vector_norm(h[s:e], dim=1).max()) * w_norm + b_max > NO_SHIFT_LOGIT_BOUND:
                z.sub_(z.amax(1, keepdim=True))
            target = z.gather(1, safe[s:e, None]).squeeze(1)
            z.exp_()
            sums = z.sum(1)
            v = valid[s:e].to(torch.float32)
            total += ((sums.log() - target) * v).sum()
            if not (need_h or need_w or need_b):
                continue
            w = v / count
            g = z.mul_((w / sums)[:, None])
            g[torch.arange(e - s, device=h.device), safe[s:e]] -= w
            if bias is not None and need_b:
                grad_b = g.sum(0) if grad_b is None else grad_b.add_(g.sum(0))
            # separate passes: ATen's mixed-dtype elementwise kernels (fp32 in, bf16 out) are
            # 15-20x slower than a plain op followed by a conversion on CPU (measured)
            g = g.to(wm.dtype)
            if grad_h is not None:
                if grad_h.dtype == g.dtype:
                    torch.mm(g, wm, out=grad_h[s:e])
                else:
                    grad_h[s:e] = torch.mm(g, wm)
            if need_w:
                if mm_dtype is None:
                    grad_w = g.t() @ hc if grad_w is None else grad_w.addmm_(g.t(), hc)
                else:
                    gw = g.t() @ hc
                    grad_w = gw.to(weight.dtype) if grad_w is None else grad_w.add_(gw)
        ctx.grads = (grad_h, grad_w, grad_b)
        return total / count

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        grads = ctx.grads
        ctx.grads = None
        # the loss is usually backpropagated as is (a scale of exactly 1): the gradients formed in
        # the forward are then returned without another pass over them; reading the scale is no
        # host sync here, as this path only runs on CPU
        if grad_out.device.type != "cpu" or float(grad_out) != 1.0:
            grads = tuple(None if g is None else g.mul_(grad_out.to(g.dtype)) for g in grads)
        return grads[0], grads[1], grads[2], None, None, None


def fused_loss_applies(h: torch.Tensor) -> bool:
    """Training on CPU (fp32, or under CPU autocast): the loss is fused with the output projection
    (no full logits). GPUs keep the plain path, which their kernels and compilers handle."""
    return h.device.type == "cpu" and h.requires_grad and torch.is_grad_enabled()


@torch.compiler.disable
def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], labels: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of `F.linear(h, weight, bias)` against labels (-100 ignored).

    Runs eagerly under `torch.compile` (its loop reads a few scalars on the host, which would
    break the graph with a warning anyway): on CPU the compiled model with this eager loss
    trains faster than the compiled plain loss (measured, GPT-2 d256, 12%)."""
    h = h.reshape(-1, h.shape[-1])
    labels = labels.reshape(-1)
    chunk = max(64, min(512, (1 << 22) // max(weight.shape[0], 1)))
    if h.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        mm_dtype = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            return _LinearCrossEntropy.apply(h, weight, bias, labels, chunk, mm_dtype)
    return _LinearCrossEntropy.apply(h, weight, bias, labels, chunk)
