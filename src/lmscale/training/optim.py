"""AdamW with the usual parameter groups, learning-rate schedules, and budget -> schedule length.

The schedule length is derived from the run's budget (steps, tokens, FLOPs or wall-clock), so a
run with a smaller budget gets a correspondingly shorter schedule: a scaling-law sweep compares
runs that each finished their own cosine, not truncated pieces of one long schedule.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lmscale.config import ConfigError

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices of linear layers; never biases, norm gains or embeddings.

    Decaying a norm gain or a bias pulls it toward zero for no regularisation benefit, and
    decaying embedding rows penalises rare tokens that get few gradient updates (GPT-2/nanoGPT
    and BERT both exclude them). Shared (tied) tensors appear once.
    """
    no_decay: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, nn.Embedding) or is_norm or name.endswith("bias") or p.ndim < 2:
                no_decay.add(id(p))
    decay_params, plain_params, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (plain_params if id(p) in no_decay else decay_params).append(p)
    groups = [{"params": decay_params, "weight_decay": weight_decay}]
    if plain_params:
        groups.append({"params": plain_params, "weight_decay": 0.0})
    return groups


def mup_parameter_groups(model: nn.Module, weight_decay: float, width_mult: float) -> list[dict[str, Any]]:
    """`parameter_groups` split for muP with Adam (Yang et al. 2022, Table 8): hidden matrices --
    weights of linear layers both of whose dimensions grow with width -- get `lr_scale` =
    1/width_mult; embeddings, the readout (`lm_head`, multiplied by 1/width_mult in the forward
    pass instead), biases and norm gains keep the base learning rate.

    Adam's update size does not depend on the gradient's scale, so a width-`m` hidden matrix
    moves m times more coordinates by the same amount: the 1/m keeps its effect on the
    activations fixed. `OptimizerStep.set_lr` multiplies each group's `lr_scale` in.
    """
    hidden: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.split(".")[-1] != "lm_head":
            hidden.add(id(module.weight))
    out = []
    for g in parameter_groups(model, weight_decay):
        mats = [p for p in g["params"] if id(p) in hidden]
        rest = [p for p in g["params"] if id(p) not in hidden]
        if mats:
            out.append({**g, "params": mats, "lr_scale": 1.0 / width_mult})
        if rest:
            out.append({**g, "params": rest, "lr_scale": 1.0})
    return out


