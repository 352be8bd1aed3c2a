"""The run directory's own files: the resolved config a run started with, and its summary.

`RUN_DIR/config.yaml` is what `--resume` continues (with the tokenizer path the run resolved, so a
resumed run reuses that tokenizer); `RUN_DIR/summary.json` is the outcome of the last session.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lmscale.config import ConfigError, RunConfig, from_dict, load_yaml, to_dict
from lmscale.io import atomic_write_json, atomic_write_text

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(run_dir / SUMMARY_FILE, summary)


def save_run_config(run_dir: Path, cfg: RunConfig) -> None:
    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_run_dir_config(run_dir: str | Path) -> RunConfig:
    """The resolved RunConfig a run directory was started with (for `--resume`)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); start it without --resume")
    return from_dict(RunConfig, load_yaml(path))
