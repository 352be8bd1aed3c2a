"""Cooldown branches of a WSD run (Hägele et al. 2024): one stable run, many finished models.

A warm-up-stable-decay run at its stable learning rate can be finished at any checkpoint by a
short cooldown. `lmscale pretrain --branch-from PARENT --at-tokens D --decay-fraction f --out NEW`
(or a run config with `train.branch`) copies the parent's checkpoint at D tokens into NEW and
trains f*D more tokens with the learning rate decaying from the stable value to the floor. The
parent is only read. The branch is then an ordinary run directory: its config is that of a single
WSD run whose decay starts at D (so a run trained from scratch with it reproduces the branch step
for step), its lineage `{parent, at_tokens, decay_fraction}` is in `train.branch` and in its
summary, its step and token counters continue the parent's, and its FLOPs are the parent's up to
D plus the cooldown's. `--resume NEW` continues it like any run.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from lmscale.config import TRACKER_KEYS, ConfigError, RunConfig, to_dict
from lmscale.errors import LmscaleError
from lmscale.io import atomic_directory, atomic_write_text
from lmscale.io.outputs import OutputError, check_output_dir, mark_output_dir
from lmscale.training import checkpoint as ckpt
from lmscale.training import distributed as dist_util
from lmscale.training.build import RUN_DIR_WRITES, looks_like_run_dir, with_absolute_paths
from lmscale.training.optim import in_stable_phase, tokens_per_step, warmup_steps_for
from lmscale.training.rundir import RESUME_MAY_CHANGE, RunDir

__all__ = ["branch_config", "cooldown_steps", "parent_checkpoint", "start_branch"]

# what a branch sets from its parent and point rather than taking from the config it was asked with
_SCHEDULE_KEYS = ("schedule", "max_steps", "max_tokens", "max_flops", "max_time_s", "warmup_steps",
                  "warmup_fraction", "decay_fraction", "decay_shape", "branch_points", "branch", "early_stopping")


def cooldown_steps(at_step: int, decay_fraction: float) -> int:
    """Optimizer steps of a cooldown of `decay_fraction` times the tokens before it (at least one)."""
    return max(1, int(round(float(decay_fraction) * int(at_step))))


def branch_config(requested: RunConfig, parent: RunConfig, parent_total_steps: int) -> RunConfig:
    """The config a branch trains with: `requested` (which names the branch in `train.branch`)
    with the schedule of one WSD run that warms up as the parent did, stays at the stable rate to
    the branch point and decays over the cooldown, and the parent's tokenizer and shards."""
    lineage = dict(requested.train.branch or {})
    tps = tokens_per_step(parent.train)
    at_step = int(lineage["at_tokens"]) // tps
    total = at_step + cooldown_steps(at_step, lineage["decay_fraction"])
    parent_dir = Path(lineage["parent"]).expanduser().absolute()
    train = dataclasses.replace(
        requested.train, schedule="wsd", max_steps=total, max_tokens=total * tps, max_flops=None, max_time_s=None,
        warmup_steps=warmup_steps_for(parent_total_steps, parent.train), decay_fraction=(total - at_step) / total,
        branch_points=[], early_stopping=0, branch={"parent": str(parent_dir), "at_tokens": at_step * tps,
                                                    "decay_fraction": float(lineage["decay_fraction"])})
    data = dataclasses.replace(requested.data, tokenizer=parent.data.tokenizer,
                               shards=parent.data.shards or str(parent_dir / "shards"))
    return dataclasses.replace(requested, train=train, data=data)


def _differences(parent: RunConfig, child: RunConfig) -> list[str]:
    """Keys where `child` would train something other than the parent's model on its data."""
    def flat(cfg: RunConfig) -> dict[str, Any]:
        d = yaml.safe_load(yaml.safe_dump(to_dict(cfg)))
        return {f"{s}.{k}": v for s in ("model", "tokenizer", "data", "objective", "train")
                for k, v in (d.get(s) or {}).items()}

    # the branch reads its parent's shards (`data.shards` set above), so where the data came from may differ
    free = set(RESUME_MAY_CHANGE) | {f"train.{k}" for k in (*_SCHEDULE_KEYS, *TRACKER_KEYS)} | {
        "train.eval_every", "train.eval_batches", "data.corpus", "data.tokenizer", "data.shards"}
    a, b = flat(parent), flat(child)
    return [k for k in b if k not in free and a.get(k) != b[k]]


