"""Model families as data: one `FamilySpec` per architecture, in one registry.

Code outside `lmscale.models` asks a family's spec what the model can do (generate? fill masks?
which fine-tuning head? how is text scored?) instead of comparing family names, so a new
architecture is one module that calls `register_family` plus a preset, with no edit elsewhere.
The parameter and FLOP counts stay with `ModelConfig` (one count); a spec only points to them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Union, runtime_checkable

import torch
from torch import nn

from lmscale.config import ConfigError, ModelConfig
from lmscale.config import families as config_families

if TYPE_CHECKING:
    from lmscale.models.base import ModelOutput

HEADS = ("cls", "last_token", "encoder-decoder")
SCORINGS = ("causal", "seq2seq", "pseudo-likelihood", "none")


@runtime_checkable
class LanguageModel(Protocol):
    """The forward call every causal model answers (decoders, and the extra ones a user registers);
    generation, perplexity and fine-tuning rely on exactly these arguments."""

    config: ModelConfig

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        past_key_values: Optional[list[tuple[torch.Tensor, ...]]] = None,
        use_cache: bool = False,
        position_ids: Optional[torch.Tensor] = None,
    ) -> ModelOutput: ...


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The children of every `ModuleList`: the layers of each stack, sharded one by one under FSDP."""
    return [m for module in model.modules() if isinstance(module, nn.ModuleList) for m in module]


@dataclass(frozen=True)
class FamilySpec:
    """What one architecture is and can do; the rest of the tool reads only these fields.

    `head` says how a classifier reads a sequence (and so how fine-tuning inputs are laid out):
    `cls` ([CLS] a [SEP] b [SEP], segment ids), `last_token` (GPT's start/delim/extract tokens,
    the last real token's state) or `encoder-decoder` (a </s> b </s>, pooled encoder states).
    `scoring` says how perplexity and few-shot score text: `causal` (next-token log-likelihood),
    `seq2seq` (targets given the encoder input), `pseudo-likelihood` (mask one token at a time)
    or `none`. `poolings` lists the fine-tuning poolings, the default first.
    """

    name: str
    model_class: Callable[[ModelConfig], nn.Module]
    objective: str  # pretraining objective: mlm | causal | span
    tokenizer_kind: str  # bpe | wordpiece | unigram
    causal: bool  # a decoder-only language model: its output continues its input
    head: str
    scoring: str
    poolings: tuple[str, ...]
    is_encoder_decoder: bool = False
    hf_adapters: tuple[Any, ...] = ()  # `lmscale.models.hf.HFAdapter`s, tried in order on export
    fsdp_units: Callable[[nn.Module], list[nn.Module]] = repeated_blocks
    parameter_counts: Callable[[ModelConfig], dict[str, int]] = ModelConfig.parameter_counts
    flops_per_token: Callable[..., float] = ModelConfig.training_flops_per_token
    description: str = ""
    extras: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ConfigError(f"family {self.name!r}: head={self.head!r} is not one of {', '.join(HEADS)}")
        if self.scoring not in SCORINGS:
            raise ConfigError(f"family {self.name!r}: scoring={self.scoring!r} is not one of {', '.join(SCORINGS)}")
        if not self.poolings:
            raise ConfigError(f"family {self.name!r}: poolings must name at least one pooling")
        if self.causal and self.is_encoder_decoder:
            raise ConfigError(f"family {self.name!r}: a family is causal or encoder-decoder, not both")

    @property
    def can_generate(self) -> bool:
        return self.causal or self.is_encoder_decoder

    @property
    def can_fill_mask(self) -> bool:
        return self.objective == "mlm"

    @property
    def has_decoder(self) -> bool:
        return self.can_generate

    @property
    def default_pooling(self) -> str:
        return self.poolings[0]

    @property
    def uses_segments(self) -> bool:
        """Whether inputs carry segment (token type) ids, as BERT's pairs do."""
        return self.head == "cls"


_SPECS: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec, *, replace: bool = False) -> FamilySpec:
    """Make `spec.name` a buildable `model.family` (and a valid one in configs). Registering the
    same spec again is a no-op, so a module may be imported twice; a different spec under a taken
    name needs `replace=True`."""
    old = _SPECS.get(spec.name)
    if old is not None and old != spec and not replace:
        raise ConfigError(f"model family {spec.name!r} is already registered; pass replace=True to change it")
    known = config_families.is_family(spec.name)
    if not (known and config_families.get_family(spec.name).builtin):
        config_families.register_family(spec.name, spec.tokenizer_kind, spec.objective,
                                        description=spec.description, replace=replace)
    elif (config_families.family_tokenizer(spec.name), config_families.family_objective(spec.name)) != (
            spec.tokenizer_kind, spec.objective):
        raise ConfigError(f"model family {spec.name!r}: the spec's tokenizer and objective differ from the config's")
    _SPECS[spec.name] = spec
    return spec


def unregister_family(name: str) -> None:
    """Forget a family registered at run time (tests); an unknown name is a no-op."""
    if _SPECS.pop(name, None) is not None and not config_families.get_family(name).builtin:
        config_families.unregister_family(name)


def family_names() -> tuple[str, ...]:
    return tuple(_SPECS)


def family_name(model_or_cfg: Any) -> str:
    """The family of a name, a `ModelConfig`, one of our models or a `transformers` model (whose
    config has no family: encoder-decoder, causal LM or else encoder, from its own flags)."""
    if isinstance(model_or_cfg, str):
        return model_or_cfg
    cfg = getattr(model_or_cfg, "config", model_or_cfg)
    fam = getattr(cfg, "family", None)
    if isinstance(fam, str):
        return fam
    if getattr(cfg, "is_encoder_decoder", False):
        return "encoder-decoder"
    if getattr(cfg, "is_decoder", False) or type(model_or_cfg).__name__.endswith(("LMHeadModel", "CausalLM")):
        return "decoder"
    return "encoder"


def family_spec(model_or_cfg: Union[str, ModelConfig, FamilySpec, nn.Module, Any]) -> FamilySpec:
    """The spec of a family name, a config or a model (ours or `transformers`'); a spec is itself."""
    if isinstance(model_or_cfg, FamilySpec):
        return model_or_cfg
    name = family_name(model_or_cfg)
    spec = _SPECS.get(name)
    if spec is None:
        raise ConfigError(f"model family {name!r} is not registered; known: {', '.join(_SPECS)} "
                          "(an extra architecture registers with lmscale.models.register_family)")
    return spec


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised model of `cfg`'s family and shape."""
    return family_spec(cfg).model_class(cfg)
