"""Continued pretraining: a fresh run that starts from another model's weights.

`pretrain --init-from DIR` (nanoGPT's `init_from`, litgpt's `--initial_checkpoint_dir`) takes the
weights, the model config and the tokenizer of DIR (an lmscale run or model directory, or a
`transformers` directory, whatever `lmscale.load` reads) and trains them with a new optimizer and
schedule from step 0. Unlike `--resume`, nothing of the parent's training state carries over, so
the child may change the data, the budget and every `train.*` key; the architecture is the
parent's, so a `--model.*` value that differs from it is refused rather than silently dropped.
`train.init_from` in the child's config.yaml names the checkpoint it started from.
"""
from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lmscale.config import ConfigError, ModelConfig, RunConfig, apply_overrides
from lmscale.data.prepare import TOKENIZER_DIR
from lmscale.errors import CheckpointError
from lmscale.models.hf import from_hf, is_hf_dir, load_hf_tokenizer
from lmscale.models.loading import load
from lmscale.models.serialization import read_config, resolve_model_dir, write_model_files
from lmscale.tokenization import Tokenizer
from lmscale.training import distributed as dist_util

__all__ = ["child_config", "parent_checkpoint", "parent_model_config", "parent_weights", "take_parent_tokenizer"]


def parent_checkpoint(source: str | Path) -> Path:
    """The directory the weights come from: a `transformers` directory itself, or the model
    directory (a run directory's best checkpoint, else its newest) that `lmscale.load` would read."""
    p = Path(source).expanduser()
    if not p.exists():
        raise ConfigError(f"--init-from {source}: no such run, model or transformers directory")
    if p.is_dir() and is_hf_dir(p):
        return p.absolute()
    try:
        return resolve_model_dir(p).absolute()
    except CheckpointError as exc:
        raise ConfigError(f"--init-from: {exc}") from None


def parent_model_config(source: str | Path) -> ModelConfig:
    """The parent's architecture (a `transformers` config is converted, which reads its weights)."""
    path = parent_checkpoint(source)
    try:
        if is_hf_dir(path):
            return from_hf(path)[0].config
        return read_config(path)
    except CheckpointError as exc:
        raise ConfigError(f"--init-from: {exc}") from None


def child_config(cfg: RunConfig, source: str | Path, asked_model: Mapping[str, Any]) -> RunConfig:
    """`cfg` with the parent's model config and `train.init_from` set. `asked_model` holds the
    model keys the user set (`{"d_model": 256}`); one that differs from the parent's is an error
    naming each, since the weights fix the architecture."""
    if cfg.data.tokenizer is not None:
        raise ConfigError("--init-from takes the tokenizer from the checkpoint; drop --tokenizer / data.tokenizer")
    parent_path = parent_checkpoint(source)
    parent = parent_model_config(parent_path)
    asked = apply_overrides(parent, dict(asked_model))
    conflicts = [f"--model.{k} {getattr(asked, k)!r} (checkpoint: {getattr(parent, k)!r})"
                 for k in asked_model if getattr(asked, k) != getattr(parent, k)]
    if conflicts:
        raise ConfigError(f"--init-from {source} takes the model config from the checkpoint; drop "
                          + ", ".join(conflicts))
    return dataclasses.replace(cfg, model=parent,
                               train=dataclasses.replace(cfg.train, init_from=str(parent_path)))


def _check_same_model(cfg: RunConfig, parent: ModelConfig) -> None:
    """A config built without `child_config` (Python, a hand-written YAML) must still match."""
    if cfg.model != parent:
        diff = [f"model.{f.name} {getattr(cfg.model, f.name)!r} (checkpoint: {getattr(parent, f.name)!r})"
                for f in dataclasses.fields(ModelConfig) if getattr(cfg.model, f.name) != getattr(parent, f.name)]
        raise ConfigError(f"train.init_from={cfg.train.init_from}: the config's model differs from the "
                          f"checkpoint's: {', '.join(diff)}")


def take_parent_tokenizer(cfg: RunConfig, run_dir: Path, info: dist_util.DistInfo) -> RunConfig:
    """`cfg` with the parent's tokenizer copied into RUN_DIR/tokenizer (so the child resumes
    whatever happens to the parent) and named by `data.tokenizer`."""
    parent_path = parent_checkpoint(cfg.train.init_from)
    _check_same_model(cfg, parent_model_config(parent_path))
    target = run_dir / TOKENIZER_DIR
    if info.is_main:
        if is_hf_dir(parent_path):
            tokenizer = load_hf_tokenizer(parent_path)
        elif (parent_path / "tokenizer.json").is_file():
            tokenizer = Tokenizer.load(parent_path)
        else:
            tokenizer = None
        if tokenizer is None:
            raise ConfigError(f"train.init_from={parent_path} has no tokenizer files to continue with")
        if cfg.data.tokenizer is not None and Path(cfg.data.tokenizer).absolute() != target.absolute():
            given = Tokenizer.load(cfg.data.tokenizer)
            if given.hash != tokenizer.hash:
                raise ConfigError(f"data.tokenizer={cfg.data.tokenizer} is not the tokenizer of "
                                  f"train.init_from={parent_path}; drop data.tokenizer")
        tokenizer.save(target)
    dist_util.barrier(info)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=str(target)))


@contextlib.contextmanager
def parent_weights(source: str | Path) -> Iterator[Path]:
    """A model directory holding the parent's weights under lmscale's tensor names (a
    `transformers` parent converted into a temporary one, removed on exit)."""
    path = parent_checkpoint(source)
    if not is_hf_dir(path):
        yield path
        return
    model, _ = load(path)
    with tempfile.TemporaryDirectory(prefix="lmscale-init-") as tmp:
        write_model_files(model, None, tmp)
        del model
        yield Path(tmp)
