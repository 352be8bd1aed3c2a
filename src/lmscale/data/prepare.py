"""The data step of a run: its tokenizer and the token shards it trains on.

One call for a single process (a sweep, the quickstart, a notebook):

    data = prepare_run_data(run_config, data_dir)  # -> RunData(tokenizer, tokenizer_dir, shard_dir)

The tokenizer is `data.tokenizer` when the config names one (it must exist), otherwise
`DATA_DIR/tokenizer`, trained on `data.corpus` (or reused when it is already there and
`reuse_tokenizer`). The shards are `data.shards`, or `DATA_DIR/shards`, built from the corpus when
that directory holds no shard index yet. Both are checked against each other and against
`model.vocab_size` before anything trains on them, so a mismatch is a `ConfigError` saying what to
change instead of wrong losses.

The two halves, `prepare_tokenizer` and `prepare_shards`, are public for callers that check
something in between (pretraining checks the objective's lengths against the model before it
pays for the shards) or that run in several processes: there only the `writer` process trains or
builds, and every process calls `wait` (a barrier; this layer knows nothing of process groups)
after the writes and before reading the result.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lmscale.config import ConfigError, RunConfig
from lmscale.data.catalog import check_corpus_source, resolve_corpus
from lmscale.data.shards import ShardIndex, prepare
from lmscale.tokenization import Tokenizer, train_tokenizer

TOKENIZER_DIR = "tokenizer"
SHARD_DIR = "shards"
NO_DATA = "no data: set data.corpus (--corpus NAME_OR_PATH) or data.shards"


@dataclass(frozen=True)
class RunData:
    """What the data step gives a run: the tokenizer, where it lives, and the shard directory."""

    tokenizer: Tokenizer
    tokenizer_dir: Path
    shard_dir: Path


def _no_wait() -> None:
    return None


def prepare_run_data(cfg: RunConfig, data_dir: str | Path, *, reuse_tokenizer: bool = True) -> RunData:
    """Tokenizer and token shards for `cfg`, made under `data_dir` where the config names none."""
    data_dir = Path(data_dir)
    tokenizer, tokenizer_dir = prepare_tokenizer(cfg, data_dir / TOKENIZER_DIR, reuse=reuse_tokenizer)
    shard_dir = prepare_shards(cfg, tokenizer, data_dir / SHARD_DIR)
    return RunData(tokenizer, tokenizer_dir, shard_dir)


def prepare_tokenizer(cfg: RunConfig, default_dir: Path, *, reuse: bool = True, writer: bool = True,
                      wait: Callable[[], None] = _no_wait) -> tuple[Tokenizer, Path]:
    """The run's tokenizer and its directory: `data.tokenizer`, or one trained on the corpus into
    `default_dir` (kept from an earlier call when `reuse` and it is there)."""
    if cfg.data.tokenizer is not None:
        path = Path(cfg.data.tokenizer)
    else:
        path = default_dir
        if not (reuse and (path / "tokenizer.json").is_file()):
            if cfg.data.corpus is None:
                raise ConfigError(f"{NO_DATA} with data.tokenizer")
            if writer:
                _train_tokenizer(cfg).save(path)
            wait()
    tokenizer = load_tokenizer(path)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size="
            f"{cfg.model.vocab_size}; set --model.vocab_size {tokenizer.vocab_size} (or larger)"
        )
    return tokenizer, path


def prepare_shards(cfg: RunConfig, tokenizer: Tokenizer, default_dir: Path, *, writer: bool = True,
                   wait: Callable[[], None] = _no_wait) -> Path:
    """The run's shard directory: `data.shards`, or `default_dir`; built from the corpus with
    `tokenizer` when it holds no shard index, and checked against the tokenizer and the model."""
    if cfg.data.shards is not None:
        path = Path(cfg.data.shards)
        if not shards_ready(path) and cfg.data.corpus is None:
            raise ConfigError(
                f"shard directory {path} does not exist or has no index.json; build it with "
                "`lmscale data prepare`, fix data.shards, or set data.corpus to build it here"
            )
    else:
        path = default_dir
    if not shards_ready(path):
        if cfg.data.corpus is None:
            raise ConfigError(NO_DATA)
        if writer:
            # the shards hold out their own validation split: `prepare` sets the corpus's fraction
            prepare(resolve_corpus(cfg.data.corpus, errors=cfg.data.errors), tokenizer, path,
                    valid_fraction=cfg.data.valid_fraction, split_seed=cfg.data.split_seed, errors=cfg.data.errors)
        wait()
    check_shards(path, ShardIndex.load(path).data, tokenizer, cfg.model.vocab_size)
    return path


def check_sources(cfg: RunConfig) -> None:
    """Refuse a named tokenizer, shard directory or corpus that is not there, before a run writes anything."""
    d = cfg.data
    if d.tokenizer is not None and not Path(d.tokenizer).expanduser().exists():
        load_tokenizer(Path(d.tokenizer).expanduser())
    if d.shards is not None and shards_ready(Path(d.shards).expanduser()):
        return
    if d.corpus is not None:
        check_corpus_source(d.corpus)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A saved tokenizer directory, or a `ConfigError` that says how to get one."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(
            f"tokenizer {p} does not exist; point data.tokenizer (--tokenizer) at a directory with "
            "tokenizer.json, or leave it unset to train one on the corpus"
        )
    return Tokenizer.load(p)


def shards_ready(path: Path) -> bool:
    return (path / "index.json").is_file()


def check_shards(shard_dir: Path, meta: dict[str, Any], tokenizer: Tokenizer, vocab_size: int) -> None:
    """Shards made with another tokenizer, or holding ids past the model's vocabulary, are refused."""
    h = meta.get("tokenizer_hash")
    if h is not None and h != tokenizer.hash:
        raise ConfigError(
            f"the shards in {shard_dir} were made with a different tokenizer (hash {str(h)[:12]}, "
            f"this one {tokenizer.hash[:12]}); delete {shard_dir} or set data.shards to a new directory"
        )
    sv = meta.get("vocab_size")
    if sv is not None and int(sv) > vocab_size:
        raise ConfigError(
            f"the shards in {shard_dir} hold token ids up to {int(sv) - 1} but model.vocab_size={vocab_size}; "
            f"set model.vocab_size to at least {sv}"
        )


def _train_tokenizer(cfg: RunConfig) -> Tokenizer:
    corpus = resolve_corpus(cfg.data.corpus, errors=cfg.data.errors, valid_fraction=cfg.data.valid_fraction,
                            split_seed=cfg.data.split_seed)
    return train_tokenizer(
        cfg.tokenizer_kind,
        corpus.iter_documents("train"),
        cfg.tokenizer.vocab_size or cfg.model.vocab_size,
        lowercase=cfg.tokenizer.lowercase,
        min_frequency=cfg.tokenizer.min_frequency,
    )


__all__ = ["RunData", "prepare_run_data", "prepare_tokenizer", "prepare_shards", "load_tokenizer",
           "check_shards", "shards_ready"]
