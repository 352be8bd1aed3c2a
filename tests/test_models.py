"""Model families: caches, masks, heads, checkpoints and bad input.

References: transformers' parameter counts (built on the meta device, no weights allocated), the
full-sequence forward pass as the reference for incremental decoding, the sinusoid formula of
Vaswani et al. (2017), and PyTorch's cross-entropy for the shifted-label convention.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import lmscale
from lmscale.config import ModelConfig, preset_model
from lmscale.errors import CheckpointError, LmscaleError
from lmscale.models import ModelOutput, blocks, build_model, kernels
from lmscale.models.loading import load
from lmscale.models.serialization import save_model_dir

torch.set_num_threads(1)
V = 97


def tiny(family: str = "decoder", **kw) -> ModelConfig:
    base = dict(family=family, vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_positions=64)
    if family == "encoder":
        base.update(type_vocab_size=2, embedding_norm=True, norm_position="post")
    base.update(kw)
    return ModelConfig(**base)


def make(cfg: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def unique_numel(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ----------------------------------------------------------------------------- parameter counts

@pytest.mark.parametrize("preset,hf_class,hf_config", [
    ("gpt2-small", "GPT2LMHeadModel", "GPT2Config"),
    ("bert-base", "BertForPreTraining", "BertConfig"),
    ("t5-small", "T5ForConditionalGeneration", "T5Config"),
    ("gpt1", "OpenAIGPTLMHeadModel", "OpenAIGPTConfig"),
])
def test_preset_parameter_counts_equal_transformers(preset, hf_class, hf_config):
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        ours = build_model(preset_model(preset))
        theirs = getattr(transformers, hf_class)(getattr(transformers, hf_config)())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    counts = ours.num_parameters()
    assert counts["total"] == n_theirs == unique_numel(ours)
    assert counts["embedding"] + counts["non_embedding"] == counts["total"]
    if preset == "gpt2-small":
        assert counts["total"] == 124_439_808
        assert counts["embedding"] == (50257 + 1024) * 768


def test_embedding_split_counts_untied_head_and_segments():
    m = make(tiny("decoder", tie_embeddings=False, position="rope"))
    assert m.num_parameters()["embedding"] == 2 * V * 32
    e = make(tiny("encoder"))
    assert e.num_parameters()["embedding"] == V * 32 + 64 * 32 + 2 * 32


# ----------------------------------------------------------------------------- masks / SDPA path

def test_no_mask_tensor_without_padding(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
        calls.append((attn_mask, is_causal))
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)

    monkeypatch.setattr(kernels.F, "scaled_dot_product_attention", spy)
    x = torch.randint(0, V, (2, 9))
    make(tiny("decoder"))(x, attention_mask=torch.ones_like(x))
    assert calls and all(m is None and c for m, c in calls)
    calls.clear()
    make(tiny("encoder"))(x, attention_mask=torch.ones_like(x))
    assert calls and all(m is None and not c for m, c in calls)
    calls.clear()
    mask = torch.ones_like(x)
    mask[1, 6:] = 0
    make(tiny("encoder"))(x, attention_mask=mask)
    assert all(m is not None and m.shape == (2, 1, 1, 9) for m, _ in calls)


def test_padding_does_not_change_real_tokens():
    """Right padding must leave the real positions' outputs exactly as without the padding."""
    for fam in ("decoder", "encoder"):
        m = make(tiny(fam))
        x = torch.randint(5, V, (1, 6))
        padded = torch.cat([x, torch.zeros(1, 3, dtype=torch.long)], 1)
        mask = torch.tensor([[1] * 6 + [0] * 3])
        a = m(x).logits
        b = m(padded, attention_mask=mask).logits[:, :6]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sinusoidal_table_is_the_paper_formula():
    d = 10
    table = blocks.sinusoidal_table(torch.arange(7), d)
    for pos in (0, 3, 6):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


# ----------------------------------------------------------------------------- KV cache

