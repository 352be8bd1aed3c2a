"""Typed configuration: dataclasses, YAML presets and `--section.key value` overrides.

Configs are validated when built, so a bad combination fails before any work starts, with a
message that says what to change.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

from lmscale.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"

FAMILIES = ("encoder", "decoder", "encoder-decoder")
POSITIONS = ("learned", "sinusoidal", "rope", "relative", "none")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
TOKENIZER_KINDS = ("bpe", "wordpiece", "unigram")
SCHEDULES = ("cosine", "linear", "wsd", "constant")
TRACKERS = ("tensorboard", "wandb", "mlflow")  # train.report_to
# the train keys that say where a run is reported, not how it trains
TRACKER_KEYS = ("report_to", "tracker_project", "tracker_run_name", "tracker_group", "tracker_params")
# RoPE scaling variants (`model.rope_scaling`, written as transformers writes `rope_scaling`): each
# type with the keys it needs (beyond "rope_type") and the keys it may have
ROPE_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "default": ((), ()),
    "linear": (("factor",), ()),  # position interpolation (Chen et al. 2023)
    "llama3": (("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"), ()),
    "yarn": (("factor",), ("original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow",
                           "mscale", "mscale_all_dim", "truncate")),  # Peng et al. 2023
}
FAMILY_TOKENIZER = {"encoder": "wordpiece", "decoder": "bpe", "encoder-decoder": "unigram"}
FAMILY_OBJECTIVE = {"encoder": "mlm", "decoder": "causal", "encoder-decoder": "span"}
# parameters counted as embedding (Kaplan et al. 2020); `ModelConfig.parameter_breakdown` names them
EMBEDDING_PARTS = ("token_embedding", "position_embedding", "segment_embedding", "output_projection")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        near = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}{hint}")


def _positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be a positive (finite) number")


def _finite(section: str, cfg: Any) -> None:
    """Every float field of a config section is a finite number (NaN and infinities are refused)."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{section}.{f.name}={v!r} must be a finite number")


def _in_range(name: str, value: Any, lo: float, hi: float = math.inf, lo_open: bool = False,
              hi_open: bool = False, allow_none: bool = False) -> None:
    """`value` within [lo, hi] (an open end excluded); the message states the range."""
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        lo_s, hi_s = ("(" if lo_open else "[") + f"{lo:g}", ("inf)" if hi == math.inf else f"{hi:g}" + (
            ")" if hi_open else "]"))
        raise ConfigError(f"{name}={value!r} must be in {lo_s}, {hi_s}")


