"""Parameter/FLOP counting against transformers (meta device), lmscale models and published sizes."""
from __future__ import annotations

import json
import random

import pytest

from lmscale.config import ModelConfig, preset_info, preset_model, preset_names
from lmscale.scaling.counting import CONVENTIONS, count_parameters, flops_per_token, training_flops

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _hf_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors are counted once


def _meta(fn):
    with torch.device("meta"):
        return fn()


def test_gpt2_small_matches_transformers_and_published_exactly():
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = _hf_count(_meta(lambda: GPT2LMHeadModel(GPT2Config())))
    ours = count_parameters(preset_model("gpt2-small"))
    assert hf == 124_439_808
    assert ours["params_total"] == 124_439_808
    # Kaplan et al.'s split: token + position embeddings are the embedding parameters
    assert ours["params_embedding"] == 50257 * 768 + 1024 * 768
    assert ours["params_total"] == ours["params_embedding"] + ours["params_non_embedding"]


@pytest.mark.parametrize("pooler", [False, True])
def test_bert_matches_transformers(pooler):
    from transformers import BertConfig, BertForMaskedLM, BertForPreTraining

    hc = BertConfig()
    hf = _hf_count(_meta(lambda: (BertForPreTraining if pooler else BertForMaskedLM)(hc)))
    cfg = ModelConfig(family="encoder", vocab_size=30522, d_model=768, n_layers=12, n_heads=12, d_ff=3072,
                      max_positions=512, type_vocab_size=2, embedding_norm=True, norm_position="post",
                      pooler=pooler, nsp_head=pooler)
    assert count_parameters(cfg)["params_total"] == hf


def test_bert_large_preset_matches_transformers():
    from transformers import BertConfig, BertForPreTraining

    hc = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    hf = _hf_count(_meta(lambda: BertForPreTraining(hc)))
    assert count_parameters(preset_model("bert-large"))["params_total"] == hf


def test_gpt1_matches_transformers():
    from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

    hf = _hf_count(_meta(lambda: OpenAIGPTLMHeadModel(OpenAIGPTConfig())))
    assert count_parameters(preset_model("gpt1"))["params_total"] == hf


def test_t5_v1_0_matches_transformers():
    from transformers import T5Config, T5ForConditionalGeneration

    hc = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8)
    hf = _hf_count(_meta(lambda: T5ForConditionalGeneration(hc)))
    assert count_parameters(preset_model("t5-small"))["params_total"] == hf == 60_506_624


def test_t5_v1_1_gated_untied_matches_transformers():
    from transformers import T5Config, T5ForConditionalGeneration

    hc = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=6,
                  num_heads=6, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    m = _meta(lambda: T5ForConditionalGeneration(hc))
    hf = _hf_count(m)
    if m.lm_head.weight is m.shared.weight:  # transformers 5 ties T5 heads regardless; v1.1 has its own
        hf += m.lm_head.weight.numel()
    cfg = ModelConfig(family="encoder-decoder", vocab_size=32128, d_model=512, d_head=64, d_ff=1024, n_layers=8,
                      n_decoder_layers=6, n_heads=6, gated_mlp=True, activation="gelu", tie_embeddings=False,
                      position="relative", norm="rmsnorm", bias=False)
    out = count_parameters(cfg)
    assert out["params_total"] == hf
    assert out["params_embedding"] == 2 * 32128 * 512


def test_gpt2_variants_match_transformers():
    from transformers import GPT2Config, GPT2LMHeadModel

    for n_embd, n_layer, n_head, n_inner, n_pos in [(64, 2, 4, None, 32), (48, 3, 6, 100, 17)]:
        hc = GPT2Config(vocab_size=101, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_inner=n_inner,
                        n_positions=n_pos)
        cfg = ModelConfig(vocab_size=101, d_model=n_embd, n_layers=n_layer, n_heads=n_head, d_ff=n_inner,
                          max_positions=n_pos)
        assert count_parameters(cfg)["params_total"] == _hf_count(_meta(lambda hc=hc: GPT2LMHeadModel(hc)))