DECODER_VARIANTS = [
    dict(),
    dict(position="rope", norm="rmsnorm", bias=False, activation="silu", gated_mlp=True, tie_embeddings=False),
    dict(position="sinusoidal", norm_position="post", embedding_scale=True),
    dict(position="relative", norm="rmsnorm", bias=False),
    dict(position="none", d_head=6),
    # Pythia's shape: partial rotary, parallel residual; and Llama's grouped-query attention
    dict(position="rope", rotary_fraction=0.25, parallel_residual=True, n_kv_heads=2, tie_embeddings=False),
    dict(position="rope", n_kv_heads=1, norm="rmsnorm", gated_mlp=True, activation="silu", bias=False,
         rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4}),
]


@pytest.mark.parametrize("variant", DECODER_VARIANTS,
                         ids=lambda v: v.get("position", "learned") + (f"-kv{v['n_kv_heads']}" if "n_kv_heads" in v
                                                                       else ""))
def test_decoder_cache_matches_full_forward_with_left_padding(variant):
    m = make(tiny("decoder", **variant))
    x = torch.randint(1, V, (2, 10))
    mask = torch.ones_like(x)
    mask[1, :3] = 0  # left padding
    full = m(x, attention_mask=mask).logits
    out = m(x[:, :6], attention_mask=mask[:, :6], use_cache=True)
    steps = [out.logits]
    for t in range(6, 10):
        out = m(x[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=out.past_key_values, use_cache=True)
        steps.append(out.logits)
    inc = torch.cat(steps, 1)
    real = mask.bool()
    torch.testing.assert_close(inc[real], full[real], atol=2e-5, rtol=1e-5)
    k, v = out.past_key_values[0]
    assert k.shape == (2, m.config.kv_heads, 10, m.config.head_dim) and v.shape == k.shape


def test_left_padding_positions_come_from_the_mask():
    """A left-padded prompt gives the same logits as the unpadded prompt (learned positions)."""
    m = make(tiny("decoder"))
    x = torch.randint(1, V, (1, 5))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    torch.testing.assert_close(m(padded, attention_mask=mask).logits[:, 3:], m(x).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", [
    dict(position="relative", norm="rmsnorm", bias=False, activation="relu"),
    dict(position="sinusoidal", norm_position="post", embedding_scale=True),
    dict(position="learned", n_decoder_layers=3),
    dict(position="rope", gated_mlp=True, activation="gelu_tanh", tie_embeddings=False),
], ids=["t5", "transformer", "learned", "rope"])
def test_encdec_cache_matches_full_forward_and_reuses_cross_kv(variant):
    m = make(tiny("encoder-decoder", **variant))
    x = torch.randint(1, V, (2, 7))
    mask = torch.ones_like(x)
    mask[0, 5:] = 0
    y = torch.randint(1, V, (2, 5))
    full = m(x, attention_mask=mask, decoder_input_ids=y)
    enc = m.encode(x, mask)
    torch.testing.assert_close(enc, full.encoder_hidden_states)
    out = m(encoder_hidden_states=enc, attention_mask=mask, decoder_input_ids=y[:, :2], use_cache=True)
    cross = out.past_key_values[0][2]
    steps = [out.logits]
    for t in range(2, 5):
        out = m(attention_mask=mask, decoder_input_ids=y[:, t:t + 1], past_key_values=out.past_key_values,
                use_cache=True)
        steps.append(out.logits)
        assert out.past_key_values[0][2] is cross  # computed once, carried along
    torch.testing.assert_close(torch.cat(steps, 1), full.logits, atol=2e-5, rtol=1e-5)
    assert len(out.past_key_values[0]) == 4 and out.past_key_values[0][0].shape[2] == 5


# ----------------------------------------------------------------------------- heads and losses

def test_decoder_loss_shifts_labels_internally():
    m = make(tiny("decoder"))
    x = torch.randint(0, V, (2, 8))
    labels = x.clone()
    labels[0, 5] = -100
    out = m(x, labels=labels)
    ref = F.cross_entropy(out.logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, ref)
    assert isinstance(out, ModelOutput) and out.hidden_states.shape == (2, 8, 32)


