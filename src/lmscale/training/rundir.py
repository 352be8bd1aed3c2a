"""A pretraining run directory: its layout (`lmscale.io.rundir`), its config and the resume policy.

`RUN_DIR/config.yaml` is what `--resume` continues (with the tokenizer path the run resolved, so a
resumed run reuses that tokenizer); `RUN_DIR/summary.json` is the outcome of the last session.
The resume policy lives here, not in a command, so every way of resuming (the CLI, the
quickstart, a sweep's runs) refuses the same changes with the same message.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lmscale.config import TRACKER_KEYS, ConfigError, RunConfig, from_dict, load_yaml, to_dict
from lmscale.io import atomic_write_text
from lmscale.io.rundir import CONFIG_FILE, SUMMARY_FILE, RunLayout, RunSummary

__all__ = ["CONFIG_FILE", "RESUME_MAY_CHANGE", "SUMMARY_FILE", "RunDir", "RunSummary", "check_resume_overrides",
           "load_run_dir_config", "save_run_config", "write_summary"]

# what a resumed run may change: where it runs and what it records, never what it trains (its data
# included: it keeps training on the shards it started with, so another --corpus is refused, not ignored)
RESUME_MAY_CHANGE = ("out", "train.device", "train.dtype",
                     "train.compile", "train.parallel", "train.log_every", "train.eval_every",
                     "train.checkpoint_every", "train.keep_last", "train.max_bad_steps", "train.time_cap_s",
                     *(f"train.{k}" for k in TRACKER_KEYS))
_SHORTCUT_FLAGS = {"train.max_steps": "--max-steps", "data.corpus": "--corpus", "data.tokenizer": "--tokenizer",
                   "data.shards": "--shards", "train.seed": "--seed"}
_SECTIONS = ("model", "tokenizer", "data", "objective", "train")


class RunDir(RunLayout):
    """One run directory: where its files are (see `RunLayout`), its saved config, and whether a
    config may continue it."""

    def save_config(self, cfg: RunConfig) -> None:
        atomic_write_text(self.config_path, yaml.safe_dump(to_dict(cfg), sort_keys=False))

    def has_config(self) -> bool:
        return self.config_path.is_file()

    def load_config(self) -> RunConfig:
        """The resolved RunConfig the run was started with (for `--resume`)."""
        if not self.has_config():
            raise ConfigError(f"{self.root} is not a run directory (no {CONFIG_FILE}); start it without --resume")
        return from_dict(RunConfig, load_yaml(self.config_path))

    def check_resume(self, cfg: RunConfig) -> None:
        """Refuse to continue this run with `cfg` when it changes what the run trains; a
        directory without a saved config has nothing to continue, so nothing to compare."""
        if self.has_config():
            check_resume_overrides(self.load_config(), cfg)

    def record_failed_start(self, summary: RunSummary, resume: bool) -> None:
        """Write the summary of a session that failed before its first step, unless it would
        replace what an earlier session of a resumed run achieved."""
        if resume:
            earlier = self.read_summary()
            if earlier is not None and earlier.is_outcome:
                return
        self.write_summary(summary)


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in _SECTIONS:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _as_saved(cfg: RunConfig) -> dict:
    """`cfg` as `config.yaml` holds it (YAML has no tuples), so equal configs compare equal."""
    return _flat(yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False)))


def check_resume_overrides(saved: RunConfig, cfg: RunConfig) -> None:
    """A resumed run continues its own schedule and model exactly: changes that would alter
    them (a longer --max-steps, another learning rate, ...) are refused instead of half applied."""
    before, after = _as_saved(saved), _as_saved(cfg)
    changed = [k for k in after if k not in RESUME_MAY_CHANGE and after[k] != before.get(k)]
    if changed:
        k = changed[0]
        flag = _SHORTCUT_FLAGS.get(k, f"--{k}")
        raise ConfigError(
            f"{flag} {after[k]}: --resume continues the run exactly, with its own {k}={before.get(k)} "
            f"(and schedule); start a new run with --out NEW_DIR to train with another one. A resume may "
            f"change only {', '.join(RESUME_MAY_CHANGE)}")


def write_summary(run_dir: Path, summary: dict[str, Any] | RunSummary) -> None:
    if not isinstance(summary, RunSummary):
        summary = RunSummary.from_dict(summary)
    RunDir(run_dir).write_summary(summary)


def save_run_config(run_dir: Path, cfg: RunConfig) -> None:
    RunDir(run_dir).save_config(cfg)


def load_run_dir_config(run_dir: str | Path) -> RunConfig:
    """The resolved RunConfig a run directory was started with (for `--resume`)."""
    return RunDir(run_dir).load_config()
