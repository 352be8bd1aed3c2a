"""Building a run from its config: everything `Trainer` receives, checked before the first step.

`build_run` checks the config against the run directory, the processes and the data (each problem
a `ConfigError` that says what to change), prepares the tokenizer and shards (rank 0 writes, the
other processes wait for it), builds the batches, the model and its optimizer, restores the newest
checkpoint's state when resuming, and otherwise plans the schedule from the budget.

The caller's config is never changed: the run works from a resolved copy (the tokenizer it trains
or reuses filled in), and that copy is what `RUN_DIR/config.yaml` holds, so `--resume` reuses the
same tokenizer.

Budgets: steps, tokens (global batch x seq_len per step), training FLOPs (PaLM convention, see
`metrics`) or wall-clock. For wall-clock, three forward/backward passes are timed before the first
step (the model is not updated and the RNG is restored) and the schedule length is
`max_time_s / step_time`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lmscale.config import ConfigError, RunConfig, TrainConfig
from lmscale.data.objectives import Objective, example_rngs, make_objective
from lmscale.data.prepare import SHARD_DIR, TOKENIZER_DIR, check_sources, prepare_shards, prepare_tokenizer
from lmscale.data.sampler import WindowSampler, validation_windows
from lmscale.data.shards import TokenDataset
from lmscale.errors import CheckpointError, LmscaleError
from lmscale.io import clean_stale_temporaries
from lmscale.io.locks import LOCK_FILE, DirectoryLock
from lmscale.io.outputs import MARKER, OutputError, check_output_dir, mark_output_dir, only_known_entries
from lmscale.io.rundir import BEST_DIR, CHECKPOINTS_DIR, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, parse_step_dir
from lmscale.tokenization import Tokenizer
from lmscale.training import checkpoint as ckpt
from lmscale.training import distributed as dist_util
from lmscale.training.batches import Batch, StepBatches, to_device, validation_batches
from lmscale.training.checkpoint import RunState
from lmscale.training.device import resolve_device
from lmscale.training.engine import Engine, build_engine, compute_loss, sync
from lmscale.training.init_from import parent_weights, take_parent_tokenizer
from lmscale.training.optim import schedule_steps
from lmscale.training.rundir import RunDir
from lmscale.training.trackers import TRACKERS_FILE, check_trackers

_ABSOLUTE_POSITIONS = ("learned", "sinusoidal", "rope")
# what a run directory holds: a directory of only these (and temporaries) is one lmscale wrote
RUN_DIR_ENTRIES = frozenset({CONFIG_FILE, SUMMARY_FILE, METRICS_FILE, CHECKPOINTS_DIR, TOKENIZER_DIR, SHARD_DIR,
                             "tensorboard", TRACKERS_FILE, "wandb", LOCK_FILE, MARKER})
# what a run writes in its directory: the names its marker's manifest claims before it starts
RUN_DIR_WRITES = RUN_DIR_ENTRIES | {ckpt.WRITE_TEST}


@dataclass
class Run:
    """A run ready to train: what `Trainer` receives."""

    cfg: RunConfig  # the resolved copy: data.tokenizer is the tokenizer this run uses
    info: dist_util.DistInfo
    run_dir: Path
    tokenizer: Tokenizer
    engine: Engine
    batches: StepBatches
    val_batches: Optional[list[tuple[Batch, int]]]  # this process's share; None: no validation
    bytes_per_token: Optional[float]  # of the validation split, for bits per byte
    state: RunState  # restored from the newest checkpoint, or a fresh start with its schedule
    resumed: bool
    step_time_estimate: Optional[float]  # the measured step time a wall-clock budget planned with
    flops_per_token: float


def build_run(cfg: RunConfig, info: dist_util.DistInfo, resume: bool = False, trust_checkpoint: bool = False) -> Run:
    """Check, prepare and build everything a run of `cfg` needs (continuing its newest checkpoint
    when `resume`; a pickled state of an older checkpoint in full only when `trust_checkpoint`);
    every process calls it."""
    cfg = with_absolute_paths(cfg)
    device = resolve_device(cfg.train.device, info, "train.device")  # an unavailable device fails before data
    check_trackers(cfg.train.report_to)  # and so does a tracker that is not installed
    run_dir = _checked_run_dir(cfg, info)
    tc = cfg.train
    micro, accum = _batching(tc, info)
    _check_budget(tc)
    _check_memory(cfg, micro, device)
    if tc.init_from is not None and (not resume or cfg.data.tokenizer is None):
        cfg = take_parent_tokenizer(cfg, run_dir, info)  # continued pretraining (`--init-from`)
    cfg, tokenizer, objective, shard_dir = _prepare_data(cfg, run_dir, resume, info)
    if info.is_main:
        RunDir(run_dir).save_config(cfg)
    raw_len = objective.raw_length(tc.seq_len)
    train_ds, valid_ds = _open_splits(shard_dir, raw_len)
    sampler = WindowSampler(train_ds, raw_len, tc.batch_size, tc.seed, rank=info.rank, world_size=info.world_size)
    val_batches, bytes_per_token = _validation(valid_ds, objective, raw_len, tc, micro, info)

    checkpoint, resume_state = _resume_point(run_dir, info, trust_checkpoint) if resume else (None, None)
    if tc.init_from is not None and checkpoint is None:  # a fresh start from the parent's weights
        with parent_weights(tc.init_from) as weights:
            engine = build_engine(cfg, info, weights)
    else:
        engine = build_engine(cfg, info, checkpoint)
    batches = StepBatches(sampler, objective, tc.seed, micro, accum, info.rank,
                          pin_memory=engine.device.type == "cuda")
    flops_per_token = cfg.model.training_flops_per_token(tc.seq_len)  # PaLM convention (metrics.py)
    step_time = None
    if resume_state is not None:
        state = _restore(resume_state, engine, batches, info)
    else:
        if tc.max_time_s is not None:
            step_time = _probe_step_time(engine, objective, train_ds, raw_len, tc.seed, micro, accum, info)
        total_steps, budget = schedule_steps(tc, flops_per_token, step_time)
        state = RunState(total_steps=total_steps, budget=budget)
    return Run(cfg, info, run_dir, tokenizer, engine, batches, val_batches, bytes_per_token, state,
               resumed=resume_state is not None, step_time_estimate=step_time, flops_per_token=flops_per_token)


def looks_like_run_dir(path: Path) -> bool:
    """A directory with a run's config.yaml and nothing but what runs write (a run directory
    written before run directories carried the output marker)."""
    return RunDir(path).has_config() and only_known_entries(path, RUN_DIR_ENTRIES)


def open_run_dir(cfg: RunConfig, info: dist_util.DistInfo, resume: bool = False,
                 overwrite: bool = False) -> Optional[DirectoryLock]:
    """Check that the run directory may be written and take its lock (the first process holds it
    for the run's life; the caller releases it). A fresh run refuses a file, or a non-empty
    directory that is not a run directory, unless `overwrite`; a second writer of the same run
    directory is refused while the first lives, and so is a resume whose config changes what the
    run trains (`RunDir.check_resume`). Checkpoints reached through a symbolic link are refused
    before anything is removed; then the temporaries that a killed run left are removed."""
    if cfg.out is None:
        raise ConfigError("no run directory: set --out RUN_DIR (or `out:` in the config file)")
    run_dir = RunDir(cfg.out)
    lock, error = None, None
    if info.is_main:
        try:
            if not resume:
                try:
                    check_output_dir(run_dir, "--out", overwrite=overwrite, ours=looks_like_run_dir, kinds=("run",),
                                     names=RUN_DIR_WRITES)
                except OutputError as exc:
                    raise ConfigError(f"cannot write to the run directory: {exc}") from None
                run_dir.check_no_symlinks()
                check_sources(cfg)  # a missing input is refused before the directory is touched
            try:  # the lock first: nothing is written into a directory another run holds
                lock = run_dir.lock().acquire()
            except OSError as exc:
                raise ConfigError(f"cannot write to the run directory {run_dir.root} ({exc.strerror or exc}); "
                                  "choose another --out") from None
            run_dir.check_no_symlinks()
            if resume:
                run_dir.check_resume(cfg)
            problem = ckpt.is_writable_dir(run_dir.root)
            if problem:
                raise ConfigError(f"cannot write to the run directory {run_dir.root} ({problem}); "
                                  "choose another --out")
            mark_output_dir(run_dir.root, "run", names=RUN_DIR_WRITES)
            clean_stale_temporaries(run_dir.root, subdirs=(CHECKPOINTS_DIR,), owned=_written_by_runs)
        except LmscaleError as exc:
            if lock is not None:
                lock.release()
            error = str(exc)
    error = dist_util.broadcast_object(error, info)
    if error:
        raise ConfigError(error)
    return lock


def _written_by_runs(name: str) -> bool:
    """A name a run writes in its directory or its checkpoints: the only temporaries it may clean."""
    return name in RUN_DIR_ENTRIES or name in (ckpt.WRITE_TEST, BEST_DIR) or parse_step_dir(name) is not None


def with_absolute_paths(cfg: RunConfig) -> RunConfig:
    """`cfg` with its local paths (corpus file or directory, tokenizer, shards, run directory)
    made absolute, so that the config a run directory keeps resumes from any working directory."""
    d = cfg.data
    fields = {}
    for key in ("corpus", "tokenizer", "shards"):
        value = getattr(d, key)
        # a catalog name (wikitext-2) stays a name; a path that exists, or a tokenizer/shards path, is resolved
        if value is not None and (key != "corpus" or Path(value).exists()):
            fields[key] = str(Path(value).expanduser().absolute())
    out = str(Path(cfg.out).expanduser().absolute()) if cfg.out is not None else None
    if not fields and out == cfg.out:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(d, **fields), out=out)


def _resume_point(run_dir: Path, info: dist_util.DistInfo, trust: bool,
                  ) -> tuple[Optional[Path], Optional[dict[str, Any]]]:
    """The newest complete checkpoint that reads back, and its trainer state; an unreadable one
    (a truncated file) is skipped for the one before it, saying so."""
    found = ckpt.list_checkpoints(run_dir)
    if not found:
        if info.is_main:
            print(f"lmscale pretrain: no checkpoint in {run_dir}; starting from step 0", file=sys.stderr, flush=True)
        return None, None
    problems = []
    for _, path in reversed(found):
        problem = ckpt.checkpoint_problem(path)
        if problem is None:
            try:
                state = ckpt.load_trainer_state(path, trust=trust)
                ckpt.check_trainer_state(state, path / ckpt.STATE_FILE)
            except ckpt.UntrustedStateError:  # a pickled state refused: the user decides
                raise
            except CheckpointError as exc:
                problem = str(exc)
        if problem is None:
            if problems and info.is_main:
                print(f"lmscale pretrain: warning: {'; '.join(problems)}; resuming from {path.name}",
                      file=sys.stderr, flush=True)
            return path, state
        problems.append(f"checkpoint {path.name} is unreadable ({problem})")
    raise ConfigError(f"{run_dir}: no checkpoint reads back ({'; '.join(problems)}); start the run again "
                      "without --resume")


def _checked_run_dir(cfg: RunConfig, info: dist_util.DistInfo) -> Path:
    """The run directory `open_run_dir` checked and locked, with the config saved early."""
    if cfg.out is None:
        raise ConfigError("no run directory: set --out RUN_DIR (or `out:` in the config file)")
    run_dir = RunDir(cfg.out)
    if info.is_main and not run_dir.config_path.exists():
        run_dir.save_config(cfg)  # early, so a run killed while preparing data can --resume
    return run_dir.root


def _batching(tc: TrainConfig, info: dist_util.DistInfo) -> tuple[int, int]:
    """Sequences per forward pass, and forward passes per optimizer step, on each process."""
    if info.world_size > 1 and tc.batch_size % info.world_size:
        raise ConfigError(
            f"train.batch_size={tc.batch_size} is not divisible by the {info.world_size} processes; "
            "change the batch size or --nproc_per_node"
        )
    per_rank = tc.batch_size // info.world_size
    micro = min(tc.micro_batch_size or per_rank, per_rank)
    if per_rank % micro:
        raise ConfigError(
            f"each of {info.world_size} processes gets {per_rank} sequences, not a multiple of "
            f"train.micro_batch_size={micro}"
        )
    return micro, per_rank // micro


def _check_memory(cfg: RunConfig, micro: int, device: torch.device) -> None:
    """Refuse, before data or weights are touched, a run that cannot fit in memory by a wide
    margin, saying what it would need: fp32 weights, gradients and two Adam moments (16 bytes a
    parameter), and a coarse lower bound on one micro-batch's activations (every layer keeps at
    least a few d_model-wide tensors per token, and the logits are seq_len x vocab per sequence)."""
    m, tc = cfg.model, cfg.train
    params = m.parameter_counts()["total"]
    state = 16.0 * params
    tokens = float(micro) * tc.seq_len
    layers = max(m.n_layers + (m.n_decoder_layers or 0), 1)
    activations = 4.0 * tokens * (8.0 * m.d_model * layers + 2.0 * m.vocab_size)
    need = state + activations
    if device.type == "cuda":
        have = float(torch.cuda.get_device_properties(device).total_memory)
    else:
        try:
            have = float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return
    if need <= have:
        return
    gb = 1e9
    raise ConfigError(
        f"this run would need at least {need / gb:,.1f} GB ({params:,} parameters: {state / gb:,.1f} GB of fp32 "
        f"weights, gradients and Adam state; one micro-batch of {micro} x {tc.seq_len} tokens: "
        f"{activations / gb:,.1f} GB of activations) and {device} has {have / gb:,.1f} GB; shrink --model.d_model/"
        f"--model.n_layers or --train.batch_size (or set --train.micro_batch_size)")


def _check_budget(tc: TrainConfig) -> None:
    if tc.max_steps is None and tc.max_tokens is None and tc.max_flops is None and tc.max_time_s is None:
        raise ConfigError(
            "no training budget: set one of train.max_steps, train.max_tokens, train.max_flops "
            "or train.max_time_s (e.g. --max-steps 200)"
        )


def _prepare_data(cfg: RunConfig, run_dir: Path, resume: bool, info: dist_util.DistInfo,
                  ) -> tuple[RunConfig, Tokenizer, Objective, Path]:
    """The resolved config, tokenizer, objective and shard directory. The objective's lengths are
    checked against the model before the shards are built, which can take long."""
    wait = functools.partial(dist_util.barrier, info)
    # a fresh run trains its own tokenizer; a resumed one reuses the one it trained
    tokenizer, tokenizer_dir = prepare_tokenizer(cfg, run_dir / TOKENIZER_DIR, reuse=resume,
                                                 writer=info.is_main, wait=wait)
    if cfg.data.tokenizer is None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=str(tokenizer_dir)))
    objective = make_objective(cfg, tokenizer)
    _check_positions(cfg, objective)
    shard_dir = prepare_shards(cfg, tokenizer, run_dir / SHARD_DIR, writer=info.is_main, wait=wait)
    return cfg, tokenizer, objective, shard_dir


def _check_positions(cfg: RunConfig, objective: Objective) -> None:
    m = cfg.model
    lengths = {"encoder input": cfg.train.seq_len}
    if hasattr(objective, "targets_length"):
        lengths["decoder input (span targets)"] = objective.targets_length
    if m.position in _ABSOLUTE_POSITIONS:
        for what, n in lengths.items():
            if n > m.max_positions:
                raise ConfigError(
                    f"{what} length {n} is longer than model.max_positions={m.max_positions} "
                    f"({m.position} positions); lower train.seq_len or raise model.max_positions"
                )


def _open_splits(shard_dir: Path, raw_len: int) -> tuple[TokenDataset, Optional[TokenDataset]]:
    """The training split, and the validation split when it holds at least one window."""
    train_ds = TokenDataset.open(shard_dir, "train")
    if train_ds.num_tokens < raw_len + 1:
        raise ConfigError(
            f"the training split has {train_ds.num_tokens} tokens, fewer than one window of "
            f"{raw_len}; use a bigger corpus or a shorter train.seq_len"
        )
    try:
        valid_ds = TokenDataset.open(shard_dir, "valid")
    except (FileNotFoundError, LmscaleError, KeyError):
        return train_ds, None
    return train_ds, (valid_ds if valid_ds.num_tokens >= raw_len + 1 else None)


def _validation(valid_ds: Optional[TokenDataset], objective: Objective, raw_len: int, tc: TrainConfig,
                micro: int, info: dist_util.DistInfo) -> tuple[Optional[list[tuple[Batch, int]]], Optional[float]]:
    """This process's validation batches (built once: every evaluation sees the same inputs) and
    the split's UTF-8 bytes per token."""
    if valid_ds is None or tc.eval_batches <= 0:
        return None, None
    # eval_batches global batches, split over the processes (a multiple of their number, so each
    # runs as many forward passes: FSDP's collectives need that)
    windows = validation_windows(valid_ds, raw_len, tc.eval_batches * tc.batch_size)
    windows = windows[: len(windows) - len(windows) % info.world_size]
    if not len(windows):
        return None, None
    batches = validation_batches(objective, np.asarray(windows, dtype=np.int64), tc.seed, micro,
                                 info.rank, info.world_size)
    n_bytes = dict(valid_ds.meta).get("n_bytes")
    return batches, (float(n_bytes) / float(valid_ds.num_tokens) if n_bytes else None)