def test_mlm_head_runs_only_on_selected_positions():
    m = make(tiny("encoder", pooler=True, nsp_head=True))
    x = torch.randint(5, V, (2, 9))
    labels = torch.full_like(x, -100)
    labels[0, 2], labels[1, 4], labels[1, 7] = 11, 12, 13
    full = m(x)
    sel = m(x, labels=labels, next_sentence_label=torch.tensor([0, 1]))
    assert full.logits.shape == (2, 9, V) and sel.logits.shape == (3, V)
    torch.testing.assert_close(sel.logits, full.logits[labels != -100], atol=1e-5, rtol=1e-5)
    mlm = F.cross_entropy(full.logits[labels != -100], labels[labels != -100])
    nsp = F.cross_entropy(full.nsp_logits, torch.tensor([0, 1]))
    torch.testing.assert_close(sel.loss, mlm + nsp, atol=1e-5, rtol=1e-5)
    assert sel.pooled.shape == (2, 32)


@pytest.mark.parametrize("variant", [
    dict(),
    dict(norm_position="pre", embedding_norm=False),
    dict(position="rope"),
    dict(position="relative", norm="rmsnorm", bias=False),
    dict(gated_mlp=True, activation="silu", tie_embeddings=False, pooler=True, nsp_head=True),
    dict(position="rope", norm_position="pre", embedding_norm=False, n_kv_heads=2, rotary_fraction=0.5,
         parallel_residual=True),
], ids=["post-ln", "pre-ln", "rope", "relative-bias", "gated-untied-nsp", "gqa-partial-rope-parallel"])
def test_sparse_last_layer_training_equals_full_layer(variant):
    """Training mode runs the last layer at the labelled rows only (`Block(..., rows=)`); loss
    and every gradient equal those of the full forward (eval mode, dropout 0), with padding."""
    m = make(tiny("encoder", **variant))
    g = torch.Generator().manual_seed(5)
    x = torch.randint(5, V, (3, 20), generator=g)
    mask = torch.ones_like(x)
    mask[1, 14:] = 0
    labels = torch.where(torch.rand(x.shape, generator=g) < 0.2, x, -100).masked_fill(mask == 0, -100)
    labels[2] = -100
    labels[2, 19] = 7  # a sequence with one label, at the last position
    kw = dict(attention_mask=mask, labels=labels)
    if m.config.nsp_head:
        kw["next_sentence_label"] = torch.tensor([1, 0, 1])
    grads = []
    for train in (True, False):
        m.train(train)
        m.zero_grad(set_to_none=True)
        out = m(x, **kw)
        assert (out.hidden_states is None) == train
        out.loss.backward()
        grads.append((out.loss.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    (sparse_loss, sparse), (full_loss, full) = grads
    torch.testing.assert_close(sparse_loss, full_loss)
    assert set(sparse) == set(full)
    for name in full:
        torch.testing.assert_close(sparse[name], full[name], rtol=1e-4, atol=1e-6, msg=name)


def test_encdec_shifts_labels_with_start_token():
    m = make(tiny("encoder-decoder", position="relative", norm="rmsnorm", bias=False, decoder_start_token_id=3))
    labels = torch.tensor([[7, 8, 9, -100]])
    assert m.shift_right(labels).tolist() == [[3, 7, 8, 9]]
    x = torch.randint(1, V, (1, 5))
    a = m(x, labels=labels)
    b = m(x, decoder_input_ids=torch.tensor([[3, 7, 8, 9]]))
    torch.testing.assert_close(a.logits, b.logits)
    ref = F.cross_entropy(b.logits[0, :3], labels[0, :3])
    torch.testing.assert_close(a.loss, ref)


@pytest.mark.parametrize("family", ["decoder", "encoder", "encoder-decoder"])
def test_training_step_with_dropout_gives_finite_gradients(family):
    torch.manual_seed(0)
    kw = dict(dropout=0.1, attention_dropout=0.1)
    if family == "encoder-decoder":
        kw.update(position="relative", norm="rmsnorm", bias=False, gated_mlp=True, activation="gelu_tanh")
    m = build_model(tiny(family, **kw)).train()
    x = torch.randint(5, V, (2, 8))
    if family == "encoder":
        labels = torch.full_like(x, -100)
        labels[:, 3] = x[:, 3]
        out = m(x, labels=labels)
    else:
        out = m(x, labels=x)
    out.loss.backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_resize_token_embeddings_keeps_rows_and_ties():
    for fam in ("decoder", "encoder", "encoder-decoder"):
        m = make(tiny(fam))
        old = m.get_input_embeddings().weight.detach().clone()
        m.resize_token_embeddings(V + 5)
        assert m.config.vocab_size == V + 5
        torch.testing.assert_close(m.get_input_embeddings().weight[:V], old)
        out = m(torch.tensor([[V + 4, 1, 2]]), **({"decoder_input_ids": torch.tensor([[0, V + 4]])}
                                                   if fam == "encoder-decoder" else {}))
        assert out.logits.shape[-1] == V + 5
        assert m.num_parameters()["total"] == unique_numel(m)


# ----------------------------------------------------------------------------- positions / length

def test_learned_positions_reject_long_input():
    with pytest.raises(LmscaleError, match="64 learned positions"):
        make(tiny("decoder"))(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(LmscaleError, match="max_positions"):
        make(tiny("encoder"))(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("position", ["rope", "sinusoidal", "relative"])
def test_parameter_free_positions_extrapolate_beyond_max_positions(position):
    kw = dict(norm="rmsnorm", bias=False) if position == "relative" else {}
    m = make(tiny("decoder", position=position, max_positions=16, **kw))
    out = m(torch.randint(0, V, (1, 40)))
    assert out.logits.shape == (1, 40, V) and torch.isfinite(out.logits).all()


# ----------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def wordpiece():
    from lmscale.tokenization import train_tokenizer

    text = ["the cat sat on the mat", "a dog ran in the park", "birds fly over the sea"] * 20
    return train_tokenizer("wordpiece", text, vocab_size=60, min_frequency=1)


def test_save_load_roundtrip_model_dir_and_run_dir(tmp_path, wordpiece):
    cfg = tiny("encoder", vocab_size=wordpiece.vocab_size + 3, pooler=True)
    m = make(cfg)
    save_model_dir(m, wordpiece, tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "config.json").read_text())
    assert meta["format"] == "lmscale" and meta["version"] == 1 and meta["model"]["family"] == "encoder"
    m2, tok = lmscale.load(tmp_path / "model")
    assert tok.vocab_size == wordpiece.vocab_size and not m2.training
    x = torch.randint(0, cfg.vocab_size, (2, 7))
    torch.testing.assert_close(m2(x).logits, m(x).logits)

    run = tmp_path / "run"
    other = make(cfg, seed=1)
    save_model_dir(other, wordpiece, run / "checkpoints" / "step_00000020")
    save_model_dir(m, wordpiece, run / "checkpoints" / "step_00000100")
    newest, _ = load(run)
    torch.testing.assert_close(newest(x).logits, m(x).logits)
    save_model_dir(other, wordpiece, run / "checkpoints" / "best")
    best, _ = load(run)
    torch.testing.assert_close(best(x).logits, other(x).logits)


def test_mismatched_checkpoint_lists_every_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    save_model_dir(make(tiny("decoder")), None, tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    state = load_file(str(f))
    del state["layers.1.mlp.fc_out.bias"]
    state["layers.0.attn.extra"] = torch.zeros(3)
    state["layers.0.attn.qkv.weight"] = torch.zeros(10, 32)
    save_file(state, str(f))
    with pytest.raises(CheckpointError) as err:
        load(tmp_path / "m")
    msg = str(err.value)
    assert "missing tensors: layers.1.mlp.fc_out.bias" in msg
    assert "unexpected tensors: layers.0.attn.extra" in msg
    assert "layers.0.attn.qkv.weight (checkpoint (10, 32), model (96, 32))" in msg


def test_tokenizer_larger_than_model_vocab_is_caught_at_load(tmp_path, wordpiece):
    save_model_dir(make(tiny("encoder", vocab_size=wordpiece.vocab_size - 5)), wordpiece, tmp_path / "m")
    with pytest.raises(CheckpointError, match=f"tokenizer has {wordpiece.vocab_size} tokens"):
        load(tmp_path / "m")


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        load(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a model directory"):
        load(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"format": "lmscale", "version": 1,
                                                              "model": {"d_model": 30, "n_heads": 4}}))
    with pytest.raises(CheckpointError, match="not divisible"):
        load(tmp_path / "bad")


# ----------------------------------------------------------------------------- fused training loss

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_gelu_tanh_equals_pytorch_in_value_and_gradient(dtype):
    """Against PyTorch's tanh-GELU evaluated in float64 (fp32: the error bound is about twice
    ATen's own fp32 error, 1e-6, from the backward's s + x s (1 - s) v' cancellation)."""
    x = torch.cat([torch.randn(20000, dtype=dtype) * 4,
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, 1e6, -1e6, 1e13, -1e13], dtype=dtype)])
    g = torch.randn_like(x)
    ref_x = x.double().clone().requires_grad_()
    ref = F.gelu(ref_x, approximate="tanh")
    ref.backward(g.double())
    ours_x = x.clone().requires_grad_()
    y = kernels.gelu_tanh(ours_x)
    y.backward(g)
    tol = dict(rtol=0, atol=5e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y.double(), ref.detach(), **tol)
    torch.testing.assert_close(ours_x.grad.double(), ref_x.grad, **tol)
    with torch.no_grad():  # inference takes the same formula without the autograd function
        torch.testing.assert_close(kernels.gelu_tanh(x).double(), ref.detach(), **tol)


@pytest.mark.parametrize("rows,vocab,scale", [(150, 70000, 0.1), (700, 3000, 0.1), (700, 3000, 30.0)],
                         ids=["row-major", "vocab-major-then-row-major", "logits-beyond-exp-range"])
def test_linear_cross_entropy_equals_pytorch_in_value_and_gradients(rows, vocab, scale):
    # 70,000 words: chunks of 64 rows, row-major logits; 3,000 words: a 512-row chunk in the
    # vocabulary-major layout, then a 188-row one row-major. Small logits skip the max
    # subtraction (their bound is below 60); logits of several hundred need it.
    torch.manual_seed(0)
    h = torch.randn(rows, 16, requires_grad=True)
    w = torch.randn(vocab, 16).mul_(scale).requires_grad_()
    b = torch.randn(vocab).requires_grad_()
    labels = torch.randint(0, vocab, (rows,))
    labels[::4] = -100
    fused = kernels.linear_cross_entropy(h, w, b, labels)
    g_fused = torch.autograd.grad(fused * 3.0, (h, w, b))
    ref = F.cross_entropy(F.linear(h, w, b), labels, ignore_index=-100)
    g_ref = torch.autograd.grad(ref * 3.0, (h, w, b))
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)
    for a, r in zip(g_fused, g_ref):
        torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("rows,vocab", [(150, 3000), (700, 3000)], ids=["row-major", "vocab-major"])