def _random_configs(n: int, seed: int = 0):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        fam = rng.choice(["decoder", "encoder", "encoder-decoder"])
        kw = dict(family=fam, vocab_size=rng.choice([61, 97]), d_model=32, n_layers=rng.choice([1, 2]),
                  n_heads=4, d_head=rng.choice([None, 6]), d_ff=rng.choice([None, 40]), max_positions=16,
                  position=rng.choice(["learned", "sinusoidal", "rope", "relative", "none"]),
                  gated_mlp=rng.random() < 0.5, norm=rng.choice(["layernorm", "rmsnorm"]),
                  norm_position=rng.choice(["pre", "post"]), bias=rng.random() < 0.5,
                  tie_embeddings=rng.random() < 0.5, n_kv_heads=rng.choice([None, 1, 2]),
                  parallel_residual=rng.random() < 0.3, rotary_fraction=rng.choice([1.0, 0.5]))
        if fam == "encoder":
            pool = rng.random() < 0.5
            kw.update(type_vocab_size=rng.choice([0, 2]), embedding_norm=rng.random() < 0.5,
                      mlm_transform=rng.random() < 0.5, pooler=pool, nsp_head=pool and rng.random() < 0.5)
        if fam == "encoder-decoder":
            kw["n_decoder_layers"] = rng.choice([1, 3])
        try:
            out.append(ModelConfig(**kw))
        except Exception:
            continue
    return out


def test_counts_equal_instantiated_lmscale_models():
    models = pytest.importorskip("lmscale.models")
    for cfg in _random_configs(40) + [preset_model(n) for n in ("gpt-tiny", "bert-tiny", "t5-tiny", "llama-tiny")]:
        m = models.build_model(cfg)  # tiny: built for real, on CPU
        got = m.num_parameters()
        want = count_parameters(cfg)
        assert (got["total"], got["embedding"], got["non_embedding"]) == (
            want["params_total"], want["params_embedding"], want["params_non_embedding"]), cfg


def test_large_presets_equal_lmscale_models_on_meta_device():
    models = pytest.importorskip("lmscale.models")
    for name in ("bert-base", "gpt2-small", "t5-small", "transformer-base"):
        cfg = preset_model(name)
        with torch.device("meta"):
            m = models.build_model(cfg)
        assert m.num_parameters()["total"] == count_parameters(cfg)["params_total"], name


def test_seed_table_sizes():
    assert count_parameters(preset_model("bert-base"))["params_total"] == pytest.approx(110e6, rel=0.01)
    assert count_parameters(preset_model("bert-large"))["params_total"] == pytest.approx(340e6, rel=0.02)
    gpt3 = [n for n in preset_names() if n.startswith("gpt3-")]
    assert len(gpt3) == 8
    for name in gpt3:
        pub = preset_info(name)["published_params"]
        assert count_parameters(preset_model(name))["params_total"] == pytest.approx(pub, rel=0.02), name


# Biderman et al. 2023, Table 1: (total parameters, non-embedding parameters)
PYTHIA_PUBLISHED = {
    "pythia-70m": (70_426_624, 18_915_328), "pythia-160m": (162_322_944, 85_056_000),
    "pythia-410m": (405_334_016, 302_311_424), "pythia-1b": (1_011_781_632, 805_736_448),
    "pythia-1.4b": (1_414_647_808, 1_208_602_624), "pythia-2.8b": (2_775_208_960, 2_517_652_480),
    "pythia-6.9b": (6_857_302_016, 6_444_163_072), "pythia-12b": (11_846_072_320, 11_327_027_200),
}


@pytest.mark.parametrize("name", list(PYTHIA_PUBLISHED))
def test_pythia_presets_match_published_counts_and_transformers(name):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = preset_model(name)
    counts = count_parameters(cfg)
    assert (counts["params_total"], counts["params_non_embedding"]) == PYTHIA_PUBLISHED[name]
    assert (preset_info(name)["published_params"], preset_info(name)["published_non_embedding_params"]) == \
        PYTHIA_PUBLISHED[name]
    hc = GPTNeoXConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                       num_attention_heads=cfg.n_heads, intermediate_size=cfg.ffn_dim,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25})
    assert _hf_count(_meta(lambda: GPTNeoXForCausalLM(hc))) == counts["params_total"]
    assert cfg.rotary_dim == cfg.head_dim // 4 and cfg.parallel_residual and not cfg.tie_embeddings


def test_llama_presets_match_transformers_and_published():
    from transformers import LlamaConfig, LlamaForCausalLM

    for name in ("tinyllama-1.1b", "llama-tiny"):
        cfg = preset_model(name)
        hc = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
                         num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                         num_key_value_heads=cfg.kv_heads, tie_word_embeddings=cfg.tie_embeddings)
        assert count_parameters(cfg)["params_total"] == _hf_count(_meta(lambda hc=hc: LlamaForCausalLM(hc))), name
    assert count_parameters(preset_model("tinyllama-1.1b"))["params_total"] == \
        preset_info("tinyllama-1.1b")["published_params"] == 1_100_048_384


