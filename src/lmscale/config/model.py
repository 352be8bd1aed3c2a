"""`ModelConfig`: the shape of a transformer, its validation, and its exact parameter and FLOP counts."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from lmscale.config.families import family_names
from lmscale.config.overrides import from_dict
from lmscale.config.validate import choice, finite, in_range, positive
from lmscale.errors import ConfigError

POSITIONS = ("learned", "sinusoidal", "rope", "relative", "none")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
RELATIVE_BIAS_INITS = ("zero", "alibi")
PARAMETRIZATIONS = ("sp", "mup")  # standard, or maximal-update (Yang et al. 2022, Tensor Programs V)
# RoPE scaling variants (`model.rope_scaling`, written as transformers writes `rope_scaling`): each
# type with the keys it needs (beyond "rope_type") and the keys it may have
ROPE_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "default": ((), ()),
    "linear": (("factor",), ()),  # position interpolation (Chen et al. 2023)
    "llama3": (("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"), ()),
    "yarn": (("factor",), ("original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow",
                           "mscale", "mscale_all_dim", "truncate")),  # Peng et al. 2023
}
# parameters counted as embedding (Kaplan et al. 2020); `ModelConfig.parameter_breakdown` names them
EMBEDDING_PARTS = ("token_embedding", "position_embedding", "segment_embedding", "output_projection")


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
    # how the relative bias table starts: zero (T5: uniform attention) or alibi (each head biased
    # towards nearby tokens with ALiBi's geometric slopes, Press et al. 2022; still learned). A
    # masked position holds no information of its own, so an MLM learns nothing from context
    # until attention finds the neighbours; a local start lets it use them from the first steps
    relative_bias_init: str = "zero"  # zero | alibi
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
    # muP: hidden init, attention and readout scaled so the tuned hyperparameters of a model at
    # `mup_base_width` transfer across width; at the base width muP and sp are the same model
    parametrization: str = "sp"  # sp | mup
    mup_base_width: Optional[int] = None  # the d_model hyperparameters were tuned at (mup; default d_model)

    def __post_init__(self) -> None:
        finite("model", self)
        for name in ("rope_theta", "norm_eps", "init_std"):
            in_range(f"model.{name}", getattr(self, name), 0.0, lo_open=True)
        for name in ("relative_buckets", "relative_max_distance"):
            in_range(f"model.{name}", getattr(self, name), 1)
        in_range("model.type_vocab_size", self.type_vocab_size, 0)
        in_range("model.pad_token_id", self.pad_token_id, 0)
        choice("model.family", self.family, family_names())
        choice("model.position", self.position, POSITIONS)
        choice("model.relative_bias_init", self.relative_bias_init, RELATIVE_BIAS_INITS)
        if self.relative_bias_init != "zero" and self.position != "relative":
            raise ConfigError(f"model.relative_bias_init={self.relative_bias_init} is for model.position=relative "
                              f"(got {self.position})")
        choice("model.activation", self.activation, ACTIVATIONS)
        choice("model.norm", self.norm, NORMS)
        choice("model.norm_position", self.norm_position, NORM_POSITIONS)
        self._check_mup()
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_positions"):
            positive(f"model.{name}", getattr(self, name))
        positive("model.d_head", self.d_head, allow_none=True)
        positive("model.d_ff", self.d_ff, allow_none=True)
        if self.d_head is None and self.d_model % self.n_heads != 0:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: "
                f"change one of them, or set model.d_head explicitly"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head dimension, got d_head={self.head_dim}")
        self._check_rope()
        positive("model.n_kv_heads", self.n_kv_heads, allow_none=True)
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

    def _check_mup(self) -> None:
        choice("model.parametrization", self.parametrization, PARAMETRIZATIONS)
        positive("model.mup_base_width", self.mup_base_width, allow_none=True)
        if self.parametrization == "sp" and self.mup_base_width is not None:
            raise ConfigError("model.mup_base_width is for model.parametrization=mup; with sp it would do nothing")
        if self.parametrization == "mup" and self.family == "encoder":
            raise ConfigError("model.parametrization=mup is implemented for decoder and encoder-decoder models; "
                              "the encoder's masked-LM head has no muP readout yet")

    @property
    def width_mult(self) -> float:
        """d_model / base width under muP (1.0 under sp): the factor muP's scalings are powers of."""
        if self.parametrization != "mup" or self.mup_base_width is None:
            return 1.0
        return self.d_model / self.mup_base_width

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
        for key in (*need, *may):
            v = rs.get(key)
            if v is None or key == "truncate":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"model.rope_scaling {key}={v!r} must be a finite number")
        if kind != "default" and not rs["factor"] > 0:
            raise ConfigError(f"model.rope_scaling factor={rs['factor']!r} must be a positive number")
        if "truncate" in rs and rs["truncate"] is not None and not isinstance(rs["truncate"], bool):
            raise ConfigError(f"model.rope_scaling truncate={rs['truncate']!r} must be true or false")

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


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """A `ModelConfig` from a mapping of model keys (an unknown key suggests the nearest one)."""
    return from_dict(ModelConfig, data, "model.")
