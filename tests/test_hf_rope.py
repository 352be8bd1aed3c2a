"""Llama and GPT-NeoX (Pythia) both ways: randomly initialised `transformers` models built from small,
unusual configs (no download) convert to lmscale with the same logits (max abs difference <= 1e-4,
fp32) under padding, left padding and the KV cache, and lmscale's RoPE decoders export to
directories `transformers` loads with the same logits. Also the T5 directory `transformers` 5 writes
for a v1.1-style config (tied head, no output scaling)."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from lmscale.config import ModelConfig
from lmscale.errors import CheckpointError
from lmscale.models import build_model
from lmscale.models.hf import from_hf, to_hf
from lmscale.models.loading import load

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore", module="transformers")
torch.set_num_threads(1)

V = 103
TOL = 1e-4

ROPE_SCALINGS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.5},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 16.0},
}


def _mask(b: int, t: int, left: bool = False) -> torch.Tensor:
    m = torch.ones(b, t, dtype=torch.long)
    for i in range(1, b):
        n = max(1, t - 3 * i)
        if left:
            m[i, : t - n] = 0
        else:
            m[i, n:] = 0
    return m


def _close(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    if mask is not None:
        a, b = a[mask.bool()], b[mask.bool()]
    diff = (a - b).abs().max().item()
    assert diff <= TOL, diff


def hf_llama(kv: int = 2, scaling: str = "default", tie: bool = False, bias: bool = False, head_dim=None,
             vocab: int = V):
    torch.manual_seed(0)
    rope = dict(ROPE_SCALINGS[scaling] or {"rope_type": "default"}, rope_theta=500.0)
    c = transformers.LlamaConfig(vocab_size=vocab, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
                                 num_attention_heads=6, num_key_value_heads=kv, head_dim=head_dim,
                                 max_position_embeddings=64, rms_norm_eps=1e-5, rope_parameters=rope,
                                 tie_word_embeddings=tie, attention_bias=bias, mlp_bias=bias,
                                 initializer_range=0.1)
    return transformers.LlamaForCausalLM(c).eval()


def hf_neox(parallel: bool = True, rotary_pct: float = 0.25, scaling: str = "default", vocab: int = V):
    torch.manual_seed(0)
    rope = dict(ROPE_SCALINGS[scaling] or {"rope_type": "default"}, rope_theta=1000.0,
                partial_rotary_factor=rotary_pct)
    c = transformers.GPTNeoXConfig(vocab_size=vocab, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                   num_attention_heads=3, max_position_embeddings=64, use_parallel_residual=parallel,
                                   rope_parameters=rope, hidden_dropout=0.0, attention_dropout=0.0,
                                   initializer_range=0.1)
    return transformers.GPTNeoXForCausalLM(c).eval()


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def _randomise_vectors(model) -> None:
    """Non-trivial norms and biases, so a slip in their mapping would show."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)


def _check_parity(hf, ours) -> None:
    assert ours.num_parameters()["total"] == n_params(hf)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for b, t in [(1, 5), (3, 13), (2, 40)]:  # 40 > the original 16 positions of the scaled variants
            x = torch.randint(0, V, (b, t), generator=g)
            _close(hf(x).logits, ours(x).logits)
            mask = _mask(b, t)
            _close(hf(x, attention_mask=mask).logits, ours(x, attention_mask=mask).logits, mask)
            left = _mask(b, t, left=True)
            pos = (left.cumsum(-1) - 1).clamp(min=0)
            _close(hf(x, attention_mask=left, position_ids=pos).logits, ours(x, attention_mask=left).logits, left)
            labels = x.masked_fill(mask == 0, -100)
            a = hf(x, attention_mask=mask, labels=labels).loss
            o = ours(x, attention_mask=mask, labels=labels).loss
            assert abs(a.item() - o.item()) <= TOL


# ----------------------------------------------------------------------------- import parity

