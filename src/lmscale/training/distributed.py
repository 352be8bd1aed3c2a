"""Data parallelism applied to a model from outside: torchrun DDP (gloo/NCCL) or FSDP2.

Model files contain no distributed code; this module wraps a built model, and every
`torch.distributed` call of the package lives here. The global batch is a config value and each
process takes `batch_size / world_size` sequences of it, so the optimizer sees the same batch, and
the LR schedule the same length, for any number of processes.

Multi-node is torchrun's job, e.g. on each of 2 nodes with 8 GPUs: `torchrun --nnodes 2
--nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m lmscale pretrain --config run.yaml`.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lmscale.models.spec import family_spec
from lmscale.training.device import resolve_device

try:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
except ImportError:  # a torch without FSDP2 under its public name: DDP only, and `is_fsdp` is always false
    FSDPModule = MixedPrecisionPolicy = fully_shard = None


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun); readable before and after the
    process group exists."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    info = DistInfo(local_rank=local_rank, world_size=world)
    use_cuda = resolve_device(device_pref, info, "train.device").type == "cuda"
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank=launch_rank(), local_rank=local_rank, world_size=world, backend=backend)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def collective_device(info: DistInfo, device: torch.device) -> torch.device:
    """Where tensors of a collective must live: the device under NCCL, the CPU under gloo."""
    return device if info.backend == "nccl" else torch.device("cpu")


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a few scalars over all processes (identity in a single process)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)  # the default reduction is a sum
    return t.tolist()


def all_reduce_max(value: float, info: DistInfo, device: torch.device) -> float:
    """The largest `value` of all processes (identity in a single process)."""
    t = torch.tensor([value])
    if info.enabled:
        t = t.to(device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def global_sum(value: float, info: DistInfo, device: torch.device) -> Any:
    """`value` summed over all processes without a host read on NCCL: there the sum stays a
    device tensor (reading it back would make every training step wait for the previous one);
    elsewhere a float, as `all_reduce_sum` gives it."""
    if not (info.enabled and info.backend == "nccl"):
        return all_reduce_sum([value], info, device)[0]
    t = torch.full((), value, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t


def sum_tensor(t: torch.Tensor, info: DistInfo, device: torch.device) -> torch.Tensor:
    """`t` summed over all processes, as a tensor on `device` (`t` itself in a single process)."""
    if not info.enabled:
        return t
    out = t.to(device)
    dist.all_reduce(out)
    return out


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """Every process's `obj`, in rank order (`[obj]` in a single process)."""
    if not info.enabled:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The units its family's spec shards one by one (the repeated transformer blocks)."""
    return family_spec(model).fsdp_units(model)


def wrap_model(model: nn.Module, info: DistInfo, parallel: str, device: torch.device,
               mixed_bf16: bool = False) -> nn.Module:
    """DDP, or FSDP2 `fully_shard` per block then the root; unchanged in a single process."""
    if not info.enabled:
        return model
    if parallel == "fsdp":
        if fully_shard is None:
            raise RuntimeError("train.parallel=fsdp needs a torch with torch.distributed.fsdp.fully_shard")
        kw: dict[str, Any] = {}
        if mixed_bf16:
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in _blocks(model):
            fully_shard(block, **kw)
        fully_shard(model, **kw)
        return model
    if device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP and torch.compile wrappers."""
    seen = 0
    while seen < 4:
        seen += 1
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            break
    return model


def is_fsdp(model: nn.Module) -> bool:
    return FSDPModule is not None and isinstance(unwrap(model), FSDPModule)


@contextlib.contextmanager
def no_gradient_sync(model: nn.Module, active: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on non-final micro-steps of an accumulation."""
    if not active:
        yield
        return
    if hasattr(model, "no_sync"):
        with model.no_sync():
            yield
        return
    inner = unwrap(model)
    if hasattr(inner, "set_requires_gradient_sync"):
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)
        return
    yield


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state on CPU (collective under FSDP: all ranks call it)."""
    if is_fsdp(model):
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(unwrap(model), optimizer, options=opts)
    return unwrap(model).state_dict(), optimizer.state_dict()


def load_full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict | None,
                          optim_sd: dict) -> None:
    if is_fsdp(model):
        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        set_state_dict(unwrap(model), optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd, options=opts)
        return
    if model_sd is not None:
        unwrap(model).load_state_dict(model_sd)
    optimizer.load_state_dict(optim_sd)
