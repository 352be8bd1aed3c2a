"""Model families: the registry of what `model.family` may name.

A family is a model layout (`lmscale.models` builds it) plus the defaults a run config takes from
it when the config leaves them unset: the tokenizer kind (`tokenizer.kind`) and the pretraining
objective (`objective.kind`). Three are built in:

    encoder          wordpiece  mlm     (BERT)
    decoder          bpe        causal  (GPT)
    encoder-decoder  unigram    span    (T5)

API (all names importable from `lmscale.config.families`):

`register_family(name, tokenizer_kind, objective, *, description="", replace=False) -> Family`
    Make `name` a valid `model.family`. `tokenizer_kind` must be one of `TOKENIZER_KINDS`,
    `objective` one of `OBJECTIVE_KINDS`. Registering a name again with the same settings is a
    no-op (so module re-imports are safe); with other settings it is a `ConfigError` unless
    `replace=True`. Returns the registered `Family`.
`unregister_family(name)`
    Remove a family registered with `register_family` (tests); built-in families stay.
`family_names() -> tuple[str, ...]`    registered names, built-ins first, then in registration order.
`is_family(name) -> bool`
`get_family(name) -> Family`           a `ConfigError` with a did-you-mean for an unknown name.
`family_tokenizer(name) -> str`        the family's default tokenizer kind.
`family_objective(name) -> str`        the family's default pretraining objective.

`FAMILIES` (tuple), `FAMILY_TOKENIZER` and `FAMILY_OBJECTIVE` (name -> kind dicts) are the
constants older code imports; they are computed from the registry each time they are read from
this module (or from `lmscale.config`), so a read after a registration includes it. A copy taken
earlier does not change: code that must see later registrations calls the functions above.

Config validation (`ModelConfig`, `RunConfig.tokenizer_kind`, `RunConfig.objective_kind`) reads
the registry, so a family registered before a config is built passes validation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmscale.config.validate import choice
from lmscale.errors import ConfigError

__all__ = [
    "OBJECTIVE_KINDS", "TOKENIZER_KINDS", "Family", "family_names", "family_objective", "family_tokenizer",
    "get_family", "is_family", "register_family", "unregister_family",
]

TOKENIZER_KINDS = ("bpe", "wordpiece", "unigram")
OBJECTIVE_KINDS = ("mlm", "causal", "span")


@dataclass(frozen=True)
class Family:
    """One registered model family and the run-config defaults it implies."""

    name: str
    tokenizer_kind: str  # default tokenizer.kind
    objective: str  # default objective.kind
    description: str = ""
    builtin: bool = False


_REGISTRY: dict[str, Family] = {}


def _add(family: Family) -> Family:
    _REGISTRY[family.name] = family
    return family


def register_family(name: str, tokenizer_kind: str, objective: str, *, description: str = "",
                    replace: bool = False) -> Family:
    """Register model family `name`; see the module docstring."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ConfigError(f"model family name {name!r} must be a non-empty string without surrounding spaces")
    choice(f"family {name!r} tokenizer_kind", tokenizer_kind, TOKENIZER_KINDS)
    choice(f"family {name!r} objective", objective, OBJECTIVE_KINDS)
    new = Family(name, tokenizer_kind, objective, description)
    old = _REGISTRY.get(name)
    if old is not None:
        if old.builtin:
            raise ConfigError(f"model family {name!r} is built in and cannot be registered again")
        same = (old.tokenizer_kind, old.objective) == (tokenizer_kind, objective)
        if not same and not replace:
            raise ConfigError(
                f"model family {name!r} is already registered (tokenizer {old.tokenizer_kind}, objective "
                f"{old.objective}); pass replace=True to change it")
        if same and not replace:
            return old
    return _add(new)


def unregister_family(name: str) -> None:
    """Remove a registered (not built-in) family; an unknown name is a no-op."""
    fam = _REGISTRY.get(name)
    if fam is not None and fam.builtin:
        raise ConfigError(f"model family {name!r} is built in and cannot be removed")
    _REGISTRY.pop(name, None)


def family_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def is_family(name: Any) -> bool:
    return isinstance(name, str) and name in _REGISTRY


def get_family(name: str) -> Family:
    fam = _REGISTRY.get(name) if isinstance(name, str) else None
    if fam is None:
        choice("model.family", name, family_names())  # raises, with a did-you-mean
    assert fam is not None
    return fam


def family_tokenizer(name: str) -> str:
    return get_family(name).tokenizer_kind


def family_objective(name: str) -> str:
    return get_family(name).objective


for _name, _tok, _obj, _desc in (
    ("encoder", "wordpiece", "mlm", "bidirectional encoder (BERT)"),
    ("decoder", "bpe", "causal", "causal decoder (GPT)"),
    ("encoder-decoder", "unigram", "span", "encoder-decoder with cross-attention (T5)"),
):
    _add(Family(_name, _tok, _obj, _desc, builtin=True))
del _name, _tok, _obj, _desc

_DERIVED = {
    "FAMILIES": family_names,
    "FAMILY_TOKENIZER": lambda: {f.name: f.tokenizer_kind for f in _REGISTRY.values()},
    "FAMILY_OBJECTIVE": lambda: {f.name: f.objective for f in _REGISTRY.values()},
}


def __getattr__(name: str) -> Any:
    """`FAMILIES`, `FAMILY_TOKENIZER`, `FAMILY_OBJECTIVE`: computed from the registry when read."""
    if name in _DERIVED:
        return _DERIVED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