@pytest.mark.parametrize("kv,scaling,tie,bias,head_dim", [
    (2, "default", False, False, None),   # grouped-query attention, untied head
    (1, "linear", False, False, None),    # multi-query
    (6, "llama3", True, True, None),      # all heads, tied, biases
    (3, "yarn", False, False, 12),        # head_dim != d_model / n_heads
], ids=["gqa", "mqa-linear", "mha-llama3-tied-bias", "yarn-wide-heads"])
def test_llama_logits_and_loss_match(kv, scaling, tie, bias, head_dim):
    hf = hf_llama(kv, scaling, tie, bias, head_dim)
    _randomise_vectors(hf)
    ours, _ = from_hf(hf)
    cfg = ours.config
    assert (cfg.kv_heads, cfg.gated_mlp, cfg.norm, cfg.tie_embeddings) == (kv, True, "rmsnorm", tie)
    assert cfg.rope_type == scaling
    _check_parity(hf, ours)


@pytest.mark.parametrize("parallel,rotary_pct,scaling", [
    (True, 0.25, "default"),   # the Pythia configuration
    (False, 0.5, "default"),   # sequential residual
    (True, 1.0, "linear"),
    (True, 0.5, "llama3"),
    (False, 0.5, "yarn"),
], ids=["pythia", "sequential-half-rotary", "full-rotary-linear", "half-rotary-llama3", "sequential-yarn"])
def test_gpt_neox_logits_and_loss_match(parallel, rotary_pct, scaling):
    hf = hf_neox(parallel, rotary_pct, scaling)
    _randomise_vectors(hf)
    ours, _ = from_hf(hf)
    cfg = ours.config
    assert cfg.parallel_residual is parallel and cfg.rotary_fraction == rotary_pct and not cfg.tie_embeddings
    assert cfg.rotary_dim == int(16 * rotary_pct)
    _check_parity(hf, ours)


@pytest.mark.parametrize("make_hf", [hf_llama, hf_neox], ids=["llama", "gpt-neox"])
def test_kv_cache_decoding_matches_the_full_forward(make_hf):
    """Decoding with the cache (grouped keys stored narrow, partial rotary) gives the logits of the
    whole sequence at once, and transformers' greedy generation gives the same tokens."""
    hf = make_hf()
    ours, _ = from_hf(hf)
    x = torch.randint(0, V, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = ours(x).logits
        out = ours(x[:, :6], use_cache=True)
        steps = [out.logits]
        past = out.past_key_values
        if ours.config.kv_heads != ours.config.n_heads:
            assert past[0][0].shape[1] == ours.config.kv_heads
        for t in range(6, 11):
            out = ours(x[:, t: t + 1], past_key_values=past, use_cache=True)
            steps.append(out.logits)
            past = out.past_key_values
        _close(torch.cat(steps, 1), full)
    from lmscale.inference import generate

    prompt = [5, 17, 3, 99]
    ref = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 4, dtype=torch.long), do_sample=False,
                      max_new_tokens=12, min_new_tokens=12, pad_token_id=0, eos_token_id=None)[0, 4:].tolist()
    assert generate(ours, None, prompt, greedy=True, max_new_tokens=12, stop_at_eos=False).token_ids == ref


def test_directories_written_by_transformers_convert(tmp_path):
    """From files: GPT-NeoX's head is stored as embed_out.weight; lmscale.load reads both kinds."""
    x = torch.randint(0, V, (2, 9))
    for name, hf in (("llama", hf_llama()), ("neox", hf_neox())):
        hf.save_pretrained(tmp_path / name)
        ours, _ = load(tmp_path / name)
        with torch.no_grad():
            _close(hf(x).logits, ours(x).logits)
    assert "rope_parameters" in json.loads((tmp_path / "neox" / "config.json").read_text())


