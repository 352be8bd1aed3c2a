"""lmscale model directories: `config.json` + `model.safetensors` + the tokenizer, written atomically.

`load_model_dir` also accepts a training run directory (it picks the best checkpoint, else the
newest). `lmscale.models.loading.load` takes a `transformers` directory as well.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lmscale.config import ConfigError, ModelConfig, model_config_from_dict, to_dict
from lmscale.errors import CheckpointError
from lmscale.io import atomic_directory, atomic_write_json
from lmscale.io.rundir import RunLayout
from lmscale.models.spec import build_model
from lmscale.tokenization import Tokenizer

FORMAT = "lmscale"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def config_dict(cfg: ModelConfig) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "model": to_dict(cfg)}


def write_model_files(model: nn.Module, tokenizer: Any, out_dir: str | Path) -> Path:
    """Write the model dir files into an existing directory (a caller that builds a bigger
    directory atomically, such as a training checkpoint, uses this inside its own transaction)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    atomic_write_json(out / CONFIG_FILE, config_dict(model.config))
    if tokenizer is not None:
        tokenizer.save(out)
    return out


def save_model_dir(model: nn.Module, tokenizer: Any, out_dir: str | Path) -> Path:
    """Save as a model dir; an existing dir at `out_dir` is replaced only once the new one is complete."""
    with atomic_directory(out_dir) as tmp:
        write_model_files(model, tokenizer, tmp)
    return Path(out_dir)


def _checkpoint_from_run_dir(path: Path) -> Optional[Path]:
    run = RunLayout(path)
    if (run.best / CONFIG_FILE).is_file():
        return run.best
    steps = [d for _, d in run.step_dirs() if (d / CONFIG_FILE).is_file()]
    return steps[-1] if steps else None


def resolve_model_dir(path: str | Path) -> Path:
    """A model dir itself, or the checkpoint a run dir points at."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint or run directory")
    if p.is_file():
        p = p.parent
    if (p / CONFIG_FILE).is_file():
        return p
    found = _checkpoint_from_run_dir(p)
    if found is None:
        raise CheckpointError(
            f"{p}: neither a model directory (config.json + model.safetensors) nor a run directory "
            "with checkpoints/best or checkpoints/step_*"
        )
    return found


def read_config(model_dir: str | Path) -> ModelConfig:
    path = Path(model_dir) / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable config ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an lmscale model config (no \"format\": \"lmscale\")")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path}: config version {data.get('version')!r}, this lmscale reads {VERSION}")
    try:
        return model_config_from_dict(data.get("model") or {})
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly; any difference is reported by name, all at once, before anything is copied."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing tensors: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors: {', '.join(unexpected)}")
        if shapes:
            parts.append(f"mis-shaped tensors: {', '.join(shapes)}")
        raise CheckpointError(f"{source}: checkpoint does not match its config; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def check_tokenizer_fits(tokenizer: Any, cfg: ModelConfig, source: str) -> None:
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(
            f"{source}: tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary is "
            f"{cfg.vocab_size}; ids >= {cfg.vocab_size} would have no embedding (wrong tokenizer?)"
        )


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """`(model, tokenizer or None)` from an lmscale model dir or a run dir; model in eval mode."""
    model_dir = resolve_model_dir(path)
    cfg = read_config(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{model_dir}: no {WEIGHTS_FILE}")
    tokenizer = Tokenizer.load(model_dir) if (model_dir / "tokenizer.json").is_file() else None
    check_tokenizer_fits(tokenizer, cfg, str(model_dir))
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: unreadable weights ({exc})") from None
    with _skip_init():
        model = build_model(cfg)
    load_state_checked(model, state, str(weights))
    return model.to(device).eval(), tokenizer


_INIT_FUNCTIONS = (
    "normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
    "xavier_normal_", "zeros_", "ones_", "constant_",
)


@contextlib.contextmanager
def _skip_init():
    """Build a model whose every weight is about to be overwritten without initialising it.

    Building on the meta device would do the same, but the first random fill of a meta tensor
    imports the whole compiler stack (seconds per process); turning the `torch.nn.init`
    functions into no-ops leaves plain, uninitialised CPU tensors (non-persistent buffers such
    as rotary frequencies are still computed by the constructors).
    """
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)

