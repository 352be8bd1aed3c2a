"""Typed configuration: dataclasses, YAML presets and `--section.key value` overrides.

Configs are validated when built, so a bad combination fails before any work starts, with a
message that says what to change.

The package, by concern (everything below is also importable from `lmscale.config` itself):

- `validate`: the public value validators (`choice`, `positive`, `finite`, `in_range`);
- `families`: the registry of model families (`register_family`, `family_names`, ...);
- `model`: `ModelConfig`, its validation and exact parameter / FLOP counts;
- `run`: the tokenizer/data/objective/train sections, `RunConfig`, `to_yaml`;
- `overrides`: dict -> dataclass with coercion, dotted `--section.key value` overrides, key aliases
  and did-you-mean suggestions;
- `yamlfile`: `load_yaml`, the one YAML reader;
- `presets`: preset discovery and loading (`PRESET_DIR` is `src/lmscale/presets`);
- `composer`: `compose(preset, files, overrides)`, the one composer, and the one deep merge.
"""
from __future__ import annotations

from typing import Any

from lmscale.config import families as _families
from lmscale.config.composer import compose, deep_merge, deep_update, load_run_config
from lmscale.config.families import (
    OBJECTIVE_KINDS,
    TOKENIZER_KINDS,
    Family,
    family_names,
    family_objective,
    family_tokenizer,
    get_family,
    is_family,
    register_family,
    unregister_family,
)
from lmscale.config.model import (
    ACTIVATIONS,
    EMBEDDING_PARTS,
    NORM_POSITIONS,
    NORMS,
    POSITIONS,
    ROPE_TYPES,
    ModelConfig,
    model_config_from_dict,
)
from lmscale.config.overrides import (
    KEY_ALIASES,
    KEY_NOTES,
    apply_overrides,
    from_dict,
    parse_override_args,
    suggest_key,
    to_dict,
)
from lmscale.config.presets import PRESET_DIR, load_preset, preset_info, preset_model, preset_names
from lmscale.config.run import (
    DEVICE_RE,
    MAX_LR,
    SCHEDULES,
    TRACKER_KEYS,
    TRACKERS,
    DataConfig,
    ObjectiveConfig,
    RunConfig,
    TokenizerConfig,
    TrainConfig,
    config_sections,
    to_yaml,
)
from lmscale.config.validate import choice, finite, in_range, positive
from lmscale.config.yamlfile import load_yaml, parse_yaml_value
from lmscale.errors import ConfigError

__all__ = [
    "ACTIVATIONS", "DEVICE_RE", "EMBEDDING_PARTS", "FAMILIES", "FAMILY_OBJECTIVE", "FAMILY_TOKENIZER",
    "KEY_ALIASES", "KEY_NOTES", "MAX_LR", "NORMS", "NORM_POSITIONS", "OBJECTIVE_KINDS", "POSITIONS", "PRESET_DIR",
    "ROPE_TYPES", "SCHEDULES", "TOKENIZER_KINDS", "TRACKERS", "TRACKER_KEYS",
    "ConfigError", "DataConfig", "Family", "ModelConfig", "ObjectiveConfig", "RunConfig", "TokenizerConfig",
    "TrainConfig",
    "apply_overrides", "choice", "compose", "config_sections", "deep_merge", "deep_update", "family_names",
    "family_objective", "family_tokenizer", "finite", "from_dict", "get_family", "in_range", "is_family",
    "load_preset", "load_run_config", "load_yaml", "model_config_from_dict", "parse_override_args",
    "parse_yaml_value", "positive", "preset_info", "preset_model", "preset_names", "register_family", "suggest_key",
    "to_dict", "to_yaml", "unregister_family",
]


def __getattr__(name: str) -> Any:
    """`FAMILIES`, `FAMILY_TOKENIZER`, `FAMILY_OBJECTIVE`: read from the family registry when accessed."""
    if name in ("FAMILIES", "FAMILY_TOKENIZER", "FAMILY_OBJECTIVE"):
        return getattr(_families, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