@dataclass
class ModelConfig:
    """Shape of a transformer. One dataclass describes all three families.

    Parameter-bearing choices (what exists as a tensor) are all here, so parameters and FLOPs can
    be counted from the config alone, without building the model.
    """

    family: str = "decoder"  # encoder | decoder | encoder-decoder
    vocab_size: int = 8192
    d_model: int = 128
    n_layers: int = 4  # encoder layers for encoder-decoders
    n_decoder_layers: Optional[int] = None  # encoder-decoder only; default n_layers
    n_heads: int = 4
    d_head: Optional[int] = None  # default d_model // n_heads; attention width = n_heads * d_head
    d_ff: Optional[int] = None  # default 4 * d_model
    max_positions: int = 128  # context length the position scheme supports (n_ctx)
    position: str = "learned"  # learned | sinusoidal | rope | relative (T5 bias) | none
    relative_buckets: int = 32
    relative_max_distance: int = 128
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict[str, Any]] = None  # RoPE frequency scaling, in transformers' terms (see ROPE_TYPES)
    rotary_fraction: float = 1.0  # share of each head's dimensions RoPE rotates (GPT-NeoX / Pythia: 0.25)
    n_kv_heads: Optional[int] = None  # grouped-query attention: key/value heads (default n_heads; 1 = multi-query)
    parallel_residual: bool = False  # x + attn(norm(x)) + mlp(norm'(x)) (GPT-J, GPT-NeoX / Pythia); pre-LN only
    activation: str = "gelu"  # gelu | gelu_tanh | relu | silu
    gated_mlp: bool = False  # GEGLU (gelu) / SwiGLU (silu) / ReGLU (relu)
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_position: str = "pre"  # pre (GPT-2, T5) | post (BERT, GPT-1, original Transformer)
    norm_eps: float = 1e-5
    bias: bool = True  # biases in attention/MLP projections and norms
    tie_embeddings: bool = True  # output projection shares the input embedding
    scale_output: Optional[bool] = None  # encoder-decoder: decoder output times d_model**-0.5 before the head
    # (T5 v1.0); default: on for a tied head with relative positions
    type_vocab_size: int = 0  # BERT segment embeddings (2); 0 = none
    embedding_norm: bool = False  # LayerNorm right after the embeddings (BERT)
    embedding_scale: bool = False  # multiply embeddings by sqrt(d_model) (original Transformer)
    mlm_transform: bool = True  # encoder MLM head: dense + activation + norm before the decoder
    pooler: bool = False  # encoder pooler (dense + tanh on [CLS])
    nsp_head: bool = False  # next-sentence-prediction classifier (needs pooler)
    dropout: float = 0.0
    attention_dropout: float = 0.0
    init_std: float = 0.02
    pad_token_id: int = 0
    decoder_start_token_id: Optional[int] = None  # encoder-decoder; default pad_token_id

    def __post_init__(self) -> None:
        _finite("model", self)
        for name in ("rope_theta", "norm_eps", "init_std"):
            _in_range(f"model.{name}", getattr(self, name), 0.0, lo_open=True)
        for name in ("relative_buckets", "relative_max_distance"):
            _in_range(f"model.{name}", getattr(self, name), 1)
        _in_range("model.type_vocab_size", self.type_vocab_size, 0)
        _in_range("model.pad_token_id", self.pad_token_id, 0)
        _choice("model.family", self.family, FAMILIES)
        _choice("model.position", self.position, POSITIONS)
        _choice("model.activation", self.activation, ACTIVATIONS)
        _choice("model.norm", self.norm, NORMS)
        _choice("model.norm_position", self.norm_position, NORM_POSITIONS)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_positions"):
            _positive(f"model.{name}", getattr(self, name))
        _positive("model.d_head", self.d_head, allow_none=True)
        _positive("model.d_ff", self.d_ff, allow_none=True)
        if self.d_head is None and self.d_model % self.n_heads != 0:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: "
                f"change one of them, or set model.d_head explicitly"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head dimension, got d_head={self.head_dim}")
        self._check_rope()
        _positive("model.n_kv_heads", self.n_kv_heads, allow_none=True)
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"model.n_kv_heads={self.n_kv_heads} must divide model.n_heads={self.n_heads} "
                "(each key/value head serves a group of query heads)"
            )
        if self.parallel_residual and (self.norm_position != "pre" or self.family == "encoder-decoder"):
            raise ConfigError(
                "model.parallel_residual needs pre-LN (model.norm_position=pre) and no cross-attention "
                "(family decoder or encoder)"
            )
        if self.scale_output is not None and self.family != "encoder-decoder":
            raise ConfigError(f"model.scale_output is for encoder-decoders (family={self.family}); leave it null")
        if self.family != "encoder-decoder" and self.n_decoder_layers is not None:
            raise ConfigError(
                f"model.n_decoder_layers is only for encoder-decoders (family={self.family}); "
                "use model.n_layers"
            )
        if self.family == "encoder-decoder":
            if self.n_decoder_layers is None:
                self.n_decoder_layers = self.n_layers
            if self.decoder_start_token_id is None:
                self.decoder_start_token_id = self.pad_token_id
        if self.family != "encoder":
            for name in ("pooler", "nsp_head"):
                if getattr(self, name):
                    raise ConfigError(f"model.{name} is an encoder feature (family={self.family})")
            if self.type_vocab_size:
                raise ConfigError(
                    f"model.type_vocab_size={self.type_vocab_size} (segment embeddings) is an "
                    "encoder feature; set it to 0"
                )
        if self.nsp_head and not self.pooler:
            raise ConfigError("model.nsp_head needs model.pooler=true (NSP classifies the pooled [CLS])")
        if self.position == "relative" and self.family == "decoder" and self.norm_position == "post":
            raise ConfigError("relative position bias with post-LN decoders is not supported; use pre")
        for name in ("dropout", "attention_dropout"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"model.{name}={v} must be in [0, 1)")

    def _check_rope(self) -> None:
        if not isinstance(self.rotary_fraction, (int, float)) or not 0.0 < self.rotary_fraction <= 1.0:
            raise ConfigError(f"model.rotary_fraction={self.rotary_fraction!r} must be in (0, 1]")
        if self.position == "rope" and (self.rotary_dim < 2 or self.rotary_dim % 2):
            raise ConfigError(
                f"RoPE rotates int(d_head * rotary_fraction) = {self.rotary_dim} dimensions of each head; "
                "that must be an even number of at least 2"
            )
        rs = self.rope_scaling
        if rs is None:
            return
        if not isinstance(rs, dict):
            raise ConfigError(f"model.rope_scaling={rs!r} must be a mapping like {{rope_type: linear, factor: 4}}")
        kind = rs.get("rope_type", rs.get("type"))
        if kind not in ROPE_TYPES:
            raise ConfigError(
                f"model.rope_scaling rope_type={kind!r} is not supported; supported: {', '.join(ROPE_TYPES)}"
            )
        need, may = ROPE_TYPES[kind]
        known = {"rope_type", "type", *need, *may}
        missing = [k for k in need if rs.get(k) is None]
        unknown = sorted(set(rs) - known)
        if missing or unknown:
            parts = ([f"needs {', '.join(missing)}"] if missing else []) + (
                [f"has unknown keys {', '.join(unknown)}"] if unknown else [])
            raise ConfigError(f"model.rope_scaling ({kind}) " + " and ".join(parts))
        if self.position != "rope":
            raise ConfigError(f"model.rope_scaling applies to RoPE; model.position is {self.position!r}")
        if kind != "default" and not (isinstance(rs["factor"], (int, float)) and rs["factor"] > 0):
            raise ConfigError(f"model.rope_scaling factor={rs['factor']!r} must be a positive number")

    @property
    def rope_type(self) -> str:
        """The RoPE variant: `default` (plain), or the `rope_scaling` type (linear, llama3, yarn)."""
        if not self.rope_scaling:
            return "default"
        return str(self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default")))

    @property
    def rotary_dim(self) -> int:
        """Dimensions of each head that RoPE rotates (the first ones; the rest pass through)."""
        return int(self.head_dim * self.rotary_fraction)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def kv_dim(self) -> int:
        """Width of the self-attention keys (and values): kv_heads * head_dim."""
        return self.kv_heads * self.head_dim

    @property
    def output_scaled(self) -> bool:
        """Whether an encoder-decoder multiplies its decoder output by d_model**-0.5 before the head."""
        if self.family != "encoder-decoder":
            return False
        if self.scale_output is not None:
            return bool(self.scale_output)
        return self.tie_embeddings and self.position == "relative"

    @property
    def head_dim(self) -> int:
        return self.d_head if self.d_head is not None else self.d_model // self.n_heads

    @property
    def attn_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def ffn_dim(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layers if self.n_decoder_layers is not None else self.n_layers

    @property
    def total_layers(self) -> int:
        """Layers of every stack: both the encoder's and the decoder's for an encoder-decoder."""
        return self.n_layers + (self.decoder_layers if self.family == "encoder-decoder" else 0)

    # ------------------------------------------------------------------------- parameters and FLOPs
    # Exact counts from the config alone, following `lmscale.models` (and so the `transformers`
    # reference implementations); `lmscale.scaling.counting` adds the other FLOP conventions.

    def _norm_params(self) -> int:
        return 2 * self.d_model if self.norm == "layernorm" else self.d_model

    def _attention_params(self, kv: Optional[int] = None) -> int:
        """q and output projections of width attn_dim, k and v of width `kv` (default attn_dim)."""
        d, a = self.d_model, self.attn_dim
        kv = a if kv is None else kv
        return 2 * d * a + 2 * d * kv + ((a + 2 * kv + d) if self.bias else 0)

    def _mlp_params(self) -> int:
        d, f = self.d_model, self.ffn_dim
        n_in = 2 if self.gated_mlp else 1
        return n_in * d * f + f * d + ((n_in * f + d) if self.bias else 0)

    def _stack_params(self, n_layers: int, cross_attention: bool) -> int:
        # grouped-query attention narrows self-attention's keys and values; cross-attention keeps all heads
        per_layer = self._attention_params(self.kv_dim) + self._mlp_params() + 2 * self._norm_params()
        if cross_attention:
            per_layer += self._attention_params() + self._norm_params()
        total = n_layers * per_layer
        if self.norm_position == "pre":
            total += self._norm_params()
        if self.position == "relative":
            total += self.relative_buckets * self.n_heads
        return total

    def parameter_breakdown(self) -> dict[str, int]:
        """Parameters by component: token/position/segment embeddings, each stack, the heads."""
        d, v = self.d_model, self.vocab_size
        encoder = self.family == "encoder"
        n_stacks = 2 if self.family == "encoder-decoder" else 1
        out: dict[str, int] = {
            "token_embedding": v * d,
            "position_embedding": n_stacks * self.max_positions * d if self.position == "learned" else 0,
            "segment_embedding": self.type_vocab_size * d if encoder else 0,
            "embedding_norm": self._norm_params() if (self.embedding_norm and encoder) else 0,
        }
        if self.family == "encoder-decoder":
            out["encoder"] = self._stack_params(self.n_layers, cross_attention=False)
            out["decoder"] = self._stack_params(self.decoder_layers, cross_attention=True)
        elif encoder:
            out["encoder"] = self._stack_params(self.n_layers, cross_attention=False)
        else:
            out["decoder"] = self._stack_params(self.n_layers, cross_attention=False)
        out["output_projection"] = 0 if self.tie_embeddings else v * d
        if encoder:
            out["mlm_transform"] = (d * d + d + self._norm_params()) if self.mlm_transform else 0
            out["mlm_output_bias"] = v
            out["pooler"] = d * d + d if self.pooler else 0
            out["nsp_head"] = 2 * d + 2 if self.nsp_head else 0
        return out

    def parameter_counts(self) -> dict[str, int]:
        """`{"total", "embedding", "non_embedding"}`, split as Kaplan et al. 2020 do: `embedding` =
        token + learned position + segment embeddings + an untied output projection, everything
        else non-embedding (the split a built model's `num_parameters()` reports)."""
        parts = self.parameter_breakdown()
        embedding = sum(parts[k] for k in EMBEDDING_PARTS)
        total = sum(parts.values())
        return {"total": total, "embedding": embedding, "non_embedding": total - embedding}

    def training_flops_per_token(self, seq_len: Optional[int] = None) -> float:
        """Training FLOPs per token, PaLM convention (Chowdhery et al. 2022, App. B): 6 N + 12 L H Q T,
        with N all parameters (a tied embedding counted once), L the layers of every stack, H Q the
        attention width and T the sequence length (default `max_positions`). It counts the attention
        score and value products over the full window (no causal discount) and no norms or softmax;
        what MFU and FLOP budgets are measured in. Grouped-query attention enters through N (narrower
        key/value projections); the score and value products still run over all H query heads."""
        t = int(seq_len if seq_len is not None else self.max_positions)
        if t <= 0:
            raise ConfigError(f"seq_len={t} must be positive")
        return 6.0 * self.parameter_counts()["total"] + 12.0 * self.total_layers * self.n_heads * self.head_dim * t


@dataclass
class TokenizerConfig:
    kind: Optional[str] = None  # bpe | wordpiece | unigram; default from the model family
    vocab_size: Optional[int] = None  # default model.vocab_size
    lowercase: bool = False
    min_frequency: int = 2

    def __post_init__(self) -> None:
        if self.kind is not None:
            _choice("tokenizer.kind", self.kind, TOKENIZER_KINDS)
        _in_range("tokenizer.min_frequency", self.min_frequency, 0)
        _positive("tokenizer.vocab_size", self.vocab_size, allow_none=True)


@dataclass
class DataConfig:
    corpus: Optional[str] = None  # catalog name (wikitext-2) or a local file/directory
    tokenizer: Optional[str] = None  # tokenizer directory; trained on the corpus when absent
    shards: Optional[str] = None  # token shard directory; default RUN_DIR/shards
    valid_fraction: float = 0.02  # for corpora without their own validation split
    split_seed: int = 1234
    errors: str = "strict"  # strict | replace (undecodable bytes)

    def __post_init__(self) -> None:
        _finite("data", self)
        _choice("data.errors", self.errors, ("strict", "replace"))
        _in_range("data.split_seed", self.split_seed, 0)
        if not 0.0 < self.valid_fraction < 1.0:
            raise ConfigError(f"data.valid_fraction={self.valid_fraction} must be in (0, 1)")


@dataclass
class ObjectiveConfig:
    kind: Optional[str] = None  # mlm | causal | span; default from the model family
    mlm_probability: float = 0.15
    mask_token_fraction: float = 0.8
    random_token_fraction: float = 0.1
    whole_word_mask: bool = False
    span_mask: bool = False  # SpanBERT-style geometric spans for MLM
    nsp: bool = False
    noise_density: float = 0.15  # T5 span corruption
    mean_noise_span_length: float = 3.0

    def __post_init__(self) -> None:
        _finite("objective", self)
        if self.kind is not None:
            _choice("objective.kind", self.kind, ("mlm", "causal", "span"))
        for name in ("mask_token_fraction", "random_token_fraction"):
            _in_range(f"objective.{name}", getattr(self, name), 0.0, 1.0)
        _in_range("objective.mean_noise_span_length", self.mean_noise_span_length, 1.0)
        for name in ("mlm_probability", "noise_density"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ConfigError(f"objective.{name}={v} must be in (0, 1)")
        if self.mask_token_fraction + self.random_token_fraction > 1.0 + 1e-9:
            raise ConfigError(
                "objective.mask_token_fraction + objective.random_token_fraction must be <= 1 "
                f"(got {self.mask_token_fraction} + {self.random_token_fraction})"
            )


DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
MAX_LR = 10.0  # an AdamW learning rate above this only diverges


@dataclass
class TrainConfig:
    seq_len: int = 128
    batch_size: int = 32  # global batch in sequences (independent of the number of processes)
    micro_batch_size: Optional[int] = None  # per process per step; gradient accumulation fills the rest
    max_steps: Optional[int] = None
    max_tokens: Optional[int] = None
    max_flops: Optional[float] = None
    max_time_s: Optional[float] = None
    # a safety cap, not a budget: the schedule still follows the budgets above (so runs repeat
    # exactly), and a run the clock stops first ends with status "time_cap" and a checkpoint
    time_cap_s: Optional[float] = None
    # stop after this many evaluations in a row without a lower validation loss (0 = never): on a
    # small corpus a long budget overfits; checkpoints/best keeps the best weights either way
    early_stopping: int = 0
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"  # cosine | linear | wsd | constant
    warmup_steps: Optional[int] = None  # default: warmup_fraction of the schedule
    warmup_fraction: float = 0.05
    decay_fraction: float = 0.2  # wsd: share of the schedule spent decaying
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 10  # validation set: this many global batches of windows (fixed, spread over the split)
    log_every: int = 10  # on CUDA also how often losses are read back (the device never waits in between)
    checkpoint_every: int = 0  # 0 = only at the end (and at evaluations that improve the best)
    keep_last: int = 2
    seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on GPUs with it, fp16 + gradient scaler on older GPUs, fp32 on CPU)
    # | fp32 | bf16 | fp16 (autocast; on a CPU bf16 pays off only with bf16 hardware, AVX512-BF16 or
    # AMX, elsewhere bf16 products are emulated)
    compile: bool = False
    max_bad_steps: int = 5  # consecutive non-finite steps before stopping (skipped steps leave the
    # weights untouched; on CUDA a streak is noticed at the next log, eval or checkpoint step)
    parallel: str = "ddp"  # ddp | fsdp (used when launched by torchrun)
    # where the metrics.jsonl scalars are mirrored: tensorboard (when installed), wandb, mlflow, or
    # none; wandb and mlflow read their usual settings (WANDB_MODE, WANDB_DIR, MLFLOW_TRACKING_URI)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    tracker_project: str = "lmscale"  # the wandb project, the mlflow experiment
    tracker_run_name: Optional[str] = None  # default: the run directory's name
    tracker_group: Optional[str] = None  # runs shown together (a sweep sets its name)
    # extra run parameters for the trackers (a sweep sets the run's N, D and C); not a training setting
    tracker_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _finite("train", self)
        bad = [t for t in self.report_to if t not in TRACKERS]
        if bad:
            raise ConfigError(f"train.report_to={bad[0]!r} is not a tracker: use {', '.join(TRACKERS)} or none")
        self.report_to = list(dict.fromkeys(self.report_to))
        for key, value in self.tracker_params.items():
            if not isinstance(key, str) or not (value is None or isinstance(value, (str, int, float, bool))):
                raise ConfigError(f"train.tracker_params[{key!r}]={value!r}: values must be numbers or strings")
        if not self.tracker_project.strip():
            raise ConfigError("train.tracker_project must not be empty")
        if not isinstance(self.device, str) or not DEVICE_RE.fullmatch(self.device):
            raise ConfigError(f"train.device={self.device!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
        _in_range("train.lr", self.lr, 0.0, MAX_LR, lo_open=True)
        for name in ("min_lr_ratio", "warmup_fraction", "decay_fraction"):
            _in_range(f"train.{name}", getattr(self, name), 0.0, 1.0)
        for name in ("beta1", "beta2"):
            _in_range(f"train.{name}", getattr(self, name), 0.0, 1.0, hi_open=True)
        _in_range("train.eps", self.eps, 0.0, lo_open=True)
        for name in ("weight_decay", "grad_clip", "eval_every", "eval_batches", "log_every", "checkpoint_every",
                     "seed"):
            _in_range(f"train.{name}", getattr(self, name), 0)
        _in_range("train.warmup_steps", self.warmup_steps, 0, allow_none=True)
        for name in ("keep_last", "max_bad_steps"):
            _in_range(f"train.{name}", getattr(self, name), 1)
        _choice("train.schedule", self.schedule, SCHEDULES)
        _choice("train.dtype", self.dtype, ("auto", "fp32", "bf16", "fp16"))
        _choice("train.parallel", self.parallel, ("ddp", "fsdp"))
        for name in ("seq_len", "batch_size", "lr"):
            _positive(f"train.{name}", getattr(self, name))
        for name in ("micro_batch_size", "max_steps", "max_tokens", "max_flops", "max_time_s", "time_cap_s"):
            _positive(f"train.{name}", getattr(self, name), allow_none=True)
        if not isinstance(self.early_stopping, int) or isinstance(self.early_stopping, bool) or self.early_stopping < 0:
            raise ConfigError(f"train.early_stopping={self.early_stopping!r} must be a whole number of "
                              "evaluations, 0 to never stop early")
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"train.batch_size={self.batch_size} is not a multiple of "
                f"train.micro_batch_size={self.micro_batch_size}"
            )


@dataclass
class RunConfig:
    """Everything one pretraining run needs; what `lmscale pretrain --config FILE.yaml` reads."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: Optional[str] = None
    preset: Optional[str] = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        m, t = self.model, self.train
        if t.seq_len > m.max_positions and m.position in ("learned",):
            raise ConfigError(
                f"train.seq_len={t.seq_len} is longer than model.max_positions={m.max_positions} "
                "(learned positions); lower train.seq_len or raise model.max_positions"
            )
        if self.tokenizer.vocab_size is not None and self.tokenizer.vocab_size > m.vocab_size:
            raise ConfigError(
                f"tokenizer.vocab_size={self.tokenizer.vocab_size} exceeds "
                f"model.vocab_size={m.vocab_size}; make them equal"
            )

    @property
    def tokenizer_kind(self) -> str:
        return self.tokenizer.kind or FAMILY_TOKENIZER[self.model.family]

    @property
    def objective_kind(self) -> str:
        return self.objective.kind or FAMILY_OBJECTIVE[self.model.family]

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# ----------------------------------------------------------------------------- dict/YAML plumbing

def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (JSON/YAML-safe)."""
    return dataclasses.asdict(cfg)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(path: str, value: Any, tp: Any) -> Any:
    base, optional = _unwrap_optional(tp)
    if typing.get_origin(base) is list and (value is None or str(value).strip().lower() in ("", "none", "null")):
        return []  # report_to: none
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{path} cannot be null")
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{path}={value!r} is not a boolean (use true/false)")
    if base is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}={value!r} is not an integer")
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}={value!r} is not an integer") from None
        if not f.is_integer():
            raise ConfigError(f"{path}={value!r} is not an integer")
        return int(f)
    if base is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}={value!r} is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}={value!r} is not a number") from None
    if base is str:
        return str(value)
    origin = typing.get_origin(base)
    if origin is list:
        # `--train.report_to wandb,mlflow`, a YAML list, or none
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}={value!r} is not a list (use a YAML list or comma-separated names)")
        return [str(v).strip() for v in value if str(v).strip() and str(v).strip().lower() != "none"]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}={value!r} is not a mapping")
        return dict(value)
    return value


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: dict[str, Any] | None, path: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys suggest the nearest valid key."""
    data = dict(data or {})
    hints = _type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{path}{key}"
        if key not in names:
            near = suggest_key(str(key), names)
            hint = f"; did you mean {path}{near!r}?" if near else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {full!r}{hint}{_alias_note(str(key), near)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{full} must be a mapping")
            kwargs[key] = from_dict(tp, value, f"{full}.")
        else:
            kwargs[key] = _coerce(full, value, tp)
    return cls(**kwargs)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    hints = _type_hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(_all_keys(tp, f"{prefix}{f.name}."))
        else:
            out.append(f"{prefix}{f.name}")
    return out


# names other tools (transformers' TrainingArguments and configs, nanoGPT, litgpt, Megatron) give to
# our keys: an unknown key is matched on meaning first, then on spelling
KEY_ALIASES: dict[str, str] = {
    "learning_rate": "lr", "lr_rate": "lr", "base_lr": "lr", "max_lr": "lr", "min_lr": "min_lr_ratio",
    "epochs": "max_steps", "num_epochs": "max_steps", "num_train_epochs": "max_steps", "max_epochs": "max_steps",
    "steps": "max_steps", "max_iters": "max_steps", "num_steps": "max_steps", "total_steps": "max_steps",
    "train_steps": "max_steps", "train_iters": "max_steps",
    "warmup": "warmup_steps", "num_warmup_steps": "warmup_steps", "warmup_iters": "warmup_steps",
    "lr_warmup_steps": "warmup_steps", "warmup_ratio": "warmup_fraction",
    "scheduler": "schedule", "lr_scheduler": "schedule", "lr_scheduler_type": "schedule", "lr_schedule": "schedule",
    "lr_decay_style": "schedule", "max_grad_norm": "grad_clip", "clip_grad": "grad_clip",
    "gradient_clipping": "grad_clip", "clip_grad_norm": "grad_clip",
    "adam_beta1": "beta1", "adam_beta2": "beta2", "adam_epsilon": "eps", "adam_eps": "eps", "wd": "weight_decay",
    "global_batch_size": "batch_size", "train_batch_size": "batch_size", "micro_batch": "micro_batch_size",
    "per_device_train_batch_size": "micro_batch_size", "gradient_accumulation_steps": "micro_batch_size",
    "max_seq_length": "seq_len", "seq_length": "seq_len", "block_size": "seq_len", "context_length": "seq_len",
    "eval_interval": "eval_every", "eval_steps": "eval_every", "eval_iters": "eval_batches",
    "log_interval": "log_every", "logging_steps": "log_every", "save_steps": "checkpoint_every",
    "save_interval": "checkpoint_every", "save_total_limit": "keep_last", "precision": "dtype",
    "mixed_precision": "dtype", "bf16": "dtype", "fp16": "dtype",
    "logger": "report_to", "logger_name": "report_to", "loggers": "report_to", "log_with": "report_to",
    "project": "tracker_project", "wandb_project": "tracker_project", "experiment_name": "tracker_project",
    "run_name": "tracker_run_name", "wandb_run_name": "tracker_run_name", "group": "tracker_group",
    "hidden_size": "d_model", "n_embd": "d_model", "dim": "d_model", "width": "d_model", "n_embed": "d_model",
    "num_hidden_layers": "n_layers", "num_layers": "n_layers", "n_layer": "n_layers", "depth": "n_layers",
    "num_attention_heads": "n_heads", "n_head": "n_heads", "num_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads", "n_kv_head": "n_kv_heads", "n_query_groups": "n_kv_heads",
    "head_dim": "d_head", "d_kv": "d_head", "head_size": "d_head",
    "intermediate_size": "d_ff", "n_inner": "d_ff", "ffn_dim": "d_ff", "ffn_hidden_size": "d_ff",
    "max_position_embeddings": "max_positions", "n_positions": "max_positions", "n_ctx": "max_positions",
    "vocab": "vocab_size", "padded_vocab_size": "vocab_size", "tie_word_embeddings": "tie_embeddings",
    "layer_norm_eps": "norm_eps", "layer_norm_epsilon": "norm_eps", "rms_norm_eps": "norm_eps",
    "hidden_act": "activation", "activation_function": "activation", "rotary_pct": "rotary_fraction",
    "partial_rotary_factor": "rotary_fraction", "rotary_percentage": "rotary_fraction",
    "rotary_emb_base": "rope_theta", "rope_base": "rope_theta", "use_parallel_residual": "parallel_residual",
    "parallel_attn": "parallel_residual", "hidden_dropout": "dropout", "resid_pdrop": "dropout",
    "dropout_rate": "dropout", "hidden_dropout_prob": "dropout", "attn_pdrop": "attention_dropout",
    "attention_probs_dropout_prob": "attention_dropout", "initializer_range": "init_std",
    "mlm_prob": "mlm_probability", "masking_probability": "mlm_probability",
}
# what an alias cannot say by pointing at one key
KEY_NOTES: dict[str, str] = {
    "max_steps": "pretraining is budgeted in train.max_steps, train.max_tokens, train.max_flops or "
                 "train.max_time_s, not in epochs",
    "micro_batch_size": "train.batch_size is the global batch in sequences, train.micro_batch_size "
                        "what one process runs per step; gradient accumulation fills the rest",
    "dtype": "train.dtype is auto, fp32, bf16 or fp16",
}


def suggest_key(key: str, valid: list[str]) -> Optional[str]:
    """The valid dotted key nearest to an unknown one: the same name in another section, a common
    alias (`learning_rate` -> `lr`, `epochs` -> `max_steps`, `warmup` -> `warmup_steps`) in this
    section or another, else the closest spelling."""
    section, _, leaf = key.rpartition(".")
    leaf = leaf.replace("-", "_")
    by_leaf: dict[str, list[str]] = {}
    for k in valid:
        by_leaf.setdefault(k.rpartition(".")[2], []).append(k)

    def in_section(name: str) -> Optional[str]:
        keys = by_leaf.get(name, [])
        same = [k for k in keys if k.rpartition(".")[0] == section]
        return (same or keys or [None])[0]

    for name in (leaf, KEY_ALIASES.get(leaf.lower()), KEY_ALIASES.get(leaf.lower().lstrip("_"))):
        if name and (found := in_section(name)) is not None and found != key:
            return found
    own = [k.rpartition(".")[2] for k in valid if k.rpartition(".")[0] == section]
    near = difflib.get_close_matches(leaf, own, n=1, cutoff=0.6) or difflib.get_close_matches(
        leaf, list(by_leaf), n=1, cutoff=0.6)
    return in_section(near[0]) if near else None


def _alias_note(key: str, suggestion: Optional[str]) -> str:
    """A note on what the suggested key means, when it was found through an alias."""
    leaf = key.rpartition(".")[2].replace("-", "_").lower()
    note = KEY_NOTES.get((suggestion or "").rpartition(".")[2]) if leaf in KEY_ALIASES else None
    return f" ({note})" if note else ""


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of `cfg` with dotted-key overrides (`{"model.d_model": 256}`) applied."""
    data = to_dict(cfg)
    valid = _all_keys(type(cfg))
    for key, value in overrides.items():
        if key not in valid:
            near = suggest_key(key, valid)
            hint = f"; did you mean --{near}?{_alias_note(key, near)}" if near else ""
            raise ConfigError(f"unknown option --{key}{hint}")
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return from_dict(type(cfg), data)


