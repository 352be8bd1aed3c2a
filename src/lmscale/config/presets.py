"""Presets: the YAML files in `src/lmscale/presets` (published shapes plus training defaults).

A preset is a run config with an `about` section (description, published parameter count,
source); `load_preset` reads it as a `RunConfig`, `preset_info` returns its `about`.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from lmscale.config.model import ModelConfig
from lmscale.config.overrides import from_dict
from lmscale.config.run import RunConfig
from lmscale.config.yamlfile import load_yaml
from lmscale.errors import ConfigError

__all__ = ["PRESET_DIR", "load_preset", "preset_info", "preset_model", "preset_names"]

# the package's presets directory, src/lmscale/presets (one level above this package)
PRESET_DIR = Path(__file__).parent.parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _preset_data(name: str) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        names = preset_names()
        near = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"unknown preset {name!r}{hint} (see `lmscale presets`)")
    return load_yaml(path, what="preset file")


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
