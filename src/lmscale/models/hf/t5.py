"""T5 (`T5ForConditionalGeneration`, v1.0 and v1.1) <-> our encoder-decoder with relative positions.

`transformers` 5 writes a v1.1-style model built with `T5Config(tie_word_embeddings=False)` as a
tied head without the v1.0 output scaling (`tie_word_embeddings: true`, `scale_decoder_outputs:
false`); it imports as exactly that (`model.scale_output: false`), and such a model exports with an
untied copy of the embedding as its head, which `transformers` 4 and 5 both read as the same function.
"""
from __future__ import annotations

from lmscale.config import ModelConfig
from lmscale.models.hf.common import ACT_OUT, Exported, HFAdapter, Imported, Rule, act, unsupported


def t5_rules(cfg: ModelConfig) -> list[Rule]:
    r = [Rule("tok_emb.weight", ["shared.weight"])]
    wi = ["wi_0", "wi_1"] if cfg.gated_mlp else ["wi"]
    for side, n in (("encoder", cfg.n_layers), ("decoder", cfg.decoder_layers)):
        r.append(Rule(f"{side}.rel_bias.embedding.weight",
                      [f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]))
        r.append(Rule(f"{side}.norm.weight", [f"{side}.final_layer_norm.weight"]))
        for i in range(n):
            L, H = f"{side}.layers.{i}.", f"{side}.block.{i}.layer."
            ff = 2 if side == "decoder" else 1
            r += [
                Rule(f"{L}attn.qkv.weight", [f"{H}0.SelfAttention.{x}.weight" for x in "qkv"]),
                Rule(f"{L}attn.out.weight", [f"{H}0.SelfAttention.o.weight"]),
                Rule(f"{L}attn_norm.weight", [f"{H}0.layer_norm.weight"]),
                Rule(f"{L}mlp.fc_in.weight", [f"{H}{ff}.DenseReluDense.{w}.weight" for w in wi]),
                Rule(f"{L}mlp.fc_out.weight", [f"{H}{ff}.DenseReluDense.wo.weight"]),
                Rule(f"{L}mlp_norm.weight", [f"{H}{ff}.layer_norm.weight"]),
            ]
            if side == "decoder":
                r += [
                    Rule(f"{L}cross.q.weight", [f"{H}1.EncDecAttention.q.weight"]),
                    Rule(f"{L}cross.kv.weight", [f"{H}1.EncDecAttention.{x}.weight" for x in "kv"]),
                    Rule(f"{L}cross.out.weight", [f"{H}1.EncDecAttention.o.weight"]),
                    Rule(f"{L}cross_norm.weight", [f"{H}1.layer_norm.weight"]),
                ]
    if not cfg.tie_embeddings:
        r.append(Rule("lm_head.weight", ["lm_head.weight"]))
    return r


def read(c: dict, keys: set[str], where: str) -> Imported:
    proj = c.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    gated = parts[0] == "gated"
    name = "gelu_new" if proj == "gated-gelu" else parts[-1]
    # transformers 4 ties the head and scales the output when tie_word_embeddings is true (v1.0) and
    # unties it without scaling when false (v1.1); transformers 5 always ties and says whether it
    # scales in scale_decoder_outputs (a separate lm_head.weight in the file still unties it)
    tied = c.get("tie_word_embeddings", True) is not False
    scale = bool(c.get("scale_decoder_outputs", tied))
    pad = c.get("pad_token_id", 0) or 0
    start = c.get("decoder_start_token_id")
    cfg = ModelConfig(
        family="encoder-decoder", vocab_size=c["vocab_size"], d_model=c["d_model"], n_layers=c["num_layers"],
        n_decoder_layers=c.get("num_decoder_layers") or c["num_layers"], n_heads=c["num_heads"],
        d_head=c["d_kv"], d_ff=c["d_ff"], max_positions=c.get("n_positions", 512), position="relative",
        relative_buckets=c.get("relative_attention_num_buckets", 32),
        relative_max_distance=c.get("relative_attention_max_distance", 128),
        activation=act(name, where), gated_mlp=gated, norm="rmsnorm", norm_position="pre",
        norm_eps=c.get("layer_norm_epsilon", 1e-6), bias=False, tie_embeddings=tied,
        scale_output=None if scale == tied else scale, dropout=c.get("dropout_rate", 0.1),
        attention_dropout=c.get("dropout_rate", 0.1),
        init_std=c.get("initializer_factor", 1.0) * 0.05, pad_token_id=pad,
        decoder_start_token_id=pad if start is None else start,
    )
    return Imported(cfg, t5_rules(cfg), True, ["lm_head.weight"] if cfg.tie_embeddings else [])


def export(cfg: ModelConfig, base: dict) -> Exported:
    if cfg.position != "relative" or cfg.norm != "rmsnorm" or cfg.norm_position != "pre" or cfg.bias \
            or cfg.embedding_scale or cfg.kv_heads != cfg.n_heads:
        raise unsupported(cfg, "T5 export needs relative positions, pre-LN RMSNorm and no biases")
    if cfg.output_scaled and not cfg.tie_embeddings:
        raise unsupported(cfg, "T5 scales the decoder output only before a tied head")
    name = ACT_OUT[cfg.activation]
    if cfg.gated_mlp:
        proj = "gated-gelu" if cfg.activation == "gelu_tanh" else f"gated-{name}"
    else:
        if cfg.activation == "gelu_tanh":
            raise unsupported(cfg, "T5's ungated MLP has no tanh-GELU option")
        proj = name
    # a tied head without the output scaling is written as an untied copy (tie_word_embeddings false):
    # transformers 4 then neither ties nor scales, and transformers 5 does not scale
    untied = not cfg.tie_embeddings or not cfg.output_scaled
    c = {**base, "tie_word_embeddings": not untied, "model_type": "t5", "d_model": cfg.d_model,
         "d_kv": cfg.head_dim, "d_ff": cfg.ffn_dim, "num_layers": cfg.n_layers,
         "num_decoder_layers": cfg.decoder_layers, "num_heads": cfg.n_heads,
         "relative_attention_num_buckets": cfg.relative_buckets,
         "relative_attention_max_distance": cfg.relative_max_distance, "dropout_rate": cfg.dropout,
         "layer_norm_epsilon": cfg.norm_eps, "feed_forward_proj": proj, "is_encoder_decoder": True,
         "decoder_start_token_id": cfg.decoder_start_token_id, "eos_token_id": 1 if cfg.vocab_size > 1 else 0,
         "initializer_factor": 1.0}
    if untied:
        c["scale_decoder_outputs"] = False
    rules = t5_rules(cfg)
    if cfg.tie_embeddings and untied:
        rules.append(Rule("tok_emb.weight", ["lm_head.weight"]))
    return Exported("T5ForConditionalGeneration", c, rules,
                    ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"])


ADAPTER = HFAdapter("T5", ("t5",), read, lambda cfg: True, export)