def test_old_style_configs_convert(tmp_path):
    """Configs written by transformers 4 name RoPE at the top level: rope_theta and rope_scaling
    (Llama), rotary_pct and rotary_emb_base (GPT-NeoX)."""
    hf = hf_llama(scaling="llama3")
    hf.save_pretrained(tmp_path / "llama")
    c = json.loads((tmp_path / "llama" / "config.json").read_text())
    params = c.pop("rope_parameters")
    c["rope_theta"] = params.pop("rope_theta")
    c["rope_scaling"] = params
    (tmp_path / "llama" / "config.json").write_text(json.dumps(c))
    neox = hf_neox(rotary_pct=0.5)
    neox.save_pretrained(tmp_path / "neox")
    c = json.loads((tmp_path / "neox" / "config.json").read_text())
    params = c.pop("rope_parameters")
    c.update(rotary_pct=params["partial_rotary_factor"], rotary_emb_base=params["rope_theta"])
    (tmp_path / "neox" / "config.json").write_text(json.dumps(c))
    x = torch.randint(0, V, (1, 30))
    for name, ref in (("llama", hf), ("neox", neox)):
        ours, _ = from_hf(tmp_path / name)
        with torch.no_grad():
            _close(ref(x).logits, ours(x).logits)
    assert from_hf(tmp_path / "neox")[0].config.rope_theta == 1000.0


def test_unsupported_rope_scaling_is_a_clear_error(tmp_path):
    hf_llama().save_pretrained(tmp_path / "d")
    c = json.loads((tmp_path / "d" / "config.json").read_text())
    c["rope_parameters"] = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    (tmp_path / "d" / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match="RoPE scaling 'dynamic' is not supported"):
        from_hf(tmp_path / "d")


# ----------------------------------------------------------------------------- export

EXPORTS = {
    "llama-gqa-yarn": ("LlamaForCausalLM", dict(n_heads=6, n_kv_heads=2, gated_mlp=True, activation="silu",
                                                 norm="rmsnorm", bias=False, tie_embeddings=False,
                                                 rope_scaling=ROPE_SCALINGS["yarn"])),
    "llama-tied-llama3": ("LlamaForCausalLM", dict(n_heads=4, d_head=10, gated_mlp=True, activation="silu",
                                                    norm="rmsnorm", bias=True,
                                                    rope_scaling=ROPE_SCALINGS["llama3"])),
    "neox-pythia": ("GPTNeoXForCausalLM", dict(n_heads=3, rotary_fraction=0.25, parallel_residual=True,
                                               tie_embeddings=False, activation="gelu")),
    "neox-sequential-tied": ("GPTNeoXForCausalLM", dict(n_heads=4, parallel_residual=False,
                                                        activation="gelu_tanh", rope_theta=300.0,
                                                        rope_scaling=ROPE_SCALINGS["linear"])),
}


@pytest.mark.parametrize("name", list(EXPORTS))
def test_rope_decoders_export_to_transformers_with_same_logits(name, tmp_path):
    arch, kw = EXPORTS[name]
    torch.manual_seed(0)
    cfg = ModelConfig(family="decoder", vocab_size=V, d_model=48, n_layers=2, d_ff=72, max_positions=64,
                      position="rope", norm_eps=1e-5, init_std=0.1, **kw)
    ours = build_model(cfg).eval()
    _randomise_vectors(ours)
    to_hf(ours, None, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [arch]
    hf = getattr(transformers, arch).from_pretrained(tmp_path / "hf").eval()
    assert n_params(hf) == ours.num_parameters()["total"]
    x = torch.randint(0, V, (3, 37))
    mask = _mask(3, 37)
    with torch.no_grad():
        _close(hf(x, attention_mask=mask).logits, ours(x, attention_mask=mask).logits, mask)
    back, _ = from_hf(tmp_path / "hf")
    assert back.config == cfg or {k for k, v in vars(back.config).items() if vars(cfg)[k] != v} <= {
        "pad_token_id", "dropout", "attention_dropout"}
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_rope_decoders_without_a_transformers_twin_are_refused(tmp_path):
    for kw in (dict(norm="rmsnorm", gated_mlp=False), dict(norm="layernorm", gated_mlp=True),
               dict(norm="rmsnorm", gated_mlp=True, rotary_fraction=0.5)):
        m = build_model(ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=4, position="rope", **kw))
        with pytest.raises(CheckpointError, match="no transformers architecture"):
            to_hf(m, None, tmp_path / "x")


