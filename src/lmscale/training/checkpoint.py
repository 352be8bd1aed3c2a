"""Training checkpoints: a model dir plus the trainer state, written as one atomic directory.

`RUN_DIR/checkpoints/step_00000100/` holds the model dir files (config.json, model.safetensors,
tokenizer) and the trainer state (optimizer, RNG states, sampler state, step/tokens, schedule
length, counters) as `trainer_state.safetensors` (every tensor) beside `trainer_state.json`
(everything else, with references to the tensors). Neither format can run code when read, so a
run directory someone hands over is safe to resume. A directory without the state is never a
resume point, and because the whole directory is renamed into place only when complete, a kill
at any moment leaves the previous checkpoint intact. `checkpoints/best/` is a model dir of the
best validation loss.

Checkpoints written before this format hold a pickled `trainer_state.pt`: it is read with torch's
restricted unpickler (`weights_only=True`), and only with `trust=True` (`--trust-checkpoint`)
with the full unpickler, which can run code from the file.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmscale.config import ModelConfig
from lmscale.errors import CheckpointError
from lmscale.io import atomic_directory, atomic_path, atomic_write_json, atomic_write_text
from lmscale.io.rundir import RunLayout
from lmscale.models import build_model
from lmscale.models.serialization import WEIGHTS_FILE, load_state_checked, write_model_files
from lmscale.training import distributed as dist_util

STATE_FILE = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
LEGACY_STATE_FILE = "trainer_state.pt"


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
    evals_since_best: int = 0

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
            evals_since_best=int(state.get("evals_since_best", 0)),
        )


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete step checkpoints (with trainer state), oldest first."""
    return [(step, d) for step, d in RunLayout(run_dir).step_dirs()
            if (d / STATE_FILE).is_file() or (d / LEGACY_STATE_FILE).is_file()]


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
    keep_steps: frozenset[int] = frozenset(),
) -> Path:
    """Write `checkpoints/step_N` atomically, then prune to the newest `keep_last` (and `keep_steps`)."""
    target = RunLayout(run_dir).step_dir(step)
    with atomic_directory(target) as tmp:
        write_model_files(model, tokenizer, tmp)
        write_trainer_state(tmp, trainer_state)
    prune_checkpoints(run_dir, keep_last, keep_steps)
    return target


def save_best(run_dir: str | Path, model: torch.nn.Module, tokenizer: Any, info: dict[str, Any]) -> Path:
    """Replace `checkpoints/best` (a model dir) atomically; `best.json` says which step/loss."""
    target = RunLayout(run_dir).best
    with atomic_directory(target) as tmp:
        write_model_files(model, tokenizer, tmp)
        atomic_write_json(tmp / "best.json", info)
    return target


def prune_checkpoints(run_dir: str | Path, keep_last: int, keep_steps: frozenset[int] = frozenset()) -> None:
    """Remove all but the newest `keep_last` step checkpoints; those at `keep_steps` (branch
    points) stay whatever their age."""
    found = [(step, d) for step, d in list_checkpoints(run_dir) if step not in keep_steps]
    for _, d in found[: max(len(found) - max(int(keep_last), 1), 0)]:
        shutil.rmtree(d, ignore_errors=True)


def safetensors_problem(path: Path) -> Optional[str]:
    """None when `path` is a complete safetensors file (its header parses and its size is the
    header's plus the tensors' bytes), else what is wrong; reads only the header."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return f"{path.name} is truncated"
            header = json.loads(fh.read(n))
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, ValueError) as exc:
        return f"{path.name} is not a safetensors file ({exc})"
    if not isinstance(header, dict):
        return f"{path.name} is not a safetensors file"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        return f"{path.name} has a malformed header"
    if 8 + n + end != size:
        return f"{path.name} is truncated ({size} bytes, its header describes {8 + n + end})"
    return None


def checkpoint_problem(ckpt_dir: str | Path) -> Optional[str]:
    """None when a step checkpoint's files are complete (weights and trainer state), else why not."""
    d = Path(ckpt_dir)
    problem = safetensors_problem(d / WEIGHTS_FILE)
    if problem is None and (d / STATE_FILE).is_file() and (d / STATE_TENSORS).is_file():
        problem = safetensors_problem(d / STATE_TENSORS)
    return problem


def clear_checkpoints(run_dir: str | Path) -> None:
    """Remove step checkpoints and `best` (a fresh run that reuses a run directory); refused,
    with nothing removed, when a link would take the removal outside the run directory."""
    layout = RunLayout(run_dir)
    layout.check_no_symlinks()
    if not layout.checkpoints.is_dir():
        return
    for d in layout.checkpoints.iterdir():
        if layout.is_checkpoint_entry(d) and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)


def write_trainer_state(ckpt_dir: Path, trainer_state: dict[str, Any]) -> None:
    """The state as JSON plus one safetensors file of its tensors (see the module docstring)."""
    tensors: dict[str, torch.Tensor] = {}
    document = _encode(trainer_state, tensors)
    stored, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.data_ptr() in seen and t.numel():  # safetensors refuses tensors that share memory
            t = t.clone()
        seen.add(t.data_ptr())
        stored[name] = t
    with atomic_path(ckpt_dir / STATE_TENSORS) as p:
        save_file(stored, str(p))
    atomic_write_text(ckpt_dir / STATE_FILE, json.dumps({"format": "lmscale-trainer-state", "version": 1,
                                                          "state": document}, allow_nan=False))


