"""Typed configs: presets carry the published shapes; bad keys and combinations are clear errors."""
from __future__ import annotations

import pytest
import yaml

from lmscale.config import (
    ConfigError,
    ModelConfig,
    RunConfig,
    load_preset,
    load_run_config,
    parse_override_args,
    preset_info,
    preset_names,
)

EXPECTED_PRESETS = {
    "transformer-base", "transformer-large", "bert-base", "bert-large", "gpt1", "gpt2-small",
    "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt3-125m", "gpt3-350m", "gpt3-760m", "gpt3-1.3b",
    "gpt3-2.7b", "gpt3-6.7b", "gpt3-13b", "gpt3-175b", "t5-small", "t5-base", "t5-large",
    "bert-tiny", "gpt-tiny", "t5-tiny",
}

# Brown et al. 2020, Table 2.1: (n_layers, d_model, d_head); 13B uses 5120 (= 40 x 128) in practice.
GPT3_TABLE = {
    "gpt3-125m": (12, 768, 64), "gpt3-350m": (24, 1024, 64), "gpt3-760m": (24, 1536, 96),
    "gpt3-1.3b": (24, 2048, 128), "gpt3-2.7b": (32, 2560, 80), "gpt3-6.7b": (32, 4096, 128),
    "gpt3-13b": (40, 5120, 128), "gpt3-175b": (96, 12288, 128),
}


def test_all_named_presets_exist():
    assert EXPECTED_PRESETS <= set(preset_names())


@pytest.mark.parametrize("name,shape", sorted(GPT3_TABLE.items()))
def test_gpt3_presets_follow_brown_et_al_table(name, shape):
    m = load_preset(name).model
    assert (m.n_layers, m.d_model, m.head_dim) == shape
    assert m.attn_dim == m.d_model and m.ffn_dim == 4 * m.d_model
    assert m.vocab_size == 50257 and m.max_positions == 2048


@pytest.mark.parametrize(
    "name,layers,width,heads",
    [("bert-base", 12, 768, 12), ("bert-large", 24, 1024, 16), ("gpt1", 12, 768, 12),
     ("gpt2-small", 12, 768, 12), ("gpt2-medium", 24, 1024, 16), ("gpt2-large", 36, 1280, 20),
     ("gpt2-xl", 48, 1600, 25), ("t5-small", 6, 512, 8), ("t5-base", 12, 768, 12),
     ("t5-large", 24, 1024, 16), ("transformer-base", 6, 512, 8), ("transformer-large", 6, 1024, 16)],
)
def test_seed_table_shapes(name, layers, width, heads):
    m = load_preset(name).model
    assert (m.n_layers, m.d_model, m.n_heads) == (layers, width, heads)
    if m.family == "encoder-decoder":
        assert m.decoder_layers == layers  # Transformer-Base: 12 layers in total, 6 + 6


def test_gpt1_ffn_and_t5_conventions():
    assert load_preset("gpt1").model.ffn_dim == 3072
    t5 = load_preset("t5-small").model
    assert (t5.position, t5.norm, t5.bias, t5.tie_embeddings) == ("relative", "rmsnorm", False, True)


def test_preset_metadata_has_published_size():
    assert preset_info("gpt3-175b")["published_params"] == 175e9
    assert preset_info("bert-large")["published_params"] == 340e6


def test_indivisible_heads_error_says_what_to_change():
    with pytest.raises(ConfigError, match=r"d_model=250 is not divisible by n_heads=8"):
        ModelConfig(d_model=250, n_heads=8)


def test_unknown_yaml_key_suggests_nearest(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({"model": {"d_modle": 64}}))
    with pytest.raises(ConfigError, match=r"did you mean model\.'d_model'"):
        load_run_config(p)


def test_unknown_override_suggests_nearest():
    with pytest.raises(ConfigError, match=r"did you mean --model.d_model"):
        load_run_config(preset="gpt-tiny", overrides={"model.dmodel": 64})


def test_yaml_then_overrides_precedence(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({"preset": "gpt-tiny", "model": {"n_layers": 3}, "train": {"lr": 0.01}}))
    cfg = load_run_config(p, overrides=parse_override_args(["--model.d_model", "64", "--train.lr=3e-4"]))
    assert cfg.model.n_layers == 3 and cfg.model.d_model == 64
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.preset == "gpt-tiny"


def test_override_types_are_checked():
    with pytest.raises(ConfigError, match="not an integer"):
        load_run_config(preset="gpt-tiny", overrides={"model.d_model": "wide"})
    with pytest.raises(ConfigError, match="not one of"):
        load_run_config(preset="gpt-tiny", overrides={"model.norm": "batchnorm"})


def test_sequence_longer_than_positions_is_rejected():
    with pytest.raises(ConfigError, match="seq_len=512 is longer than model.max_positions=128"):
        load_run_config(preset="gpt-tiny", overrides={"train.seq_len": 512})


def test_encoder_only_options_rejected_for_decoder():
    with pytest.raises(ConfigError, match="encoder feature"):
        ModelConfig(family="decoder", pooler=True)


def test_run_config_round_trips_through_dict():
    from lmscale.config import from_dict, to_dict

    cfg = load_preset("t5-tiny")
    again = from_dict(RunConfig, to_dict(cfg))
    assert again == cfg
    assert cfg.tokenizer_kind == "unigram" and cfg.objective_kind == "span"


@pytest.mark.parametrize("name", ["bert-tiny", "gpt-tiny", "t5-tiny"])
def test_tiny_presets_are_small(name):
    m = load_preset(name).model
    assert m.d_model <= 256 and m.vocab_size <= 16384


def test_model_config_counts_its_parameters_and_training_flops():
    """The config owns N and the PaLM FLOPs per token (what MFU and FLOP budgets use), without a model."""
    gpt2 = load_preset("gpt2-small").model
    counts = gpt2.parameter_counts()
    assert counts == {"total": 124_439_808, "embedding": 50257 * 768 + 1024 * 768,
                      "non_embedding": 124_439_808 - 50257 * 768 - 1024 * 768}
    assert sum(gpt2.parameter_breakdown().values()) == counts["total"]
    assert gpt2.training_flops_per_token(1024) == 6 * 124_439_808 + 12 * 12 * 768 * 1024
    assert gpt2.training_flops_per_token() == gpt2.training_flops_per_token(gpt2.max_positions)
    t5 = load_preset("t5-small").model
    assert t5.total_layers == 12  # both stacks count
    assert t5.training_flops_per_token(512) == 6 * t5.parameter_counts()["total"] + 12 * 12 * 512 * 512
    with pytest.raises(ConfigError, match="seq_len"):
        gpt2.training_flops_per_token(0)