def parent_checkpoint(parent_dir: str | Path, at_tokens: int) -> tuple[RunConfig, Path, dict[str, Any]]:
    """The parent's config, its checkpoint at `at_tokens` and that checkpoint's trainer state;
    a one-line `ConfigError` when there is no such checkpoint or it is past the stable phase."""
    parent_dir = Path(parent_dir)
    rd = RunDir(parent_dir)
    if not rd.has_config():
        raise ConfigError(f"--branch-from {parent_dir}: not a run directory (no config.yaml)")
    parent = rd.load_config()
    tps = tokens_per_step(parent.train)
    found = dict(ckpt.list_checkpoints(parent_dir))
    step = int(at_tokens) // tps
    path = found.get(step) if int(at_tokens) % tps == 0 else None
    if path is None:
        have = ", ".join(f"{s * tps:,}" for s in sorted(found)) or "none"
        raise ConfigError(f"--branch-from {parent_dir}: no checkpoint at {int(at_tokens):,} tokens "
                          f"(checkpoints at: {have} tokens)")
    state = ckpt.load_trainer_state(path)
    total = int(state["total_steps"])
    if not in_stable_phase(step, total, parent.train):
        raise ConfigError(f"--branch-from {parent_dir}: {int(at_tokens):,} tokens (step {step}) is not in the stable "
                          f"phase of its {parent.train.schedule} schedule of {total} steps; branch from a "
                          "checkpoint after the warm-up and before the decay of a wsd run")
    return parent, path, state


def _prepare(requested: RunConfig, overwrite: bool) -> RunConfig:
    lineage = requested.train.branch or {}
    parent, path, state = parent_checkpoint(lineage["parent"], int(lineage["at_tokens"]))
    cfg = with_absolute_paths(branch_config(requested, parent, int(state["total_steps"])))
    diff = _differences(parent, cfg)
    if diff:
        raise ConfigError(f"a branch trains its parent's model on its data: {diff[0]} differs from the parent's "
                          f"({lineage['parent']})")
    out = Path(cfg.out)
    if out.resolve() == Path(lineage["parent"]).resolve():
        raise ConfigError("--out of a branch must be a new run directory, not its parent's")
    try:
        check_output_dir(out, "--out", overwrite=overwrite, ours=looks_like_run_dir, kinds=("run",),
                         names=RUN_DIR_WRITES)
    except OutputError as exc:
        raise ConfigError(f"cannot write to the run directory: {exc}") from None
    rd = RunDir(out)
    lock = rd.lock().acquire()
    try:
        rd.check_no_symlinks()
        mark_output_dir(out, "run", names=RUN_DIR_WRITES)
        ckpt.clear_checkpoints(out)
        rd.remove_summary()
        at_step = int(state["step"])
        _copy_records(Path(lineage["parent"]), out, at_step, cfg)
        rd.save_config(cfg)
        with atomic_directory(rd.step_dir(at_step)) as tmp:
            for f in path.iterdir():
                (shutil.copytree if f.is_dir() else shutil.copy2)(f, tmp / f.name)
            doc = json.loads((tmp / ckpt.STATE_FILE).read_text(encoding="utf-8"))
            doc["state"].update(total_steps=int(cfg.train.max_steps), budget="steps")
            atomic_write_text(tmp / ckpt.STATE_FILE, json.dumps(doc, allow_nan=False))
    finally:
        lock.release()
    return cfg


def _copy_records(parent_dir: Path, out: Path, at_step: int, cfg: RunConfig) -> None:
    """The parent's records up to the branch point, then one `branch` record: the branch's
    curves start where the parent's stable phase left them."""
    lines = []
    src = RunDir(parent_dir).metrics_path
    if src.is_file():
        for line in src.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if int(rec.get("step", 0)) <= at_step and rec.get("event") not in ("end", "checkpoint"):
                lines.append(line)
    lines.append(json.dumps({"event": "branch", "step": at_step, "tokens": cfg.train.branch["at_tokens"],
                             **cfg.train.branch, "total_steps": cfg.train.max_steps}))
    atomic_write_text(RunDir(out).metrics_path, "".join(x + "\n" for x in lines))


def start_branch(requested: RunConfig, info: dist_util.DistInfo, overwrite: bool = False) -> RunConfig:
    """Set up the branch's run directory (the first process writes, the others wait) and return
    the config to resume it with."""
    cfg, error = None, None
    if info.is_main:
        try:
            cfg = _prepare(requested, overwrite)
        except (LmscaleError, OSError) as exc:
            error = str(exc)
    error = dist_util.broadcast_object(error, info)
    if error:
        raise ConfigError(error)
    return dist_util.broadcast_object(cfg, info)
