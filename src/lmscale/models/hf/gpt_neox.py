"""GPT-NeoX / Pythia (`GPTNeoXForCausalLM`) <-> our RoPE decoder with LayerNorm, biases and a plain MLP
(parallel residual or not, any rotary fraction). Its fused q|k|v is interleaved per head."""
from __future__ import annotations

from lmscale.config import ModelConfig
from lmscale.errors import CheckpointError
from lmscale.models.hf import llama
from lmscale.models.hf.common import (
    ACT_OUT,
    Exported,
    HFAdapter,
    Imported,
    Rule,
    act,
    pad_id,
    prefix,
    rope_config,
    rope_decoder_keys,
    rope_parameters,
    unsupported,
)


def neox_rules(cfg: ModelConfig, p: str, head: str) -> list[Rule]:
    r = [Rule("tok_emb.weight", [f"{p}embed_in.weight"])]
    r += [Rule(f"norm.{s}", [f"{p}final_layer_norm.{s}"]) for s in ("weight", "bias")]
    for i in range(cfg.n_layers):
        L, H = f"layers.{i}.", f"{p}layers.{i}."
        for s in ("weight", "bias"):
            r += [
                Rule(f"{L}attn_norm.{s}", [f"{H}input_layernorm.{s}"]),
                Rule(f"{L}attn.qkv.{s}", [f"{H}attention.query_key_value.{s}"], heads=cfg.n_heads),
                Rule(f"{L}attn.out.{s}", [f"{H}attention.dense.{s}"]),
                Rule(f"{L}mlp_norm.{s}", [f"{H}post_attention_layernorm.{s}"]),
                Rule(f"{L}mlp.fc_in.{s}", [f"{H}mlp.dense_h_to_4h.{s}"]),
                Rule(f"{L}mlp.fc_out.{s}", [f"{H}mlp.dense_4h_to_h.{s}"]),
            ]
    if not cfg.tie_embeddings:
        r.append(Rule("lm_head.weight", [head]))
    return r


def read(c: dict, keys: set[str], where: str) -> Imported:
    if c.get("attention_bias", True) is False:
        raise CheckpointError(f"{where}: GPT-NeoX without attention biases is not supported")
    theta, fraction, scaling = rope_parameters(c, where, "rotary_emb_base", "rotary_pct", (10000.0, 0.25))
    cfg = ModelConfig(
        family="decoder", vocab_size=c["vocab_size"], d_model=c["hidden_size"], n_layers=c["num_hidden_layers"],
        n_heads=c["num_attention_heads"], d_ff=c["intermediate_size"],
        max_positions=c.get("max_position_embeddings", 2048), position="rope", rope_theta=theta,
        rope_scaling=scaling, rotary_fraction=fraction, activation=act(c.get("hidden_act", "gelu"), where),
        norm="layernorm", norm_position="pre", norm_eps=c.get("layer_norm_eps", 1e-5), bias=True,
        parallel_residual=bool(c.get("use_parallel_residual", True)),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        dropout=c.get("hidden_dropout", 0.0) or 0.0, attention_dropout=c.get("attention_dropout", 0.0) or 0.0,
        init_std=c.get("initializer_range", 0.02), pad_token_id=pad_id(c, c["vocab_size"]),
    )
    head = "lm_head.weight" if "lm_head.weight" in keys else "embed_out.weight"
    rules = neox_rules(cfg, prefix(keys, "gpt_neox."), head)
    return Imported(cfg, rules, True, ["embed_out.weight", "lm_head.weight"] if cfg.tie_embeddings else [])


def claims(cfg: ModelConfig) -> bool:
    """Every RoPE decoder Llama does not take; `export` refuses those GPT-NeoX cannot express either."""
    return cfg.position == "rope" and not llama.claims(cfg)


def export(cfg: ModelConfig, base: dict) -> Exported:
    common = rope_decoder_keys(cfg, base)
    if not (cfg.norm == "layernorm" and not cfg.gated_mlp and cfg.bias and cfg.norm_position == "pre"
            and cfg.kv_heads == cfg.n_heads and cfg.d_head in (None, cfg.d_model // cfg.n_heads)):
        raise unsupported(cfg, "a RoPE decoder leaves as Llama (pre-LN RMSNorm, gated MLP, sequential residual) "
                          "or GPT-NeoX (pre-LN LayerNorm, plain MLP, biases, all heads for keys and values)")
    c = {**common, "model_type": "gpt_neox", "hidden_act": ACT_OUT[cfg.activation],
         "layer_norm_eps": cfg.norm_eps, "rotary_pct": cfg.rotary_fraction, "rotary_emb_base": cfg.rope_theta,
         "use_parallel_residual": cfg.parallel_residual, "attention_bias": True,
         "hidden_dropout": cfg.dropout, **rope_config(cfg)}
    tied = ["embed_out.weight"] if cfg.tie_embeddings else []
    return Exported("GPTNeoXForCausalLM", c, neox_rules(cfg, "gpt_neox.", "embed_out.weight"), tied)


ADAPTER = HFAdapter("GPT-NeoX (Pythia)", ("gpt_neox",), read, claims, export)