def build_optimizer(model: nn.Module, train_cfg: Any) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) over `parameter_groups`; the fused kernel where available.

    The fused kernel runs the whole update in one pass per tensor on CPU as well as on CUDA,
    where the multi-tensor (`foreach`) path walks every tensor once per arithmetic step; both
    compute the same algorithm with the same hyperparameters.
    """
    cfg = getattr(model, "config", None)
    if getattr(cfg, "parametrization", "sp") == "mup":
        groups = mup_parameter_groups(model, train_cfg.weight_decay, cfg.width_mult)
    else:
        groups = parameter_groups(model, train_cfg.weight_decay)
    return adamw(groups, next(model.parameters()).device, lr=train_cfg.lr,
                 betas=(train_cfg.beta1, train_cfg.beta2), eps=train_cfg.eps)


def adamw(groups: list[dict[str, Any]], device: torch.device, **kwargs: Any) -> torch.optim.Optimizer:
    """`torch.optim.AdamW` with the fused kernel on CPU and CUDA, the multi-tensor path elsewhere."""
    if torch.device(device).type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.AdamW(groups, foreach=True, **kwargs)


def warmup_steps_for(total_steps: int, train_cfg: Any) -> int:
    if train_cfg.warmup_steps is not None:
        return min(int(train_cfg.warmup_steps), max(total_steps - 1, 0))
    return int(round(train_cfg.warmup_fraction * total_steps))


def lr_at(step: int, total_steps: int, train_cfg: Any) -> float:
    """Learning rate for optimizer step `step` (0-based) of a `total_steps` schedule.

    Linear warm-up from 0, then: cosine to `min_lr_ratio * lr`; linear to it; warm-up-stable-decay
    (constant, then a decay of `decay_shape` over the last `decay_fraction` of the schedule); or
    constant.
    """
    peak = float(train_cfg.lr)
    floor = peak * float(train_cfg.min_lr_ratio)
    total = max(int(total_steps), 1)
    warm = warmup_steps_for(total, train_cfg)
    if step < warm:
        return peak * (step + 1) / warm
    schedule = train_cfg.schedule
    if schedule == "constant":
        return peak
    if schedule == "wsd":
        start, decay = wsd_decay_span(total, train_cfg)
        if step < start:
            return peak
        return decayed_lr(peak, floor, min((step - start) / decay, 1.0), getattr(train_cfg, "decay_shape", "linear"))
    span = max(total - warm, 1)
    progress = min(max((step - warm) / span, 0.0), 1.0)
    if schedule == "linear":
        return peak + (floor - peak) * progress
    if schedule == "cosine":
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ConfigError(f"unknown schedule {schedule!r}")


# ----------------------------------------------------------------------------- WSD and its cooldowns

def wsd_decay_span(total_steps: int, train_cfg: Any) -> tuple[int, int]:
    """(first decay step, decay steps) of a WSD schedule: the last `decay_fraction`, at least one step."""
    total = max(int(total_steps), 1)
    decay = max(int(round(train_cfg.decay_fraction * total)), 1)
    return total - decay, decay


def decayed_lr(peak: float, floor: float, progress: float, shape: str) -> float:
    """The cooldown's learning rate at `progress` in [0, 1]: linear, cosine, or 1-sqrt (Hägele et
    al. 2024, whose 1-sqrt cooldown matched cosine runs' final losses more closely than linear)."""
    if shape == "linear":
        frac = progress
    elif shape == "cosine":
        frac = 0.5 * (1.0 - math.cos(math.pi * progress))
    elif shape == "1-sqrt":
        frac = math.sqrt(progress)
    else:
        raise ConfigError(f"unknown decay shape {shape!r}")
    return peak + (floor - peak) * frac


def in_stable_phase(step: int, total_steps: int, train_cfg: Any) -> bool:
    """Whether the first `step` optimizer steps of a WSD schedule are its warm-up and stable steps
    only: a checkpoint at `step` is a point a cooldown branch can start from."""
    if train_cfg.schedule not in ("wsd", "constant"):
        return False
    warm = warmup_steps_for(max(int(total_steps), 1), train_cfg)
    if step < max(warm, 1) or step > total_steps:
        return False
    return train_cfg.schedule == "constant" or lr_at(step - 1, total_steps, train_cfg) == float(train_cfg.lr)


def tokens_per_step(train_cfg: Any) -> int:
    """Input tokens one optimizer step consumes (global batch x sequence length)."""
    return int(train_cfg.batch_size) * int(train_cfg.seq_len)


def schedule_steps(
    train_cfg: Any,
    flops_per_token: float | None = None,
    step_time_s: float | None = None,
) -> tuple[int, str]:
    """Optimizer steps the budget allows, and which budget decided it.

    Several budgets may be set; the smallest wins. FLOPs use the training FLOPs per token (see
    `metrics.training_flops_per_token`); wall-clock uses a measured step time.
    """
    candidates: list[tuple[int, str]] = []
    tps = tokens_per_step(train_cfg)
    if train_cfg.max_steps is not None:
        candidates.append((int(train_cfg.max_steps), "steps"))
    if train_cfg.max_tokens is not None:
        candidates.append((max(1, int(math.ceil(train_cfg.max_tokens / tps))), "tokens"))
    if train_cfg.max_flops is not None:
        if not flops_per_token:
            raise ConfigError("a FLOP budget needs the model's FLOPs per token")
        candidates.append((max(1, int(train_cfg.max_flops // (flops_per_token * tps))), "flops"))
    if train_cfg.max_time_s is not None:
        if step_time_s is None:
            raise ConfigError("a wall-clock budget needs a measured step time")
        candidates.append((max(1, int(train_cfg.max_time_s / max(step_time_s, 1e-9))), "time"))
    if not candidates:
        raise ConfigError(
            "no training budget: set one of train.max_steps, train.max_tokens, train.max_flops "
            "or train.max_time_s (e.g. --max-steps 200)"
        )
    return min(candidates)