def _restore(state: dict[str, Any], engine: Engine, batches: StepBatches, info: dist_util.DistInfo) -> RunState:
    """Optimizer, RNG and sampler states and the counters of a checkpoint (its weights are
    loaded when the model is built)."""
    dist_util.load_full_state_dicts(engine.model, engine.optimizer, None, state["optimizer"])
    rngs = state.get("rng_by_rank") or [state.get("rng")]
    ckpt.set_rng_state(rngs[info.rank] if info.rank < len(rngs) else rngs[0])
    batches.load_sampler_state(state["sampler"])
    if engine.scaler is not None and state.get("grad_scaler"):
        engine.scaler.load_state_dict(state["grad_scaler"])
    return RunState.from_checkpoint(state)


def _probe_step_time(engine: Engine, objective: Objective, train_ds: TokenDataset, raw_len: int, seed: int,
                     micro: int, accum: int, info: dist_util.DistInfo) -> float:
    """Seconds per optimizer step, from a few timed forward/backward passes (no optimizer update,
    RNG restored afterwards); every process plans with the slowest one's time."""
    rng_before = ckpt.rng_state()
    windows = np.asarray(train_ds.tokens[:raw_len], dtype=np.int64)[None].repeat(micro, 0)
    batch = to_device(objective.build(windows, example_rngs(seed, 0, 0, micro, stream=2)), engine.device)
    times = []
    engine.model.train()
    for _ in range(3):
        t0 = time.perf_counter()
        with engine.autocast():
            loss = compute_loss(engine.model, batch)
        loss.backward()
        sync(engine.device)
        times.append(time.perf_counter() - t0)
    engine.optimizer.zero_grad(set_to_none=True)
    ckpt.set_rng_state(rng_before)
    per_micro = float(np.median(times[1:]))
    slowest = dist_util.all_reduce_max(per_micro * accum, info, dist_util.collective_device(info, engine.device))
    return slowest * 1.05  # optimizer step and data, roughly
