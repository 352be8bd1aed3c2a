"""Launching one sweep run: the `lmscale pretrain` subprocess, its registry record, Slurm arrays.

A run is an ordinary `lmscale pretrain` subprocess (torchrun-prefixed for several devices per
run). The worker that claimed it sends the registry a heartbeat while it trains, then reads the
run directory it left (summary and metrics) into the registry: finished, failed with its error,
or stopped (interrupted, resumable from its checkpoints).

Slurm: `write_slurm_script` writes a job array with one task per run; each task runs
`lmscale sweep exec REGISTRY --index $SLURM_ARRAY_TASK_ID`, which claims its run in the
registry and records the result there.
"""
from __future__ import annotations

import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from lmscale.config import RunConfig, from_dict
from lmscale.data.shards import ShardIndex
from lmscale.errors import LmscaleError
from lmscale.io import atomic_write_text
from lmscale.io.locks import lock_holder
from lmscale.io.rundir import RunLayout, RunSummary
from lmscale.scaling.registry import Registry, RunRecord
from lmscale.training.metrics import read_metrics
from lmscale.training.rundir import RunDir

LAUNCHERS = ("local", "torchrun", "slurm")
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# exit codes of a child ended by a signal through a shell or torchrun: SIGINT, SIGKILL, SIGTERM
SIGNAL_EXIT_CODES = (130, 137, 143)


@dataclass
class RunOutcome:
    run_id: str
    name: str
    status: str  # finished | failed | skipped | stopped
    resumed: bool = False
    error: str | None = None


def pretrain_command(config_path: Path, run_dir: Path, resume: bool, launcher: str = "local",
                     nproc_per_node: int = 1, python: str | None = None) -> list[str]:
    """The `lmscale pretrain` invocation of one run (torchrun-prefixed for multi-device runs)."""
    py = python or sys.executable
    if launcher == "torchrun":
        prefix = [py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
                  "-m", "lmscale"]
    else:
        prefix = [py, "-m", "lmscale"]
    if resume:  # a resumed run continues with the config saved in its own run directory
        return prefix + ["pretrain", "--resume", str(run_dir), "--no-progress"]
    return prefix + ["pretrain", "--config", str(config_path), "--no-progress"]


# --------------------------------------------------------------------------- reading a run dir