# ----------------------------------------------------------------------------- T5 written by transformers 5

def test_t5_tied_head_without_output_scaling_converts_from_a_directory(tmp_path):
    """`T5Config(tie_word_embeddings=False)` in transformers 5: the file holds no lm_head.weight and
    the config says tie_word_embeddings true, scale_decoder_outputs false."""
    torch.manual_seed(0)
    c = transformers.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
                              num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                              dropout_rate=0.0, decoder_start_token_id=0)
    hf = transformers.T5ForConditionalGeneration(c).eval()
    hf.save_pretrained(tmp_path / "t5")
    written = json.loads((tmp_path / "t5" / "config.json").read_text())
    if hf.config.tie_word_embeddings and not hf.config.scale_decoder_outputs:
        assert written["tie_word_embeddings"] is True and written["scale_decoder_outputs"] is False
    ours, _ = load(tmp_path / "t5")
    x = torch.randint(2, V, (2, 7))
    y = torch.randint(2, V, (2, 5))
    with torch.no_grad():
        _close(hf(input_ids=x, decoder_input_ids=y).logits, ours(x, decoder_input_ids=y).logits)
    assert ours.num_parameters()["total"] == n_params(hf)
    # and back out: transformers reads the export as the same function
    to_hf(ours, None, tmp_path / "back")
    again = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        _close(again(input_ids=x, decoder_input_ids=y).logits, ours(x, decoder_input_ids=y).logits)


# ----------------------------------------------------------------------------- loading and evaluating

@pytest.mark.parametrize("make_hf", [hf_neox, hf_llama], ids=["pythia", "llama"])
def test_fewshot_eval_reads_the_directory_both_ways(make_hf, tmp_path, capsys):
    """A transformers Pythia (or Llama) directory with its tokenizer: `lmscale.load` converts it,
    and `eval fewshot DIR` (converted) and `eval fewshot --hf DIR` (transformers' own model) agree."""
    import lmscale
    from lmscale.cli import main
    from lmscale.evaluation.lm import load_hf_causal_lm, scoring_lm
    from lmscale.tokenization import train_tokenizer

    tok = train_tokenizer("bpe", [f"Is {i} even? yes no" for i in range(10)] * 3, vocab_size=300)
    assert tok.vocab_size <= 300
    hf = make_hf(vocab=300)
    d = tmp_path / "hf"
    hf.save_pretrained(d)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend, eos_token="<|endoftext|>").save_pretrained(d)
    model, tok2 = lmscale.load(d)
    assert tok2 is not None and tok2.encode("Is 4 even?") == tok.encode("Is 4 even?")
    reqs = [("Is 4 even?", " yes"), ("Is 4 even?", " no"), ("Is 3", " even? no")]
    ours = [s.logprob for s in scoring_lm(model, tok2).loglikelihood(reqs)]
    theirs = [s.logprob for s in load_hf_causal_lm(d).loglikelihood(reqs)]
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 1e-4
    q = tmp_path / "even.jsonl"
    q.write_text("\n".join(json.dumps({"context": f"Is {i} even?", "choices": [" yes", " no"], "answer": i % 2})
                           for i in range(6)) + "\n")
    results = []
    for how in (["--hf", str(d)], [str(d)]):
        assert main(["eval", "fewshot", *how, "--task", str(q), "--shots", "0,1", "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out)["results"])
    assert results[0] and results[0] == results[1]
