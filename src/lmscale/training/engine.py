"""The model on its device: device and precision, the model built (and its checkpointed weights
loaded), compiled and wrapped for data parallelism, and its optimizer.

The precision policy lives here (`precision`, `grad_scaler`) and the device rule in `device.py`;
`step.OptimizerStep` applies both in every optimizer step of the package."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Optional

import torch

from lmscale.config import ConfigError, RunConfig
from lmscale.models import build_model
from lmscale.training import checkpoint as ckpt
from lmscale.training import distributed as dist_util
from lmscale.training.device import resolve_device
from lmscale.training.optim import build_optimizer


@dataclass
class Engine:
    model: torch.nn.Module  # compiled and/or wrapped (DDP, FSDP2) as the config asks
    optimizer: torch.optim.Optimizer
    device: torch.device
    autocast: Callable[[], ContextManager]  # the forward passes' precision context
    compute_dtype: str  # "bf16", "fp16" or "fp32": the precision of the matmul products
    params: dict[str, int]  # parameter counts of the plain model
    scaler: Optional[torch.amp.GradScaler] = None  # fp16 only: loss scaling against gradient underflow


def compute_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own mean token loss for one micro-batch (kept separate so it can be wrapped)."""
    return model(**batch).loss


def build_engine(cfg: RunConfig, info: dist_util.DistInfo, checkpoint: Optional[Path] = None) -> Engine:
    """The model of `cfg.model`, initialised from `train.seed` (or with the weights of
    `checkpoint`), on its device, compiled and wrapped as `cfg.train` says, with its optimizer."""
    tc = cfg.train
    device = resolve_device(tc.device, info, "train.device")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast, compute_dtype = precision(device, tc.dtype)
    if compute_dtype == "fp16" and tc.parallel == "fsdp" and info.enabled:
        raise ConfigError("train.dtype fp16 with train.parallel fsdp is not supported (its gradient scaler "
                          "would need the shards); use train.dtype bf16 or fp32 with FSDP")
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model)
    params = {k: int(v) for k, v in model.num_parameters().items()}
    if checkpoint is not None:
        ckpt.load_model_weights(model, checkpoint)
    model.to(device)
    # FSDP is compiled after sharding, everything else before wrapping
    if tc.compile and tc.parallel != "fsdp":
        model = torch.compile(model)
    model = dist_util.wrap_model(model, info, tc.parallel, device, mixed_bf16=compute_dtype == "bf16")
    if tc.compile and tc.parallel == "fsdp" and info.enabled:
        model = torch.compile(model)
    return Engine(model, build_optimizer(model, tc), device, autocast, compute_dtype, params,
                  grad_scaler(device, compute_dtype))


def precision(device: torch.device, dtype_pref: str) -> tuple[Callable[[], ContextManager], str]:
    """The autocast context for the forward passes and the dtype of their products; fp32 weights
    and optimizer state always. `auto` is bf16 on GPUs that have it, fp16 (with `grad_scaler`) on
    older ones such as T4 or V100, and fp32 on CPUs, so CPU results do not depend on which CPU a
    run lands on."""
    chosen = dtype_pref
    if dtype_pref == "auto":
        chosen = "fp32" if device.type != "cuda" else ("bf16" if cuda_has_bf16(device) else "fp16")
    if chosen == "fp32":
        return contextlib.nullcontext, "fp32"
    half = torch.bfloat16 if chosen == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=half), chosen


def grad_scaler(device: torch.device, compute_dtype: str) -> Optional[torch.amp.GradScaler]:
    """fp16 products need loss scaling against gradient underflow; bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type) if compute_dtype == "fp16" else None


def cuda_has_bf16(device: torch.device) -> bool:
    """bf16 matrix units: compute capability 8.0 (Ampere) and newer."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU, which runs it in place)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