def read_run_dir(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Summary (a `RunSummary`) and curves of a `lmscale pretrain` run directory (missing pieces
    are None/[])."""
    run_dir = Path(run_dir)
    out: dict[str, Any] = {"summary": RunLayout(run_dir).read_summary(), "loss_curve": [], "train_curve": []}
    evals: dict[int, list[float]] = {}
    trains: dict[int, list[float]] = {}
    for ev in read_metrics(run_dir) or []:
        step = ev.get("step")
        if step is None:
            continue
        if ev.get("val_loss") is not None:
            evals[int(step)] = [int(step), float(ev.get("tokens") or 0), float(ev["val_loss"])]
        elif ev.get("event") == "train" and ev.get("loss") is not None:
            trains[int(step)] = [int(step), float(ev.get("tokens") or 0), float(ev["loss"])]
    out["loss_curve"] = [evals[k] for k in sorted(evals)]
    out["train_curve"] = [trains[k] for k in sorted(trains)]
    return out


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    return bool(RunLayout(run_dir).step_dirs())


def unique_training_tokens(config: dict[str, Any]) -> float | None:
    """Tokens in the training split a run samples from (its shards' index), None when unknown:
    with the tokens trained, the epochs that `fit --law data-constrained` needs."""
    shards = (config.get("data") or {}).get("shards")
    if not shards and config.get("out"):
        shards = str(Path(config["out"]) / "shards")
    try:
        return float(ShardIndex.load(shards).split_info("train")["num_tokens"]) if shards else None
    except (LmscaleError, OSError, KeyError, TypeError, ValueError):
        return None


def run_results(info: dict[str, Any], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The registry columns a run directory fills in (see `read_run_dir`); with the run's config
    also its unique training tokens and epochs."""
    s = info["summary"].to_dict() if info["summary"] is not None else {}
    res: dict[str, Any] = {"loss_curve": info["loss_curve"], "train_curve": info["train_curve"]}
    for key in ("final_val_loss", "best_val_loss", "wall_s", "steps"):
        if s.get(key) is not None:
            res[key] = s[key]
    if s.get("tokens") is not None:
        res["tokens_trained"] = float(s["tokens"])
    if s.get("flops") is not None:
        res["flops_trained"] = float(s["flops"])
    params = s.get("params") or {}
    for k in ("total", "embedding", "non_embedding"):
        if params.get(k) is not None:
            res[f"params_{k}"] = int(params[k])
    curve = info["loss_curve"]
    if "final_val_loss" not in res and curve:
        res["final_val_loss"] = curve[-1][2]
    if "best_val_loss" not in res and curve:
        res["best_val_loss"] = min(c[2] for c in curve)
    unique = unique_training_tokens(config) if config else None
    if unique:
        res["unique_tokens"] = unique
        if res.get("tokens_trained") is not None:
            res["epochs"] = res["tokens_trained"] / unique
    return res


# --------------------------------------------------------------------------- one run

def execute_run(reg: Registry, rec: RunRecord, out_dir: Path, worker: str,
                command: Callable[[Path, Path, bool], list[str]], threads: int | None = None,
                heartbeat_s: float = 30.0, stop: threading.Event | None = None,
                active: dict[str, subprocess.Popen] | None = None) -> RunOutcome:
    """Train one claimed run in a subprocess and record its outcome in the registry.

    A run whose directory already says finished is recorded without training; one with
    checkpoints is resumed, unless the sweep now asks that run for a config it may not continue
    with (the resume policy of `RunDir.check_resume`): then it is recorded as failed, untouched.
    `stop` asks the run to stop at the next heartbeat; `active` maps the run id to its process
    while it runs, so the caller can signal it directly.
    """
    run_dir = Path(rec.run_dir or out_dir / "runs" / rec.name)
    holder = lock_holder(run_dir)
    if holder is not None:
        # a training process still writes this run (e.g. one a killed sweep left behind): never
        # start a second writer; the registry names that process, so the run is claimed again
        # only once it has ended
        note = (f"not started: process {holder.get('pid')} on {holder.get('host') or socket.gethostname()} is "
                f"still writing {run_dir}")
        reg.update(rec.run_id, status="running", pid=holder.get("pid"), host=holder.get("host") or None,
                   worker=f"{holder.get('host')}:{holder.get('pid')}:lock", error=note)
        return RunOutcome(rec.run_id, rec.name, "skipped", error=note)
    info = read_run_dir(run_dir)
    if info["summary"] is not None and info["summary"].status == "finished":
        reg.finish(rec.run_id, **run_results(info, rec.config))
        return RunOutcome(rec.run_id, rec.name, "finished")
    resume = has_checkpoint(run_dir)
    if resume:
        try:
            RunDir(run_dir).check_resume(from_dict(RunConfig, rec.config))
        except LmscaleError as exc:
            error = f"{run_dir}: {exc}"
            reg.fail(rec.run_id, error=error[-4000:], **run_results(info))
            return RunOutcome(rec.run_id, rec.name, "failed", True, error)
    cfg_path = out_dir / "configs" / f"{rec.name}.yaml"
    atomic_write_text(cfg_path, yaml.safe_dump(rec.config, sort_keys=False))
    rc, interrupted, log_text = _supervise(
        command(cfg_path, run_dir, resume), _child_env(threads), out_dir / "logs" / f"{rec.name}.log",
        heartbeat=lambda: reg.heartbeat(rec.run_id, worker), heartbeat_s=heartbeat_s, stop=stop,
        active=active, key=rec.run_id)
    return _record(reg, rec, run_dir, resume, rc, interrupted, log_text, stop)


def _child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _supervise(cmd: list[str], env: dict[str, str], log_path: Path, heartbeat: Callable[[], None],
               heartbeat_s: float, stop: threading.Event | None, active: dict[str, subprocess.Popen] | None,
               key: str) -> tuple[int | None, bool, str]:
    """Run `cmd` with its output in `log_path`, calling `heartbeat` while it runs.

    Returns (exit code or None, whether it was interrupted, the log). Anything that interrupts
    the wait (Ctrl-C, a `stop` request) terminates the child, and kills it 30 s later; it is
    reported, not raised, so the run is recorded as stopped.
    """
    rc: int | None = None
    interrupted = False
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in log_path.parent.glob(f".{log_path.name}.*.tmp"):  # left by earlier versions' killed sweeps
        stale.unlink(missing_ok=True)
    # the log is appended to as the run goes (one section per attempt), never a temporary to rename
    with open(log_path, "a", encoding="utf-8") as log:
        start = log.tell()
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent())
        if active is not None:
            active[key] = proc
        try:
            rc = _wait(proc, heartbeat, heartbeat_s, stop)
        except BaseException:
            interrupted = True
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        finally:
            if active is not None:
                active.pop(key, None)
    with open(log_path, "rb") as fh:
        fh.seek(start)
        log_text = fh.read().decode("utf-8", "replace")
    return rc, interrupted, log_text


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, what the child runs before exec so that it gets SIGTERM when the thread that
    started it dies (the sweep killed, even by SIGKILL): a run never outlives its sweep to keep
    writing. SIGTERM, not SIGKILL, so that torchrun passes it on to its workers."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def _wait(proc: subprocess.Popen, heartbeat: Callable[[], None], heartbeat_s: float,
          stop: threading.Event | None) -> int:
    while True:
        try:
            return proc.wait(timeout=heartbeat_s)
        except subprocess.TimeoutExpired:
            heartbeat()
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt from None


