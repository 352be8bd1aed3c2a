"""BERT (`BertForMaskedLM`, `BertForPreTraining`, and `BertModel` without its MLM head) <-> our encoder.

A `BertModel` checkpoint (e.g. all-MiniLM-L6-v2) imports with a freshly initialised MLM head; the
encoder, pooler and hidden states are exact.
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
    fixing_flags,
    prefix,
    unsupported,
)


def bert_rules(cfg: ModelConfig, p: str, head: bool) -> list[Rule]:
    r = [
        Rule("tok_emb.weight", [f"{p}embeddings.word_embeddings.weight"]),
        Rule("pos_emb.weight", [f"{p}embeddings.position_embeddings.weight"]),
        Rule("emb_norm.weight", [f"{p}embeddings.LayerNorm.weight"]),
        Rule("emb_norm.bias", [f"{p}embeddings.LayerNorm.bias"]),
    ]
    if cfg.type_vocab_size:
        r.append(Rule("seg_emb.weight", [f"{p}embeddings.token_type_embeddings.weight"]))
    for i in range(cfg.n_layers):
        L, H = f"layers.{i}.", f"{p}encoder.layer.{i}."
        for s in ("weight", "bias"):
            r += [
                Rule(f"{L}attn.qkv.{s}", [f"{H}attention.self.{n}.{s}" for n in ("query", "key", "value")]),
                Rule(f"{L}attn.out.{s}", [f"{H}attention.output.dense.{s}"]),
                Rule(f"{L}attn_norm.{s}", [f"{H}attention.output.LayerNorm.{s}"]),
                Rule(f"{L}mlp.fc_in.{s}", [f"{H}intermediate.dense.{s}"]),
                Rule(f"{L}mlp.fc_out.{s}", [f"{H}output.dense.{s}"]),
                Rule(f"{L}mlp_norm.{s}", [f"{H}output.LayerNorm.{s}"]),
            ]
    if cfg.pooler:
        r += [Rule(f"pooler.{s}", [f"{p}pooler.dense.{s}"]) for s in ("weight", "bias")]
    if head:
        r += [Rule("mlm.bias", ["cls.predictions.bias"])]
        if cfg.mlm_transform:
            for s in ("weight", "bias"):
                r += [
                    Rule(f"mlm.transform.{s}", [f"cls.predictions.transform.dense.{s}"]),
                    Rule(f"mlm.norm.{s}", [f"cls.predictions.transform.LayerNorm.{s}"]),
                ]
        if not cfg.tie_embeddings:
            r.append(Rule("mlm.decoder.weight", ["cls.predictions.decoder.weight"]))
    if cfg.nsp_head:
        r += [Rule(f"nsp.{s}", [f"cls.seq_relationship.{s}"]) for s in ("weight", "bias")]
    return r


def read(c: dict, keys: set[str], where: str) -> Imported:
    pos_type = c.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
        raise CheckpointError(f"{where}: BERT position_embedding_type={pos_type!r} is not supported (absolute only)")
    p = prefix(keys, "bert.")
    head = any(k.startswith("cls.predictions.") for k in keys)
    pooler = any(k.startswith(f"{p}pooler.") for k in keys)
    nsp = any(k.startswith("cls.seq_relationship.") for k in keys)
    cfg = ModelConfig(
        family="encoder", vocab_size=c["vocab_size"], d_model=c["hidden_size"], n_layers=c["num_hidden_layers"],
        n_heads=c["num_attention_heads"], d_ff=c["intermediate_size"],
        max_positions=c.get("max_position_embeddings", 512), position="learned",
        activation=act(c.get("hidden_act", "gelu"), where), norm="layernorm", norm_position="post",
        norm_eps=c.get("layer_norm_eps", 1e-12), bias=True,
        tie_embeddings=c.get("tie_word_embeddings", True) is not False,
        type_vocab_size=c.get("type_vocab_size", 2), embedding_norm=True, mlm_transform=True,
        pooler=pooler, nsp_head=nsp and pooler,
        dropout=c.get("hidden_dropout_prob", 0.1), attention_dropout=c.get("attention_probs_dropout_prob", 0.1),
        init_std=c.get("initializer_range", 0.02), pad_token_id=c.get("pad_token_id") or 0,
    )
    extras = ["cls.predictions.decoder.weight"] if cfg.tie_embeddings else []
    return Imported(cfg, bert_rules(cfg, p, head), head, extras)


def export(cfg: ModelConfig, base: dict) -> Exported:
    if cfg.position != "learned" or cfg.norm != "layernorm" or cfg.norm_position != "post" \
            or not cfg.bias or cfg.gated_mlp or not cfg.embedding_norm or not cfg.mlm_transform \
            or cfg.embedding_scale or cfg.d_head not in (None, cfg.d_model // cfg.n_heads):
        wanted = {"position": "learned", "norm": "layernorm", "norm_position": "post", "bias": True,
                  "gated_mlp": False, "embedding_norm": True, "mlm_transform": True, "embedding_scale": False}
        raise unsupported(cfg, "BERT export needs learned positions, post-LN LayerNorm, biases, "
                          "embedding norm and the MLM transform" + fixing_flags(cfg, wanted))
    arch = "BertForPreTraining" if cfg.nsp_head else "BertForMaskedLM"
    c = {**base, "model_type": "bert", "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
         "num_attention_heads": cfg.n_heads, "intermediate_size": cfg.ffn_dim,
         "hidden_act": ACT_OUT[cfg.activation], "max_position_embeddings": cfg.max_positions,
         "type_vocab_size": cfg.type_vocab_size or 1, "layer_norm_eps": cfg.norm_eps,
         "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attention_dropout,
         "initializer_range": cfg.init_std, "position_embedding_type": "absolute"}
    # transformers keeps the MLM output bias twice (the head's and its decoder's)
    rules = bert_rules(cfg, "bert.", head=True) + [Rule("mlm.bias", ["cls.predictions.decoder.bias"])]
    tied = ["cls.predictions.decoder.weight"] if cfg.tie_embeddings else []
    return Exported(arch, c, rules, tied)


ADAPTER = HFAdapter("BERT", ("bert",), read, lambda cfg: True, export)