def parse_override_args(argv: list[str]) -> dict[str, Any]:
    """Parse `--a.b value` / `--a.b=value` pairs; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --model.d_model 256")
        key = arg[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"option --{key} needs a value")
            raw = argv[i + 1]
            i += 2
        key = key.replace("-", "_") if "." not in key else ".".join(
            p.replace("-", "_") for p in key.split(".")
        )
        out[key] = yaml.safe_load(raw) if raw != "" else ""
    return out


def config_sections() -> dict[str, list[str]]:
    """Each section of a run config (model, tokenizer, data, objective, train) and its keys."""
    hints = _type_hints(RunConfig)
    return {f.name: [g.name for g in fields(hints[f.name])]
            for f in fields(RunConfig) if dataclasses.is_dataclass(hints[f.name])}


def _effective_defaults(cfg: RunConfig) -> dict[str, Any]:
    """What a null key resolves to, where the config decides it (shown beside it by `to_yaml`)."""
    m, t = cfg.model, cfg.train
    return {
        "model.d_head": m.head_dim, "model.d_ff": m.ffn_dim, "model.n_kv_heads": m.kv_heads,
        "model.scale_output": m.output_scaled if m.family == "encoder-decoder" else None,
        "tokenizer.kind": cfg.tokenizer_kind, "tokenizer.vocab_size": m.vocab_size,
        "objective.kind": cfg.objective_kind, "train.micro_batch_size": t.batch_size,
        "train.warmup_steps": f"{t.warmup_fraction} of the schedule",
        "data.shards": "RUN_DIR/shards" if cfg.out is None else f"{cfg.out}/shards",
    }


def to_yaml(cfg: RunConfig) -> str:
    """The run config as YAML that `--config FILE` reads back to the same config; a null key that
    the config resolves (d_head, d_ff, the tokenizer kind, ...) carries its value as a comment."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False, width=100)
    effective = _effective_defaults(cfg)
    out, section = [], ""
    for line in text.splitlines():
        if line and not line.startswith(" "):
            section = line.split(":", 1)[0]
        key = line.strip().split(":", 1)[0]
        value = effective.get(f"{section}.{key}")
        if line.endswith(": null") and line.startswith("  ") and value is not None:
            line = f"{line}  # {value}"
        out.append(line)
    return "\n".join(out) + "\n"


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {path} is a directory, not a YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte offset {exc.start}); "
                          "is it a YAML file?") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


