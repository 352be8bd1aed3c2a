"""GPT-2 (`GPT2LMHeadModel`) <-> our pre-LN decoder with learned positions.

The GPT rule table (Conv1D weights stored [in, out], hence transposed) serves GPT-1 too.
"""
from __future__ import annotations

from lmscale.config import ModelConfig
from lmscale.errors import CheckpointError
from lmscale.models.hf.common import ACT_OUT, Exported, HFAdapter, Imported, Rule, act, prefix, unsupported


def gpt_rules(cfg: ModelConfig, p: str, gpt1: bool) -> list[Rule]:
    wte, wpe = ("tokens_embed", "positions_embed") if gpt1 else ("wte", "wpe")
    r = [Rule("tok_emb.weight", [f"{p}{wte}.weight"]), Rule("pos_emb.weight", [f"{p}{wpe}.weight"])]
    for i in range(cfg.n_layers):
        L, H = f"layers.{i}.", f"{p}h.{i}."
        for s in ("weight", "bias"):
            t = s == "weight"
            r += [
                Rule(f"{L}attn_norm.{s}", [f"{H}ln_1.{s}"]),
                Rule(f"{L}attn.qkv.{s}", [f"{H}attn.c_attn.{s}"], t),
                Rule(f"{L}attn.out.{s}", [f"{H}attn.c_proj.{s}"], t),
                Rule(f"{L}mlp_norm.{s}", [f"{H}ln_2.{s}"]),
                Rule(f"{L}mlp.fc_in.{s}", [f"{H}mlp.c_fc.{s}"], t),
                Rule(f"{L}mlp.fc_out.{s}", [f"{H}mlp.c_proj.{s}"], t),
            ]
    if not gpt1:
        r += [Rule(f"norm.{s}", [f"{p}ln_f.{s}"]) for s in ("weight", "bias")]
    if not cfg.tie_embeddings:
        r.append(Rule("lm_head.weight", ["lm_head.weight"]))
    return r


def gpt_config(c: dict, keys: set[str], where: str, gpt1: bool) -> Imported:
    """GPT-1 and GPT-2 configs differ in the norm position, the activation key and the final norm."""
    p = prefix(keys, "transformer.")
    vocab = c["vocab_size"]
    pad = c.get("pad_token_id")
    if pad is None:
        pad = c.get("eos_token_id")
    pad = pad if isinstance(pad, int) and 0 <= pad < vocab else 0
    name = c.get("afn", "gelu") if gpt1 else c.get("activation_function", "gelu_new")
    if gpt1 and name == "gelu":
        name = "gelu_new"  # OpenAI GPT's "gelu" is the tanh approximation
    cfg = ModelConfig(
        family="decoder", vocab_size=vocab, d_model=c["n_embd"], n_layers=c["n_layer"], n_heads=c["n_head"],
        d_ff=c.get("n_inner") or 4 * c["n_embd"], max_positions=c["n_positions"], position="learned",
        activation=act(name, where), norm="layernorm", norm_position="post" if gpt1 else "pre",
        norm_eps=c.get("layer_norm_epsilon", 1e-5), bias=True,
        tie_embeddings=c.get("tie_word_embeddings", True) is not False,
        dropout=c.get("resid_pdrop", 0.1), attention_dropout=c.get("attn_pdrop", 0.1),
        init_std=c.get("initializer_range", 0.02), pad_token_id=pad,
    )
    return Imported(cfg, gpt_rules(cfg, p, gpt1), True, ["lm_head.weight"] if cfg.tie_embeddings else [])


def check_gpt_export(cfg: ModelConfig) -> None:
    if cfg.position != "learned" or cfg.norm != "layernorm" or not cfg.bias or cfg.gated_mlp \
            or cfg.embedding_scale or cfg.d_head not in (None, cfg.d_model // cfg.n_heads) \
            or cfg.kv_heads != cfg.n_heads or cfg.parallel_residual:
        raise unsupported(cfg, "GPT-2/GPT export needs learned positions, LayerNorm, biases, a plain MLP "
                          "(or RoPE, for Llama and GPT-NeoX)")


def read(c: dict, keys: set[str], where: str) -> Imported:
    if c.get("scale_attn_by_inverse_layer_idx") or c.get("scale_attn_weights", True) is False:
        raise CheckpointError(f"{where}: GPT-2 attention-scaling variants are not supported")
    if c.get("add_cross_attention"):
        raise CheckpointError(f"{where}: GPT-2 with cross-attention is not supported")
    return gpt_config(c, keys, where, gpt1=False)


def export(cfg: ModelConfig, base: dict) -> Exported:
    check_gpt_export(cfg)
    c = {**base, "model_type": "gpt2", "n_embd": cfg.d_model, "n_layer": cfg.n_layers,
         "n_head": cfg.n_heads, "n_inner": cfg.ffn_dim, "n_positions": cfg.max_positions,
         "activation_function": ACT_OUT[cfg.activation], "layer_norm_epsilon": cfg.norm_eps,
         "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.attention_dropout,
         "initializer_range": cfg.init_std, "bos_token_id": cfg.pad_token_id,
         "eos_token_id": cfg.pad_token_id}
    tied = ["lm_head.weight"] if cfg.tie_embeddings else []
    return Exported("GPT2LMHeadModel", c, gpt_rules(cfg, "transformer.", gpt1=False), tied)


ADAPTER = HFAdapter("GPT-2", ("gpt2",), read,
                    lambda cfg: cfg.position != "rope" and cfg.norm_position == "pre", export)
