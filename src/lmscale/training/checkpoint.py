"""Training checkpoints: a model dir plus `trainer_state.pt`, written as one atomic directory.

`RUN_DIR/checkpoints/step_00000100/` holds the model dir files (config.json, model.safetensors,
tokenizer) and `trainer_state.pt` (optimizer, RNG states, sampler state, step/tokens, schedule
length, counters). A directory without `trainer_state.pt` is never a resume point, and because
the whole directory is renamed into place only when complete, a kill at any moment leaves the
previous checkpoint intact. `checkpoints/best/` is a model dir of the best validation loss.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file

from lmscale.config import ModelConfig
from lmscale.errors import CheckpointError
from lmscale.io import atomic_directory, atomic_path, atomic_write_json
from lmscale.models import build_model
from lmscale.models.serialization import WEIGHTS_FILE, load_state_checked, write_model_files
from lmscale.training import distributed as dist_util

STATE_FILE = "trainer_state.pt"
_STEP_RE = re.compile(r"step_(\d+)")


@dataclass
class RunState:
    """Where a run is, besides its model, optimizer, RNG and sampler states: the counters and the
    planned schedule a checkpoint carries (under the same keys in `trainer_state.pt`)."""

    total_steps: int
    budget: str  # the budget that set the schedule length: steps, tokens, flops or time
    step: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    train_time_s: float = 0.0
    bad_steps: int = 0
    consecutive_bad: int = 0
    best_val_loss: Optional[float] = None
    last_val_loss: Optional[float] = None
    last_eval_step: Optional[int] = None

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> "RunState":
        return cls(
            total_steps=int(state["total_steps"]),
            budget=state.get("budget", "steps"),
            step=int(state["step"]),
            tokens=int(state["tokens"]),
            wall_s=float(state["wall_s"]),
            train_time_s=float(state.get("train_time_s", state["wall_s"])),
            bad_steps=int(state["bad_steps"]),
            consecutive_bad=int(state["consecutive_bad"]),
            best_val_loss=state.get("best_val_loss"),
            last_val_loss=state.get("last_val_loss"),
            last_eval_step=state.get("last_eval_step"),
        )


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete step checkpoints (with trainer state), oldest first."""
    ck = Path(run_dir) / "checkpoints"
    if not ck.is_dir():
        return []
    out = []
    for d in ck.iterdir():
        m = _STEP_RE.fullmatch(d.name)
        if m and d.is_dir() and (d / STATE_FILE).is_file():
            out.append((int(m.group(1)), d))
    return sorted(out)


def latest_checkpoint(run_dir: str | Path) -> Optional[Path]:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    trainer_state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write `checkpoints/step_N` atomically, then prune to the newest `keep_last`."""
    target = Path(run_dir) / "checkpoints" / step_dir_name(step)
    with atomic_directory(target) as tmp:
        write_model_files(model, tokenizer, tmp)
        with atomic_path(tmp / STATE_FILE) as p:
            torch.save(trainer_state, p)
    prune_checkpoints(run_dir, keep_last)
    return target


def save_best(run_dir: str | Path, model: torch.nn.Module, tokenizer: Any, info: dict[str, Any]) -> Path:
    """Replace `checkpoints/best` (a model dir) atomically; `best.json` says which step/loss."""
    target = Path(run_dir) / "checkpoints" / "best"
    with atomic_directory(target) as tmp:
        write_model_files(model, tokenizer, tmp)
        atomic_write_json(tmp / "best.json", info)
    return target


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    found = list_checkpoints(run_dir)
    for _, d in found[: max(len(found) - max(int(keep_last), 1), 0)]:
        shutil.rmtree(d, ignore_errors=True)
    # leftovers of interrupted atomic writes
    ck = Path(run_dir) / "checkpoints"
    for d in ck.glob(".step_*.tmp"):
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)


def clear_checkpoints(run_dir: str | Path) -> None:
    """Remove step checkpoints and `best` (a fresh run that reuses a run directory)."""
    ck = Path(run_dir) / "checkpoints"
    if not ck.is_dir():
        return
    for d in ck.iterdir():
        if d.is_dir() and (_STEP_RE.fullmatch(d.name) or d.name == "best"):
            shutil.rmtree(d, ignore_errors=True)


def load_trainer_state(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} has no {STATE_FILE}; it is not a resumable checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def load_model_weights(model: torch.nn.Module, ckpt_dir: str | Path) -> None:
    """Load `model.safetensors` into `model` in place, with the model package's strict check."""
    path = Path(ckpt_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete")
    state = load_file(str(path), device=str(next(model.parameters()).device))
    load_state_checked(model, state, str(ckpt_dir))


def model_and_optimizer_to_save(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                                model_config: ModelConfig, info: dist_util.DistInfo,
                                ) -> tuple[Optional[torch.nn.Module], dict]:
    """The plain model and the full optimizer state of a (wrapped) training model. Under FSDP the
    gathering is collective, so every process calls this, and only rank 0 gets a model: a CPU
    copy built from the gathered weights."""
    model_sd, optim_sd = dist_util.full_state_dicts(model, optimizer)
    if not dist_util.is_fsdp(model):
        return dist_util.unwrap(model), optim_sd
    if not info.is_main:
        return None, optim_sd
    # building draws initial weights from the global RNG; a fork keeps the run's dropout stream
    # where an uninterrupted run and a resumed one both have it
    with torch.random.fork_rng(devices=[]):
        cpu_model = build_model(model_config)
    cpu_model.load_state_dict(model_sd)
    return cpu_model, optim_sd


def is_writable_dir(path: str | Path) -> Optional[str]:
    """None when `path` can be created and written, else the reason."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return str(exc)
    if not os.access(p, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        with atomic_path(p / ".write_test") as tmp:
            tmp.write_bytes(b"ok")
        (p / ".write_test").unlink()
    except OSError as exc:
        return str(exc)
    return None