# ----------------------------------------------------------------------------- presets

def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _preset_data(name: str) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        names = preset_names()
        near = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"unknown preset {name!r}{hint} (see `lmscale presets`)")
    return load_yaml(path)


def preset_info(name: str) -> dict[str, Any]:
    """Preset metadata: description, published parameter count and source."""
    return dict(_preset_data(name).get("about", {}))


def load_preset(name: str) -> RunConfig:
    """A preset as a full RunConfig (model shape plus sensible training defaults)."""
    data = {k: v for k, v in _preset_data(name).items() if k != "about"}
    data["preset"] = name
    return from_dict(RunConfig, data)


def preset_model(name: str) -> ModelConfig:
    return load_preset(name).model


def load_run_config(
    config_file: str | Path | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Preset, then YAML file, then command-line overrides; later ones win."""
    data: dict[str, Any] = {}
    if preset is not None:
        data = to_dict(load_preset(preset))
    if config_file is not None:
        file_data = load_yaml(config_file)
        if "preset" in file_data and preset is None:
            data = to_dict(load_preset(file_data["preset"]))
        deep_update(data, file_data)
    cfg = from_dict(RunConfig, data)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg


def deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
    """Merge nested mapping `src` into `dst` in place (a mapping merges key by key, anything else replaces)."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            deep_update(dst[k], v)
        else:
            dst[k] = v


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    return from_dict(ModelConfig, data, "model.")
