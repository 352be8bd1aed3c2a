"""Which device a run, a fine-tuning job, an evaluation or an experiment uses.

One rule for every entry point: `auto` is CUDA when this machine has it (under torchrun, each
process's own GPU), else the CPU; an explicit device must exist here. The spelling is
`lmscale.config.DEVICE_RE`, the same the run config and the command line accept.
"""
from __future__ import annotations

from typing import Optional, Protocol

import torch

from lmscale.config import DEVICE_RE, ConfigError


class Launch(Protocol):
    """What the device rule needs of a torchrun launch (`distributed.DistInfo` has it)."""

    enabled: bool
    local_rank: int


def resolve_device(spec: str, info: Optional[Launch] = None, what: str = "device") -> torch.device:
    """The device `spec` names on this machine. With `info` (a torchrun launch), CUDA is this
    process's GPU (`local_rank`) whatever index was asked. A misspelled or absent device is a
    `ConfigError` naming `what` (the flag or config key it came from)."""
    spec = str(spec)
    if not DEVICE_RE.fullmatch(spec):
        raise ConfigError(f"{what}={spec!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", info.local_rank) if info is not None else torch.device("cuda")
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{what}={spec} but CUDA is not available on this machine; use {what}=cpu")
        if info is not None and info.enabled:
            return torch.device("cuda", info.local_rank)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{what}={spec} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{what}=mps but Apple's Metal backend is not available here; use {what}=cpu")
    return dev
