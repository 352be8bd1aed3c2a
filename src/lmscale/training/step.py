"""One optimizer step for pretraining, fine-tuning and experiments.

A step: this step's learning rate set on every parameter group (the schedule is a function of the
step, `optim.lr_at`); each micro-batch's forward under the precision's autocast and its loss
back-propagated (scaled by the fp16 gradient scaler when there is one); the gradients unscaled
and clipped to `grad_clip` (their norm is computed either way, for the logs); the update; the
gradients cleared.

Non-finite steps, one rule for every caller: a step whose loss or gradient norm is not finite
leaves the weights and the optimizer state as they were, is counted (`record_step`), and
`max_bad` of them in a row stop the run. Under fp16 the gradient scaler decides the update
instead: overflowing gradients are routine there (it lowers the scale and skips the update), so
only a non-finite loss counts as a bad step.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable, Optional

import torch


@dataclass
class StepResult:
    """What a step reports: device tensors when the skip was decided on the device (read them
    later, many steps at once), plain numbers otherwise."""

    loss: Any
    grad_norm: Any
    skipped: Any

    def read(self) -> tuple[float, float, bool]:
        """(loss, grad_norm, skipped) on the host."""
        values = [v.item() if isinstance(v, torch.Tensor) else v for v in (self.loss, self.grad_norm, self.skipped)]
        return float(values[0]), float(values[1]), bool(values[2])


class OptimizerStep:
    """The optimizer step of one model and optimizer (see the module docstring for the rule)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: Optional[float] = None,
                 autocast: Callable[[], ContextManager] = contextlib.nullcontext,
                 scaler: Optional[torch.amp.GradScaler] = None,
                 params: Optional[Iterable[torch.nn.Parameter]] = None, sharded: bool = False) -> None:
        self.model, self.optimizer, self.autocast, self.scaler = model, optimizer, autocast, scaler
        self.max_norm = grad_clip if grad_clip and grad_clip > 0 else float("inf")
        # the gradient norm sums the parameters in this order (the model's unless given)
        self.params = list(params) if params is not None else None
        # a non-finite step is skipped inside the fused AdamW kernel (its found_inf input), so no
        # step has to wait for the device before its update is queued; sharded (FSDP) parameters
        # and the multi-tensor fallback keep the host-side decision
        self.skip_on_device = bool(optimizer.defaults.get("fused")) and not sharded and scaler is None

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"] if "lr_scale" in g else lr  # per-group factor (muP)

    def backward(self, loss: torch.Tensor, weight: Optional[float] = None) -> None:
        """Back-propagate `loss` (times `weight`, its share of the step, when given)."""
        scaled = loss * weight if weight is not None else loss
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()

    def update(self, step_loss: torch.Tensor) -> StepResult:
        """Unscale, clip, update unless non-finite, and clear the gradients; `step_loss` is the
        step's (detached) loss, which the non-finite rule also reads."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = self.params if self.params is not None else self.model.parameters()
        grads = [p for p in params if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(grads, self.max_norm, error_if_nonfinite=False)
        if hasattr(norm, "full_tensor"):  # a sharded model's norm is a DTensor
            norm = norm.full_tensor()
        norm = norm.detach()
        if self.scaler is not None:
            skipped: Any = ~torch.isfinite(step_loss)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.skip_on_device:
            skipped = ~(torch.isfinite(step_loss) & torch.isfinite(norm))
            # the fused kernel leaves weights, moments and step count untouched when found_inf
            # is 1: the same state as not calling step() at all
            self.optimizer.found_inf = skipped.to(torch.float32)
            self.optimizer.step()
        else:
            step_loss, norm = float(step_loss.item()), float(norm.item())
            skipped = not (math.isfinite(step_loss) and math.isfinite(norm))
            if not skipped:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(step_loss, norm, skipped)

    def __call__(self, lr: float, loss_fn: Callable[[], torch.Tensor]) -> StepResult:
        """A whole step on one batch: `loss_fn()` is its forward pass, run under the autocast."""
        self.set_lr(lr)
        with self.autocast():
            loss = loss_fn()
        self.backward(loss)
        return self.update(loss.detach())


@dataclass
class BadSteps:
    """Non-finite steps of a run that keeps no other record of them (`RunState` does for
    pretraining): how many, and how many in a row."""

    bad_steps: int = 0
    consecutive_bad: int = 0


def record_step(counts: Any, skipped: bool, max_bad: int) -> bool:
    """Count one step read on the host into `counts` (its `bad_steps` and `consecutive_bad`);
    True while the non-finite streak is at or past `max_bad`, which stops the run."""
    if not skipped:
        counts.consecutive_bad = 0
        return False
    counts.bad_steps += 1
    counts.consecutive_bad += 1
    return counts.consecutive_bad >= max_bad


def streak_message(consecutive: int, step: int) -> str:
    """The first half of every caller's error for a non-finite streak."""
    return f"{consecutive} consecutive steps with a non-finite loss or gradient (up to step {step}); stopped"
