"""How the models' heavier operations run: CPU autograd kernels, the attention call and the losses.

`blocks` says what the architecture computes; this module says how three of its operations are
computed where ATen's general-purpose path does needless work on a CPU. Each kernel computes the
same function as the plain path (to rounding) and is used only where it applies; accelerators and
reduced precision keep ATen's kernels, which their vendors and compilers already fuse. Timings of
each choice are recorded in BENCHMARKS.md.

- `gelu_tanh`: GPT-2's GELU through a sigmoid instead of a tanh;
- `attention`: SDPA, with a trainable additive bias (T5) on CPU through `_BiasAttention`;
- `linear_cross_entropy`: the output projection fused with the loss, so that a training step
  never holds the [tokens, vocab] logits; `cross_entropy` is the plain loss beside it.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- GELU

_GELU_C = 2.0 * math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


def _gelu_gate(x: torch.Tensor) -> torch.Tensor:
    """sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), in place on one temporary."""
    s = x * x
    return s.mul_(_GELU_A * _GELU_C).add_(_GELU_C).mul_(x).sigmoid_()


class _SigmoidGelu(torch.autograd.Function):
    """GELU, tanh approximation, on CPU: 0.5 x (1 + tanh(u)) = x sigmoid(2u) with
    u = sqrt(2/pi) (x + 0.044715 x^3), the same function to rounding. ATen's CPU tanh is much
    slower than its sigmoid, so its tanh-GELU forward and backward cost more than these few
    vectorised passes, and the GELU is one of a GPT block's larger non-matmul costs on a CPU."""

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


# ----------------------------------------------------------------------------- attention

def _sdpa_mask(mask: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    if mask is None or mask.dtype == torch.bool or mask.dtype == dtype:
        return mask
    return mask.to(dtype).clamp(min=torch.finfo(dtype).min)


class _BiasAttention(torch.autograd.Function):
    """softmax(q k^T * scale + bias) v with a learned additive bias (T5), for CPU training.

    SDPA's fused CPU kernel cannot return a gradient for a float mask, so with a trainable bias
    it falls back to its generic path, which scales q and k separately and stores the scores
    for a softmax backward. Here the probabilities are kept once and the backward uses
    dS = P * (dP - rowsum(dO * O)) (the flash-attention identity), in place, and the bias
    gradient is dS summed over the dimensions the bias was broadcast along (same result to
    rounding as that fallback, with fewer passes over the scores).
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
    torch's CPU flash kernel is slower in bf16 than in fp32 (forward and backward), and its
    inputs are small next to the projections."""
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


# ----------------------------------------------------------------------------- losses

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
            # [rows, vocab] transposed view: that product and the W-gradient one run faster in that
            # layout on a CPU core; small chunks (a T5 target) are faster row-major
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
            # separate passes: ATen's mixed-dtype elementwise kernels (fp32 in, bf16 out) are far
            # slower on CPU than a plain op followed by a conversion
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

    Runs eagerly under `torch.compile`: its loop reads a few scalars on the host, which would
    break the graph with a warning anyway, and on CPU a compiled model with this eager loss still
    trains faster than one with the compiled plain loss."""
    h = h.reshape(-1, h.shape[-1])
    labels = labels.reshape(-1)
    chunk = max(64, min(512, (1 << 22) // max(weight.shape[0], 1)))
    if h.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        mm_dtype = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            return _LinearCrossEntropy.apply(h, weight, bias, labels, chunk, mm_dtype)
    return _LinearCrossEntropy.apply(h, weight, bias, labels, chunk)
