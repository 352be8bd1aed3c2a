"""GPT-1 (`OpenAIGPTLMHeadModel`) <-> our post-LN decoder with learned positions (no final norm)."""
from __future__ import annotations

from lmscale.config import ModelConfig
from lmscale.models.hf.common import Exported, HFAdapter, Imported, unsupported
from lmscale.models.hf.gpt2 import check_gpt_export, gpt_config, gpt_rules


def read(c: dict, keys: set[str], where: str) -> Imported:
    return gpt_config(c, keys, where, gpt1=True)


def export(cfg: ModelConfig, base: dict) -> Exported:
    check_gpt_export(cfg)
    if cfg.activation == "gelu" or cfg.ffn_dim != 4 * cfg.d_model:
        raise unsupported(cfg, "OpenAI GPT uses the tanh GELU and d_ff = 4 d_model")
    afn = {"gelu_tanh": "gelu", "relu": "relu", "silu": "silu"}[cfg.activation]
    c = {**base, "model_type": "openai-gpt", "n_embd": cfg.d_model, "n_layer": cfg.n_layers,
         "n_head": cfg.n_heads, "n_positions": cfg.max_positions, "afn": afn,
         "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
         "attn_pdrop": cfg.attention_dropout, "initializer_range": cfg.init_std}
    tied = ["lm_head.weight"] if cfg.tie_embeddings else []
    return Exported("OpenAIGPTLMHeadModel", c, gpt_rules(cfg, "transformer.", gpt1=True), tied)


ADAPTER = HFAdapter("GPT-1", ("openai-gpt", "openai_gpt"), read,
                    lambda cfg: cfg.position != "rope" and cfg.norm_position == "post", export)