def test_linear_cross_entropy_under_cpu_autocast_matches_the_autocast_plain_loss(rows, vocab):
    # under bf16 autocast the fused loss runs its three products in bf16, as the plain
    # F.linear + cross-entropy does there, and keeps exponentials and sums in fp32
    torch.manual_seed(0)
    h = torch.randn(rows, 32, requires_grad=True)
    w = torch.randn(vocab, 32).mul_(0.3).requires_grad_()
    b = torch.randn(vocab).requires_grad_()
    labels = torch.randint(0, vocab, (rows,))
    labels[::4] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = kernels.linear_cross_entropy(h, w, b, labels)
        ref = F.cross_entropy(F.linear(h, w, b).float(), labels, ignore_index=-100)
    g_fused = torch.autograd.grad(fused, (h, w, b))
    g_ref = torch.autograd.grad(ref, (h, w, b))
    assert fused.dtype == torch.float32 and all(g.dtype == torch.float32 for g in g_fused)
    torch.testing.assert_close(fused, ref, atol=1e-3, rtol=1e-3)
    for a, r in zip(g_fused, g_ref):
        assert float((a - r).abs().max()) <= 2e-2 * float(r.abs().max())
    # and the products did run in bf16: fp32 ones give a visibly different loss
    exact = F.cross_entropy(F.linear(h, w, b), labels, ignore_index=-100)
    assert abs(float(fused.detach()) - float(exact.detach())) > 1e-6


