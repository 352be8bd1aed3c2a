"""The CPU attention path for a trainable T5 bias against PyTorch's own SDPA, values and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmscale.models.kernels import attention


@pytest.mark.parametrize("bias_shape", [(1, 3, 5, 7), (2, 3, 5, 7)])
def test_bias_attention_matches_sdpa_in_float64(bias_shape):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(2, 3, 7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(2, 3, 7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(*bias_shape, dtype=torch.float64, generator=g, requires_grad=True)
    out = attention(q, k, v, bias, dropout=0.0, scale=1.0)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
    assert torch.allclose(out, ref, atol=1e-12)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v, bias), grad)
    want = torch.autograd.grad(ref, (q, k, v, bias), grad)
    for a, b in zip(got, want):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-10)