def _record(reg: Registry, rec: RunRecord, run_dir: Path, resume: bool, rc: int | None, interrupted: bool,
            log_text: str, stop: threading.Event | None) -> RunOutcome:
    """Read what the run left and record it: stopped (resumable), finished, or failed with its error."""
    info = read_run_dir(run_dir)
    results = run_results(info, rec.config)
    summary: RunSummary | None = info["summary"]
    status, summary_error = (summary.status, summary.error) if summary is not None else (None, None)
    killed = rc is not None and (rc < 0 or rc in SIGNAL_EXIT_CODES)
    if interrupted or killed or (stop is not None and stop.is_set() and rc != 0) \
            or status == "stopped":
        # interrupted (Ctrl-C, a signal, the engine's own stop): resumable from its checkpoints
        note = summary_error or (f"interrupted (exit code {rc})" if rc is not None else "interrupted")
        reg.release(rec.run_id, status="stopped", error=str(note)[-4000:], **results)
        return RunOutcome(rec.run_id, rec.name, "stopped", resume, str(note))
    if rc == 0 and status == "finished":
        reg.finish(rec.run_id, **results)
        return RunOutcome(rec.run_id, rec.name, "finished", resume)
    err = summary_error or ""
    tail = "\n".join(log_text.splitlines()[-25:])
    error = (f"exit code {rc}; " if rc else "") + (f"status {status}; " if summary is not None else "") + \
        (err or tail or "no output").strip()
    reg.fail(rec.run_id, error=error[-4000:], **results)
    return RunOutcome(rec.run_id, rec.name, "failed", resume, error)


# --------------------------------------------------------------------------- Slurm

SLURM_HEADER = """\
# lmscale sweep {name}: one Slurm array task per run ({n} runs).
#
# Shared-filesystem requirement: every node must see {out}
# (run directories, checkpoints, the shared tokenizer/shards) and the registry
# {registry} at the same path, on a filesystem with working POSIX (fcntl)
# locks (NFSv4 with lockd, Lustre or GPFS with locking enabled). The registry
# uses SQLite's rollback journal (WAL needs shared memory on one host). Without
# working locks, do not run tasks concurrently (use --array=...%1).
#
# Each task claims its run in the registry, skips it when it is finished or
# taken by a live task, resumes it from its checkpoints when it was interrupted,
# and records its losses or its error. Re-submitting this script is safe.
"""


def write_slurm_script(name: str, out: Path, registry: Path, n_runs: int,
                       directives: list[str], nproc_per_node: int = 1) -> Path:
    """A job-array script for sweep `name` whose tasks each run `lmscale sweep exec` for one run index."""
    out = out.resolve()
    registry = Path(registry).resolve()
    lines = ["#!/bin/bash", f"#SBATCH --job-name=lmscale-{name}", f"#SBATCH --array=0-{max(0, n_runs - 1)}",
             f"#SBATCH --output={out}/logs/slurm-%A_%a.out"]
    if nproc_per_node > 1:
        lines.append(f"#SBATCH --gpus-per-task={nproc_per_node}")
    lines += [d if d.startswith("#SBATCH") else f"#SBATCH {d if d.startswith('-') else '--' + d}"
              for d in directives]
    lines.append(SLURM_HEADER.format(name=name, n=n_runs, out=out, registry=registry))
    launcher = "torchrun" if nproc_per_node > 1 else "local"
    lines.append("set -euo pipefail")
    lines.append(f"mkdir -p {shlex.quote(str(out / 'logs'))}")
    lines.append(f"exec {shlex.quote(sys.executable)} -m lmscale sweep exec {shlex.quote(str(registry))} "
                 f"--sweep {shlex.quote(name)} --index \"$SLURM_ARRAY_TASK_ID\" "
                 f"--launcher {launcher} --nproc-per-node {nproc_per_node}")
    path = out / f"{name}.sbatch"
    atomic_write_text(path, "\n".join(lines) + "\n")
    os.chmod(path, 0o755)
    return path
