"""Llama (`LlamaForCausalLM`) <-> our RoPE decoder with pre-LN RMSNorm and a gated MLP.

Grouped-query attention and RoPE scaling (`linear`, `llama3`, `yarn`) convert; `dynamic` and
`longrope`, whose frequencies change with the input length, are refused with a message.
"""
from __future__ import annotations

from lmscale.config import ModelConfig
from lmscale.errors import CheckpointError
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


def llama_rules(cfg: ModelConfig, p: str) -> list[Rule]:
    a, kv = cfg.attn_dim, cfg.kv_dim
    r = [Rule("tok_emb.weight", [f"{p}embed_tokens.weight"]), Rule("norm.weight", [f"{p}norm.weight"])]
    for i in range(cfg.n_layers):
        L, H = f"layers.{i}.", f"{p}layers.{i}."
        for s in ("weight", "bias") if cfg.bias else ("weight",):
            r += [
                Rule(f"{L}attn.qkv.{s}", [f"{H}self_attn.{x}_proj.{s}" for x in "qkv"], sizes=(a, kv, kv)),
                Rule(f"{L}attn.out.{s}", [f"{H}self_attn.o_proj.{s}"]),
                Rule(f"{L}mlp.fc_in.{s}", [f"{H}mlp.gate_proj.{s}", f"{H}mlp.up_proj.{s}"]),
                Rule(f"{L}mlp.fc_out.{s}", [f"{H}mlp.down_proj.{s}"]),
            ]
        r += [
            Rule(f"{L}attn_norm.weight", [f"{H}input_layernorm.weight"]),
            Rule(f"{L}mlp_norm.weight", [f"{H}post_attention_layernorm.weight"]),
        ]
    if not cfg.tie_embeddings:
        r.append(Rule("lm_head.weight", ["lm_head.weight"]))
    return r


def read(c: dict, keys: set[str], where: str) -> Imported:
    if bool(c.get("attention_bias", False)) != bool(c.get("mlp_bias", False)):
        raise CheckpointError(f"{where}: Llama with attention_bias != mlp_bias is not supported")
    d, heads = c["hidden_size"], c["num_attention_heads"]
    theta, fraction, scaling = rope_parameters(c, where)
    if fraction != 1.0:
        raise CheckpointError(f"{where}: Llama with partial_rotary_factor={fraction} is not supported")
    head_dim = c.get("head_dim") or d // heads
    kv = c.get("num_key_value_heads") or heads
    cfg = ModelConfig(
        family="decoder", vocab_size=c["vocab_size"], d_model=d, n_layers=c["num_hidden_layers"], n_heads=heads,
        n_kv_heads=None if kv == heads else kv, d_head=None if head_dim * heads == d else head_dim,
        d_ff=c["intermediate_size"], max_positions=c.get("max_position_embeddings", 2048), position="rope",
        rope_theta=theta, rope_scaling=scaling, activation=act(c.get("hidden_act", "silu"), where),
        gated_mlp=True, norm="rmsnorm", norm_position="pre", norm_eps=c.get("rms_norm_eps", 1e-6),
        bias=bool(c.get("attention_bias", False)), tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        dropout=0.0, attention_dropout=c.get("attention_dropout", 0.0) or 0.0,
        init_std=c.get("initializer_range", 0.02), pad_token_id=pad_id(c, c["vocab_size"]),
    )
    rules = llama_rules(cfg, prefix(keys, "model."))
    return Imported(cfg, rules, True, ["lm_head.weight"] if cfg.tie_embeddings else [])


def claims(cfg: ModelConfig) -> bool:
    return cfg.position == "rope" and cfg.norm == "rmsnorm" and cfg.gated_mlp and cfg.norm_position == "pre" \
        and not cfg.parallel_residual


def export(cfg: ModelConfig, base: dict) -> Exported:
    common = rope_decoder_keys(cfg, base)
    if cfg.rotary_fraction != 1.0:
        raise unsupported(cfg, "Llama rotates whole heads (model.rotary_fraction 1)")
    if cfg.activation not in ACT_OUT:
        raise unsupported(cfg, f"activation {cfg.activation!r}")
    name = "gelu_pytorch_tanh" if cfg.activation == "gelu_tanh" else ACT_OUT[cfg.activation]
    c = {**common, "model_type": "llama", "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
         "hidden_act": name, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
         "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "pretraining_tp": 1, **rope_config(cfg)}
    tied = ["lm_head.weight"] if cfg.tie_embeddings else []
    return Exported("LlamaForCausalLM", c, llama_rules(cfg, "model."), tied)


ADAPTER = HFAdapter("Llama", ("llama",), read, claims, export)