class UntrustedStateError(CheckpointError):
    """A pickled trainer state that the safe loader refuses: only the user can decide to trust it."""


def load_trainer_state(ckpt_dir: str | Path, trust: bool = False) -> dict[str, Any]:
    """The trainer state of a checkpoint; a pickled state of an older checkpoint only through
    torch's restricted unpickler unless `trust` (see the module docstring)."""
    ckpt_dir = Path(ckpt_dir)
    if (ckpt_dir / STATE_FILE).is_file():
        return _read_trainer_state(ckpt_dir)
    legacy = ckpt_dir / LEGACY_STATE_FILE
    if not legacy.is_file():
        raise CheckpointError(f"{ckpt_dir} has no {STATE_FILE}; it is not a resumable checkpoint")
    try:
        return torch.load(legacy, map_location="cpu", weights_only=True)
    except Exception as exc:  # types outside torch's allow-list, or a truncated file
        if not trust:
            raise UntrustedStateError(
                f"{legacy}: a pickled trainer state that torch's safe loader refuses ({type(exc).__name__}); "
                "reading it in full can run code stored in the file: resume with --trust-checkpoint only "
                "if you trust where this run directory came from") from None
    print(f"lmscale: warning: unpickling {legacy} in full (--trust-checkpoint); this can run code from the file",
          file=sys.stderr, flush=True)
    try:
        return torch.load(legacy, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"cannot read {legacy}: {exc}") from None


def _read_trainer_state(ckpt_dir: Path) -> dict[str, Any]:
    path, tensor_path = ckpt_dir / STATE_FILE, ckpt_dir / STATE_TENSORS
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        tensors = load_file(str(tensor_path)) if tensor_path.is_file() else {}
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read the trainer state in {ckpt_dir}: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != "lmscale-trainer-state":
        raise CheckpointError(f"{path}: not an lmscale trainer state")
    try:
        return _decode(document["state"], tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed trainer state ({exc})") from None


def check_trainer_state(state: Any, path: Path) -> None:
    """Every field a resume reads, of its type: a damaged state is unreadable (the resume falls
    back to the checkpoint before it, as for a truncated file), never a traceback mid-restore."""
    def whole(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: malformed trainer state (not a mapping)")
    for key in ("total_steps", "step", "tokens", "bad_steps", "consecutive_bad"):
        if not whole(state.get(key)):
            raise CheckpointError(f"{path}: malformed trainer state ({key}={state.get(key)!r})")
    if not number(state.get("wall_s")):
        raise CheckpointError(f"{path}: malformed trainer state (wall_s={state.get('wall_s')!r})")
    opt = state.get("optimizer")
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)
            and opt["param_groups"] and all(isinstance(g, dict) for g in opt["param_groups"])):
        raise CheckpointError(f"{path}: malformed trainer state (optimizer state or its parameter groups)")
    sampler = state.get("sampler")
    seed = sampler.get("seed", 0) if isinstance(sampler, dict) else None
    if not (isinstance(sampler, dict) and all(whole(sampler.get(k)) for k in ("epoch", "position"))
            and isinstance(seed, int) and not isinstance(seed, bool)):
        raise CheckpointError(f"{path}: malformed trainer state (sampler={sampler!r})")


# JSON holds str-keyed dicts, lists, strings, finite numbers, booleans and null; the tags below
# carry what it lacks, so the state reads back exactly as it was saved.
def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj
        return {"$tensor": name}
    if isinstance(obj, np.ndarray):
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"$ndarray": name}
    if isinstance(obj, (bool, str)) or obj is None:
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else {"$float": repr(float(obj))}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"$items": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    raise CheckpointError(f"cannot store a {type(obj).__name__} in a trainer state")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "$tensor" in obj:
        return tensors[obj["$tensor"]]
    if "$ndarray" in obj:
        return tensors[obj["$ndarray"]].numpy()
    if "$float" in obj:
        return float(obj["$float"])
    if "$tuple" in obj:
        return tuple(_decode(v, tensors) for v in obj["$tuple"])
    if "$items" in obj:
        return {_freeze(_decode(k, tensors)): _decode(v, tensors) for k, v in obj["$items"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _freeze(key: Any) -> Any:
    return tuple(_freeze(k) for k in key) if isinstance(key, list) else key


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


WRITE_TEST = "write_test"  # the probe's temporaries are .write_test.XXXX.tmp


def is_writable_dir(path: str | Path) -> Optional[str]:
    """None when `path` can be created and written, else the reason."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return str(exc)
    if not os.access(p, os.W_OK | os.X_OK):
        return "permission denied"
    try:  # a temporary of its own name: a user's file is never replaced or removed by the probe
        fd, tmp = tempfile.mkstemp(prefix=f".{WRITE_TEST}.", suffix=".tmp", dir=p)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return str(exc)
    return None
