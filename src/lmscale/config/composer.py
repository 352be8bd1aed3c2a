"""The one way to compose a run config: preset -> files -> dotted overrides.

`compose(preset, files, overrides)` is what `lmscale pretrain`, `lmscale config show`,
`lmscale count`, sweeps (`SweepConfig.base_config`) and the quickstart resolve configs with;
`load_run_config(config_file, preset, overrides)` is the same composer with one file.
`deep_merge` / `deep_update` are the one deep merge (a mapping merges key by key at every
depth, anything else replaces).
"""
from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Union

from lmscale.config.overrides import apply_overrides, from_dict, to_dict
from lmscale.config.presets import load_preset
from lmscale.config.run import RunConfig
from lmscale.config.yamlfile import load_yaml

__all__ = ["Layer", "compose", "deep_merge", "deep_update", "load_run_config"]

# a config layer: a YAML file, or a mapping of sections already read
Layer = Union[str, "os.PathLike[str]", Mapping[str, Any]]


def deep_update(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    """Merge nested mapping `src` into `dst` in place (a mapping merges key by key, anything else replaces)."""
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            deep_update(dst[k], v)
        else:
            dst[k] = v


def deep_merge(base: Mapping[str, Any], *overs: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: `base` with each of `overs` deep-merged over it in turn (later wins). The
    inputs are left untouched (the result shares no mutable values with them)."""
    out = copy.deepcopy(dict(base))
    for over in overs:
        deep_update(out, copy.deepcopy(dict(over)))
    return out


def _read(layer: Layer) -> dict[str, Any]:
    if isinstance(layer, Mapping):
        return copy.deepcopy(dict(layer))
    return load_yaml(Path(layer))


def compose(preset: str | None = None, files: Iterable[Layer] = (),
            overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """The resolved run config; each step overrides the one before:

    1. the defaults, or preset `preset`; without `preset`, the first file with a `preset: NAME`
       key names it (a later file's `preset` key only relabels the config);
    2. each of `files` in order, deep-merged (YAML paths, or mappings of sections already read);
    3. `overrides`, dotted keys (`{"train.lr": 3e-4}`), applied to the config built so far, so
       an unknown key is a "did you mean --train.lr?" error.
    """
    layers = [_read(f) for f in files]
    if preset is None:
        preset = next((layer["preset"] for layer in layers if layer.get("preset") is not None), None)
    data: dict[str, Any] = to_dict(load_preset(preset)) if preset is not None else {}
    for layer in layers:
        deep_update(data, layer)
    cfg = from_dict(RunConfig, data)
    if overrides:
        cfg = apply_overrides(cfg, dict(overrides))
    return cfg


def load_run_config(
    config_file: str | Path | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Preset, then YAML file, then command-line overrides; later ones win (`compose` with one file)."""
    return compose(preset, () if config_file is None else (config_file,), overrides)
