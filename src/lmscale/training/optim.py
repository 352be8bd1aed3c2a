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


def build_optimizer(model: nn.Module, train_cfg: Any) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) over `parameter_groups`; the fused kernel where available.

    The fused kernel runs the whole update in one pass per tensor on CPU as well as on CUDA,
    where the multi-tensor (`foreach`) path walks every tensor once per arithmetic step; both
    compute the same algorithm with the same hyperparameters.
    """
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
    (constant, then a linear decay over the last `decay_fraction` of the schedule); or constant.
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
        decay = max(int(round(train_cfg.decay_fraction * total)), 1)
        start = total - decay
        if step < start:
            return peak
        progress = min((step - start) / decay, 1.0)
        return peak + (floor - peak) * progress
    span = max(total - warm, 1)
    progress = min(max((step - warm) / span, 0.0), 1.0)
    if schedule == "linear":
        return peak + (floor - peak) * progress
    if schedule == "cosine":
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ConfigError(f"unknown schedule {schedule!r}")


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
