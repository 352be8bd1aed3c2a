"""What every `transformers` architecture shares: the tensor-name rules, the adapter record each
architecture module fills in, activation names, RoPE settings, and reading weights and tokenizers."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer as Backend
from tokenizers.implementations import BertWordPieceTokenizer

from lmscale.config import ModelConfig
from lmscale.errors import CheckpointError, one_line
from lmscale.io import atomic_write_json, atomic_write_text, read_json_file
from lmscale.models.serialization import CONFIG_FILE, FORMAT
from lmscale.tokenization import Tokenizer

ACT_IN = {
    "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "relu": "relu", "silu": "silu", "swish": "silu",
}
ACT_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


@dataclass
class Rule:
    """One of our tensors and the `transformers` tensors it is made of; drives both directions."""

    ours: str
    hf: list[str]
    transpose: bool = False  # GPT Conv1D stores [in, out]
    sizes: Optional[tuple[int, ...]] = None  # rows of each part when they differ (grouped-query q|k|v)
    heads: int = 0  # GPT-NeoX: q|k|v interleaved per head ([H, 3, d_head] rows); ours is [3, H, d_head]


@dataclass
class Imported:
    """A checkpoint read as ours: the config, the rules, whether it has its LM head (a `BertModel`
    does not) and the tied copies it may carry besides the rules' tensors."""

    cfg: ModelConfig
    rules: list[Rule]
    has_head: bool = True
    tied_extras: list[str] = field(default_factory=list)


@dataclass
class Exported:
    """How a model leaves: the architecture name, its config.json, the rules, and the tied tensors
    `transformers` leaves out of the file (they are not written)."""

    architecture: str
    config: dict
    rules: list[Rule]
    tied: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class HFAdapter:
    """One `transformers` architecture: which `model_type`s it reads, and which of our configs it
    writes (`claims`; `export` still refuses a claimed config it cannot express, with the reason)."""

    name: str  # for messages: "GPT-2"
    model_types: tuple[str, ...]
    read: Callable[[dict, set[str], str], Imported]  # (config.json, tensor names, where) -> Imported
    claims: Callable[[ModelConfig], bool]
    export: Callable[[ModelConfig, dict], Exported]  # (config, shared config.json keys) -> Exported