def test_grouped_query_attention_narrows_key_value_projections_in_counts_and_flops():
    mha = ModelConfig(vocab_size=100, d_model=64, n_layers=3, n_heads=8, max_positions=32, position="rope")
    gqa = ModelConfig(vocab_size=100, d_model=64, n_layers=3, n_heads=8, n_kv_heads=2, max_positions=32,
                      position="rope")
    saved = 3 * 2 * (64 * 64 - 64 * 16 + 64 - 16)  # k and v: 64 -> 16 wide, weights and biases, 3 layers
    assert count_parameters(mha)["params_total"] - count_parameters(gqa)["params_total"] == saved
    a, b = flops_per_token(mha, 32, "exact")["exact"], flops_per_token(gqa, 32, "exact")["exact"]
    assert a - b == pytest.approx(3 * 3 * 2 * 2 * 64 * (64 - 16), rel=1e-12)  # 3x forward, 3 layers, k and v
    # PaLM's attention term counts all query heads either way
    assert mha.training_flops_per_token() - gqa.training_flops_per_token() == 6 * saved


def test_gpt3_175b_training_compute_6nd():
    # Brown et al. 2020 Table D.1 / Patterson et al. 2021: 3.14e23 FLOPs for 300B tokens
    c = training_flops(preset_model("gpt3-175b"), 300e9, "6N")
    assert c == pytest.approx(3.14e23, rel=0.01)


def test_flop_conventions_follow_their_published_formulas():
    cfg = preset_model("gpt2-small")
    p = count_parameters(cfg)
    f = flops_per_token(cfg, seq_len=1024)
    assert list(f) == list(CONVENTIONS)
    assert f["6N"] == 6 * p["params_total"]
    assert f["6N_non_embedding"] == 6 * p["params_non_embedding"]
    # Kaplan et al. 2020 eq. 2.2: C_forward = 2N + 2 n_layer n_ctx d_model, training = 3x
    assert f["kaplan"] == 3 * (2 * p["params_non_embedding"] + 2 * 12 * 1024 * 768)
    # PaLM App. B: 6N + 12 L H Q T
    assert f["palm"] == 6 * p["params_total"] + 12 * 12 * 12 * 64 * 1024
    # the exact matmul count is PaLM's formula minus the parameters that are not matmul weights
    non_matmul = 1024 * 768 + 12 * (2 * 2 * 768 + 4 * 768 + 3072 + 768) + 2 * 768
    assert f["exact"] == pytest.approx(f["palm"] - 6 * non_matmul, rel=1e-12)
    # Hoffmann et al. App. F: their count is within a few percent of 6N at GPT-3 scale
    big = flops_per_token(preset_model("gpt3-175b"), seq_len=2048)
    assert big["chinchilla"] / big["6N"] == pytest.approx(1.0, abs=0.05)


def test_encoder_exact_counts_mlm_head_only_on_masked_positions():
    cfg = preset_model("bert-base")
    full = flops_per_token(cfg, 128, "exact", mlm_fraction=1.0)["exact"]
    part = flops_per_token(cfg, 128, "exact", mlm_fraction=0.15)["exact"]
    head = 2 * 768 * 30522 + 2 * 768 * 768
    assert full - part == pytest.approx(3 * 0.85 * head, rel=1e-12)


def test_bad_convention_and_seq_len():
    with pytest.raises(ValueError):
        flops_per_token(preset_model("gpt-tiny"), convention="bogus")
    with pytest.raises(ValueError):
        flops_per_token(preset_model("gpt-tiny"), seq_len=0)
    with pytest.raises(ValueError):
        training_flops(preset_model("gpt-tiny"), -1)


def test_count_cli_preset_json(capsys):
    from lmscale.cli import main

    assert main(["count", "gpt2-small", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"params_total", "params_embedding", "params_non_embedding", "flops_per_token"}
    assert out["params_total"] == 124_439_808
    assert set(out["flops_per_token"]) == set(CONVENTIONS)


def test_count_cli_yaml_file_and_overrides(tmp_path, capsys):
    from lmscale.cli import main

    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("preset: gpt2-small\nmodel:\n  n_layers: 6\n")
    assert main(["count", str(run_yaml), "--json"]) == 0
    six = json.loads(capsys.readouterr().out)["params_total"]
    assert six == 124_439_808 - 6 * 7_087_872
    model_yaml = tmp_path / "model.yaml"
    model_yaml.write_text("family: decoder\nvocab_size: 50257\nd_model: 768\nn_layers: 12\nn_heads: 12\n"
                          "max_positions: 1024\n")
    assert main(["count", str(model_yaml), "--json", "--model.n_layers", "6"]) == 0
    assert json.loads(capsys.readouterr().out)["params_total"] == six
    assert main(["count", "gpt2-smal"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["count", str(tmp_path / "missing.yaml")]) == 2
