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
    "bert-tiny", "gpt-tiny", "t5-tiny", "pythia-70m", "pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b",
    "pythia-2.8b", "pythia-6.9b", "pythia-12b", "tinyllama-1.1b", "llama-tiny",
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


@pytest.mark.parametrize("name", ["bert-tiny", "gpt-tiny", "t5-tiny", "llama-tiny"])
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


def test_architecture_options_default_to_the_plain_transformer():
    """Grouped-query attention, partial rotary, parallel residual and RoPE scaling are off unless asked for."""
    m = ModelConfig()
    assert (m.n_kv_heads, m.kv_heads, m.rotary_fraction, m.parallel_residual, m.rope_scaling) == (None, 4, 1.0,
                                                                                                 False, None)
    assert m.rope_type == "default" and m.kv_dim == m.attn_dim
    t5 = load_preset("t5-small").model
    assert t5.scale_output is None and t5.output_scaled


@pytest.mark.parametrize("kw,match", [
    (dict(n_heads=6, d_model=48, n_kv_heads=4), "must divide model.n_heads=6"),
    (dict(position="rope", rotary_fraction=0.1), "even number of at least 2"),
    (dict(position="rope", rotary_fraction=1.5), r"must be in \(0, 1\]"),
    (dict(norm_position="post", parallel_residual=True), "needs pre-LN"),
    (dict(family="encoder-decoder", parallel_residual=True), "no cross-attention"),
    (dict(position="rope", rope_scaling={"rope_type": "dynamic", "factor": 2}), "'dynamic' is not supported"),
    (dict(position="rope", rope_scaling={"rope_type": "llama3", "factor": 8}), "needs low_freq_factor"),
    (dict(position="rope", rope_scaling={"rope_type": "linear", "factor": 2, "beta": 1}), "unknown keys beta"),
    (dict(position="learned", rope_scaling={"rope_type": "linear", "factor": 2}), "applies to RoPE"),
    (dict(position="rope", rope_scaling="linear"), "must be a mapping"),
    (dict(scale_output=True), "for encoder-decoders"),
])
def test_architecture_option_errors_say_what_to_change(kw, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kw)


def test_rope_scaling_reads_from_yaml_and_overrides(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("preset: llama-tiny\nmodel:\n  rope_scaling: {rope_type: linear, factor: 4}\n")
    cfg = load_run_config(p, overrides=parse_override_args(["--model.n_kv_heads", "1"]))
    assert cfg.model.rope_scaling == {"rope_type": "linear", "factor": 4} and cfg.model.kv_heads == 1
    again = load_run_config(preset="llama-tiny", overrides=parse_override_args(
        ["--model.rope_scaling", "{rope_type: yarn, factor: 2.0}"]))
    assert again.model.rope_type == "yarn"


@pytest.mark.parametrize("key,suggested", [
    ("train.learning_rate", "--train.lr"),
    ("train.epochs", "--train.max_steps"),
    ("train.num_train_epochs", "--train.max_steps"),
    ("train.warmup", "--train.warmup_steps"),
    ("train.warmup_ratio", "--train.warmup_fraction"),
    ("model.hidden_size", "--model.d_model"),
    ("model.num_key_value_heads", "--model.n_kv_heads"),
    ("model.seq_len", "--train.seq_len"),  # the right name in the wrong section
    ("train.max_step", "--train.max_steps"),  # spelling
    # the trackers, as HF Trainer, litgpt and accelerate name them
    ("train.logger_name", "--train.report_to"),
    ("train.log_with", "--train.report_to"),
    ("train.run_name", "--train.tracker_run_name"),
])
def test_unknown_keys_suggest_by_meaning_then_spelling(key, suggested):
    with pytest.raises(ConfigError) as err:
        load_run_config(preset="gpt-tiny", overrides={key: 1})
    assert f"did you mean {suggested}?" in str(err.value)
    if key == "train.epochs":
        assert "not in epochs" in str(err.value)


def test_unknown_yaml_key_suggests_by_meaning(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({"preset": "gpt-tiny", "train": {"learning_rate": 1e-3}}))
    with pytest.raises(ConfigError, match=r"did you mean train\.'lr'"):
        load_run_config(p)