def neox_qkv(t: torch.Tensor, heads: int, to_ours: bool) -> torch.Tensor:
    """Regroup fused q|k|v rows between GPT-NeoX's per-head order and ours (weight or bias)."""
    shape = (heads, 3) if to_ours else (3, heads)
    return t.reshape(*shape, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def act(name: str, where: str) -> str:
    if name not in ACT_IN:
        raise CheckpointError(f"{where}: activation {name!r} is not supported (use one of {', '.join(ACT_IN)})")
    return ACT_IN[name]


def unsupported(cfg: ModelConfig, why: str) -> CheckpointError:
    return CheckpointError(f"no transformers architecture matches this {cfg.family} model: {why}")


def fixing_flags(cfg: ModelConfig, wanted: dict[str, Any]) -> str:
    """The pretraining flags (`--model.norm_position post ...`) that give `cfg` the `wanted`
    values: an architecture is fixed when the model is trained, so that is where to change it."""
    def show(v: Any) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)

    flags = [f"--model.{k} {show(v)}" for k, v in wanted.items() if getattr(cfg, k) != v]
    if cfg.d_head not in (None, cfg.d_model // cfg.n_heads):
        flags.append("--model.d_head null")
    return ("; pretrain with " + " ".join(flags) + " to get a model that exports") if flags else ""


def prefix(keys: set[str], p: str) -> str:
    """`p` when the checkpoint's tensor names start with it (a model with a head), else ''."""
    return p if any(k.startswith(p) for k in keys) else ""


def pad_id(c: dict, vocab: int) -> int:
    pad = c.get("pad_token_id")
    if pad is None:
        pad = c.get("eos_token_id")
    if isinstance(pad, list):
        pad = pad[0] if pad else None
    return pad if isinstance(pad, int) and 0 <= pad < vocab else 0


def rope_parameters(c: dict, where: str, theta_key: str = "rope_theta",
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


def rope_config(cfg: ModelConfig) -> dict[str, Any]:
    """RoPE keys in the style both transformers 4 and 5 read (5 moves them into rope_parameters)."""
    out: dict[str, Any] = {}
    if cfg.rope_scaling:
        out["rope_scaling"] = {"rope_type": cfg.rope_type,
                               **{k: v for k, v in cfg.rope_scaling.items() if k not in ("rope_type", "type")}}
    return out


def rope_decoder_keys(cfg: ModelConfig, base: dict) -> dict[str, Any]:
    """config.json keys Llama and GPT-NeoX share."""
    if cfg.embedding_scale:
        raise unsupported(cfg, "no transformers decoder scales its embeddings by sqrt(d_model)")
    return {**base, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads, "intermediate_size": cfg.ffn_dim,
            "max_position_embeddings": cfg.max_positions, "initializer_range": cfg.init_std,
            "attention_dropout": cfg.attention_dropout, "bos_token_id": cfg.pad_token_id,
            "eos_token_id": cfg.pad_token_id}


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


def read_hf_weights(d: Path) -> dict[str, torch.Tensor]:
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


def normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


def apply_rules(rules: list[Rule], hf: dict[str, torch.Tensor], tied_extras: list[str]) -> tuple[dict, list, list]:
    """-> (our tensors, missing transformers names, unexpected transformers names)."""
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
        ours[rule.ours] = (neox_qkv(t, rule.heads, to_ours=True) if rule.heads else t).contiguous()
        used.update(rule.hf)
    unexpected = sorted(k for k in hf if k not in used and k not in tied_extras and not _IGNORABLE.search(k))
    return ours, missing, unexpected


def hf_shapes(rules: list[Rule], ours: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The shape of each `transformers` tensor of `rules`, given the shapes of ours (what
    `export_rules` writes): a checkpoint's tensor of another shape is named before any is joined."""
    out: dict[str, tuple[int, ...]] = {}
    for rule in rules:
        if rule.ours not in ours:
            continue
        shape = tuple(ours[rule.ours])
        if len(rule.hf) == 1:
            parts = [shape]
        else:
            rows = rule.sizes or (shape[0] // len(rule.hf),) * len(rule.hf)
            parts = [(r, *shape[1:]) for r in rows]
        for name, part in zip(rule.hf, parts):
            out[name] = part[::-1] if rule.transpose and len(part) == 2 else part
    return out


def export_rules(rules: list[Rule], ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our tensors under their `transformers` names (split, transposed, regrouped as the rules say)."""
    out: dict[str, torch.Tensor] = {}
    for rule in rules:
        t = ours[rule.ours].detach().cpu()
        if rule.heads:
            t = neox_qkv(t, rule.heads, to_ours=False)
        if rule.sizes is not None:
            parts = list(t.split(list(rule.sizes), 0))
        else:
            parts = t.chunk(len(rule.hf), 0) if len(rule.hf) > 1 else [t]
        for name, part in zip(rule.hf, parts):
            out[name] = (part.t() if rule.transpose and part.dim() == 2 else part).contiguous().clone()
    return out


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
            lower = bool(read_json_file(tc, what="tokenizer config").get("do_lower_case", True))
        try:
            impl = BertWordPieceTokenizer(str(d / "vocab.txt"), lowercase=lower)
        except Exception as exc:  # the Rust reader's error for a binary or malformed file
            raise CheckpointError(f"{d / 'vocab.txt'}: not a WordPiece vocabulary ({one_line(exc)})") from None
        return Tokenizer(impl._tokenizer, kind="wordpiece")
    return None


def write_hf_tokenizer(tok: Any, d: Path, cfg: ModelConfig) -> None:
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