@pytest.mark.parametrize("causal", [True, False])
def test_attention_under_cpu_autocast_runs_in_fp32_and_returns_bf16(causal):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8).bfloat16().requires_grad_() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernels.attention(q, k, v, None, 0.0, causal)
    assert out.dtype == torch.bfloat16
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
    assert torch.equal(out, ref.to(torch.bfloat16))
    grads = torch.autograd.grad(out.float().sum(), (q, k, v))
    assert all(g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("family", ["decoder", "encoder", "encoder-decoder"])
def test_training_step_fused_loss_matches_plain_loss(family, monkeypatch):
    kw = dict(position="relative", norm="rmsnorm", bias=False) if family == "encoder-decoder" else {}
    m = make(tiny(family, tie_embeddings=family != "decoder", **kw)).train()
    x = torch.randint(5, V, (2, 8))
    labels = x.clone()
    labels[:, ::3] = -100
    fused_out = m(x, labels=labels)
    assert fused_out.logits is None
    g_fused = torch.autograd.grad(fused_out.loss, list(m.parameters()), allow_unused=True)
    monkeypatch.setattr(type(m), "_fused_loss", lambda self, h: False)
    plain = m(x, labels=labels)
    assert plain.logits is not None
    g_plain = torch.autograd.grad(plain.loss, list(m.parameters()), allow_unused=True)
    torch.testing.assert_close(fused_out.loss, plain.loss, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_fused, g_plain):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_alibi_start_of_the_relative_bias_is_local_and_learned():
    """relative_bias_init=alibi: every head's bias falls with distance from 0 at the query itself,
    symmetric in an encoder, with ALiBi's geometric slopes (1, 1/4, 1/16, 1/64 for 4 heads); the
    table stays a parameter, and the zero start (T5) is untouched."""
    import math

    from lmscale.config import ConfigError
    from lmscale.models import build_model

    cfg = ModelConfig(family="encoder", vocab_size=64, d_model=32, n_layers=1, n_heads=4, max_positions=64,
                      position="relative", relative_buckets=32, relative_max_distance=64, relative_bias_init="alibi")
    model = build_model(cfg)
    bias = model.rel_bias(16, 16)[0].detach()  # [H, q, k]
    q = 8
    for h in range(4):
        row = bias[h, q]
        assert row[q] == 0
        assert torch.allclose(row[q - 1], row[q + 1]) and float(row[q + 1]) == pytest.approx(-(4.0 ** -h))
        left = row[: q + 1]
        assert torch.all(left[1:] >= left[:-1])  # rises towards the query
    assert model.rel_bias.embedding.weight.requires_grad
    zero = build_model(ModelConfig(**{**cfg.__dict__, "relative_bias_init": "zero"}))
    assert float(zero.rel_bias.embedding.weight.abs().max()) < 0.2 and not math.isclose(
        float(zero.rel_bias.embedding.weight.std()), 0.0)
    with pytest.raises(ConfigError, match="relative_bias_init"):
        ModelConfig(family="encoder", position="learned", relative_bias_init="alibi")
